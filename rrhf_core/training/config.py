"""Typed configuration of the training stage (pydantic: validated, documented, shown as a form by Prefect).

:class:`TrainSettings` holds every setting of the stage except what the pipeline wires from elsewhere (the model,
the data, the output folder, the cache and the prompt format); :class:`TrainConfig` adds those, and is what
``rrhf train`` reads. The pipeline composes ``TrainSettings`` as its ``train`` section, so every training setting is
reachable from a pipeline run and none is defined twice.

Defaults follow the paper's final recipe where it has one (rrhf_weight = sft_weight = 1, lr 2e-5,
3 % warmup, cosine decay, length_penalty 1) and are sized for a laptop CPU elsewhere.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rrhf_core.config import Folder, LoraConfig, fields_marked, refuse_bf16_switch, reuse
from rrhf_core.models import EMBEDDED_POLICY
from rrhf_core.types import Precision, PromptFormat


class TrainSettings(BaseModel):
    """Every training setting but the wiring (model, data, output folder, cache, prompt format)."""

    model_config = ConfigDict(extra="forbid")

    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="Invalid training rows: fail naming them, or skip and report."
    )

    # the loss (paper Eq. 1-4)
    length_penalty: float = Field(
        1.0, ge=0.0, description="Score = summed log-prob / length ** length_penalty (Eq. 1)."
    )
    rrhf_weight: float = Field(1.0, ge=0.0, description="Weight of the ranking loss (paper: 1).")
    sft_weight: float = Field(
        1.0, ge=0.0, description="Weight of the SFT loss on the best response (paper: 1)."
    )
    sft_reduction: Literal["mean", "sum"] = Field(
        "mean", description="SFT NLL per token ('mean') or summed over tokens ('sum', Eq. 4)."
    )
    tie_policy: Literal["mean", "first"] = Field(
        "mean", description="Tied best rewards: share the SFT term ('mean') or take the first."
    )
    loss: Literal["rrhf", "sft_best", "dpo", "simpo"] = Field(
        "rrhf",
        description="rrhf (ranking + SFT), or a baseline on the same data: sft_best (SFT on the best response "
        "only), dpo (best vs worst, frozen reference model), simpo (best vs worst, length-normalised, margin).",
    )
    beta: float | None = Field(
        None, gt=0.0, description="dpo/simpo temperature (default: 0.1 for dpo, 2.0 for simpo)."
    )
    simpo_gamma: float = Field(1.0, ge=0.0, description="SimPO target margin gamma.")
    empty_negative: bool = Field(
        True,
        description="rrhf only: rank an empty answer (EOS alone) below every candidate of each prompt, so the "
        "ranking term pushes down log P(EOS | prompt) once it nears a real answer's score (guards against the "
        "policy learning to answer with nothing). Inactive while the policy's first-token EOS is unlikely.",
    )

    # tokenisation
    max_length: int = Field(512, ge=8, description="Maximum tokens per (prompt + response) row.")
    max_response_tokens: int = Field(
        256, ge=2, description="Responses are cut to this many tokens (EOS included)."
    )

    # optimisation
    learning_rate: float = Field(2e-5, gt=0.0, description="Peak learning rate (paper: 2e-5).")
    weight_decay: float = Field(0.0, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0 turns it off).")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(
        0.03, ge=0.0, le=1.0, description="Share of steps with linear warmup (paper: 3 %)."
    )
    epochs: float = Field(
        1.0,
        gt=0.0,
        description="Passes over the training set (fractional allowed).",
        json_schema_extra=reuse("output", resume_may_change=True),
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps (overrides epochs).",
        json_schema_extra=reuse("output", resume_may_change=True),
    )
    micro_batch_size: int = Field(
        1, ge=1, description="Prompts per forward pass per process (all their responses)."
    )
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step per process.")
    length_grouping: int = Field(
        4,
        ge=1,
        description="Sort the prompts of this many consecutive optimizer steps by length and deal them out as "
        "steps again in a seeded order, so a micro-batch pads less (1: plain shuffle).",
    )
    seed: int = Field(0, description="Seed for data order, initialisation of adapters and dropout.")

    # processes: how many, and how they share the model
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every process holds the whole model (DistributedDataParallel); fsdp: parameters, gradients "
        "and optimizer state sharded over the processes (PyTorch FSDP2), for models one device cannot hold.",
    )
    nproc: int = Field(
        1,
        ge=1,
        description="Training processes per machine (torchrun --nproc-per-node; one per GPU).",
        json_schema_extra=reuse("output", resume_may_change=True),
    )
    nnodes: int = Field(
        1,
        ge=1,
        description="Machines in the training job (each runs the same command).",
        json_schema_extra=reuse("output", resume_may_change=True),
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port where the machines meet (needed when nnodes > 1; the first machine's address).",
        json_schema_extra=reuse("bookkeeping", same_on_every_machine=False),
    )
    rdzv_timeout_s: int = Field(
        300,
        ge=1,
        description="Seconds to wait for every process to join (and for any collective) before failing with a "
        "clear error instead of hanging.",
        json_schema_extra=reuse("bookkeeping", same_on_every_machine=False),
    )

    # hardware and memory
    dtype: Precision = Field(
        "auto", description="bf16 (autocast), fp32, or auto: bf16 where the hardware has fast bf16."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    prefix_sharing: bool = Field(
        True, description="Encode each prompt once for all its responses (block attention mask; same loss)."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads per process (default: torch's choice).",
        json_schema_extra=reuse("bookkeeping"),
    )

    # bookkeeping
    log_every: int = Field(
        1, ge=1, description="Optimizer steps between metric records.", json_schema_extra=reuse("bookkeeping")
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Optimizer steps between checkpoints (0: none by step count; see checkpoint_minutes).",
        json_schema_extra=reuse("bookkeeping"),
    )
    checkpoint_minutes: float = Field(
        10.0,
        ge=0.0,
        description="Also checkpoint when this many minutes have passed since the last checkpoint (or the start), "
        "so a killed run resumes near where it stopped (0 turns it off). No checkpoint after the last step: the "
        "finished model is saved instead.",
        json_schema_extra=reuse("bookkeeping"),
    )
    keep_checkpoints: int = Field(
        1, ge=1, description="How many recent checkpoints to keep.", json_schema_extra=reuse("bookkeeping")
    )
    resume: bool = Field(
        True,
        description="Resume from the latest checkpoint in output_dir when there is one.",
        json_schema_extra=reuse("bookkeeping"),
    )
    save_model: bool = Field(
        True,
        description="Save the trained model as an HF folder in output_dir/model.",
        json_schema_extra=reuse("output", resume_may_change=True),
    )
    fail_at_step: int | None = Field(
        None,
        ge=1,
        description="Fault injection for testing failure handling: raise at this step.",
        json_schema_extra=reuse("bookkeeping"),
    )

    _renamed = model_validator(mode="before")(refuse_bf16_switch)

    @model_validator(mode="after")
    def _consistent(self) -> TrainSettings:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"nnodes is {self.nnodes}: set rdzv_endpoint to host:port of the first machine (every machine "
                "runs the same command with the same rdzv_endpoint)"
            )
        if self.max_response_tokens >= self.max_length:
            raise ValueError(
                f"max_response_tokens ({self.max_response_tokens}) must be below max_length ({self.max_length})"
            )
        return self

    @property
    def world_size(self) -> int:
        """Processes over all machines."""
        return self.nproc * self.nnodes

    def global_batch_size(self, world_size: int) -> int:
        """Prompts per optimizer step over all processes."""
        return self.micro_batch_size * self.grad_accum * world_size


class TrainConfig(TrainSettings):
    """Everything the RRHF training stage needs: its settings plus the model, the data and the run folder."""

    model: str = Field(
        EMBEDDED_POLICY,
        description="HF hub id, local folder, or 'embedded:smollm2-135m-instruct'.",
        json_schema_extra=reuse("input"),
    )
    data: str = Field(
        ...,
        description="Listwise training set (.parquet or .jsonl): prompt_id, messages, responses, rewards, sources.",
        json_schema_extra=reuse("input"),
    )
    output_dir: Folder = Field(
        ...,
        description="Run folder: checkpoints/, model/, metrics.jsonl, train_summary.json.",
        json_schema_extra=reuse("location"),
    )
    cache_dir: str | None = Field(
        None,
        description="Cache for converted models (default $RRHF_CACHE_DIR or ~/.cache/rrhf).",
        json_schema_extra=reuse("location"),
    )
    prompt_format: PromptFormat = Field(
        "chat", description="Render prompts with the chat template, or as HH text."
    )

    def resume_fingerprint(self) -> dict[str, Any]:
        """Fields that must match for a checkpoint to be resumed (what changes the trajectory)."""
        # the number of processes is checked on its own, with its own message (checkpoint.check_compatible)
        cls = type(self)
        free = fields_marked(cls, "reuse", ("location", "bookkeeping"))
        return self.model_dump(exclude=free | fields_marked(cls, "resume_may_change", (True,)))
