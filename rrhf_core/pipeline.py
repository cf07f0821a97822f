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

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rrhf_core.config import Folder, load_yaml, one_or_many
from rrhf_core.data.arrivals import ArrivalsSettings
from rrhf_core.data.config import BuildConfig, BuildSettings, IngestConfig, IngestSettings
from rrhf_core.errors import DataError
from rrhf_core.evaluation.config import EvalConfig, EvalSettings
from rrhf_core.evaluation.promotion import GateConfig
from rrhf_core.models import EMBEDDED_POLICY
from rrhf_core.reward_model.config import RMSettings, RMTrainConfig
from rrhf_core.sampling.config import SampleConfig, SampleSettings
from rrhf_core.scoring import EMBEDDED_REWARD
from rrhf_core.scoring.config import ScoreConfig, ScoreSettings
from rrhf_core.training.config import TrainConfig, TrainSettings
from rrhf_core.types import Precision, PromptFormat

# `reward: trained:NAME` names a reward model that the round trains (PipelineConfig.reward_models)
TRAINED_PREFIX = "trained:"
# the output folder of a reused stage is chosen from its key; until then its configuration carries this
STAGE_FOLDER = "<stage folder>"


class PipelineConfig(BaseModel):
    """One RRHF round: ingest -> sample -> score -> build -> train -> evaluate -> register/promote."""

    model_config = ConfigDict(extra="forbid")
    preset: str | None = Field(
        None,
        description="A YAML preset (e.g. configs/demo.yaml) whose settings apply under the ones given here.",
    )
    workdir: Folder = Field(
        "runs/pipeline", description="Stage outputs, the MLflow store and the run summaries."
    )
    prompts: list[str] = Field(
        ["embedded:instructions"],
        description="Prompt inputs (files, hf:NAME[:SPLIT], embedded:demo-prompts, embedded:instructions, embedded:writing).",
    )
    policy: str = Field(
        EMBEDDED_POLICY, description="Base policy (used when no champion exists or from_champion is off)."
    )
    from_champion: bool = Field(
        False, description="Sample from and train the current champion (iterative RRHF, IP-n)."
    )
    reward: str = Field(
        EMBEDDED_REWARD,
        description="Reward spec for scoring (an HF reward model, module:function, an embedded reward, or "
        "trained:NAME for a reward model of `reward_models`). A module:function reward is imported and run: it is "
        "trusted code, like a training script.",
    )
    arrivals: ArrivalsSettings | None = Field(
        None,
        description="Train on what arrived: each round takes only the drop folder's new files (a watermark in the "
        "workdir), judged on fixed held-out prompts; too few new prompts and the round trains nothing. None: "
        "every round reads `prompts`.",
    )
    reward_models: dict[str, RMSettings] = Field(
        default_factory=dict,
        description="Reward models trained in the round, after ingest, on the prompts' preference pairs (train "
        "split; held out on the eval split); `reward`, `evaluate.judge` and `evaluate.also_report` name them as "
        "trained:NAME.",
    )
    prompt_format: PromptFormat = Field(
        "chat", description="Render prompts with the chat template, or as HH text (every stage)."
    )
    max_prompt_tokens: int = Field(
        512, ge=8, description="Longer prompts are left-truncated at a turn boundary (sampling, evaluation)."
    )
    cache_dir: str | None = Field(None, description="Cache for converted models and scores.")
    dtype: Precision = Field(
        "auto",
        description="The round's precision: every stage whose own dtype is auto computes in it. auto is decided "
        "once, from the hardware: bf16 on CUDA with bf16 support and on CPUs with AMX-BF16, else fp32.",
    )
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

    def reward_specs(self) -> dict[str, str]:
        """Every reward spec the round uses, by where it is set."""
        specs = {"reward": self.reward}
        judge = self.evaluate.judge
        if isinstance(judge, str):
            specs["evaluate.judge"] = judge
        elif judge:
            specs.update({f"evaluate.judge[{i}]": s for i, s in enumerate(judge)})
        specs.update({f"evaluate.also_report[{i}]": s for i, s in enumerate(self.evaluate.also_report)})
        return specs

    @model_validator(mode="after")
    def _trained_rewards_exist(self) -> PipelineConfig:
        for where, spec in self.reward_specs().items():
            name = spec.removeprefix(TRAINED_PREFIX)
            if spec.startswith(TRAINED_PREFIX) and name not in self.reward_models:
                known = ", ".join(sorted(self.reward_models)) or "none"
                raise ValueError(
                    f"{where} is {spec!r} but reward_models has no {name!r} (defined: {known}); add "
                    f"reward_models.{name} or name another reward"
                )
        judges = self.evaluate.judge if isinstance(self.evaluate.judge, list) else []
        trained = [s.removeprefix(TRAINED_PREFIX) for s in judges if s.startswith(TRAINED_PREFIX)]
        seen: dict[str, str] = {}
        for name in trained:  # identical settings train one and the same model: a judge counted twice
            key = self.reward_models[name].model_dump_json()
            if key in seen:
                raise ValueError(
                    f"evaluate.judge names trained:{seen[key]} and trained:{name}, whose settings are identical "
                    "(one and the same model); give one of them another seed, data_part or backbone"
                )
            seen[key] = name
        ran = {b.task for b in self.evaluate.benchmarks}
        for guard in self.gate.no_regression:
            if guard.partition(":")[0] not in ran:
                raise ValueError(
                    f"gate.no_regression names {guard!r} but evaluate.benchmarks does not run "
                    f"{guard.partition(':')[0]!r} (it runs: {', '.join(sorted(ran)) or 'none'}); add it there"
                )
        return self

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
    run_id: str | None = Field(
        None, description="The tracking run that trained it (the registered version's source)."
    )


class RewardTrained(StageResult):
    model_dir: str
    accuracy: float | None = Field(None, description="Held-out pair accuracy (None without held-out pairs).")


def preflight(cfg: PipelineConfig) -> None:
    """Check, before any stage runs, what can be checked cheaply, so a round that cannot start fails in a second
    with one message instead of inside a stage: every prompt input can be read (a file exists and has a supported
    type, an embedded set is known, an HF dataset can be found), and the policy and the HF reward models are a folder
    that exists or a hub id that can be fetched (in the local cache while offline), every lm-eval benchmark is a task
    lm-eval knows with data in its format, and lm-eval's NLTK data is installed where IFEval's checkers are used.
    Records and weights are not
    read here; their errors come from the stage that reads them."""
    from rrhf_core.data.ingest import check_input
    from rrhf_core.models import check_model_available
    from rrhf_core.scoring.reward import is_hf_reward_spec

    with_precision(cfg)  # a bf16 the hardware cannot compute, before anything else
    for source in cfg.prompts:
        check_input(source)
    if not cfg.from_champion:  # sampled from the champion, the policy may never be loaded
        check_model_available(cfg.policy, "policy")
    for where, spec in cfg.reward_specs().items():
        if not spec.startswith(TRAINED_PREFIX) and is_hf_reward_spec(spec):
            check_model_available(spec, f"reward model ({where})")
    if cfg.evaluate.benchmarks:  # task names, data files and NLTK data, before hours of sampling and training
        from rrhf_core.evaluation.benchmarks import check_benchmarks

        check_benchmarks(cfg.evaluate.benchmarks)
    from rrhf_core.instructions.ifeval import IFEVAL_JUDGE

    if IFEVAL_JUDGE in cfg.reward_specs().values():
        from rrhf_core.evaluation import nltk_data

        nltk_data.require()


def precision_settings(cfg: PipelineConfig) -> dict[str, str]:
    """Every dtype setting of the round by where it is set (``dtype``, ``sample.dtype``, ...,
    ``reward_models.NAME.dtype``)."""
    found: dict[str, str] = {"dtype": cfg.dtype}
    found |= {f"{stage}.dtype": getattr(cfg, stage).dtype for stage in ("sample", "train", "evaluate")}
    found |= {f"reward_models.{name}.dtype": rm.dtype for name, rm in cfg.reward_models.items()}
    return found


def round_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def with_precision(cfg: PipelineConfig) -> tuple[PipelineConfig, dict[str, Any]]:
    """``cfg`` with its precision decided once for this machine: every ``auto`` dtype replaced by the round's
    (``dtype``, itself decided from the hardware's capabilities where it is auto), so that the stages, their reuse
    keys and the round's record all name what was computed in. Returns the record too: each stage's precision and
    why. A ``bf16`` the hardware cannot compute is a :class:`ConfigError` naming the setting."""
    from rrhf_core.hardware import decide_precision, precision_reason

    device = round_device()
    decided = {
        where: decide_precision(value, device, where) for where, value in precision_settings(cfg).items()
    }
    own = decided.pop("dtype")

    def pick(where: str, value: str) -> str:
        return own if value == "auto" else decided[where]

    update: dict[str, Any] = {
        stage: getattr(cfg, stage).model_copy(
            update={"dtype": pick(f"{stage}.dtype", getattr(cfg, stage).dtype)}
        )
        for stage in ("sample", "train", "evaluate")
    }
    update["reward_models"] = {
        name: rm.model_copy(update={"dtype": pick(f"reward_models.{name}.dtype", rm.dtype)})
        for name, rm in cfg.reward_models.items()
    }
    resolved = cfg.model_copy(update={"dtype": own, **update})
    record = {
        "round": own,
        **{stage: getattr(resolved, stage).dtype for stage in ("sample", "train", "evaluate")},
        **{f"reward_model:{name}": rm.dtype for name, rm in resolved.reward_models.items()},
        "decided_by": f"{'setting' if cfg.dtype != 'auto' else 'hardware'}: {precision_reason(device)}",
    }
    return resolved, record


def check_splits(cfg: PipelineConfig, prompts: str) -> None:
    """After ingest: the round's prompts hold train prompts to sample from and prompts of the split it judges on
    (records that carry their own split can leave one empty whatever ``eval_share`` says); a clear error before
    sampling, not one after training."""
    import pyarrow.parquet as pq

    splits = pq.read_table(prompts, columns=["split"]).column("split").to_pylist()
    for split, role in (("train", "sampled and trained on"), (cfg.evaluate.split, "judged on")):
        if split not in splits:
            counts = ", ".join(f"{s} {splits.count(s)}" for s in sorted(set(splits))) or "no prompts"
            raise DataError(
                f"the round's prompts ({prompts}: {counts}) hold no {split} prompts to be {role}: the inputs' "
                f"records carry their own split (a split field), or ingest.eval_share ({cfg.ingest.eval_share:g}) "
                "leaves none; give inputs with both splits or records without a split field"
            )


# --- the wiring: stage configurations from the pipeline's -------------------------------------------------------


def ingest_config(cfg: PipelineConfig) -> IngestConfig:
    return IngestConfig(**cfg.ingest.model_dump(), inputs=cfg.prompts, output_dir=STAGE_FOLDER)


def rm_config(cfg: PipelineConfig, name: str, prompts: str) -> RMTrainConfig:
    return RMTrainConfig(
        **cfg.reward_models[name].model_dump(),
        pairs=[prompts],
        output_dir=STAGE_FOLDER,
        cache_dir=cfg.cache_dir,
    )


def with_trained_rewards(cfg: PipelineConfig, model_dirs: dict[str, str]) -> PipelineConfig:
    """``cfg`` with every ``trained:NAME`` reward spec replaced by that reward model's folder."""

    def resolve(spec: str) -> str:
        return model_dirs[spec.removeprefix(TRAINED_PREFIX)] if spec.startswith(TRAINED_PREFIX) else spec

    judge = cfg.evaluate.judge
    if isinstance(judge, list):
        judge = [resolve(s) for s in judge]
    elif judge:
        judge = resolve(judge)
    evaluate = cfg.evaluate.model_copy(
        update={
            "judge": judge,
            "also_report": [resolve(s) for s in cfg.evaluate.also_report],
        }
    )
    return cfg.model_copy(update={"reward": resolve(cfg.reward), "evaluate": evaluate})


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
        reuse_dir=str(Path(cfg.workdir).resolve() / "eval" / "baseline"),
    )
