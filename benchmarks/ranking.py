"""The policy ranking held-out human pairs (evaluation's policy-as-reward-model accuracy), micro-batches grouped by
length or not, side by side in one run.

    python benchmarks/ranking.py [--pairs 128] [--batch 8] [--dtype fp32|bf16]

SmolLM2-135M-Instruct (embedded) ranks the chosen and rejected answers of the first ``--pairs`` HH records of
../shared/data/hh-rlhf/harmless-base-test.dev.jsonl.gz, encoded as the CPU HH preset's evaluation encodes them (256 prompt
tokens, 48 response tokens, prefix sharing); each case runs twice, alternating, and prints its seconds and the mean
agreement (the same in both cases: only the grouping into micro-batches differs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

DATA = "../shared/data/hh-rlhf/harmless-base-test.dev.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()

    import math

    from rrhf_core.data.contracts import read_prompts
    from rrhf_core.data.ingest import ingest
    from rrhf_core.encoding import Encoder
    from rrhf_core.evaluation.evaluate import preference_pairs
    from rrhf_core.hardware import describe_machine
    from rrhf_core.models import EMBEDDED_POLICY, load_causal_lm, load_tokenizer
    from rrhf_core.training.config import TrainSettings
    from rrhf_core.training.listwise import encode_examples, ranking_agreement

    work = Path(tempfile.mkdtemp(prefix="rrhf-bench-rank-"))
    ingest([args.data], work, eval_share=0.0)
    rows = read_prompts(work / "prompts.parquet")
    pairs = preference_pairs(rows)[: args.pairs]
    tok, model = load_tokenizer(EMBEDDED_POLICY), load_causal_lm(EMBEDDED_POLICY)
    settings = TrainSettings(max_length=256 + 48 + 1, max_response_tokens=48, micro_batch_size=args.batch,
                             dtype=args.dtype)  # fmt: skip
    encoded, _, _ = encode_examples(Encoder(tok, settings.max_length, 48, "hh"), pairs)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    means = {}
    for _ in range(2):
        for grouped in (True, False):
            t0 = time.perf_counter()
            agree = ranking_agreement(model, encoded, settings, tok.pad_token_id, group_by_length=grouped)
            seconds[grouped].append(time.perf_counter() - t0)
            means[grouped] = statistics.fmean(a for a in agree if not math.isnan(a))
    for grouped in (True, False):
        label = "grouped by length" if grouped else "in data order"
        runs = " / ".join(f"{s:.1f}" for s in seconds[grouped])
        print(
            f"{len(encoded)} pairs, {args.batch} per micro-batch, {label:>17}: {runs} s, agreement {means[grouped]:.3f}"
        )
    ratio = statistics.fmean(seconds[False]) / statistics.fmean(seconds[True])
    print(f"grouped is {ratio:.2f}x faster; {args.dtype}; {describe_machine()}")


if __name__ == "__main__":
    main()
