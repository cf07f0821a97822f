"""Generation with the transformers backend on this machine: precision and batch size, side by side in one run.

    python benchmarks/generation.py [--prompts 64] [--max-new-tokens 48] [--k 3] [--json]
    python benchmarks/generation.py --data ../shared/data/hh-rlhf/harmless-base-test.dev.jsonl.gz --prompt-format hh \
        --max-prompt-tokens 256 --precisions fp32 --k 2 --batches 8 16 32 --compare-grouping

The demo's held-out instruction prompts (embedded, no network), SmolLM2-135M-Instruct, the sampler the pipeline
uses (``HFSampler``). For fp32 weights, bf16 weights (what ``dtype: bf16`` loads now) and fp32 weights under bf16
autocast (what it did before), the seconds for greedy answers (k = 1) and for k (default 3) samples per prompt at several
prompts-per-call batch sizes. Every case generates the same number of new tokens at most; sampled cases are seeded.
What the demo preset's batch sizes (sampling one 32-prompt shard x 3 answers per call, greedy evaluation 64 prompts
per call) and the bf16 loading rest on. ``--data`` takes other prompts (anything ``rrhf ingest`` reads, e.g. HH
dialogues of very different lengths), ``--compare-grouping`` adds each case with the prompts of a call grouped by length
off (the order they come in), beside the default (grouped).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--k", type=int, default=3, help="samples per prompt in the sampled cases (4: best-of-4)")
    ap.add_argument("--data", default="embedded:instructions", help="prompts (anything rrhf ingest reads)")
    ap.add_argument("--prompt-format", default="chat", choices=["chat", "hh"])
    ap.add_argument("--max-prompt-tokens", type=int, default=128)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "bf16-autocast"])
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 64], help="prompts per generate call")
    ap.add_argument("--compare-grouping", action="store_true", help="also time calls not grouped by length")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from rrhf_core.data.contracts import read_prompts
    from rrhf_core.data.ingest import ingest
    from rrhf_core.hardware import describe_machine
    from rrhf_core.models import EMBEDDED_POLICY, resolve_model
    from rrhf_core.sampling import GenerationParams
    from rrhf_core.sampling.hf_backend import HFSampler
    from rrhf_core.sampling.shard import render_prompts

    model = resolve_model(EMBEDDED_POLICY)
    work = Path(tempfile.mkdtemp(prefix="rrhf-bench-gen-"))
    ingest([args.data], work, eval_share=0.0)
    # the demo's held-out prompts; other data: its first prompts whatever their split
    rows = read_prompts(work / "prompts.parquet", "eval" if args.data == "embedded:instructions" else None)
    rows = rows[: args.prompts]
    groupings = (True, False) if args.compare_grouping else (True,)
    cases = [
        (mode, k, bs, grouped)
        for mode, k in (("greedy", 1), ("sample", args.k))
        for bs in args.batches
        for grouped in groupings
    ]
    results: list[dict[str, object]] = []
    for precision in args.precisions:
        sampler = HFSampler(model, dtype="fp32" if precision == "bf16-autocast" else precision)
        if precision == "bf16-autocast":  # the loading before: fp32 weights, bf16 autocast at every step
            sampler.bf16 = True
        texts, _ = render_prompts(rows, sampler.tokenizer, args.prompt_format, args.max_prompt_tokens)
        for mode, k, batch, grouped in cases:
            sampler.batch_size = batch
            sampler.group_by_length = grouped
            params = GenerationParams(
                k=k,
                strategy="sample",
                temperature=0.0 if mode == "greedy" else 1.0,
                top_p=1.0 if mode == "greedy" else 0.95,
                max_new_tokens=args.max_new_tokens,
                stop=(),
                seed=0,
            )
            torch.manual_seed(0)
            t0 = time.perf_counter()
            out = sampler.generate(texts, params)
            seconds = time.perf_counter() - t0
            tokens = sum(c.num_tokens for group in out for c in group[: 1 if mode == "greedy" else k])
            results.append(
                {
                    "precision": precision,
                    "mode": mode,
                    "k": k,
                    "batch_prompts": batch,
                    "grouped_by_length": grouped,
                    "seconds": seconds,
                    "new_tokens": tokens,
                    "tokens_per_s": tokens / seconds,
                }
            )
            if not args.json:
                print(
                    f"{precision:>13} {mode:>6} k={k} batch {batch:>3} prompts"
                    f"{'' if grouped else ' (not grouped)':>14}: {seconds:6.1f} s, "
                    f"{tokens / seconds:6.1f} new tok/s",
                    flush=True,
                )
        sampler.close()
    if args.json:
        print(json.dumps({"machine": describe_machine(), "prompts": len(rows), "results": results}, indent=2))
    else:
        print(f"{len(rows)} prompts, {args.max_new_tokens} new tokens at most; {describe_machine()}")


if __name__ == "__main__":
    main()
