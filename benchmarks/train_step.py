"""Training-step benchmark: the reference implementation's step against this project's, side by side.

    rrhf bench train-step [--model M] [--ks 2 4 6 8] [--steps 3] [--prompts 1] [--fp32] [--compare-mask] [--json]
    python benchmarks/train_step.py ...             # the same, with only torch and transformers needed (GPU script)

``--model random:smollm2-135m`` or ``random:llama-1b`` benchmarks a randomly initialised Llama of that shape (no
weights, no tokenizer, no network: what a GPU machine without model files can run); step time and memory depend on
the shape only.

Both steps score the same HH-shaped batches (``--prompts`` prompts, default one, of 120-180 tokens, each with k
responses of 40-80 tokens: prompts 2-3x longer than responses, as in HH) with the RRHF loss and run backward:

- ``reference``: every (query + response) row padded together, the full-vocabulary log-softmax materialised for every
  token (the reference code's ``train.py``);
- ``project``: the prompt encoded once for all k responses (block attention: the prompt's keys and values reused by
  each response, ``attention.py``), label log-probabilities computed from the scored positions' hidden states in
  chunks; ``--compare-mask`` adds it once more with sdpa under the block mask over whole rows (``project-mask``).

Reported per (method, k): step time (median), tokens/s (logical tokens k(P+R) per second, the same work for both),
peak memory (CUDA: max allocated; CPU: peak RSS growth of a fresh process running only that case), model FLOP rate
(6 x parameters x token positions processed per step / step time) and its share of the machine's measured matmul
peak in the step's precision (MFU). Per k: the speed-up, and the work ratio (positions the reference processes per
position of ours): the speed-up both steps would show at equal MFU, so speed-up / work ratio is our relative MFU.
``--profile`` (with ``--one``) prints one more step's operator table from torch.profiler.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rrhf_core.errors import ConfigError, RRHFError
from rrhf_core.training.reference import (
    Example,
    hh_batch,
    project_step,
    random_config,
    random_model,
    reference_step,
)


def matmul_peak(device: torch.device, dtype: torch.dtype, reps: int = 5) -> float:
    """Measured FLOP/s of a square matmul (best of ``reps``), at a size grown from 256 until one product takes
    >= 20 ms or the size reaches 8192 (CUDA) / 2048 (CPU): large enough for a GPU's peak, small enough for a CPU
    without fast bf16 (where bf16 matmul can run at under 1 GFLOP/s) to finish in seconds."""

    def timed(a: torch.Tensor, b: torch.Tensor) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    n, n_max = 256, 8192 if device.type == "cuda" else 2048
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        timed(a, b)  # warm-up
        if n >= n_max or timed(a, b) >= 0.02:
            break
        n *= 2
    best = min(timed(a, b) for _ in range(reps))
    return 2 * n**3 / best


def load_for_bench(
    model_name: str, cache_dir: str | None, device: torch.device | None = None
) -> tuple[Any, int, int]:
    """``(model, vocabulary size, pad id)`` of a model id/folder or of ``random:<shape>`` (built on ``device``)."""
    if model_name.startswith("random:"):
        return random_model(model_name.removeprefix("random:"), device)
    from rrhf_core.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_name, cache_dir)
    return load_causal_lm(model_name, cache_dir), len(tok), tok.pad_token_id


def run_case(
    model_name: str,
    method: str,
    k: int,
    steps: int,
    bf16: bool,
    cache_dir: str | None,
    prompts: int = 1,
    profile: bool = False,
) -> dict[str, Any]:
    """One (method, k) case in this process: median step time, throughput, peak memory, FLOP rate; ``prompts``
    examples per step. ``profile``: one more step under torch.profiler, its top operators printed to stderr."""
    from rrhf_core.training.prefix import PrefixSharedLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, vocab, pad_id = load_for_bench(model_name, cache_dir, device)
    model = model.to(device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    scorer = PrefixSharedLM(model, blocked=method == "project") if method.startswith("project") else model
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, logical, positions = [], 0, 0
    fn = project_step if method.startswith("project") else reference_step
    for step in range(steps + 1):  # the first step warms up
        examples = hh_batch(prompts, k, vocab, seed=step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        processed = fn(scorer, examples, pad_id, device, bf16)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - t0)
            logical += sum(len(p) + len(r) for p, rs, _ in examples for r in rs)
            positions += processed
    if profile:  # one more step, under the profiler, outside the timings
        _profiled(fn, scorer, hh_batch(prompts, k, vocab, seed=steps + 1), pad_id, device, bf16)
        model.zero_grad(set_to_none=True)
    step_s = statistics.median(times)
    logical_per_step, positions_per_step = logical / len(times), positions / len(times)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    )
    return {
        "method": method,
        "k": k,
        "prompts": prompts,
        "step_s": step_s,
        "tokens_per_s": logical_per_step / step_s,
        "peak_mem_mb": peak / 2**20,
        "positions_per_step": positions_per_step,
        "model_flops_per_s": 6 * params * positions_per_step / step_s,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


def _profiled(
    fn: Any, scorer: Any, examples: list[Example], pad: int, device: torch.device, bf16: bool
) -> int:
    """One step under torch.profiler; the operators with the most self time (device time on CUDA) to stderr."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        processed = fn(scorer, examples, pad, device, bf16)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60), file=sys.stderr)
    if device.type == "cuda":  # where the host's time goes: a launch-bound step shows it here
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15), file=sys.stderr)
    return processed


def run(
    model: str,
    ks: list[int],
    steps: int,
    bf16: bool,
    cache_dir: str | None,
    as_json: bool,
    prompts: int = 1,
    compare_mask: bool = False,
    peak: float | None = None,
) -> list[dict[str, Any]]:
    """Each case in a fresh process (clean peak memory), interleaved by k so both methods see the same machine.
    ``compare_mask``: our step once more with the block mask over whole rows instead of block attention.
    ``peak``: the matmul peak (FLOP/s) already measured in this precision, else measured here."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if peak is None:
        peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32)
    results = []
    for k in ks:
        for method in ("reference", "project") + (("project-mask",) if compare_mask else ()):
            cmd = (
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--one",
                    method,
                    "--k",
                    str(k),
                    "--steps",
                    str(steps),
                    "--model",
                    model,
                    "--prompts",
                    str(prompts),
                ]
                + (["--cache-dir", cache_dir] if cache_dir else [])
                + ([] if bf16 else ["--fp32"])
            )
            out = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            )
            if out.returncode == 2:  # a user error, said in the case's last line
                raise ConfigError(out.stderr.strip().splitlines()[-1].removeprefix("error: "))
            if out.returncode != 0:
                raise RuntimeError(f"benchmark case {method} k={k} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["mfu"] = r["model_flops_per_s"] / peak
            results.append(r)
    table = []
    for k in ks:
        ref = next(r for r in results if r["k"] == k and r["method"] == "reference")
        ours = next(r for r in results if r["k"] == k and r["method"] == "project")
        mask = next((r for r in results if r["k"] == k and r["method"] == "project-mask"), None)
        table.append(
            {
                **(
                    {"project_mask": mask, "block_attention_speedup": mask["step_s"] / ours["step_s"]}
                    if mask
                    else {}
                ),
                "k": k,
                "reference": ref,
                "project": ours,
                "speedup": ref["step_s"] / ours["step_s"],
                # the speed-up at equal FLOP rate (MFU): the positions the reference runs through the model per
                # position of ours (ours also skips the head on prompt positions, so this slightly understates it)
                "work_ratio": ref["positions_per_step"] / ours["positions_per_step"],
                "memory_ratio": ours["peak_mem_mb"] / max(ref["peak_mem_mb"], 1e-9),
            }
        )
    if as_json:
        print(json.dumps({"matmul_peak_flops": peak, "bf16": bf16, "cases": table}, indent=2))
    else:
        print(
            f"device: {results[0]['device']}, {results[0]['threads']} threads, "
            f"{'bf16 autocast' if bf16 else 'fp32'}; measured matmul peak {peak / 1e9:.0f} GFLOP/s"
        )
        head = (
            f"{'k':>2} | {'ref step s':>10} {'ours step s':>11} | {'ref tok/s':>9} {'ours tok/s':>10} | "
            f"{'speedup':>7} {'work ratio':>10} | {'ref MB':>7} {'ours MB':>7} {'mem ratio':>9} | {'ref MFU':>7} {'ours MFU':>8}"
        )
        print(head)
        print("-" * len(head))
        for row in table:
            r, o = row["reference"], row["project"]
            print(
                f"{row['k']:>2} | {r['step_s']:>10.3f} {o['step_s']:>11.3f} | {r['tokens_per_s']:>9.0f} "
                f"{o['tokens_per_s']:>10.0f} | {row['speedup']:>6.2f}x {row['work_ratio']:>9.2f}x | "
                f"{r['peak_mem_mb']:>7.0f} "
                f"{o['peak_mem_mb']:>7.0f} {row['memory_ratio']:>9.2f} | {100 * r['mfu']:>6.1f}% {100 * o['mfu']:>7.1f}%"
            )
        if compare_mask:
            print("ours with the block mask over whole rows instead of block attention (attention.py):")
            for row in table:
                m = row["project_mask"]
                print(
                    f"  k={row['k']}: {m['step_s']:.3f} s, {m['peak_mem_mb']:.0f} MB, MFU {100 * m['mfu']:.1f}%; "
                    f"block attention {row['block_attention_speedup']:.2f}x faster"
                )
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rrhf bench train-step", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        default="embedded:smollm2-135m-instruct",
        help="a model id or folder, or random:smollm2-135m / random:llama-1b (random weights of that shape)",
    )
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 6, 8])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--prompts", type=int, default=1, help="prompts per step, each with k responses (default 1)"
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="with --one: the last step under torch.profiler, its top operators printed (stderr)",
    )
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument(
        "--compare-mask",
        action="store_true",
        help="also run our step with the block mask over whole rows (sdpa) instead of block attention",
    )
    ap.add_argument("--cache-dir")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", choices=["reference", "project", "project-mask"], help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.model.startswith("random:"):
        random_config(args.model.removeprefix("random:"))  # an unknown shape is refused before any case runs
    else:
        from rrhf_core.models import check_model_available

        check_model_available(args.model)
    if args.one:
        r = run_case(
            args.model,
            args.one,
            args.k,
            args.steps,
            not args.fp32,
            args.cache_dir,
            args.prompts,
            args.profile,
        )
        print(json.dumps(r))
        return 0
    run(
        args.model,
        args.ks,
        args.steps,
        not args.fp32,
        args.cache_dir,
        args.json,
        args.prompts,
        args.compare_mask,
    )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RRHFError as e:  # a user error: one line, exit status 2 (what the parent process reads)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
