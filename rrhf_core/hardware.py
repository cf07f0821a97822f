"""What the hardware does well: whether bf16 is worth using here (from the CPU's flags or CUDA's answer, never a
timing) and whether AdamW's fused kernel serves a set of parameters."""

from __future__ import annotations

import functools
from typing import Any

import torch

from rrhf_core.errors import ConfigError

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU flags of bf16 instructions (else bf16 is emulated)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return "", frozenset()

    def field(name: str) -> str:
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(name) and ":" in ln), "")

    return field("vendor_id"), frozenset(field("flags").split())


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where they cannot be read (not Linux)."""
    return _cpuinfo()[1]


def cpu_vendor() -> str:
    """The CPU's vendor (``GenuineIntel``, ``AuthenticAMD``); empty where it cannot be read."""
    return _cpuinfo()[0]


def bf16_native(device: torch.device) -> bool:
    """Whether the hardware computes bf16 itself: CUDA with bf16 support, a CPU with AVX512-BF16 or AMX-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def bf16_available(device: torch.device) -> bool:
    """Whether bf16 is worth using here, from the hardware's capabilities (never a timing, which a busy machine
    skews): CUDA with bf16 support; a CPU with AMX-BF16 (a bf16 matmul ~4x fp32), or an AMD CPU with AVX512-BF16
    (faster than fp32 on the project's 2-core AMD EPYC: the demo's training 419-425 s in bf16 against 548-555 s in
    fp32). AVX512-BF16 on an Intel CPU without AMX is not enough: there a bf16 matmul was slower than fp32 (162 vs
    278 GFLOP/s on a 2-core Xeon)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and cpu_vendor() == "AuthenticAMD")


def precision_reason(device: torch.device) -> str:
    """Why ``auto`` decides as it does on ``device``, in words (recorded with a round)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}: bf16 {'supported' if torch.cuda.is_bf16_supported() else 'not supported'}"
    have = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in cpu_flags()]
    cpu = (
        f"{cpu_vendor() or 'a'} CPU with {', '.join(have) or 'none of avx2, avx512f, avx512_bf16, amx_bf16'}"
    )
    return f"{cpu}: {'bf16' if bf16_available(device) else 'fp32'} is faster"


def decide_precision(precision: str, device: torch.device, where: str = "dtype") -> str:
    """A ``dtype`` setting (``auto``, ``bf16``, ``fp32``) decided for ``device``: ``"bf16"`` or ``"fp32"``. The
    same hardware always gets the same answer. ``bf16`` pinned where the hardware has no bf16 instructions (it
    would be emulated, many times slower than fp32) is a :class:`ConfigError` naming ``where``."""
    if precision == "fp32":
        return "fp32"
    if precision == "bf16":
        if not bf16_native(device):
            raise ConfigError(
                f"{where} is bf16, but this machine computes no bf16 ({precision_reason(device)}; bf16 needs CUDA "
                f"with bf16 support or a CPU with {' or '.join(NATIVE_BF16_FLAGS)}): set {where} to fp32, or auto "
                "(decided from the hardware)"
            )
        return "bf16"
    return "bf16" if bf16_available(device) else "fp32"


def use_bf16(precision: str, device: torch.device) -> bool:
    """A stage's ``dtype`` setting (``bf16``, ``fp32``, ``auto``) decided for a device: whether to compute in bf16
    (:func:`decide_precision`)."""
    return decide_precision(precision, device) == "bf16"


def describe_machine() -> str:
    """One line naming the machine a figure came from: accelerator or CPU model, cores, torch build."""
    import os
    import platform

    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    else:
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
        except OSError:
            pass
        device = f"{model}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"
    bf16 = (
        "fast bf16"
        if bf16_available(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        else "fp32 faster than bf16"
    )
    return f"{device}; torch {torch.__version__}; {bf16}"


def fused_adamw(params: list[Any]) -> bool:
    """Whether AdamW's fused kernel serves these parameters: plain (unsharded) float tensors on one CPU or CUDA
    device. It updates every parameter in one pass instead of a loop of tensor operations: on a 2-core CPU one
    AdamW step over SmolLM2-135M took 0.36 s in the default (foreach) form and 0.04 s fused (ad hoc), about 6 % of the
    demo's fp32 training step. FSDP's sharded (DTensor) parameters keep the default."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = ()  # type: ignore[assignment,misc]
    return {p.device.type for p in params} in ({"cpu"}, {"cuda"}) and all(
        p.is_floating_point() and not isinstance(p, DTensor) for p in params
    )
