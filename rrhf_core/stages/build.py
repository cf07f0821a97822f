"""build: prompts, samples and scores joined into the listwise training set (train.parquet)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from rrhf_core.data.config import BuildConfig
from rrhf_core.pipeline import Built, PipelineConfig, build_config
from rrhf_core.stages.base import Stage


def inputs(cfg: BuildConfig) -> dict[str, str]:
    from rrhf_core.digest import file_digest

    return {
        "prompts": file_digest(cfg.prompts),
        **{f"samples{i}": file_digest(p) for i, p in enumerate(cfg.samples)},
        **{f"scores{i}": file_digest(p) for i, p in enumerate(cfg.scores)},
    }


def configs(cfg: PipelineConfig, results: Mapping[str, Any], start_model: str) -> dict[str, BaseModel]:
    prompts, samples = results["ingest"].prompts, results["sample"].samples
    return {"build": build_config(cfg, prompts, samples, results["score"].scores)}


def needs(cfg: PipelineConfig, instance: str) -> tuple[str, ...]:
    return ("score",)


STAGE = Stage(
    name="build",
    summary="join prompts, samples and scores into the listwise training set",
    config=BuildConfig,
    section="build",
    run="rrhf_core.data.build:build",
    code="rrhf_core.data.build",
    result=Built,
    inputs=inputs,
    configs=configs,
    needs=needs,
)
