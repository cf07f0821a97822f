"""Training a reward model: preference pairs -> an HF single-logit sequence classifier that ``--reward PATH`` loads.

The backbone gets a fresh single-logit head (``AutoModelForSequenceClassification``, ``num_labels=1``); inputs are
rendered and truncated exactly as the scoring stage does (:func:`~rrhf_core.scoring.reward.render_for_reward`, left
truncation at ``max_length``, which is saved as the tokenizer's ``model_max_length`` so scoring uses it too). Batches
hold pairs of similar length (less padding); the loss is Bradley-Terry (:mod:`.loss`). LoRA adapters, when enabled,
are merged before saving: the folder is always a plain HF model.

The held-out numbers are computed *after* saving, by loading the folder through the scoring backend
(:class:`~rrhf_core.scoring.reward.HFClassifierReward`): they are what the scoring stage will see.

Output folder: ``model/`` (weights, tokenizer), ``rm_report.json`` (settings, data counts, held-out metrics),
``eval_pairs.parquet`` (every held-out pair: prompt, both responses, both rewards), ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from rrhf_core import pretrained
from rrhf_core.data.contracts import (
    atomic_folder,
    atomic_write_parquet,
    atomic_write_text,
    prepare_output_dir,
)
from rrhf_core.evaluation.stats import bootstrap_mean_ci
from rrhf_core.hardware import fused_adamw, use_bf16
from rrhf_core.metrics import JsonlLogger, MetricsLogger, NullLogger
from rrhf_core.models import model_load_error, resolve_model
from rrhf_core.reward_model.config import RMTrainConfig
from rrhf_core.reward_model.loss import bradley_terry_loss, calibration_error, pair_outcomes, pearson
from rrhf_core.reward_model.pairs import PairSet, PreferencePair, empty_negatives, load_pairs
from rrhf_core.scoring.reward import (
    HFClassifierReward,
    make_reward,
    prepare_reward_tokenizer,
    render_for_reward,
)


@dataclass
class RMResult:
    output_dir: Path
    model_dir: Path
    report: dict[str, Any]
    seconds: float


def pair_metrics(
    r_chosen: Sequence[float], r_rejected: Sequence[float], pairs: Sequence[PreferencePair], seed: int = 0
) -> dict[str, Any]:
    """Held-out numbers of one reward on ``pairs``: accuracy (ties half) with a 95 % bootstrap CI over pairs, mean
    margin, calibration error, and the length signal (correlation of reward with response words; share of pairs
    where the longer response wins, beside the same share in the human labels)."""
    outcomes = pair_outcomes(r_chosen, r_rejected)
    words = [len(t.split()) for p in pairs for t in (p.chosen, p.rejected)]
    rewards = [v for c, r in zip(r_chosen, r_rejected, strict=True) for v in (c, r)]
    longer = [(len(p.chosen.split()) > len(p.rejected.split())) for p in pairs]
    differ = [i for i, p in enumerate(pairs) if len(p.chosen.split()) != len(p.rejected.split())]
    return {
        "accuracy": statistics.fmean(outcomes),
        "accuracy_ci": list(bootstrap_mean_ci(outcomes, seed=seed)),
        "mean_margin": statistics.fmean(c - r for c, r in zip(r_chosen, r_rejected, strict=True)),
        "calibration_error": calibration_error(r_chosen, r_rejected),
        "length_correlation": pearson(rewards, [float(w) for w in words]),
        "longer_wins": statistics.fmean(float((r_chosen[i] > r_rejected[i]) == longer[i]) for i in differ)
        if differ
        else math.nan,
        "longer_is_chosen": statistics.fmean(float(longer[i]) for i in differ) if differ else math.nan,
        "pairs": len(pairs),
    }


def length_buckets(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    bucket: bool = True,
    sizes: Sequence[int] | None = None,
) -> list[list[int]]:
    """Batches of item indices: sorted by length (shuffled when ``bucket`` is off) and cut into runs of at most
    ``batch_size`` (counting each item as ``sizes[i]``, default 1; an item larger than that is a batch of its own);
    the order of batches is shuffled."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if bucket:
        order.sort(key=lambda i: (lengths[i], i))
    else:
        rng.shuffle(order)
    sizes = sizes or [1] * len(lengths)
    batches: list[list[int]] = []
    room = 0
    for i in order:
        if not batches or sizes[i] > room:
            batches.append([])
            room = batch_size
        batches[-1].append(i)
        room -= sizes[i]
    rng.shuffle(batches)
    return batches


@dataclass
class PairGroup:
    """One prompt's distinct responses, and its preference pairs as ``(chosen, rejected)`` indices into them."""

    messages: list[dict[str, str]]
    responses: list[str]
    pairs: list[tuple[int, int]]


def group_pairs(pairs: Sequence[PreferencePair]) -> list[PairGroup]:
    """The pairs by prompt, each distinct response once (in the order prompts first appear): a batch then encodes
    a chosen answer once for all the pairs it is in (its pair with the human rejected answer and with the empty
    answer; a listwise row's k responses instead of k(k-1) pair members)."""
    groups: dict[str, PairGroup] = {}
    for p in pairs:
        g = groups.setdefault(p.prompt_id, PairGroup(p.messages, [], []))
        ids = []
        for text in (p.chosen, p.rejected):
            if text not in g.responses:
                g.responses.append(text)
            ids.append(g.responses.index(text))
        g.pairs.append((ids[0], ids[1]))
    return list(groups.values())


DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


def set_dropout(model: Any, p: float) -> None:
    """Every dropout of ``model`` set to ``p``: its ``nn.Dropout`` modules and the config values that attention
    reads directly (sdpa's ``dropout_p`` comes from the config in many decoders), so the saved config says so too."""
    for key in DROPOUT_KEYS:
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, p)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        for attr in ("attention_dropout", "dropout_prob"):  # attention that copied the config's value at init
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, p)


def _load_backbone(cfg: RMTrainConfig) -> tuple[Any, Any, int]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model(cfg.backbone, cfg.cache_dir)
    try:
        tok = pretrained.load(AutoTokenizer, path, "reward-model backbone")
        model = pretrained.load(
            AutoModelForSequenceClassification, path, "reward-model backbone", new_head=True, num_labels=1
        )
    except (OSError, ValueError) as e:
        raise model_load_error(path, e, "reward-model backbone") from None
    max_length = prepare_reward_tokenizer(tok, model, cfg.max_length)
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    if cfg.lora.enabled:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
            ),
        )
    return tok, model, max_length


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class _Encoded:
    """The training pairs grouped by prompt and tokenised once: ``encoded[g]`` holds group ``g``'s responses."""

    groups: list[PairGroup]
    encoded: list[list[list[int]]]
    lengths: list[int]  # the longest response of each group, in tokens
    sizes: list[int]  # pairs per group

    @classmethod
    def of(cls, tok: Any, pairs: Sequence[PreferencePair], max_length: int) -> _Encoded:
        groups = group_pairs(pairs)
        encoded = [
            tok(
                [render_for_reward(tok, g.messages, t) for t in g.responses],
                truncation=True,
                max_length=max_length,
            )["input_ids"]
            for g in groups
        ]
        return cls(
            groups, encoded, [max(len(ids) for ids in e) for e in encoded], [len(g.pairs) for g in groups]
        )

    def batches(self, cfg: RMTrainConfig, seed: int) -> list[list[int]]:
        return length_buckets(self.lengths, cfg.batch_size, seed, cfg.bucket, self.sizes)


def _load_data(cfg: RMTrainConfig, log: Callable[[str], None]) -> PairSet:
    data = load_pairs(cfg.pairs, cfg.eval_share, cfg.data_part, cfg.data_parts, cfg.max_train_pairs)
    if cfg.empty_negatives:
        extra = empty_negatives(data.train)
        data.train += extra
        data.counts["empty_negatives"] = len(extra)
    log(f"train-rm: {data.stats()}")
    return data


def _micro_batch_loss(
    model: Any, tok: Any, enc: _Encoded, idx: list[int], device: torch.device, bf16: bool, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One micro-batch of prompt groups: ``(mean Bradley-Terry loss, chosen rewards (p,), rejected rewards (p,))``
    over its ``p`` pairs."""
    seqs: list[list[int]] = []
    chosen, rejected = [], []
    for g in idx:
        chosen += [len(seqs) + c for c, _ in enc.groups[g].pairs]
        rejected += [len(seqs) + r for _, r in enc.groups[g].pairs]
        seqs += enc.encoded[g]
    batch = tok.pad({"input_ids": seqs}, return_tensors="pt").to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        r = model(**batch).logits.float()[:, 0]
    rc, rr = r[chosen], r[rejected]
    return bradley_terry_loss(rc, rr, margin), rc, rr


def _fit(
    cfg: RMTrainConfig,
    model: Any,
    tok: Any,
    enc: _Encoded,
    device: torch.device,
    bf16: bool,
    loggers: tuple[MetricsLogger, JsonlLogger],
    progress: bool,
) -> int:
    """The optimisation loop (AdamW, warm-up then linear decay, gradients clipped at 1); returns the steps run."""
    steps_per_epoch = math.ceil(len(enc.batches(cfg, cfg.seed)) / cfg.grad_accum)
    total = max(1, round(steps_per_epoch * cfg.epochs))
    warmup = max(1, round(total * cfg.warmup_ratio))
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel where it serves (MiniLM on 2 cores: 0.02 s a step instead of 0.08 s, ad hoc)
    opt = torch.optim.AdamW(
        params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused_adamw(params) or None
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, warmup))
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="rrhf train-rm", unit="step", disable=not progress)
    step, epoch, window = 0, 0, []
    while step < total:
        batches = enc.batches(cfg, cfg.seed + epoch)
        for s in range(0, len(batches), cfg.grad_accum):
            if step >= total:
                break
            group = batches[s : s + cfg.grad_accum]
            n_pairs = sum(enc.sizes[g] for b in group for g in b)
            for idx in group:
                loss, rc, rr = _micro_batch_loss(model, tok, enc, idx, device, bf16, cfg.margin)
                (loss * len(rc) / n_pairs).backward()
                window.append((loss.item() * len(rc), (rc > rr).float().sum().item(), len(rc)))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                n = sum(w[2] for w in window)
                metrics: dict[str, float] = {
                    "loss": sum(w[0] for w in window) / n,
                    "accuracy": sum(w[1] for w in window) / n,
                    "lr": float(sched.get_last_lr()[0]),
                    "epoch": epoch + s / max(1, len(batches)),
                }
                for lg in loggers:
                    lg.log(metrics, step)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}")
                window = []
        epoch += 1
    bar.close()
    return total


def _save(cfg: RMTrainConfig, model: Any, tok: Any, out: Path, max_length: int) -> Path:
    model_dir = out / "model"
    if cfg.lora.enabled:
        model = model.merge_and_unload()
    model.eval().to("cpu")
    tok.model_max_length = max_length  # scoring truncates where training did
    with atomic_folder(model_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return model_dir


def train_reward_model(
    cfg: RMTrainConfig,
    logger: MetricsLogger | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RMResult:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out = prepare_output_dir(cfg.output_dir)
    data = _load_data(cfg, log)
    tok, model, max_length = _load_backbone(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    bf16 = use_bf16(cfg.dtype, device)
    enc = _Encoded.of(tok, data.train, max_length)
    jsonl = JsonlLogger(out / "metrics.jsonl")
    jsonl.truncate_after(-1)
    total = _fit(cfg, model, tok, enc, device, bf16, (logger or NullLogger(), jsonl), progress)
    train_seconds = time.perf_counter() - t0
    model_dir = _save(cfg, model, tok, out, max_length)
    del model

    report = _held_out_report(cfg, data, model_dir, log)
    report.update(
        {
            "backbone": cfg.backbone,
            "settings": cfg.model_dump(),
            "data": data.stats(),
            "max_length": max_length,
            "bf16": bf16,
            "steps": total,
            "train_seconds": train_seconds,
            "seconds": time.perf_counter() - t0,
        }
    )
    atomic_write_text(out / "rm_report.json", json.dumps(report, indent=2, default=float))
    return RMResult(out, model_dir, report, time.perf_counter() - t0)


def _held_out_report(
    cfg: RMTrainConfig, data: PairSet, model_dir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """The trained folder, loaded as the scoring stage loads it, on the held-out pairs; the ``compare_with``
    rewards beside it."""
    pairs = data.eval
    if not pairs:
        log("train-rm: no held-out pairs (eval_share 0 or no eval split): no held-out metrics")
        return {"eval": None, "compare": {}}
    msgs = [p.messages for p in pairs]

    def judge(reward: Any) -> tuple[list[float], list[float]]:
        scores = reward.score(msgs + msgs, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        return scores[: len(pairs)], scores[len(pairs) :]

    trained = HFClassifierReward(str(model_dir), batch_size=2 * cfg.batch_size, max_length=cfg.max_length)
    rc, rr = judge(trained)
    atomic_write_parquet(
        pa.Table.from_pylist(
            [
                {
                    "prompt_id": p.prompt_id,
                    "prompt": p.messages[-1]["content"],
                    "chosen": p.chosen,
                    "rejected": p.rejected,
                    "reward_chosen": c,
                    "reward_rejected": r,
                }
                for p, c, r in zip(pairs, rc, rr, strict=True)
            ]
        ),
        Path(cfg.output_dir) / "eval_pairs.parquet",
    )
    report: dict[str, Any] = {"eval": pair_metrics(rc, rr, pairs, cfg.seed), "compare": {}}
    empty = trained.score(msgs, [""] * len(pairs))  # silence must not beat what people chose
    report["eval"]["empty_beats_chosen"] = statistics.fmean(
        float(e > c) for e, c in zip(empty, rc, strict=True)
    )
    log(f"train-rm: held-out accuracy {report['eval']['accuracy']:.3f} on {len(pairs)} pairs")
    for spec in cfg.compare_with:
        c, r = judge(make_reward(spec))
        report["compare"][spec] = pair_metrics(c, r, pairs, cfg.seed)
        log(f"train-rm: {spec} held-out accuracy {report['compare'][spec]['accuracy']:.3f}")
    return report
