"""The listwise forward pass shared by training, evaluation and the demo: batches, the RRHF loss of a batch, the
ranking metrics of a model on encoded examples, and tokenisation of a listwise set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rrhf_core.hardware import use_bf16
from rrhf_core.training.collate import (
    Batch,
    Dropped,
    EncodedExample,
    Encoder,
    SharedBatch,
    collate,
    collate_shared,
)
from rrhf_core.training.config import TrainSettings
from rrhf_core.training.loss import (
    gather_logprobs,
    ranking_pairs,
    rrhf_loss_from_sums,
    segment_logprobs,
    sequence_logprobs,
)
from rrhf_core.training.prefix import PrefixSharedLM

METRIC_KEYS = ("loss", "rank_loss", "sft_loss", "agree_pairs", "pairs", "tokens", "prompts")


def make_batch(examples: Sequence[EncodedExample], pad_id: int, shared: bool) -> Batch | SharedBatch:
    return collate_shared(examples, pad_id) if shared else collate(examples, pad_id)


def forward_loss(
    model: Any, batch: Batch | SharedBatch, settings: TrainSettings, bf16: bool
) -> tuple[Any, torch.Tensor]:
    """One forward pass over a batch: the per-prompt RRHF terms and the ``(N,)`` scores.

    ``model`` is a :class:`PrefixSharedLM` (possibly in DDP) for a SharedBatch, a causal LM for a Batch.
    """
    with torch.autocast(device_type=batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        if isinstance(batch, SharedBatch):
            token_logps = model(batch)
        else:
            logits = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).logits
    if isinstance(batch, SharedBatch):
        sums, lengths = segment_logprobs(token_logps, batch.resp, batch.rewards.numel())
    else:
        sums, lengths = sequence_logprobs(gather_logprobs(logits, batch.targets), batch.response_mask)
    out = rrhf_loss_from_sums(
        sums,
        lengths,
        batch.rewards,
        batch.group,
        batch.num_groups,
        length_penalty=settings.length_penalty,
        rrhf_weight=settings.rrhf_weight,
        sft_weight=settings.sft_weight,
        tie_policy=settings.tie_policy,
        sft_reduction=settings.sft_reduction,
    )
    return out, out.scores


@torch.no_grad()
def evaluate_listwise(
    model: Any,
    encoded: Sequence[EncodedExample],
    settings: TrainSettings,
    pad_id: int,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Mean loss terms and ranking accuracy of a model on encoded examples (no gradient).

    ``settings`` gives the loss, batching, prefix sharing and bf16 choices (a :class:`TrainSettings`).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    scorer = PrefixSharedLM(model) if settings.prefix_sharing else model
    bf16 = use_bf16(settings.bf16, device)
    for i in range(0, len(encoded), settings.micro_batch_size):
        batch = make_batch(encoded[i : i + settings.micro_batch_size], pad_id, settings.prefix_sharing).to(
            device
        )
        out, scores = forward_loss(scorer, batch, settings, bf16)
        agree, pairs = ranking_pairs(scores, batch.rewards, batch.group)
        totals["loss"] += out.loss.sum().item()
        totals["rank_loss"] += out.rank.sum().item()
        totals["sft_loss"] += out.sft.sum().item()
        totals["agree_pairs"] += agree
        totals["pairs"] += pairs
        totals["prompts"] += batch.num_groups
    model.train(was_training)
    n = max(totals["prompts"], 1.0)
    return {
        "loss": totals["loss"] / n,
        "rank_loss": totals["rank_loss"] / n,
        "sft_loss": totals["sft_loss"] / n,
        "ranking_accuracy": totals["agree_pairs"] / max(totals["pairs"], 1.0),
        "prompts": totals["prompts"],
    }


def encode_examples(
    encoder: Encoder, examples: Sequence[Any]
) -> tuple[list[EncodedExample], list[Dropped], dict[str, int]]:
    encoded, dropped = [], []
    stats = {"dropped_turns": 0, "truncated_responses": 0, "prompts_left_truncated": 0}
    for ex in examples:
        out = encoder.encode(ex)
        if isinstance(out, Dropped):
            dropped.append(out)
            continue
        encoded.append(out)
        stats["dropped_turns"] += out.dropped_turns
        stats["prompts_left_truncated"] += int(out.dropped_turns > 0)
        stats["truncated_responses"] += out.truncated_responses
    return encoded, dropped, stats
