"""The RRHF trainer: any HF causal LM, the listwise set, torch DDP (torchrun) or one process.

Batching: an optimizer step consumes ``G = micro_batch_size * grad_accum * world_size`` prompts (with
all their responses), taken in a seeded per-epoch order; each process takes every ``world_size``-th of
them. The loss of a micro-batch is ``sum over its prompts of L_prompt * world_size / G``, so after
DDP's gradient averaging the step minimises the mean over the G prompts, whatever the number of
processes or micro-batches (1 process x 4 micro-batches == 2 processes x 2).

Checkpoints (``output_dir/checkpoints/step-NNNNNNNN``, written to a temporary folder then renamed):
trainable weights, optimizer, scheduler, each process's RNG states and the step (which fixes the data
position, since the order is a function of seed and epoch). A killed run restarted with the same
``output_dir`` resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from rrhf_core.collate import Batch, Dropped, EncodedExample, Encoder, SharedBatch, collate, collate_shared
from rrhf_core.config import TrainConfig
from rrhf_core.data import load_listwise
from rrhf_core.distributed import DistEnv, all_reduce_sum, barrier, init_distributed, shutdown
from rrhf_core.errors import ConfigError, DataError, TrainingDivergedError
from rrhf_core.loss import (
    gather_logprobs,
    ranking_pairs,
    rrhf_loss_from_sums,
    segment_logprobs,
    sequence_logprobs,
)
from rrhf_core.models import load_causal_lm, load_tokenizer
from rrhf_core.prefix import PrefixSharedLM
from rrhf_core.tracking import FanOutLogger, JsonlLogger, MetricsLogger, NullLogger

CHECKPOINTS = "checkpoints"
METRIC_KEYS = ("loss", "rank_loss", "sft_loss", "agree_pairs", "pairs", "tokens", "prompts")


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def bf16_available(device: torch.device) -> bool:
    """True where bf16 matmul is faster than fp32: CUDA with bf16 support; on a CPU, measured once.

    CPUs differ: with AMX-BF16 a bf16 matmul runs ~4x fp32, with AVX512-BF16 alone it can be slower than fp32
    (measured on this project's 2-core machines: 162 vs 278 GFLOP/s), so a flag check is not enough.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_bf16_faster()


@functools.lru_cache(maxsize=1)
def _cpu_bf16_faster(n: int = 512, reps: int = 3) -> bool:
    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(torch.bfloat16) < best(torch.float32)


def use_bf16(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and bf16_available(device))


def make_batch(examples: Sequence[EncodedExample], pad_id: int, shared: bool) -> Batch | SharedBatch:
    return collate_shared(examples, pad_id) if shared else collate(examples, pad_id)


def forward_loss(
    model: Any, batch: Batch | SharedBatch, cfg: TrainConfig, bf16: bool
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
        length_penalty=cfg.length_penalty,
        rrhf_weight=cfg.rrhf_weight,
        sft_weight=cfg.sft_weight,
        tie_policy=cfg.tie_policy,
        sft_reduction=cfg.sft_reduction,
    )
    return out, out.scores


@torch.no_grad()
def evaluate_listwise(
    model: Any,
    encoded: Sequence[EncodedExample],
    cfg: TrainConfig,
    pad_id: int,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Mean loss terms and ranking accuracy of a model on encoded examples (no gradient)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    scorer = PrefixSharedLM(model) if cfg.prefix_sharing else model
    bf16 = use_bf16(cfg.bf16, device)
    for i in range(0, len(encoded), cfg.micro_batch_size):
        batch = make_batch(encoded[i : i + cfg.micro_batch_size], pad_id, cfg.prefix_sharing).to(device)
        out, scores = forward_loss(scorer, batch, cfg, bf16)
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


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_indices(n: int, global_batch: int, seed: int, step: int) -> list[int]:
    """The prompts (indices) of one optimizer step; incomplete tail batches of an epoch are skipped."""
    per_epoch = n // global_batch
    epoch, pos = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch)[pos * global_batch : (pos + 1) * global_batch]


def _unwrap(model: Any) -> Any:
    """The causal LM inside the DDP and prefix-sharing wrappers."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return model.lm if isinstance(model, PrefixSharedLM) else model


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in _unwrap(model).named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / CHECKPOINTS
    if not root.exists():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").exists())
    return done[-1] if done else None


def save_checkpoint(
    output_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any, cfg: TrainConfig, env: DistEnv
) -> Path:
    root = output_dir / CHECKPOINTS
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(env)
    torch.save(_rng_state(), tmp / f"rng-rank{env.rank}.pt")
    if env.is_main:
        torch.save(_trainable_state(model), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    barrier(env)
    if env.is_main:
        state = {"step": step, "world_size": env.world_size, "fingerprint": cfg.resume_fingerprint()}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").exists())
        for old in done[: -cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def load_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, cfg: TrainConfig, env: DistEnv
) -> int:
    state = json.loads((path / "trainer_state.json").read_text())
    if state["fingerprint"] != cfg.resume_fingerprint():
        ours, theirs = cfg.resume_fingerprint(), state["fingerprint"]
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise ConfigError(
            f"{path} was written with a different configuration ({', '.join(diff)} differ); "
            "use another output_dir, or resume=false to start over in this one"
        )
    if state["world_size"] != env.world_size:
        raise ConfigError(
            f"{path} was written by {state['world_size']} process(es), this run has {env.world_size}; "
            "resume with the same number of processes (the data split depends on it)"
        )
    weights = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    params = dict(_unwrap(model).named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ConfigError(
            f"{path} holds weights this model lacks (e.g. {missing[:3]}); was it another model?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    rng_file = path / f"rng-rank{env.rank}.pt"
    _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return int(state["step"])


def _prepare_model(cfg: TrainConfig, env: DistEnv) -> Any:
    model = load_causal_lm(cfg.model, cfg.cache_dir)
    if getattr(model.config, "use_cache", None) is not None:
        model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(
            model,
            PeftLoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    model.to(env.device)
    model.train()
    if cfg.prefix_sharing:
        model = PrefixSharedLM(model)
    if env.world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    return model


def _save_model(model: Any, tokenizer: Any, cfg: TrainConfig, output_dir: Path) -> Path:
    model = _unwrap(model)
    if cfg.lora.enabled and cfg.lora.merge_on_save:
        model = model.merge_and_unload()
    target = output_dir / "model"
    tmp = output_dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _micro_batches(indices: Sequence[int], env: DistEnv, cfg: TrainConfig) -> Iterator[list[int]]:
    mine = list(indices[env.rank :: env.world_size])
    for i in range(0, len(mine), cfg.micro_batch_size):
        yield mine[i : i + cfg.micro_batch_size]


def train(cfg: TrainConfig, logger: MetricsLogger | None = None, progress: bool = True) -> TrainResult:
    """Train a policy with RRHF as configured; returns where the model and metrics went."""
    env = init_distributed()
    try:
        return _train(cfg, env, logger or NullLogger(), progress)
    finally:
        shutdown(env)


def _train(cfg: TrainConfig, env: DistEnv, logger: MetricsLogger, progress: bool) -> TrainResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    examples, report = load_listwise(cfg.data, on_bad_row=cfg.on_bad_row)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    try:
        encoder = Encoder(tokenizer, cfg.max_length, cfg.max_response_tokens, cfg.prompt_format)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    encoded, dropped, enc_stats = encode_examples(encoder, examples)
    if not encoded:
        raise DataError(
            f"every prompt of {cfg.data} was dropped by the length policy; first: {dropped[0].reason}"
        )
    global_batch = cfg.global_batch_size(env.world_size)
    steps_per_epoch = len(encoded) // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{len(encoded)} usable prompts is fewer than one optimizer step of {global_batch} "
            f"(micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum} x {env.world_size} process(es)); "
            "lower micro_batch_size or grad_accum, or add data"
        )
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    model = _prepare_model(cfg, env)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )
    from transformers import get_scheduler

    sched_name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.scheduler]
    scheduler = get_scheduler(
        sched_name,
        optimizer,
        num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )

    metrics_log = JsonlLogger(output_dir / "metrics.jsonl")
    start_step = 0
    ckpt = latest_checkpoint(output_dir) if cfg.resume else None
    if ckpt is not None:
        start_step = load_checkpoint(ckpt, model, optimizer, scheduler, cfg, env)
    if env.is_main:
        if start_step:
            metrics_log.truncate_after(start_step)
        elif metrics_log.path.exists():
            metrics_log.path.unlink()
    log = FanOutLogger(metrics_log, logger) if env.is_main else NullLogger()

    bf16 = use_bf16(cfg.bf16, env.device)
    pad_id = int(tokenizer.pad_token_id)
    history: list[dict[str, float]] = []
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc="rrhf train",
        unit="step",
        disable=not (progress and env.is_main),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    step = start_step
    while step < total_steps:
        t0 = time.perf_counter()
        if cfg.fail_at_step is not None and step + 1 == cfg.fail_at_step:
            raise RuntimeError(f"injected failure at step {step + 1} (fail_at_step is set)")
        indices = step_indices(len(encoded), global_batch, cfg.seed, step)
        micros = list(_micro_batches(indices, env, cfg))
        sums = torch.zeros(len(METRIC_KEYS), dtype=torch.float64)
        for m, micro in enumerate(micros):
            batch = make_batch([encoded[i] for i in micro], pad_id, cfg.prefix_sharing).to(env.device)
            sync = m == len(micros) - 1 or not isinstance(model, DistributedDataParallel)
            with contextlib.nullcontext() if sync else model.no_sync():
                out, scores = forward_loss(model, batch, cfg, bf16)
                (out.loss.sum() * env.world_size / global_batch).backward()
            agree, pairs = ranking_pairs(scores.detach(), batch.rewards, batch.group)
            sums += torch.tensor(
                [
                    out.loss.sum().item(),
                    out.rank.sum().item(),
                    out.sft.sum().item(),
                    agree,
                    pairs,
                    batch.num_tokens(),
                    batch.num_groups,
                ],
                dtype=torch.float64,
            )
        all_reduce_sum(sums, env)
        s = dict(zip(METRIC_KEYS, sums.tolist(), strict=True))
        if not math.isfinite(s["loss"]):
            where = latest_checkpoint(output_dir)
            raise TrainingDivergedError(
                f"the loss became {s['loss']} at step {step + 1} (prompts {[encoded[i].prompt_id for i in indices][:8]}); "
                "no update was applied. "
                + (f"The last good checkpoint is {where}. " if where else "")
                + "Lower learning_rate, check the rewards and responses of those prompts, or turn bf16 off."
            )
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm).item()
            if cfg.max_grad_norm > 0
            else float("nan")
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - t0
        record = {
            "loss": s["loss"] / s["prompts"],
            "rank_loss": s["rank_loss"] / s["prompts"],
            "sft_loss": s["sft_loss"] / s["prompts"],
            "ranking_accuracy": s["agree_pairs"] / s["pairs"] if s["pairs"] else float("nan"),
            "tokens_per_s": s["tokens"] / elapsed,
            "learning_rate": scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "epoch": step / steps_per_epoch,
        }
        history.append({"step": step, **record})
        if step % cfg.log_every == 0 or step == total_steps:
            log.log(record, step)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['ranking_accuracy']:.2f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
            save_checkpoint(output_dir, step, model, optimizer, scheduler, cfg, env)
    bar.close()

    model_dir = None
    if env.is_main and cfg.save_model:
        model_dir = _save_model(model, tokenizer, cfg, output_dir)
    barrier(env)
    summary = {
        "steps": step,
        "resumed_from": start_step,
        "world_size": env.world_size,
        "global_batch_prompts": global_batch,
        "bf16": bf16,
        "rows_read": report.rows,
        "rows_skipped": [str(b) for b in report.skipped],
        "prompts_used": len(encoded),
        "prompts_dropped": len(dropped),
        "dropped_reasons": [f"{d.prompt_id}: {d.reason}" for d in dropped[:20]],
        **enc_stats,
        "final": history[-1] if history else None,
        "wall_s": time.perf_counter() - started,
        "model_dir": str(model_dir) if model_dir else None,
    }
    if env.is_main:
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(output_dir, model_dir, step, start_step, history, summary)
