"""Typed configuration of the sampling stage, and the one place that turns it into :class:`GenerationParams`.

:class:`SampleSettings` holds every sampling setting except the wiring the pipeline supplies (prompts file, output
folder, policy model, cache, prompt format and prompt length, split); :class:`SampleConfig` adds those and is what
``rrhf sample`` reads. The pipeline composes ``SampleSettings`` as its ``sample`` section.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rrhf_core.config import Folder, reuse
from rrhf_core.digest import model_fingerprint
from rrhf_core.executors import Executor, RaySettings
from rrhf_core.models import EMBEDDED_POLICY
from rrhf_core.sampling import GenerationParams
from rrhf_core.types import Precision, PromptFormat


def stop_strings(stop: list[str] | None, prompt_format: str) -> tuple[str, ...]:
    """The stop strings given, or the default of the prompt format (HH text stops at the next human turn)."""
    if stop is not None:
        return tuple(stop)
    return ("\n\nHuman:",) if prompt_format == "hh" else ()


class SampleSettings(BaseModel):
    """Every sampling setting but the wiring (prompts, output folder, model, cache, prompt rendering, split)."""

    model_config = ConfigDict(extra="forbid")
    limit: int | None = Field(None, ge=1, description="Only the first N prompts (after the split filter).")
    backend: Literal["auto", "vllm", "hf"] = Field(
        "auto", description="auto: vLLM where CUDA is present, else transformers."
    )
    k: int = Field(4, ge=1, description="Samples per prompt.")
    strategy: Literal["sample", "beam", "diverse_beam"] = Field(
        "sample",
        description="Top-p sampling, beam search (k beams), or diverse beam search (the paper's DP; transformers).",
    )
    num_beam_groups: int = Field(4, ge=1, description="Diverse beam search: groups (k must be a multiple).")
    diversity_penalty: float = Field(
        1.0, ge=0.0, description="Diverse beam search: cost of a token another group chose."
    )
    temperature: float = Field(0.8, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, ge=1)
    stop: list[str] | None = Field(
        None, description="Stop strings; default for prompt_format hh: ['\\n\\nHuman:']."
    )
    seed: int = Field(0)
    include_references: bool = Field(True, description="Add the data's reference responses as candidates.")
    include_human: bool = Field(
        True,
        description="Add the answers people judged (sources human:chosen / human:rejected: feedback on served "
        "answers, preference chats) as candidates, even when include_references is off.",
    )
    shard_size: int = Field(32, ge=1, description="Prompts per shard (the unit of resume).")
    batch_size: int = Field(
        8,
        ge=1,
        description="Prompts per generate call (transformers backend); a call never spans two shards, so at most "
        "shard_size.",
    )
    dtype: Precision = Field("auto")
    vllm_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="vLLM memory share (KV cache).")
    vllm_max_model_len: int | None = Field(
        None, ge=64, description="vLLM context length (default: the model's)."
    )
    vllm_tensor_parallel_size: int = Field(
        1, ge=1, description="vLLM: GPUs one policy copy is split over (for policies one GPU cannot hold)."
    )
    executor: Executor = Field(
        "local",
        description="local: shards one after another in this process; ray: shards as Ray tasks over a Ray "
        "cluster (each worker process loads the policy once; results come back to this process, which writes "
        "the shards, so no shared file system is needed).",
        json_schema_extra=reuse("bookkeeping"),
    )
    ray: RaySettings = Field(
        default_factory=RaySettings,
        description="The Ray cluster (executor ray).",
        json_schema_extra=reuse("bookkeeping"),
    )

    @model_validator(mode="after")
    def _strategy_consistent(self) -> SampleSettings:
        if self.strategy == "diverse_beam":
            if self.k % self.num_beam_groups:
                raise ValueError(
                    f"k ({self.k}) must be a multiple of num_beam_groups ({self.num_beam_groups})"
                )
            if self.backend == "vllm":
                raise ValueError(
                    "vLLM has no diverse beam search; use backend 'hf' (or 'auto') for strategy diverse_beam"
                )
        return self


def generation_params(settings: SampleSettings, prompt_format: str) -> GenerationParams:
    """The decoding parameters a backend receives: built here and nowhere else."""
    return GenerationParams(
        k=settings.k,
        strategy=settings.strategy,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        stop=stop_strings(settings.stop, prompt_format),
        seed=settings.seed,
        num_beam_groups=settings.num_beam_groups if settings.strategy == "diverse_beam" else 1,
        diversity_penalty=settings.diversity_penalty if settings.strategy == "diverse_beam" else 0.0,
    )


class SampleConfig(SampleSettings):
    """Sampling k responses per prompt from a policy (plus the data's reference responses)."""

    prompts: str = Field(
        ..., description="prompts.parquet from the ingest stage.", json_schema_extra=reuse("input")
    )
    output_dir: Folder = Field(
        ..., description="Where shards/ and samples.parquet go.", json_schema_extra=reuse("location")
    )
    split: Literal["train", "eval", "all"] = Field("train", description="Which prompts to sample for.")
    model: str = Field(
        EMBEDDED_POLICY,
        description="Policy: HF hub id, local folder or embedded:...",
        json_schema_extra=reuse("input"),
    )
    cache_dir: str | None = Field(
        None, description="Cache for converted models.", json_schema_extra=reuse("location")
    )
    prompt_format: PromptFormat = Field("chat", description="Chat template, or HH text.")
    max_prompt_tokens: int = Field(
        512, ge=8, description="Longer prompts are left-truncated at a turn boundary."
    )

    def generation_params(self) -> GenerationParams:
        return generation_params(self, self.prompt_format)

    def sampler_id(self) -> str:
        """Hash of everything that changes the samples (the `sampler` column, and the shard names).

        The model enters by its content fingerprint, so shards of a model retrained in the same folder are distinct
        from the old ones; the split and limit too, so another selection of prompts never reuses a shard.
        """
        keys = (
            "model",
            "backend",
            "prompt_format",
            "max_prompt_tokens",
            "shard_size",
            "dtype",
            "split",
            "limit",
            "include_references",
        )
        payload = {k: getattr(self, k) for k in keys} | {
            "generation": asdict(self.generation_params()),
            "model_fingerprint": model_fingerprint(self.model),
        }
        if not self.include_human:  # only when off: earlier rounds' shards (always with them) keep their ids
            payload["include_human"] = False
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:12]
