"""The prepared GPU check: what a GPU machine with only torch and transformers (no model files, no network, no
Prefect, MLflow or vLLM) can tell about the training step. One JSON to ``$OUT/gpu_check.json`` (or ``--out``).

    PYTHONPATH=. python3 benchmarks/gpu_check.py            # benchmarks/gpu_check.sh wraps it for the device tool

Sections (each records its own error instead of stopping the rest):
- ``environment``: GPU name, torch/transformers versions, attention backends present;
- ``bench``: ``rrhf bench train-step`` (reference vs prefix-shared step: time, peak memory, MFU against the measured
  bf16 matmul peak) on randomly initialised Llamas of the SmolLM2-135M and ~1B shapes, k = 2, 4, 6, 8;
- ``prefix_sharing``: the packed, block-masked step against the plain one on the same batch in bf16, per attention
  implementation (sdpa; flash_attention_2 where installed): largest difference of the length-normalised scores and of
  the loss, and the gradients' relative difference;
- ``strategy_ddp`` / ``strategy_fsdp``: two optimizer steps of the prefix-shared step under DDP and under FSDP2
  on one GPU (a process group of one): losses, step time, peak memory;
- ``gpu_tests``: the tests marked ``gpu`` (``tests/test_gpu.py``), each called directly, pass or its error;
- ``not_covered``: what this script does not check yet, said rather than skipped silently.

On a CPU-only machine it runs too (``--quick``: a tiny Llama shape, k = 2, one step), which is how it is tested here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch


def environment() -> dict[str, Any]:
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name()
        if cuda
        else f"cpu ({platform.processor() or platform.machine()})",
        "cuda": torch.version.cuda if cuda else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
    }


def bench(shape: str, ks: list[int], steps: int) -> dict[str, Any]:
    from rrhf_core.training.bench import run

    t0 = time.perf_counter()
    table = run(f"random:{shape}", ks, steps, bf16=True, cache_dir=None, as_json=True)
    return {"cases": table, "seconds": time.perf_counter() - t0}


def prefix_sharing(k: int, attn: str, shape: str = "smollm2-135m") -> dict[str, Any]:
    """The benchmark's two steps (``reference_step``: k padded rows, full log-softmax; ``project_step``: prompt
    once, block mask) on one HH-shaped batch in bf16 autocast, the model in eval mode (no dropout): their RRHF losses
    and gradients must agree to bf16 precision."""
    from rrhf_core.training import bench as b

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, vocab, pad = b.random_model(shape)
    model.config._attn_implementation = attn
    model = model.to(device).eval()
    prompt, responses, rewards = b.hh_shaped(k, vocab, seed=0)
    from rrhf_core.training.prefix import PrefixSharedLM

    results = {}
    for name, step, scorer in (
        ("plain", b.reference_step, model),
        ("shared", b.project_step, PrefixSharedLM(model)),
    ):
        model.zero_grad(set_to_none=True)
        losses: list[Any] = []
        step(scorer, prompt, responses, rewards, pad, device, True, record=losses)
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        results[name] = (losses[0], grads)
    (l1, g1), (l2, g2) = results["plain"], results["shared"]
    return {
        "attention": attn,
        "k": k,
        "max_abs_score_diff": float((l1.scores.float() - l2.scores.float()).abs().max()),
        "abs_loss_diff": float((l1.loss.sum().float() - l2.loss.sum().float()).abs()),
        "grad_rel_diff": float((g1 - g2).norm() / g1.norm().clamp_min(1e-12)),
    }


def strategy_step(strategy: str, shape: str, k: int) -> dict[str, Any]:
    """Two optimizer steps of the prefix-shared step under DDP or FSDP on one device (a process group of one)."""
    from rrhf_core.training.bench import strategy_step as step

    return step(strategy, shape, k, bf16=True)


def gpu_tests() -> dict[str, Any]:
    """The tests marked ``gpu`` (tests/test_gpu.py), called directly: pytest is not on the GPU machine."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_gpu

    results: dict[str, Any] = {}
    for name in sorted(n for n in dir(test_gpu) if n.startswith("test_")):
        t0 = time.perf_counter()
        try:
            getattr(test_gpu, name)()
            results[name] = {"passed": True, "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:
            results[name] = {"passed": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    return results


def section(report: dict[str, Any], key: str, fn: Any, *args: Any) -> None:
    t0 = time.perf_counter()
    try:
        report[key] = fn(*args)
    except Exception as e:  # a broken section is recorded; the others still run
        report[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    print(f"{key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default=os.environ.get("OUT", "."), help="folder for gpu_check.json (default $OUT)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="k = 2 only, one step, a tiny Llama shape only (CPU test)"
    )
    args = ap.parse_args(argv)
    ks, steps = ([2], 1) if args.quick else ([2, 4, 6, 8], 3)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    section(report, "environment", environment)
    shape = "tiny" if args.quick else "smollm2-135m"
    section(report, f"bench_{shape.replace('-', '_')}", bench, shape, ks, steps)
    if not args.quick:
        section(report, "bench_llama_1b", bench, "llama-1b", ks, steps)
    attns = ["sdpa"] + (["flash_attention_2"] if report["environment"].get("flash_attn") else [])
    for attn in attns:
        section(report, f"prefix_sharing_{attn}", prefix_sharing, 2 if args.quick else 6, attn, shape)
    for strategy in ("ddp", "fsdp"):
        section(report, f"strategy_{strategy}", strategy_step, strategy, shape, 2 if args.quick else 6)
    section(report, "gpu_tests", gpu_tests)
    report["not_covered"] = [
        "more than one GPU: FSDP/DDP across processes is tested on CPU over gloo only",
        "vLLM sampling: vLLM is not installed on the GPU machine",
    ]
    path = Path(args.out) / "gpu_check.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
