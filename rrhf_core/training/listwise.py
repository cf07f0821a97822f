"""The listwise forward pass shared by training, evaluation and the demo: batches, the RRHF loss of a batch, the
ranking metrics of a model on encoded examples, and tokenisation of a listwise set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rrhf_core.batching import length_batches
from rrhf_core.encoding import Dropped, EncodedExample, Encoder
from rrhf_core.hardware import use_bf16
from rrhf_core.training.collate import Batch, SharedBatch, collate, collate_shared
from rrhf_core.training.config import TrainSettings
from rrhf_core.training.loss import (
    RRHFLoss,
    dpo_loss,
    gather_logprobs,
    pair_mask,
    ranking_pairs,
    rrhf_loss_from_sums,
    segment_logprobs,
    sequence_logprobs,
    simpo_loss,
)
from rrhf_core.training.prefix import PrefixSharedLM

METRIC_KEYS = (
    "loss",
    "rank_loss",
    "sft_loss",
    "agree_pairs",
    "pairs",
    "tokens",
    "prompts",
    "empty_logp",
    "empty_rows",
)


def make_batch(examples: Sequence[EncodedExample], pad_id: int, scorer: Any) -> Batch | SharedBatch:
    """The batch ``scorer`` takes: for a :class:`PrefixSharedLM` (possibly in DDP) prefix-shared blocks, all in one
    row where it runs block attention (no padding) and one row per prompt where it runs the block mask (a mask over
    a row grows with the square of the row's length); padded (prompt + response) rows for a causal LM."""
    shared = getattr(scorer, "module", scorer)  # DDP keeps the wrapped module there
    if isinstance(shared, PrefixSharedLM):
        return collate_shared(examples, pad_id, pack=shared.blocked)
    return collate(examples, pad_id)


def response_logprobs(
    model: Any, batch: Batch | SharedBatch, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: each response's summed log-probability and its length, ``(N,)`` each.

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
        return segment_logprobs(token_logps, batch.resp, batch.rewards.numel())
    return sequence_logprobs(gather_logprobs(logits, batch.targets), batch.response_mask)


def objective(
    sums: torch.Tensor,
    lengths: torch.Tensor,
    batch: Batch | SharedBatch,
    settings: TrainSettings,
    ref_sums: torch.Tensor | None = None,
) -> RRHFLoss:
    """The configured loss per prompt: RRHF (Eq. 1-4), or a baseline (``sft_best``, ``dpo``, ``simpo``).

    For the baselines ``rank`` holds the preference term and ``sft`` the SFT term that RRHF would add (logged
    only). ``ref_sums``: ``(N,)`` the frozen reference model's summed log-probabilities (``dpo`` only).
    """
    out = rrhf_loss_from_sums(
        sums,
        lengths,
        batch.rewards,
        batch.group,
        batch.num_groups,
        length_penalty=settings.length_penalty,
        rrhf_weight=0.0 if settings.loss == "sft_best" else settings.rrhf_weight,
        sft_weight=settings.sft_weight,
        tie_policy=settings.tie_policy,
        sft_reduction=settings.sft_reduction,
    )
    if settings.loss in ("rrhf", "sft_best"):
        return out
    if settings.loss == "simpo":
        pref = simpo_loss(
            out.scores,
            batch.rewards,
            batch.group,
            batch.num_groups,
            settings.beta or 2.0,
            settings.simpo_gamma,
        )
    else:
        if ref_sums is None:
            raise ValueError("loss 'dpo' needs the reference model's log-probabilities (ref_sums)")
        pref = dpo_loss(sums, ref_sums, batch.rewards, batch.group, batch.num_groups, settings.beta or 0.1)
    return RRHFLoss(pref, pref, out.sft, out.scores)


def forward_loss(
    model: Any,
    batch: Batch | SharedBatch,
    settings: TrainSettings,
    bf16: bool,
    ref_sums: torch.Tensor | None = None,
) -> tuple[RRHFLoss, torch.Tensor]:
    """One forward pass over a batch: the per-prompt loss terms and the ``(N,)`` scores."""
    sums, lengths = response_logprobs(model, batch, bf16)
    out = objective(sums, lengths, batch, settings, ref_sums)
    return out, out.scores


@torch.no_grad()
def reference_logprobs(
    model: Any, encoded: Sequence[EncodedExample], pad_id: int, shared: bool, bf16: bool
) -> dict[str, list[float]]:
    """Each example's responses' summed log-probabilities under ``model`` (DPO's frozen reference), by prompt id."""
    was_training = model.training
    model.eval()
    scorer = PrefixSharedLM(model) if shared else model
    device = next(model.parameters()).device
    out = {}
    for ex in encoded:
        sums, _ = response_logprobs(scorer, make_batch([ex], pad_id, scorer).to(device), bf16)
        out[ex.prompt_id] = [float(v) for v in sums.float().tolist()]
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate_listwise(
    model: Any,
    encoded: Sequence[EncodedExample],
    settings: TrainSettings,
    pad_id: int,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Mean loss terms and ranking accuracy of a model on encoded examples (no gradient).

    ``settings`` gives the loss, batching, prefix sharing and bf16 choices (a :class:`TrainSettings`); with
    ``loss: dpo``, which needs a reference model, the loss terms reported are RRHF's.
    """
    if settings.loss == "dpo":
        settings = settings.model_copy(update={"loss": "rrhf"})
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    scorer = PrefixSharedLM(model) if settings.prefix_sharing else model
    bf16 = use_bf16(settings.dtype, device)
    for i in range(0, len(encoded), settings.micro_batch_size):
        batch = make_batch(encoded[i : i + settings.micro_batch_size], pad_id, scorer).to(device)
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


@torch.no_grad()
def ranking_agreement(
    model: Any,
    encoded: Sequence[EncodedExample],
    settings: TrainSettings,
    pad_id: int,
    group_by_length: bool = True,
) -> list[float]:
    """Per example ``(len(encoded),)``: the share of its reward-ordered response pairs that the model's
    length-normalised log-likelihood (Eq. 1) orders the same way (NaN for an example without such a pair): the
    policy used as a reward model (the paper's Table 5), in micro-batches of ``settings.micro_batch_size`` examples
    of similar length (less padding; the result keeps the order of ``encoded``)."""
    settings = settings.model_copy(update={"loss": "rrhf"})
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scorer = PrefixSharedLM(model) if settings.prefix_sharing else model
    bf16 = use_bf16(settings.dtype, device)
    lengths = [len(e.prompt_ids) + sum(map(len, e.response_ids)) for e in encoded]
    out = [float("nan")] * len(encoded)
    for idx in length_batches(lengths, settings.micro_batch_size, group_by_length):
        batch = make_batch([encoded[j] for j in idx], pad_id, scorer).to(device)
        _, scores = forward_loss(scorer, batch, settings, bf16)
        pairs = pair_mask(batch.rewards, batch.group)
        agree = pairs & (scores[:, None] < scores[None, :])
        for g, j in enumerate(idx):
            rows = batch.group == g
            n = int(pairs[rows].sum().item())
            out[j] = int(agree[rows].sum().item()) / n if n else float("nan")
    model.train(was_training)
    return out
