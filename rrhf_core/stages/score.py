"""score: every sampled response's reward (an HF reward model, a function, an embedded reward or one trained in the
round), through the score cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from rrhf_core.pipeline import TRAINED_PREFIX, PipelineConfig, Scored, score_config
from rrhf_core.scoring.config import ScoreConfig
from rrhf_core.stages.base import Stage


def inputs(cfg: ScoreConfig) -> dict[str, str]:
    from rrhf_core.digest import file_digest
    from rrhf_core.scoring.reward import reward_fingerprint

    return {
        "prompts": file_digest(cfg.prompts),
        **{f"samples{i}": file_digest(p) for i, p in enumerate(cfg.samples)},
        "reward": reward_fingerprint(cfg.reward),
    }


def configs(cfg: PipelineConfig, results: Mapping[str, Any], start_model: str) -> dict[str, BaseModel]:
    reward = cfg.reward
    if reward.startswith(TRAINED_PREFIX):  # a reward model of the round: its folder
        reward = results[f"train-rm:{reward.removeprefix(TRAINED_PREFIX)}"].model_dir
    scored = cfg.model_copy(update={"reward": reward})
    return {"score": score_config(scored, results["ingest"].prompts, results["sample"].samples)}


def needs(cfg: PipelineConfig, instance: str) -> tuple[str, ...]:
    trained = cfg.reward.removeprefix(TRAINED_PREFIX)
    return ("sample", f"train-rm:{trained}") if cfg.reward.startswith(TRAINED_PREFIX) else ("sample",)


STAGE = Stage(
    name="score",
    summary="score every response with a reward model or function",
    config=ScoreConfig,
    section="score",
    run="rrhf_core.scoring.stage:score",
    code="rrhf_core.scoring.stage",
    result=Scored,
    inputs=inputs,
    configs=configs,
    needs=needs,
)
