"""Training-step benchmark: the reference implementation's step against this project's, side by side.

    rrhf bench train-step [--model M] [--ks 2 4 6 8] [--steps 3] [--prompts 1] [--fp32] [--compare-mask] [--json]
    python -m rrhf_core.training.bench ...            # the same, with only torch and transformers needed (GPU script)

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
from typing import Any

import torch

from rrhf_core.errors import ConfigError, RRHFError


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


Example = tuple[list[int], list[list[int]], list[float]]  # (prompt ids, k response ids, k rewards)


def hh_shaped(k: int, vocab: int, seed: int) -> Example:
    """One HH-shaped example: a 120-180 token prompt and k responses of 40-80 tokens, random ids and rewards."""
    g = torch.Generator().manual_seed(seed)
    p = int(torch.randint(120, 181, (1,), generator=g))
    prompt = torch.randint(3, vocab, (p,), generator=g).tolist()
    responses = [
        torch.randint(3, vocab, (int(torch.randint(40, 81, (1,), generator=g)),), generator=g).tolist()
        for _ in range(k)
    ]
    rewards = torch.randn(k, generator=g).tolist()
    return prompt, responses, rewards


def hh_batch(prompts: int, k: int, vocab: int, seed: int) -> list[Example]:
    """A micro-batch of ``prompts`` HH-shaped examples (seeds ``seed * 1000 + i``)."""
    return [hh_shaped(k, vocab, seed * 1000 + i) for i in range(prompts)]


def reference_step(
    model: Any,
    examples: list[Example],
    pad: int,
    device: torch.device,
    bf16: bool,
    record: list[Any] | None = None,
) -> int:
    """The reference code's computation: k padded (query + response) rows per prompt, full log_softmax. ``record``
    receives the loss output (scores included), for equivalence checks. Returns the token positions processed."""
    from rrhf_core.training.loss import rrhf_loss

    rows, starts, group, rewards = [], [], [], []
    for g, (prompt, responses, rs) in enumerate(examples):
        rows += [prompt + r for r in responses]
        starts += [len(prompt)] * len(responses)
        group += [g] * len(responses)
        rewards += rs
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, start : len(row)] = True
    ids, mask = ids.to(device), mask.to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=(ids != pad).long(), use_cache=False).logits
    logp = torch.log_softmax(logits.float(), dim=-1)  # (k, T, V): the memory the reference's users ran out of
    token_logps = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = rrhf_loss(
        token_logps,
        mask[:, 1:],
        torch.tensor(rewards, device=device),
        torch.tensor(group, dtype=torch.long, device=device),
        len(examples),
    )
    out.loss.sum().backward()
    if record is not None:
        record.append(out)
    return int(ids.numel())


def project_step(
    scorer: Any,
    examples: list[Example],
    pad: int,
    device: torch.device,
    bf16: bool,
    record: list[Any] | None = None,
) -> int:
    """This project's step: each prompt once for its k responses (block attention, the blocks packed into one row;
    with the block mask over one row per prompt where the scorer is not blocked), scored positions' log-probs
    only."""
    from rrhf_core.encoding import EncodedExample
    from rrhf_core.training.collate import collate_shared
    from rrhf_core.training.loss import rrhf_loss_from_sums, segment_logprobs

    batch = collate_shared(
        [EncodedExample(f"b{g}", p, r, rs) for g, (p, r, rs) in enumerate(examples)],
        pad,
        # one row, no padding, where attention follows the blocks (``module``: under DDP)
        pack=getattr(getattr(scorer, "module", scorer), "blocked", False),
    ).to(device)
    n = sum(len(r) for _, r, _ in examples)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        token_logps = scorer(batch)
    sums, lengths = segment_logprobs(token_logps, batch.resp, n)
    out = rrhf_loss_from_sums(sums, lengths, batch.rewards, batch.group, len(examples))
    out.loss.sum().backward()
    if record is not None:
        record.append(out)
    return int(batch.input_ids.numel())


def strategy_step(strategy: str, shape: str, k: int, bf16: bool, steps: int = 2) -> dict[str, Any]:
    """``steps`` optimizer steps of the prefix-shared RRHF step under DDP or FSDP in this process (a process group
    of one is made when none exists): the losses, the step time and the peak memory. The same seeded model and
    batch for both strategies, so their losses can be compared."""
    from torch.nn.parallel import DistributedDataParallel

    from rrhf_core.training.distributed import init_distributed
    from rrhf_core.training.prefix import PrefixSharedLM
    from rrhf_core.training.sharding import shard

    device = init_distributed(group_of_one=True).device
    model, vocab, pad = random_model(shape, device)
    scorer: Any = PrefixSharedLM(model.train())
    if strategy == "fsdp":
        scorer = shard(scorer, bf16, device)
    else:
        scorer = DistributedDataParallel(
            scorer, device_ids=[device.index or 0] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=1e-5)
    examples = [hh_shaped(k, vocab, seed=0)]
    losses: list[float] = []
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        record: list[Any] = []
        t0 = time.perf_counter()
        project_step(scorer, examples, pad, device, bf16, record=record)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(record[0].loss.detach().sum()))
    return {
        "strategy": strategy,
        "shape": shape,
        "k": k,
        "bf16": bf16,
        "losses": losses,
        "step_s": times[1:] or times,  # the first step includes one-time set-up
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


# Llama shapes for random-initialised benchmarks: SmolLM2-135M's and Llama-3.2-1B's (hidden, intermediate, layers,
# heads, kv heads, vocabulary; tied embeddings)
RANDOM_SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),
    "llama-1b": (2048, 8192, 16, 32, 8, 128256),
    "tiny": (64, 128, 2, 4, 2, 1024),  # for testing the benchmark code itself on a CPU
}


def random_config(shape: str) -> Any:
    """The ``LlamaConfig`` of ``random:<shape>``."""
    from transformers import LlamaConfig

    if shape not in RANDOM_SHAPES:
        raise ConfigError(
            f"unknown random shape {shape!r} (--model random:{shape}); known: "
            + ", ".join(f"random:{s}" for s in RANDOM_SHAPES)
        )
    hidden, inter, layers, heads, kv, vocab = RANDOM_SHAPES[shape]
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        pad_token_id=0,
    )


def random_model(shape: str, device: torch.device | None = None) -> tuple[Any, int, int]:
    """``(model, vocabulary size, pad id)`` for ``random:<shape>``: a Llama of that shape, seeded, fp32, built
    directly on ``device`` (a 1B model's random initialisation takes many seconds on a CPU, a fraction on a GPU)."""
    from transformers import LlamaForCausalLM

    config = random_config(shape)
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        model = LlamaForCausalLM(config)
    return model, config.vocab_size, 0


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
                    "-m",
                    "rrhf_core.training.bench",
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
