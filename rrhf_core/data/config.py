"""Typed configuration of the data stages (ingest, build): the settings the pipeline composes, and the full
configurations the ``rrhf ingest`` / ``rrhf build`` commands read (settings plus inputs and output folder)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rrhf_core.config import Folder, one_or_many, reuse


class IngestSettings(BaseModel):
    """Every ingest setting but the wiring (inputs, output folder)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["auto", "prompt", "messages", "hh", "rrhf"] = Field(
        "auto", description="Record format; auto picks by keys."
    )
    prompt_field: str = Field("prompt", description="Field holding a plain prompt (format 'prompt').")
    eval_share: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of prompts in the eval split (by id hash)."
    )
    max_prompt_chars: int = Field(16000, ge=1, description="Longer prompts are rejected with that reason.")
    max_input_mb: int = Field(
        1024,
        ge=1,
        description="Refuse an input that expands past this many MB in memory (decompressed text, Parquet rows).",
    )
    max_expansion: int = Field(
        100,
        ge=1,
        description="Refuse an input that expands past this multiple of its size on disk (a decompression bomb); "
        "judged once it passes 64 MB.",
    )


class IngestConfig(IngestSettings):
    """Prompt ingestion: files or HF datasets -> prompts.parquet (+ rejects.jsonl, ingest_report.json)."""

    inputs: list[str] = Field(
        ...,
        description="Files (.jsonl/.json/.parquet/.csv, optionally .gz), hf:NAME[:SPLIT], embedded:demo-prompts, embedded:instructions or embedded:writing.",
        json_schema_extra=reuse("input"),
    )
    output_dir: Folder = Field(
        ...,
        description="Where prompts.parquet, rejects.jsonl and ingest_report.json go.",
        json_schema_extra=reuse("location"),
    )

    _inputs = field_validator("inputs", mode="before")(one_or_many)


class BuildSettings(BaseModel):
    """Every build setting but the wiring (prompts, samples, scores, output folder)."""

    model_config = ConfigDict(extra="forbid")
    max_k: int = Field(
        8, ge=2, description="At most this many responses per prompt (best kept, the rest spread by reward)."
    )
    min_reward_gap: float = Field(
        0.0, ge=0.0, description="Drop prompts whose best-worst reward gap is not above this."
    )


class BuildConfig(BuildSettings):
    """Joining prompts, samples and scores into the listwise training set."""

    prompts: str = Field(..., description="prompts.parquet", json_schema_extra=reuse("input"))
    samples: list[str] = Field(..., description="samples.parquet file(s)", json_schema_extra=reuse("input"))
    scores: list[str] = Field(..., description="scores.parquet file(s)", json_schema_extra=reuse("input"))
    output_dir: Folder = Field(
        ..., description="Where train.parquet and its statistics go.", json_schema_extra=reuse("location")
    )

    _lists = field_validator("samples", "scores", mode="before")(one_or_many)
