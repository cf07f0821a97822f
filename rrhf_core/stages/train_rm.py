"""train-rm: a reward model per entry of the round's ``reward_models``, on the ingested prompts' preference pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from rrhf_core.pipeline import PipelineConfig, RewardTrained, rm_config
from rrhf_core.reward_model.config import RMTrainConfig
from rrhf_core.stages.base import Stage


def inputs(cfg: RMTrainConfig) -> dict[str, str]:
    from rrhf_core.digest import file_digest, model_fingerprint
    from rrhf_core.scoring.reward import reward_fingerprint

    return {
        **{f"pairs{i}": file_digest(p) for i, p in enumerate(cfg.pairs)},
        "backbone": model_fingerprint(cfg.backbone),
        **{f"compare{i}": reward_fingerprint(s) for i, s in enumerate(cfg.compare_with)},
    }


def configs(cfg: PipelineConfig, results: Mapping[str, Any], start_model: str) -> dict[str, BaseModel]:
    prompts = results["ingest"].prompts
    return {f"train-rm:{name}": rm_config(cfg, name, prompts) for name in cfg.reward_models}


def needs(cfg: PipelineConfig, instance: str) -> tuple[str, ...]:
    return ("ingest",)


STAGE = Stage(
    name="train-rm",
    summary="train a reward model on preference pairs (Bradley-Terry)",
    config=RMTrainConfig,
    section="reward_models: <name>",
    run="rrhf_core.reward_model.trainer:train_reward_model",
    code="rrhf_core.reward_model.trainer",
    result=RewardTrained,
    inputs=inputs,
    configs=configs,
    needs=needs,
    per_reward_model=True,
)
