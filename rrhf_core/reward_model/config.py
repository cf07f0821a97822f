"""Typed configuration of the reward-model training stage: :class:`RMSettings` (composed by the pipeline, one per
named reward model) and :class:`RMTrainConfig` (plus the preference data and the output folder, as ``rrhf train-rm``
reads it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rrhf_core.config import Folder, LoraConfig, one_or_many, refuse_bf16_switch, reuse
from rrhf_core.models import EMBEDDED_ENCODER
from rrhf_core.types import Precision


class RMSettings(BaseModel):
    """Every reward-model training setting but the wiring (preference data, output folder, cache)."""

    model_config = ConfigDict(extra="forbid")
    backbone: str = Field(
        EMBEDDED_ENCODER,
        description="Any HF model (id or folder) or embedded:minilm-l6 / embedded:smollm2-135m-instruct; it gets a "
        "single-logit sequence-classification head.",
    )
    learning_rate: float = Field(3e-5, gt=0.0)
    epochs: float = Field(1.0, gt=0.0, description="Passes over the training pairs (fractions allowed).")
    batch_size: int = Field(16, ge=1, description="Pairs per micro-batch (2x sequences).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Linear warm-up share, then linear decay.")
    weight_decay: float = Field(0.0, ge=0.0)
    max_length: int = Field(
        128,
        ge=16,
        description="Input tokens (longer inputs keep their end: the response and the latest turns).",
    )
    margin: float = Field(
        0.0, ge=0.0, description="BT loss margin: the chosen must outscore the rejected by this much."
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Dropout of the backbone while training (unset: the backbone's own; 0: off, which also saves "
        "the random draws: 10-13 % of a MiniLM step on a 2-core CPU, ad hoc).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    dtype: Precision = Field("auto", description="bf16 (autocast), fp32, or auto: bf16 where it is faster.")
    bucket: bool = Field(True, description="Length-bucketed batches (pairs of similar length together).")
    seed: int = Field(0)
    eval_share: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Held-out share of prompts for pair files without a split (prompts.parquet keeps its own).",
    )
    data_part: int = Field(0, ge=0, description="Train on this part of the training pairs (see data_parts).")
    data_parts: int = Field(
        1,
        ge=1,
        description="Split the training pairs by prompt into this many disjoint parts (e.g. 2: one for the "
        "training reward, one for the judge).",
    )
    max_train_pairs: int | None = Field(None, ge=1, description="Use at most this many training pairs.")
    empty_negatives: bool = Field(
        True,
        description="Also train that each prompt's chosen answer beats an empty one (preference data never shows "
        "an empty answer, so a reward model may score silence high and a policy learn to say nothing).",
    )
    compare_with: list[str] = Field(
        default_factory=list,
        description="Reward specs whose held-out pair accuracy is reported beside the trained model's.",
    )
    log_every: int = Field(
        10,
        ge=1,
        description="Log training metrics every N optimiser steps.",
        json_schema_extra=reuse("bookkeeping"),
    )

    _compare = field_validator("compare_with", mode="before")(one_or_many)
    _renamed = model_validator(mode="before")(refuse_bf16_switch)

    @model_validator(mode="after")
    def _part_in_range(self) -> RMSettings:
        if self.data_part >= self.data_parts:
            raise ValueError(f"data_part {self.data_part} must be below data_parts {self.data_parts}")
        return self


class RMTrainConfig(RMSettings):
    """Training a reward model on preference pairs with the Bradley-Terry loss."""

    pairs: list[str] = Field(
        ...,
        description="Preference data: prompts.parquet from `rrhf ingest` (HH chosen/rejected), files of "
        "{prompt|messages, chosen, rejected} rows (JSONL/Parquet), or listwise train.parquet (every ordered pair "
        "with distinct rewards).",
    )
    output_dir: Folder = Field(
        ...,
        description="Where model/, rm_report.json and eval_pairs.parquet go.",
        json_schema_extra=reuse("location"),
    )
    cache_dir: str | None = Field(
        None, description="Cache for converted embedded models.", json_schema_extra=reuse("location")
    )

    _pairs = field_validator("pairs", mode="before")(one_or_many)
