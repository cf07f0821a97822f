"""sample: k responses per training prompt from the policy (vLLM or transformers), plus the prompts' references."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from rrhf_core.pipeline import PipelineConfig, Sampled, sample_config
from rrhf_core.sampling.config import SampleConfig
from rrhf_core.stages.base import Stage


def inputs(cfg: SampleConfig) -> dict[str, str]:
    from rrhf_core.digest import file_digest, model_fingerprint

    return {"prompts": file_digest(cfg.prompts), "model": model_fingerprint(cfg.model)}


def configs(cfg: PipelineConfig, results: Mapping[str, Any], start_model: str) -> dict[str, BaseModel]:
    return {"sample": sample_config(cfg, results["ingest"].prompts, start_model)}


def needs(cfg: PipelineConfig, instance: str) -> tuple[str, ...]:
    return ("ingest",)


STAGE = Stage(
    name="sample",
    summary="sample k responses per prompt (vLLM or transformers)",
    config=SampleConfig,
    section="sample",
    run="rrhf_core.sampling.stage:sample",
    code="rrhf_core.sampling.stage",
    result=Sampled,
    inputs=inputs,
    configs=configs,
    needs=needs,
)
