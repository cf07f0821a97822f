"""Typed configuration of the scoring stage: :class:`ScoreSettings` (composed by the pipeline) and
:class:`ScoreConfig` (plus the inputs, the output folder and the reward, as ``rrhf score`` reads it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rrhf_core.config import Folder, one_or_many, reuse
from rrhf_core.executors import Executor, RaySettings
from rrhf_core.scoring import EMBEDDED_REWARD


class ScoreSettings(BaseModel):
    """Every scoring setting but the wiring (samples, prompts, output folder, reward, cache folder)."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(
        1024, ge=16, description="Reward-model input tokens (longer inputs lose their start)."
    )
    bucket: bool = Field(True, description="Sort by length before batching (less padding).")
    cache_path: str | None = Field(
        None,
        description="SQLite score cache (default: <cache_dir>/scores.sqlite).",
        json_schema_extra=reuse("location"),
    )
    executor: Executor = Field(
        "local",
        description="local: score here; ray: chunks of responses as Ray tasks over a Ray cluster (each worker "
        "loads the reward once; scores come back here, into the cache).",
        json_schema_extra=reuse("bookkeeping"),
    )
    ray: RaySettings = Field(
        default_factory=RaySettings,
        description="The Ray cluster (executor ray).",
        json_schema_extra=reuse("bookkeeping"),
    )


class ScoreConfig(ScoreSettings):
    """Scoring every candidate response with a reward."""

    samples: list[str] = Field(
        ..., description="samples.parquet file(s) from the sampling stage.", json_schema_extra=reuse("input")
    )
    prompts: str = Field(
        ...,
        description="prompts.parquet (for the prompt each response answers).",
        json_schema_extra=reuse("input"),
    )
    output_dir: Folder = Field(
        ..., description="Where scores.parquet goes.", json_schema_extra=reuse("location")
    )
    reward: str = Field(
        EMBEDDED_REWARD,
        description="embedded:minilm-helpfulness, an HF reward model id/path, or module:function (that module is "
        "imported and run: trusted code, like a training script).",
    )
    cache_dir: str | None = Field(
        None,
        description="Cache folder (default $RRHF_CACHE_DIR or ~/.cache/rrhf); holds scores.sqlite.",
        json_schema_extra=reuse("location"),
    )

    _samples = field_validator("samples", mode="before")(one_or_many)
