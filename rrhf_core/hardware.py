"""What the hardware does well: whether bf16 is worth using here (measured on a CPU, asked of CUDA) and whether
AdamW's fused kernel serves a set of parameters."""

from __future__ import annotations

import functools
import time
from typing import Any

import torch


def bf16_available(device: torch.device) -> bool:
    """True where bf16 matmul is faster than fp32: CUDA with bf16 support; on a CPU, measured once.

    CPUs differ: with AMX-BF16 a bf16 matmul runs ~4x fp32, with AVX512-BF16 alone it can be slower than fp32
    (measured on this project's 2-core machines: 162 vs 278 GFLOP/s), so a flag check is not enough.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_bf16_faster()


@functools.lru_cache(maxsize=1)
def _cpu_bf16_faster(n: int = 512, reps: int = 3) -> bool:
    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(torch.bfloat16) < best(torch.float32)


def use_bf16(precision: str, device: torch.device) -> bool:
    """A stage's ``dtype`` setting (``bf16``, ``fp32``, ``auto``) decided for a device: whether to compute in bf16."""
    return precision == "bf16" or (precision == "auto" and bf16_available(device))


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
