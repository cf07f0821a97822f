"""How much of a training run's micro-batches is padding, with and without length grouping (no model, no training).

    python benchmarks/padding.py TRAIN_PARQUET [--micro-batch-size 4] [--steps 60] [--groups 1 2 4 8]

Reads a built listwise set (``stages/build-*/train.parquet`` of a round), encodes it exactly as the trainer does
(tokenizer, length policy, the empty-answer negative) and walks the trainer's own step order
(``rrhf_core.training.trainer.step_indices``) for ``--steps`` steps, one micro-batch per step, each prompt's
prefix-shared row as long as ``row_lengths`` says. Prints, per ``length_grouping``, the padded share of the rows' tokens (padded = micro-batch size x longest row).
Matmul work grows with padded tokens, so this is the share of a step's body computation that grouping removes.
"""

from __future__ import annotations

import argparse
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-response-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from rrhf_core.training.config import TrainConfig
    from rrhf_core.training.trainer import load_encoded, row_lengths, step_indices

    cfg = TrainConfig(
        data=args.data,
        output_dir=tempfile.mkdtemp(prefix="rrhf-padding-"),
        micro_batch_size=args.micro_batch_size,
        grad_accum=1,
        max_length=args.max_length,
        max_response_tokens=args.max_response_tokens,
    )
    encoded, *_ = load_encoded(cfg)
    lengths = row_lengths(encoded)
    batch = cfg.global_batch_size(1)
    print(
        f"{len(encoded)} prompts, rows of {min(lengths)}-{max(lengths)} tokens, {args.steps} steps of {batch}"
    )
    for group in args.groups:
        real = padded = 0
        for step in range(args.steps):
            rows = [lengths[i] for i in step_indices(len(encoded), batch, args.seed, step, lengths, group)]
            real += sum(rows)
            padded += len(rows) * max(rows)
        print(f"length_grouping {group}: padding {100 * (1 - real / padded):5.1f} % of {padded} row tokens")


if __name__ == "__main__":
    main()
