"""The prepared GPU check: what a GPU machine with only torch and transformers (no model files, no network, no
Prefect, MLflow or vLLM) can tell about the training step. One JSON to ``$OUT/gpu_check.json`` (or ``--out``).

    PYTHONPATH=. python3 benchmarks/gpu_check.py            # benchmarks/gpu_check.sh wraps it for the device tool

Sections (each records its own error instead of stopping the rest; the JSON is rewritten after every section and
every benchmark case, so a check cut short by its time limit still returns what it measured; ``finished`` is null
then). The correctness sections run first, the benchmarks last; benchmark cases not started within ``--budget-s``
are listed under ``not_run``:
- ``environment``: GPU name, torch/transformers versions, attention backends present;
- ``bench``: ``rrhf bench train-step`` (reference vs prefix-shared step: time, peak memory, MFU against the measured
  bf16 matmul peak) on randomly initialised Llamas of the SmolLM2-135M and ~1B shapes, k = 2, 4, 6, 8, one prompt per
  step; then ``bench_*_p8``, eight prompts per step (k = 2, 6, 8), where the GPU rather than the host should set the
  pace;
- ``profile_smollm2_135m``: one k = 6 step of each method under torch.profiler, the operator tables (device and host
  time), to tell a launch-bound step from a compute-bound one;
- ``prefix_sharing``: the packed, block-masked step against the plain one on the same batch in bf16, per attention
  implementation (sdpa; flash_attention_2 where installed): largest difference of the length-normalised scores and of
  the loss, and the gradients' relative difference;
- ``strategy_ddp`` / ``strategy_fsdp``: two optimizer steps of the prefix-shared step under DDP and under FSDP2
  on one GPU (a process group of one): losses, step time, peak memory;
- ``gpu_tests``: the tests marked ``gpu`` (``tests/test_gpu.py``), each called directly, pass or its error;
- ``not_covered``: what this script does not check yet, said rather than skipped silently.

``--render FILE`` prints a saved report as Markdown (the GPU figures of docs/performance.md come from
``benchmarks/results/gpu_check-*.json`` this way).

On a CPU-only machine it runs too (``--quick``: a tiny Llama shape, k = 2, one step), which is how it is tested here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
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


def bench(
    shape: str,
    ks: list[int],
    steps: int,
    deadline: float,
    save: Any,
    prompts: int = 1,
    compare_mask: bool = False,
) -> dict[str, Any]:
    """The benchmark one k at a time (``prompts`` prompts per step), the report saved after each (a run cut short
    keeps what it measured); the k values left when ``deadline`` (a ``time.monotonic()`` value) is near are listed
    as not run. ``compare_mask``: our step also with the block mask over one row per prompt (before block
    attention and packing)."""
    from train_step import matmul_peak, run

    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = matmul_peak(device, torch.bfloat16)  # once per section, not once per k
    out: dict[str, Any] = {
        "prompts_per_step": prompts,
        "cases": [],
        "seconds": 0.0,
        "matmul_peak_flops": peak,
    }
    for i, k in enumerate(ks):
        if time.monotonic() > deadline:
            out["not_run"] = {"k": ks[i:], "reason": "out of time (the check's deadline)"}
            break
        out["cases"] += run(
            f"random:{shape}",
            [k],
            steps,
            bf16=True,
            cache_dir=None,
            as_json=True,
            prompts=prompts,
            compare_mask=compare_mask,
            peak=peak,
        )
        out["seconds"] = time.perf_counter() - t0
        save(out)
    return out


def profile(shape: str, k: int, deadline: float) -> dict[str, Any]:
    """One step of each method under torch.profiler (one prompt, bf16): the operator tables, to tell a launch-bound
    step (host time >> device time) from a compute-bound one."""
    out: dict[str, Any] = {"shape": shape, "k": k}
    for method in ("reference", "project"):
        if time.monotonic() > deadline:
            out[method] = "not run: out of time (the check's deadline)"
            continue
        cmd = [sys.executable, str(Path(__file__).with_name("train_step.py")), "--one", method, "--k", str(k)]
        cmd += ["--steps", "2", "--model", f"random:{shape}", "--profile"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        out[method] = {"returncode": done.returncode, "table": done.stderr[-12000:]}
    return out


def prefix_sharing(k: int, attn: str, shape: str) -> dict[str, Any]:
    """The packed, block-masked step against the reference one on one batch in bf16 (:mod:`rrhf_core.training.reference`)."""
    from rrhf_core.training.reference import prefix_sharing as check

    return check(k, attn, shape)


def strategy_step(strategy: str, shape: str, k: int) -> dict[str, Any]:
    """Two optimizer steps of the prefix-shared step under DDP or FSDP on one device (a process group of one)."""
    from rrhf_core.training.reference import strategy_step as step

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


def section(report: dict[str, Any], key: str, fn: Any, *args: Any, path: Path | None = None) -> None:
    """Run one section into ``report[key]`` (its error recorded instead of stopping the rest) and, with ``path``,
    write the report after it, so a check killed by its time limit still leaves every finished section."""
    t0 = time.perf_counter()
    try:
        report[key] = fn(*args)
    except Exception as e:  # a broken section is recorded; the others still run
        report[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    print(f"{key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if path is not None:
        write(report, path)


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)


def work_ratio(case: dict[str, Any]) -> float:
    """Positions the reference processes per position of ours (reports before the field: from the FLOP rates)."""
    if "work_ratio" in case:
        return float(case["work_ratio"])
    r, o = case["reference"], case["project"]
    return (r["model_flops_per_s"] * r["step_s"]) / (o["model_flops_per_s"] * o["step_s"])


def render(report: dict[str, Any]) -> str:
    """The report as Markdown: the machine, the correctness sections, one table per benchmark section."""
    env = report.get("environment", {})
    lines = [
        f"{env.get('device')} ({env.get('memory_gb')} GiB), torch {env.get('torch')}, transformers "
        f"{env.get('transformers')}, CUDA {env.get('cuda')}; check started {report.get('started')}, "
        f"finished {report.get('finished') or 'no (cut short)'}",
        "",
    ]
    for key, v in report.items():
        if key.startswith("prefix_sharing_") and "error" not in v:
            lines.append(
                f"- prefix sharing = plain step ({v['attention']}, bf16, k = {v['k']}): largest score difference "
                f"{v['max_abs_score_diff']:.1e}, loss difference {v['abs_loss_diff']:.1e}, gradients' relative "
                f"difference {v['grad_rel_diff']:.1e}"
            )
        elif key.startswith("strategy_") and "error" not in v:
            lines.append(
                f"- {v['strategy'].upper()} on one device ({v['shape']}, k = {v['k']}): losses "
                f"{', '.join(f'{x:.4f}' for x in v['losses'])}; step {v['step_s'][-1]:.3f} s; peak "
                + (f"{v['peak_memory_gb']:.2f} GiB" if v["peak_memory_gb"] is not None else "-")
            )
        elif key == "gpu_tests" and "skipped" not in v:
            passed = sum(1 for t in v.values() if t.get("passed"))
            lines.append(f"- tests marked gpu: {passed} of {len(v)} passed")
        elif isinstance(v, dict) and "error" in v:
            lines.append(f"- {key}: error {v['error'][:200]}")
    for key, v in report.items():
        if not key.startswith("bench_") or "cases" not in v:
            continue
        lines += [
            "",
            f"`{key}` ({v.get('prompts_per_step', 1)} prompt(s) per step, bf16 autocast):",
            "",
            "| k | reference step s | ours step s | speed-up | work ratio | reference peak MiB | ours peak MiB | memory ratio "
            "| reference MFU | ours MFU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in v["cases"]:
            r, o = c["reference"], c["project"]
            lines.append(
                f"| {c['k']} | {r['step_s']:.3f} | {o['step_s']:.3f} | {c['speedup']:.2f}x | "
                + f"{work_ratio(c):.2f}x"
                + f" | {r['peak_mem_mb']:.0f} "
                f"| {o['peak_mem_mb']:.0f} | {c['memory_ratio']:.2f} | {100 * r['mfu']:.1f} % | {100 * o['mfu']:.1f} % |"
            )
        masked = [c for c in v["cases"] if "project_mask" in c]
        if masked:
            lines.append(
                "\nours with the block mask over one row per prompt instead (sdpa; before block attention and packing):"
            )
            lines.append(
                "; ".join(
                    f"k = {c['k']}: {c['project_mask']['step_s']:.3f} s, {c['project_mask']['peak_mem_mb']:.0f} MiB "
                    f"(block attention {c['block_attention_speedup']:.2f}x faster)"
                    for c in masked
                )
            )
        if "not_run" in v:
            lines.append(f"\nnot run: k = {v['not_run']['k']} ({v['not_run']['reason']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default=os.environ.get("OUT", "."), help="folder for gpu_check.json (default $OUT)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="k = 2 only, one step, a tiny Llama shape only (CPU test)"
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="benchmark cases not started after this many seconds are listed as not run (default 420)",
    )
    ap.add_argument("--render", metavar="JSON", help="print a saved report as Markdown tables and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    deadline = time.monotonic() + args.budget_s
    ks, steps = ([2], 1) if args.quick else ([2, 4, 6, 8], 3)
    path = Path(args.out) / "gpu_check.json"
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finished": None,
        "not_covered": [
            "more than one GPU: FSDP/DDP across processes is tested on CPU over gloo only",
            "vLLM sampling: vLLM is not installed on the GPU machine",
        ],
    }
    section(report, "environment", environment, path=path)
    shape = "tiny" if args.quick else "smollm2-135m"
    # the correctness sections first (short), the benchmarks last (they stop at the deadline)
    attns = ["sdpa"] + (["flash_attention_2"] if report["environment"].get("flash_attn") else [])
    for attn in attns:
        section(
            report, f"prefix_sharing_{attn}", prefix_sharing, 2 if args.quick else 6, attn, shape, path=path
        )
    for strategy in ("ddp", "fsdp"):
        section(
            report, f"strategy_{strategy}", strategy_step, strategy, shape, 2 if args.quick else 6, path=path
        )
    section(report, "gpu_tests", gpu_tests, path=path)
    # one prompt per step (as the CPU benchmark), then eight (a GPU micro-batch): at one prompt a GPU step of these
    # sizes is mostly kernel launches, which the profile section shows
    runs = [(shape, 1, ks)] if args.quick else [(shape, 1, ks), ("llama-1b", 1, ks)]
    if not args.quick:
        runs += [("profile", 0, []), (shape, 8, [2, 6, 8]), ("llama-1b", 8, [2, 6, 8])]
    for name, prompts, run_ks in runs:
        # block attention against the block mask: at eight prompts per step (packing matters there), and in the
        # quick CPU run so its test covers the comparison
        compare = prompts > 1 or args.quick
        if name == "profile":
            section(report, "profile_smollm2_135m", profile, shape, 6, deadline, path=path)
            continue
        key = f"bench_{name.replace('-', '_')}" + (f"_p{prompts}" if prompts > 1 else "")

        def save(partial: dict[str, Any], key: str = key) -> None:
            report[key] = partial
            write(report, path)

        section(report, key, bench, name, run_ks, steps, deadline, save, prompts, compare, path=path)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write(report, path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
