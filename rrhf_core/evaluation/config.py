"""Typed configuration of the evaluation stage: :class:`EvalSettings` (composed by the pipeline) and
:class:`EvalConfig` (plus the prompts, output folder, the two models, the reward and the prompt rendering)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rrhf_core.config import Folder, reuse
from rrhf_core.evaluation.benchmarks import Benchmark, parse_benchmarks
from rrhf_core.models import EMBEDDED_POLICY
from rrhf_core.scoring import EMBEDDED_REWARD
from rrhf_core.types import Precision, PromptFormat


class EvalSettings(BaseModel):
    """Every evaluation setting but the wiring (prompts, output folder, models, reward, prompt rendering)."""

    model_config = ConfigDict(extra="forbid")
    split: Literal["train", "eval"] = Field("eval", description="Which prompts to evaluate on.")
    limit: int | None = Field(None, ge=1, description="Only the first N prompts.")
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0: greedy, deterministic answers.")
    seed: int = Field(0)
    batch_size: int = Field(
        8,
        ge=1,
        description="Answers per generate call (best-of-k: batch_size // k prompts per call) and pairs per "
        "likelihood-scoring batch.",
    )
    tie_margin: float = Field(1e-6, ge=0.0, description="Rewards closer than this count as a tie.")
    preference_accuracy: bool = Field(
        True, description="Score HH chosen/rejected pairs with each policy (Table 5)."
    )
    preference_limit: int | None = Field(
        None,
        ge=1,
        description="Rank the pairs of this many held-out prompts (unset: the evaluated prompts; more pairs, a "
        "narrower CI: ranking is cheaper than answering).",
    )
    judge: str | list[str] | None = Field(
        None,
        description="Reward spec that judges the answers, or a list of them: an ensemble whose verdict is the mean "
        "of the judges' standardised scores (each judge's own numbers are reported too). Unset: the training "
        "reward, reported as such.",
    )

    @field_validator("judge")
    @classmethod
    def _judges(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v == "":  # `--set evaluate.judge=` or `--judge ""`: unset, the training reward judges
            return None
        if isinstance(v, list):
            if any(not s for s in v):
                raise ValueError(f"judge: {v} has an empty spec; name a reward spec in each place")
            if not v:
                raise ValueError("judge: an empty list; name one reward spec or several, or leave it unset")
            if len(set(v)) != len(v):
                raise ValueError(f"judge: {v} names a judge twice; each judge once")
            if len(v) == 1:
                return v[0]
        return v

    also_report: list[str] = Field(
        default_factory=list,
        description="Further reward specs whose means are reported (e.g. embedded:relevance).",
    )
    best_of_k: int = Field(
        0, ge=0, description="Also judge the baseline's best of k sampled answers per prompt (0: off)."
    )
    best_of_k_temperature: float = Field(1.0, gt=0.0, description="Sampling temperature for best-of-k.")
    dtype: Precision = Field(
        "auto",
        description="Precision of generation and scoring in evaluation (auto: bf16 where it is faster).",
    )
    group_by: str | None = Field(
        None,
        description="A key of the prompts' meta (e.g. held_out_kind, family, category): the verdict's gain is also "
        "reported per value of it, with its own CI.",
    )
    benchmarks: list[Benchmark] = Field(
        default_factory=list,
        description="lm-eval tasks run on both models (e.g. [ifeval] or [{task: ifeval, data: held-out}]): each "
        "metric with a paired CI over the task's items; gate.no_regression can guard them.",
    )

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _benchmarks(cls, v: object) -> object:
        return parse_benchmarks(v)


class EvalConfig(EvalSettings):
    """Held-out evaluation of a candidate policy against a baseline (champion or base model)."""

    prompts: str = Field(
        ..., description="prompts.parquet with an eval split.", json_schema_extra=reuse("input")
    )
    output_dir: Folder = Field(
        ...,
        description="Where eval_samples.parquet and eval_report.json go.",
        json_schema_extra=reuse("location"),
    )
    candidate: str = Field(..., description="The trained model (folder or id).")
    baseline: str = Field(EMBEDDED_POLICY, description="The current champion, or the base model.")
    reward: str = Field(EMBEDDED_REWARD, description="Reward spec (as for the score stage).")
    prompt_format: PromptFormat = Field("chat")
    max_prompt_tokens: int = Field(512, ge=8)
    best_of_n_ceiling: float | None = Field(
        None, description="Mean best-of-n reward of the training samples."
    )
    cache_dir: str | None = Field(None, json_schema_extra=reuse("location"))
    reuse_dir: str | None = Field(
        None,
        description="Where the baseline's generations are kept by content key (the baseline model's fingerprint, "
        "the rendered prompts, the generation settings, the code): a later evaluation against the same baseline "
        "reuses them instead of generating again. None: always generate.",
        json_schema_extra=reuse("location"),
    )

    def judge_specs(self) -> list[str]:
        """The judges' reward specs, in order (the training reward when ``judge`` is unset)."""
        if self.judge is None:
            return [self.reward]
        return [self.judge] if isinstance(self.judge, str) else list(self.judge)
