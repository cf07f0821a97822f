"""The pipeline configuration composes the stages' own: every stage setting is reachable, the wiring is explicit,
and a bad setting anywhere (the gate included) is rejected before any stage runs."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from rrhf_core import pipeline as plan
from rrhf_core.config import load_yaml
from rrhf_core.data.config import BuildConfig, IngestConfig
from rrhf_core.evaluation.config import EvalConfig
from rrhf_core.pipeline import PipelineConfig
from rrhf_core.sampling.config import SampleConfig
from rrhf_core.scoring.config import ScoreConfig
from rrhf_core.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# pipeline section -> (stage config, fields the pipeline wires from elsewhere)
STAGES: dict[str, tuple[type[BaseModel], set[str]]] = {
    "ingest": (IngestConfig, {"inputs", "output_dir"}),
    "sample": (
        SampleConfig,
        {"prompts", "output_dir", "split", "model", "cache_dir", "prompt_format", "max_prompt_tokens"},
    ),
    "score": (ScoreConfig, {"samples", "prompts", "output_dir", "reward", "cache_dir"}),
    "build": (BuildConfig, {"prompts", "samples", "scores", "output_dir"}),
    "train": (TrainConfig, {"model", "data", "output_dir", "cache_dir", "prompt_format"}),
    "evaluate": (
        EvalConfig,
        {
            "prompts",
            "output_dir",
            "candidate",
            "baseline",
            "reward",
            "prompt_format",
            "max_prompt_tokens",
            "best_of_n_ceiling",
            "cache_dir",
            "reuse_dir",
        },
    ),
}


def stage_configs(cfg: PipelineConfig) -> dict[str, BaseModel]:
    """Every stage configuration the pipeline makes, with stand-in paths."""
    return {
        "ingest": plan.ingest_config(cfg),
        "sample": plan.sample_config(cfg, "p.parquet", "policy-x"),
        "score": plan.score_config(cfg, "p.parquet", "s.parquet"),
        "build": plan.build_config(cfg, "p.parquet", "s.parquet", "r.parquet"),
        "train": plan.train_config(cfg, "t.parquet", "policy-x"),
        "evaluate": plan.eval_config(cfg, "p.parquet", "cand", "base", "out", 0.5),
    }


# settings that are valid only together with another
COMPANIONS: dict[str, dict[str, Any]] = {
    "nnodes": {"rdzv_endpoint": "node0:29500"},
    "data_part": {"data_parts": 8},
}


# settings whose validated value is not what was given (bare names become objects)
NORMALISED = {"benchmarks"}


def other_value(model: type[BaseModel], name: str) -> Any:
    """A valid value of a settings field that differs from its default (as given; a field that normalises what it
    is given, such as benchmarks' bare task names, is in NORMALISED)."""
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    ann = field.annotation
    options: list[Any] = []
    for t in (ann, *typing.get_args(ann)):
        if typing.get_origin(t) is typing.Literal:
            options += list(typing.get_args(t))
    if ann is bool:
        options = [not default]
    if isinstance(default, BaseModel):
        return None  # nested sections are walked on their own
    options += [2, 3, 0.5, 0.25, 7, 0.0, 1, 128, 100000, "other", ["x"]]
    for v in options:
        if v == default or (isinstance(v, bool) != isinstance(default, bool) and default is not None):
            continue
        try:
            got = getattr(model.model_validate({name: v} | COMPANIONS.get(name, {})), name)
            if got == v or (name in NORMALISED and got != default):
                return v
        except ValidationError:
            continue
    raise AssertionError(f"no other valid value found for {model.__name__}.{name}")


@pytest.mark.parametrize("section", list(STAGES))
def test_every_stage_setting_is_reachable_from_the_pipeline(section):
    stage_cls, wiring = STAGES[section]
    settings_cls = type(getattr(PipelineConfig(), section))
    # the pipeline section is the stage's own settings model, and the stage config adds only the wiring
    assert issubclass(stage_cls, settings_cls)
    assert set(stage_cls.model_fields) == set(settings_cls.model_fields) | wiring
    for name in settings_cls.model_fields:
        value = other_value(settings_cls, name)
        if value is None:
            continue
        cfg = PipelineConfig.model_validate({section: {name: value} | COMPANIONS.get(name, {})})
        expected = getattr(settings_cls.model_validate({name: value} | COMPANIONS.get(name, {})), name)
        assert getattr(stage_configs(cfg)[section], name) == expected, (
            f"{section}.{name} does not reach the stage"
        )


def test_nested_training_settings_reach_the_stage():
    cfg = PipelineConfig.model_validate({"train": {"lora": {"enabled": True, "r": 4}}})
    assert stage_configs(cfg)["train"].lora.r == 4


def test_shared_settings_are_wired_to_every_stage_that_uses_them():
    cfg = PipelineConfig(
        prompts=["a.jsonl", "b.jsonl"],
        prompt_format="hh",
        max_prompt_tokens=99,
        cache_dir="/c",
        reward="mod:fn",
    )
    st = stage_configs(cfg)
    assert st["ingest"].inputs == ["a.jsonl", "b.jsonl"]
    assert {st[s].prompt_format for s in ("sample", "train", "evaluate")} == {"hh"}
    assert st["sample"].max_prompt_tokens == st["evaluate"].max_prompt_tokens == 99
    assert {st[s].cache_dir for s in ("sample", "score", "train", "evaluate")} == {"/c"}
    assert st["score"].reward == st["evaluate"].reward == "mod:fn"
    assert st["sample"].model == st["train"].model == "policy-x"
    assert st["evaluate"].best_of_n_ceiling == 0.5


def test_the_papers_diverse_beam_search_reaches_the_backend_parameters():
    cfg = PipelineConfig.model_validate(load_yaml(ROOT / "configs" / "hh-paper.yaml"))
    params = plan.sample_config(cfg, "p.parquet", "m").generation_params()
    assert (params.strategy, params.k, params.num_beam_groups, params.diversity_penalty) == (
        "diverse_beam",
        4,
        4,
        1.0,
    )
    assert params.stop == ("\n\nHuman:",)  # the HH default stop, from the pipeline's prompt_format


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_presets_validate(preset):
    stage_configs(PipelineConfig.model_validate(load_yaml(ROOT / "configs" / preset)))


def test_a_bad_gate_key_is_rejected_with_its_name():
    with pytest.raises(ValidationError, match="min_win_rat"):
        PipelineConfig.model_validate({"gate": {"min_win_rat": 0.6}})
    with pytest.raises(ValidationError, match="min_win_rate"):
        PipelineConfig.model_validate({"gate": {"min_win_rate": 2.0}})


def test_the_cli_rejects_a_bad_gate_before_any_stage(tmp_path, capsys):
    from rrhf_cli import main

    work = tmp_path / "w"
    code = main(["pipeline", "--workdir", str(work), "--set", "gate.min_win_rat=0.6"])
    assert code == 2
    err = capsys.readouterr().err
    assert "gate.min_win_rat: unknown setting; did you mean 'min_win_rate'" in err
    assert not work.exists()


def test_a_preset_applies_under_the_settings_given():
    cfg = PipelineConfig.model_validate(
        {"preset": str(ROOT / "configs" / "demo.yaml"), "workdir": "elsewhere", "train": {"max_steps": 3}}
    )
    demo = PipelineConfig.model_validate(load_yaml(ROOT / "configs" / "demo.yaml"))
    assert cfg.workdir == "elsewhere" and cfg.train.max_steps == 3
    assert cfg.train.learning_rate == demo.train.learning_rate and cfg.evaluate.judge == demo.evaluate.judge
    with pytest.raises(Exception, match="does not exist"):
        PipelineConfig.model_validate({"preset": "configs/nope.yaml"})


def test_credentials_in_uris_are_redacted_everywhere_they_are_written():
    from rrhf_core.config import redact_credentials, redacted

    uri = "postgresql://mlflow:s3cret@db.internal:5432/mlflow"
    assert redact_credentials(uri) == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert (
        redact_credentials("https://tok3n@host/x?a=1&token=abc&b=2") == "https://***@host/x?a=1&token=***&b=2"
    )
    assert redact_credentials("sqlite:////work/runs/mlflow.db") == "sqlite:////work/runs/mlflow.db"
    dumped = redacted(PipelineConfig(tracking_uri=uri).model_dump(mode="json"))
    assert "s3cret" not in json.dumps(dumped) and dumped["tracking_uri"].startswith(
        "postgresql://mlflow:***@"
    )


# the fields that do not change a stage's output, as reviewed, with what they are to reuse (rrhf_core.config.reuse):
# a field that loses its mark (or gains one) fails test_the_reuse_marks_are_the_reviewed_ones, so a change of what
# invalidates reuse is always a visible change here
NOT_OUTPUT: dict[str, dict[str, str]] = {
    "ingest": {"inputs": "input", "output_dir": "location"},
    "sample": {
        "prompts": "input",
        "model": "input",
        "output_dir": "location",
        "cache_dir": "location",
        "executor": "bookkeeping",
        "ray": "bookkeeping",
    },
    "score": {
        "samples": "input",
        "prompts": "input",
        "output_dir": "location",
        "cache_dir": "location",
        "cache_path": "location",
        "executor": "bookkeeping",
        "ray": "bookkeeping",
    },
    "build": {"prompts": "input", "samples": "input", "scores": "input", "output_dir": "location"},
    "train": {
        "model": "input",
        "data": "input",
        "output_dir": "location",
        "cache_dir": "location",
        **dict.fromkeys(
            [
                "threads",
                "log_every",
                "checkpoint_every",
                "checkpoint_minutes",
                "keep_checkpoints",
                "resume",
                "fail_at_step",
                "rdzv_endpoint",
                "rdzv_timeout_s",
            ],
            "bookkeeping",
        ),
    },
    "train-rm": {"output_dir": "location", "cache_dir": "location", "log_every": "bookkeeping"},
    "evaluate": {
        "prompts": "input",
        "output_dir": "location",
        "cache_dir": "location",
        "reuse_dir": "location",
    },
}


def keyed_stage_configs() -> dict[str, BaseModel]:
    from rrhf_core.reward_model.config import RMTrainConfig

    return stage_configs(PipelineConfig()) | {
        "train-rm": RMTrainConfig(pairs=["pairs.parquet"], output_dir="o")
    }


def test_every_reuse_mark_is_a_known_kind():
    from rrhf_core.config import REUSE_KINDS, field_marks

    for stage, cfg in keyed_stage_configs().items():
        for name in type(cfg).model_fields:
            kind = field_marks(type(cfg), name).get("reuse", "output")
            assert kind in REUSE_KINDS, f"{stage}.{name} is marked reuse={kind!r}; known: {REUSE_KINDS}"


@pytest.mark.parametrize("stage", list(NOT_OUTPUT))
def test_the_reuse_marks_are_the_reviewed_ones(stage):
    from rrhf_core.config import reuse_kind

    cls = type(keyed_stage_configs()[stage])
    marked = {n: reuse_kind(cls, n) for n in cls.model_fields if reuse_kind(cls, n) != "output"}
    assert marked == NOT_OUTPUT[stage], (
        f"{stage}: the fields that do not change its output changed; a field that loses its mark starts "
        "invalidating reuse (and one that gains a mark stops): review and update NOT_OUTPUT"
    )


def _changed(cls: type[BaseModel], name: str, value: Any) -> Any:
    """A value of ``cls.name`` other than ``value``: another valid setting, or another path for an input/location."""
    settings = next(
        (
            k
            for k in cls.__mro__[1:]
            if isinstance(k, type) and issubclass(k, BaseModel) and name in k.model_fields
        ),
        None,
    )
    if settings is not None and settings is not BaseModel:
        return other_value(settings, name)
    if isinstance(value, list):
        return [*value, "elsewhere.parquet"]
    return "elsewhere" if isinstance(value, str | type(None)) else None


@pytest.mark.parametrize("stage", ["ingest", "sample", "score", "build", "train", "train-rm"])
def test_the_reuse_key_changes_with_each_output_changing_field_and_with_no_other(stage):
    """Every field marked (or left) "output" changes the stage's key when it changes; a field marked otherwise
    never does (inputs count through their content fingerprints, given apart: here the same)."""
    from rrhf_core.config import reuse_kind
    from rrhf_core.reuse import StageKey

    cfg = keyed_stage_configs()[stage]
    cls = type(cfg)
    base = StageKey.of(stage, cfg, {"x": "fingerprint"})
    checked = 0
    for name in cls.model_fields:
        value = _changed(cls, name, getattr(cfg, name))
        if value is None:  # a nested section: its fields are settings of their own model
            continue
        key = StageKey.of(stage, cfg.model_copy(update={name: value}), {"x": "fingerprint"})
        if reuse_kind(cls, name) == "output":
            assert key != base, f"{stage}.{name} changes the output but not the reuse key"
        else:
            assert key == base, f"{stage}.{name} is marked {reuse_kind(cls, name)} but changes the reuse key"
        checked += 1
    assert checked >= len(NOT_OUTPUT[stage])
