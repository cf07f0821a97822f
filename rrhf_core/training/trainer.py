"""The RRHF trainer: any HF causal LM, the listwise set, torch DDP (torchrun) or one process.

Batching: an optimizer step consumes ``G = micro_batch_size * grad_accum * world_size`` prompts (with
all their responses), taken in a seeded per-epoch order; each process takes every ``world_size``-th of
them. The loss of a micro-batch is ``sum over its prompts of L_prompt * world_size / G``, so after
DDP's gradient averaging the step minimises the mean over the G prompts, whatever the number of
processes or micro-batches (1 process x 4 micro-batches == 2 processes x 2).

Checkpoints (:mod:`rrhf_core.training.checkpoint`): trainable weights, optimizer, scheduler, each process's RNG
states and the step (which fixes the data position, since the order is a function of seed and epoch). A killed run
restarted with the same ``output_dir`` resumes from the latest complete checkpoint, if the configuration and the
training data's content are the same.

The run is four steps, each a function: :func:`setup` (data, model, optimizer), :func:`resume`,
:func:`train_step` (one optimizer step over all micro-batches, with the NaN guard) and :func:`summarize`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from rrhf_core.data.contracts import (
    LoadReport,
    atomic_folder,
    atomic_write_text,
    load_listwise,
    prepare_output_dir,
)
from rrhf_core.digest import file_digest
from rrhf_core.encoding import Dropped, EncodedExample, Encoder
from rrhf_core.errors import ConfigError, DataError, TrainingDivergedError
from rrhf_core.hardware import fused_adamw, use_bf16
from rrhf_core.metrics import FanOutLogger, JsonlLogger, MetricsLogger, NullLogger
from rrhf_core.models import causal_lm_frame, load_causal_lm, load_tokenizer
from rrhf_core.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, unwrap
from rrhf_core.training.collate import with_empty_negative
from rrhf_core.training.config import TrainConfig
from rrhf_core.training.distributed import DistEnv, all_reduce_sum, barrier, init_distributed, shutdown
from rrhf_core.training.listwise import (
    METRIC_KEYS,
    encode_examples,
    forward_loss,
    make_batch,
    reference_logprobs,
)
from rrhf_core.training.loss import (
    ranking_pairs,
)
from rrhf_core.training.prefix import PrefixSharedLM
from rrhf_core.training.sharding import as_float, full_state_dict, is_sharded, shard


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def epoch_order(
    n: int, seed: int, epoch: int, lengths: Sequence[int] | None = None, group: int = 1, global_batch: int = 1
) -> list[int]:
    """The prompts of one epoch in a seeded order, a function of ``(seed, epoch)`` only (so a resumed run takes the
    same batches).

    With ``lengths`` and ``group > 1``: the shuffled order is cut into windows of ``group`` optimizer steps
    (``group * global_batch`` prompts), each window is sorted by length and cut into steps again, and those steps
    are shuffled, so a micro-batch holds prompts of similar length (less padding) while the steps stay in random
    order. The incomplete tail of the epoch (skipped by :func:`step_indices`) stays last.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None or group <= 1:
        return order
    full = (n // global_batch) * global_batch
    out: list[int] = []
    size = group * global_batch
    for start in range(0, full, size):
        window = sorted(order[start : min(start + size, full)], key=lambda i: lengths[i])
        steps = [window[i : i + global_batch] for i in range(0, len(window), global_batch)]
        out += [i for s in torch.randperm(len(steps), generator=g).tolist() for i in steps[s]]
    return out + order[full:]


def row_lengths(encoded: Sequence[EncodedExample]) -> list[int]:
    """Tokens of each prompt's packed row (prompt and all its responses): what length grouping sorts by."""
    return [len(ex.prompt_ids) + sum(map(len, ex.response_ids)) for ex in encoded]


def step_indices(
    n: int, global_batch: int, seed: int, step: int, lengths: Sequence[int] | None = None, group: int = 1
) -> list[int]:
    """The prompts (indices) of one optimizer step; incomplete tail batches of an epoch are skipped."""
    per_epoch = n // global_batch
    epoch, pos = divmod(step, per_epoch)
    order = epoch_order(n, seed, epoch, lengths, group, global_batch)
    return order[pos * global_batch : (pos + 1) * global_batch]


def _prepare_model(cfg: TrainConfig, env: DistEnv, frame: bool = False) -> Any:
    """The model to train, placed and wrapped for ``env``; ``frame``: its modules alone, on the meta device (adapters
    included), for gathered weights to be assigned into."""
    model = causal_lm_frame(cfg.model, cfg.cache_dir) if frame else load_causal_lm(cfg.model, cfg.cache_dir)
    if getattr(model.config, "use_cache", None) is not None:
        model.config.use_cache = False
    if frame:  # saved like the trained model: the same configuration
        return _with_adapters(model, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled and cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    model = _with_adapters(model, cfg)
    model.to(env.device)
    model.train()
    if cfg.prefix_sharing:
        model = PrefixSharedLM(model)
    if cfg.strategy == "fsdp":  # the module the trainer calls is the root unit
        return shard(model, use_bf16(cfg.dtype, env.device), env.device)
    if env.world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    return model


def _with_adapters(model: Any, cfg: TrainConfig) -> Any:
    """The model with LoRA adapters (peft) where ``cfg.lora`` enables them."""
    if not cfg.lora.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    return get_peft_model(
        model,
        PeftLoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )


_ONE_CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)


def _gather_for_save(model: Any, cfg: TrainConfig, env: DistEnv) -> Any:
    """The model to save, whole, on the main process (``None`` elsewhere). Under FSDP every process takes part in
    gathering the weights, which the main process assigns into the model's modules built without weights (adapters
    included): the gathered tensors become the parameters, so the main process holds one copy of the model, not
    two."""
    if not is_sharded(model):
        return unwrap(model) if env.is_main else None
    weights = full_state_dict(model)
    if isinstance(model, PrefixSharedLM):  # the scorer's own names for the LM's modules are aliases
        weights = {k.removeprefix("lm."): v for k, v in weights.items() if k.startswith("lm.")}
    if not env.is_main:
        return None
    whole = _prepare_model(
        cfg.model_copy(update={"strategy": "ddp", "prefix_sharing": False}), _ONE_CPU, frame=True
    )
    whole.load_state_dict(weights, assign=True)
    whole.tie_weights()  # assigning replaced tied tensors one by one (a missing weight fails the strict load)
    return whole


def _save_model(model: Any, tokenizer: Any, cfg: TrainConfig, output_dir: Path) -> Path:
    if cfg.lora.enabled and cfg.lora.merge_on_save:
        model = model.merge_and_unload()
    target = output_dir / "model"
    with atomic_folder(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def _micro_batches(indices: Sequence[int], env: DistEnv, micro_batch_size: int) -> Iterator[list[int]]:
    mine = list(indices[env.rank :: env.world_size])
    for i in range(0, len(mine), micro_batch_size):
        yield mine[i : i + micro_batch_size]


# --- the run: setup, resume, step, summary ----------------------------------------------------------------------


@dataclass
class Run:
    """Everything a training run holds between steps."""

    cfg: TrainConfig
    env: DistEnv
    output_dir: Path
    encoded: list[EncodedExample]
    dropped: list[Dropped]
    enc_stats: dict[str, int]
    report: LoadReport
    tokenizer: Any
    model: Any
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    bf16: bool
    fingerprint: dict[str, Any]
    reference: dict[str, list[float]] | None = None  # DPO: the frozen base model's response log-probabilities

    @functools.cached_property
    def lengths(self) -> list[int]:
        return row_lengths(self.encoded)


def load_encoded(
    cfg: TrainConfig,
) -> tuple[list[EncodedExample], list[Dropped], dict[str, int], LoadReport, Any]:
    """Read, validate and tokenise the listwise set: ``(encoded, dropped, stats, load report, tokenizer)``."""
    examples, report = load_listwise(cfg.data, on_bad_row=cfg.on_bad_row)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    try:
        encoder = Encoder(tokenizer, cfg.max_length, cfg.max_response_tokens, cfg.prompt_format)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    encoded, dropped, stats = encode_examples(encoder, examples)
    if not encoded:
        raise DataError(
            f"every prompt of {cfg.data} was dropped by the length policy; first: {dropped[0].reason}"
        )
    if cfg.empty_negative and cfg.loss == "rrhf":
        encoded = [with_empty_negative(ex, encoder.eos_id) for ex in encoded]
    return encoded, dropped, stats, report, tokenizer


def plan_steps(n_prompts: int, cfg: TrainConfig, world_size: int) -> tuple[int, int, int]:
    """``(global batch, steps per epoch, total steps)``; a clear error when the data is less than one step."""
    global_batch = cfg.global_batch_size(world_size)
    steps_per_epoch = n_prompts // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{n_prompts} usable prompts is fewer than one optimizer step of {global_batch} "
            f"(micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum} x {world_size} process(es)); "
            "lower micro_batch_size or grad_accum, or add data"
        )
    return global_batch, steps_per_epoch, cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def make_optimizer(model: Any, cfg: TrainConfig, total_steps: int) -> tuple[list[Any], Any, Any]:
    """AdamW over the trainable parameters and the warmup-then-decay schedule."""
    from transformers import get_scheduler

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay,
        fused=fused_adamw(trainable) or None,
    )
    sched_name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.scheduler]
    scheduler = get_scheduler(
        sched_name,
        optimizer,
        num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return trainable, optimizer, scheduler


def _reference(
    cfg: TrainConfig, encoded: list[EncodedExample], tokenizer: Any, env: DistEnv
) -> dict[str, list[float]]:
    """DPO's reference: the base model's log-probabilities, computed once (from the base weights, also on resume)."""
    base = load_causal_lm(cfg.model, cfg.cache_dir).to(env.device)
    pad_id = int(tokenizer.pad_token_id)
    out = reference_logprobs(base, encoded, pad_id, cfg.prefix_sharing, use_bf16(cfg.dtype, env.device))
    del base
    return out


def setup(cfg: TrainConfig, env: DistEnv) -> Run:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    output_dir = prepare_output_dir(cfg.output_dir)  # a read-only folder fails now, naming itself
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    encoded, dropped, enc_stats, report, tokenizer = load_encoded(cfg)
    global_batch, steps_per_epoch, total_steps = plan_steps(len(encoded), cfg, env.world_size)
    model = _prepare_model(cfg, env)
    trainable, optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    fingerprint = cfg.resume_fingerprint() | {"data_sha256": file_digest(cfg.data)}
    reference = _reference(cfg, encoded, tokenizer, env) if cfg.loss == "dpo" else None
    return Run(
        cfg,
        env,
        output_dir,
        encoded,
        dropped,
        enc_stats,
        report,
        tokenizer,
        model,
        trainable,
        optimizer,
        scheduler,
        global_batch,
        steps_per_epoch,
        total_steps,
        use_bf16(cfg.dtype, env.device),
        fingerprint,
        reference,
    )


def resume(run: Run, metrics_log: JsonlLogger) -> int:
    """Restore the latest checkpoint when there is one (and ``resume`` is on); the step to continue from."""
    ckpt = latest_checkpoint(run.output_dir) if run.cfg.resume else None
    start = (
        load_checkpoint(ckpt, run.model, run.optimizer, run.scheduler, run.fingerprint, run.env)
        if ckpt is not None
        else 0
    )
    if run.env.is_main:
        if start:
            metrics_log.truncate_after(start)
        elif metrics_log.path.exists():
            metrics_log.path.unlink()
    return start


def _accumulate(run: Run, indices: list[int]) -> dict[str, float]:
    """Forward and backward over this process's micro-batches of one step; loss sums over all processes."""
    micros = list(_micro_batches(indices, run.env, run.cfg.micro_batch_size))
    sums = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=run.env.device)
    pad_id = int(run.tokenizer.pad_token_id)
    for m, micro in enumerate(micros):
        examples = [run.encoded[i] for i in micro]
        batch = make_batch(examples, pad_id, run.model).to(run.env.device)
        ref = (
            torch.tensor([v for ex in examples for v in run.reference[ex.prompt_id]], device=run.env.device)
            if run.reference is not None
            else None
        )
        last = m == len(micros) - 1
        if is_sharded(run.model):  # FSDP: reduce-scatter gradients after the last micro-batch only
            run.model.set_requires_gradient_sync(last)
        sync = last or not isinstance(run.model, DistributedDataParallel)
        with contextlib.nullcontext() if sync else run.model.no_sync():
            out, scores = forward_loss(run.model, batch, run.cfg, run.bf16, ref)
            (out.loss.sum() * run.env.world_size / run.global_batch).backward()
        real = torch.isfinite(
            batch.rewards
        )  # the empty-answer negatives are not candidates: not in the accuracy
        agree, pairs = ranking_pairs(scores.detach()[real], batch.rewards[real], batch.group[real])
        empty = scores.detach()[~real]
        values = [out.loss.sum().item(), out.rank.sum().item(), out.sft.sum().item(), agree, pairs]
        extra = [batch.num_tokens(), batch.num_groups, empty.sum().item(), empty.numel()]
        sums += torch.tensor([*values, *extra], dtype=torch.float64, device=sums.device)
    all_reduce_sum(sums, run.env)
    return dict(zip(METRIC_KEYS, sums.tolist(), strict=True))


def train_step(run: Run, step: int) -> dict[str, float]:
    """Optimizer step ``step + 1``: accumulate, refuse a non-finite loss before any update, clip, step."""
    t0 = time.perf_counter()
    if run.cfg.fail_at_step is not None and step + 1 == run.cfg.fail_at_step:
        raise RuntimeError(f"injected failure at step {step + 1} (fail_at_step is set)")
    indices = step_indices(
        len(run.encoded), run.global_batch, run.cfg.seed, step, run.lengths, run.cfg.length_grouping
    )
    s = _accumulate(run, indices)
    if not math.isfinite(s["loss"]):
        where = latest_checkpoint(run.output_dir)
        raise TrainingDivergedError(
            f"the loss became {s['loss']} at step {step + 1} (prompts {[run.encoded[i].prompt_id for i in indices][:8]}); "
            "no update was applied. "
            + (f"The last good checkpoint is {where}. " if where else "")
            + "Lower learning_rate, check the rewards and responses of those prompts, or turn bf16 off."
        )
    max_norm = run.cfg.max_grad_norm
    grad_norm = (
        as_float(torch.nn.utils.clip_grad_norm_(run.trainable, max_norm)) if max_norm > 0 else math.nan
    )
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {
        "loss": s["loss"] / s["prompts"],
        "rank_loss": s["rank_loss"] / s["prompts"],
        "sft_loss": s["sft_loss"] / s["prompts"],
        "ranking_accuracy": s["agree_pairs"] / s["pairs"] if s["pairs"] else math.nan,
        # log P(EOS | prompt): how close the policy is to answering with nothing (with empty_negative on)
        "empty_answer_logprob": s["empty_logp"] / s["empty_rows"] if s["empty_rows"] else math.nan,
        "tokens_per_s": s["tokens"] / (time.perf_counter() - t0),
        "learning_rate": run.scheduler.get_last_lr()[0],
        "grad_norm": grad_norm,
        "epoch": (step + 1) / run.steps_per_epoch,
    }


def summarize(
    run: Run, steps: int, start: int, history: list[dict[str, float]], model_dir: Path | None, wall_s: float
) -> dict[str, Any]:
    return {
        "steps": steps,
        "resumed_from": start,
        "world_size": run.env.world_size,
        "global_batch_prompts": run.global_batch,
        "bf16": run.bf16,
        "rows_read": run.report.rows,
        "rows_skipped": [str(b) for b in run.report.skipped],
        "prompts_used": len(run.encoded),
        "prompts_dropped": len(run.dropped),
        "dropped_reasons": [f"{d.prompt_id}: {d.reason}" for d in run.dropped[:20]],
        **run.enc_stats,
        "final": history[-1] if history else None,
        "wall_s": wall_s,
        "model_dir": str(model_dir) if model_dir else None,
    }


def train_in_process(
    cfg: TrainConfig, logger: MetricsLogger | None = None, progress: bool = True
) -> TrainResult:
    """Train a policy with RRHF as configured, in this process (one of torchrun's when ``WORLD_SIZE`` is set);
    returns where the model and metrics went. :func:`rrhf_core.training.launch.train` decides whether to start
    torchrun first."""
    env = init_distributed(group_of_one=cfg.strategy == "fsdp", timeout_s=cfg.rdzv_timeout_s)
    try:
        return _train(cfg, env, logger or NullLogger(), progress)
    finally:
        shutdown(env)


def checkpoint_due(cfg: TrainConfig, step: int, last: float, env: DistEnv) -> bool:
    """Whether to checkpoint after optimizer step ``step``: every ``checkpoint_every`` steps, or once
    ``checkpoint_minutes`` have passed since ``last`` (by the main process's clock, so every process agrees)."""
    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
        return True
    if not cfg.checkpoint_minutes:
        return False
    due = torch.tensor(
        [float(env.is_main and time.monotonic() - last >= 60.0 * cfg.checkpoint_minutes)], device=env.device
    )
    all_reduce_sum(due, env)
    return bool(due.item() > 0)


def _train(cfg: TrainConfig, env: DistEnv, logger: MetricsLogger, progress: bool) -> TrainResult:
    started = time.perf_counter()
    run = setup(cfg, env)
    metrics_log = JsonlLogger(run.output_dir / "metrics.jsonl")
    start = step = resume(run, metrics_log)
    last_checkpoint = time.monotonic()
    log: MetricsLogger = FanOutLogger(metrics_log, logger) if env.is_main else NullLogger()
    history: list[dict[str, float]] = []
    from tqdm.auto import tqdm

    bar = tqdm(
        total=run.total_steps,
        initial=start,
        desc="rrhf train",
        unit="step",
        disable=not (progress and env.is_main),
        dynamic_ncols=True,
    )
    while step < run.total_steps:
        record = train_step(run, step)
        step += 1
        history.append({"step": step, **record})
        if step % cfg.log_every == 0 or step == run.total_steps:
            log.log(record, step)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['ranking_accuracy']:.2f}")
        if checkpoint_due(cfg, step, last_checkpoint, env) and step < run.total_steps:
            last_checkpoint = time.monotonic()
            save_checkpoint(
                run.output_dir,
                step,
                run.model,
                run.optimizer,
                run.scheduler,
                run.fingerprint,
                cfg.keep_checkpoints,
                env,
            )
    bar.close()
    whole = _gather_for_save(run.model, cfg, env) if cfg.save_model else None
    model_dir = _save_model(whole, run.tokenizer, cfg, run.output_dir) if whole is not None else None
    barrier(env)
    summary = summarize(run, step, start, history, model_dir, time.perf_counter() - started)
    if env.is_main:
        atomic_write_text(run.output_dir / "train_summary.json", json.dumps(summary, indent=2))
    return TrainResult(run.output_dir, model_dir, step, start, history, summary)
