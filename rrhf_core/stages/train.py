"""train: the policy trained with the RRHF loss (or a baseline loss) on the listwise training set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from rrhf_core.pipeline import PipelineConfig, Trained, train_config
from rrhf_core.stages.base import Stage
from rrhf_core.training.config import TrainConfig


def inputs(cfg: TrainConfig) -> dict[str, str]:
    from rrhf_core.digest import file_digest, model_fingerprint

    return {"data": file_digest(cfg.data), "model": model_fingerprint(cfg.model)}


def configs(cfg: PipelineConfig, results: Mapping[str, Any], start_model: str) -> dict[str, BaseModel]:
    return {"train": train_config(cfg, results["build"].train_set, start_model)}


def needs(cfg: PipelineConfig, instance: str) -> tuple[str, ...]:
    return ("build",)


STAGE = Stage(
    name="train",
    summary="train a policy with the RRHF loss on a listwise training set",
    config=TrainConfig,
    section="train",
    run="rrhf_core.training.launch:train",
    code="rrhf_core.training.launch",
    result=Trained,
    inputs=inputs,
    configs=configs,
    needs=needs,
)
