"""The pipeline's configuration, composed from the stages' own settings, and the stage configurations it wires.

:class:`PipelineConfig` holds one section per stage (each the stage's own ``*Settings`` model, so every stage
setting is reachable and none is defined twice), the settings several stages share (policy, reward, prompt
rendering, cache) and a typed promotion gate; pydantic validates all of it before any stage runs. The
``*_config`` functions below are the only place where a stage configuration is made from the pipeline's: they
add the wiring (which file feeds which stage, which model is trained and which judged).

The stage results (:class:`Ingested` ... :class:`Trained`) are what one stage hands the next: paths plus what the
next stage needs (the best-of-n ceiling, say). They are JSON-serialisable, so a reused stage returns its stored
result.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rrhf_core.config import load_yaml, one_or_many
from rrhf_core.data.config import BuildConfig, BuildSettings, IngestConfig, IngestSettings
from rrhf_core.evaluation.config import EvalConfig, EvalSettings
from rrhf_core.evaluation.promotion import GateConfig
from rrhf_core.models import EMBEDDED_POLICY
from rrhf_core.sampling.config import SampleConfig, SampleSettings
from rrhf_core.scoring import EMBEDDED_REWARD
from rrhf_core.scoring.config import ScoreConfig, ScoreSettings
from rrhf_core.training.config import TrainConfig, TrainSettings
from rrhf_core.types import PromptFormat

# the output folder of a reused stage is chosen from its key; until then its configuration carries this
STAGE_FOLDER = "<stage folder>"


class PipelineConfig(BaseModel):
    """One RRHF round: ingest -> sample -> score -> build -> train -> evaluate -> register/promote."""

    model_config = ConfigDict(extra="forbid")
    preset: str | None = Field(
        None,
        description="A YAML preset (e.g. configs/demo.yaml) whose settings apply under the ones given here.",
    )
    workdir: str = Field(
        "runs/pipeline", description="Stage outputs, the MLflow store and the run summaries."
    )
    prompts: list[str] = Field(
        ["embedded:demo-prompts"],
        description="Prompt inputs (files, hf:NAME[:SPLIT], embedded:demo-prompts).",
    )
    policy: str = Field(
        EMBEDDED_POLICY, description="Base policy (used when no champion exists or from_champion is off)."
    )
    from_champion: bool = Field(
        False, description="Sample from and train the current champion (iterative RRHF, IP-n)."
    )
    reward: str = Field(EMBEDDED_REWARD, description="Reward spec for scoring and evaluation.")
    prompt_format: PromptFormat = Field(
        "chat", description="Render prompts with the chat template, or as HH text (every stage)."
    )
    max_prompt_tokens: int = Field(
        512, ge=8, description="Longer prompts are left-truncated at a turn boundary (sampling, evaluation)."
    )
    cache_dir: str | None = Field(None, description="Cache for converted models and scores.")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    sample: SampleSettings = Field(default_factory=SampleSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    build: BuildSettings = Field(default_factory=BuildSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluate: EvalSettings = Field(default_factory=EvalSettings)
    gate: GateConfig = Field(default_factory=GateConfig, description="When a trained model becomes champion.")
    registered_model: str = Field("rrhf-policy", description="MLflow registered model name.")
    experiment: str = Field("rrhf", description="MLflow experiment name.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite in workdir).")

    _prompts = field_validator("prompts", mode="before")(one_or_many)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("preset"):
            return data
        base = load_yaml(data["preset"])
        if base.get("preset"):
            raise ValueError(f"preset {data['preset']} names another preset; presets do not chain")
        return deep_merge(base, data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, section by section."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- what one stage hands the next -----------------------------------------------------------------------------


class StageResult(BaseModel):
    folder: str = Field(description="The stage's output folder.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Numbers worth tracking.")
    reused: bool = Field(False, description="True when a finished folder with the same key was reused.")


class Ingested(StageResult):
    prompts: str


class Sampled(StageResult):
    samples: str


class Scored(StageResult):
    scores: str
    reward_id: str


class Built(StageResult):
    train_set: str
    best_of_n_mean: float = Field(description="Mean over prompts of the best candidate's reward.")


class Trained(StageResult):
    model_dir: str


# --- the wiring: stage configurations from the pipeline's -------------------------------------------------------


def ingest_config(cfg: PipelineConfig) -> IngestConfig:
    return IngestConfig(**cfg.ingest.model_dump(), inputs=cfg.prompts, output_dir=STAGE_FOLDER)


def sample_config(cfg: PipelineConfig, prompts: str, model: str) -> SampleConfig:
    return SampleConfig(
        **cfg.sample.model_dump(),
        prompts=prompts,
        output_dir=STAGE_FOLDER,
        split="train",
        model=model,
        cache_dir=cfg.cache_dir,
        prompt_format=cfg.prompt_format,
        max_prompt_tokens=cfg.max_prompt_tokens,
    )


def score_config(cfg: PipelineConfig, prompts: str, samples: str) -> ScoreConfig:
    return ScoreConfig(
        **cfg.score.model_dump(),
        samples=[samples],
        prompts=prompts,
        output_dir=STAGE_FOLDER,
        reward=cfg.reward,
        cache_dir=cfg.cache_dir,
    )


def build_config(cfg: PipelineConfig, prompts: str, samples: str, scores: str) -> BuildConfig:
    return BuildConfig(
        **cfg.build.model_dump(), prompts=prompts, samples=[samples], scores=[scores], output_dir=STAGE_FOLDER
    )


def train_config(cfg: PipelineConfig, data: str, model: str) -> TrainConfig:
    return TrainConfig(
        **cfg.train.model_dump(),
        model=model,
        data=data,
        output_dir=STAGE_FOLDER,
        cache_dir=cfg.cache_dir,
        prompt_format=cfg.prompt_format,
    )


def eval_config(
    cfg: PipelineConfig,
    prompts: str,
    candidate: str,
    baseline: str,
    output_dir: str,
    best_of_n_ceiling: float | None = None,
) -> EvalConfig:
    return EvalConfig(
        **cfg.evaluate.model_dump(),
        prompts=prompts,
        output_dir=output_dir,
        candidate=candidate,
        baseline=baseline,
        reward=cfg.reward,
        prompt_format=cfg.prompt_format,
        max_prompt_tokens=cfg.max_prompt_tokens,
        best_of_n_ceiling=best_of_n_ceiling,
        cache_dir=cfg.cache_dir,
    )
