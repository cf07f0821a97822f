"""The stage table (rrhf_core.stages) is the one list of stages: the reuse keys, the plan, the flow's tasks and the
CLI's subcommands all come from it."""

from __future__ import annotations

import importlib

import pytest

from rrhf_core.pipeline import PipelineConfig
from rrhf_core.reward_model.config import RMSettings
from rrhf_core.stages import BY_NAME, DATA_STAGES, STAGES, stage

ROUND = ["ingest", "train-rm", "sample", "score", "build", "train", "evaluate", "register"]


def test_the_table_holds_the_round_in_its_order():
    assert [s.name for s in STAGES] == ROUND
    assert [s.name for s in DATA_STAGES] == ROUND[:5]
    with pytest.raises(ValueError, match="no stage named 'scoring'; stages: ingest, train-rm"):
        stage("scoring")


@pytest.mark.parametrize("s", STAGES, ids=lambda s: s.name)
def test_every_stage_is_complete(s):
    """A stage that is reused has its code, input fingerprints, wiring and result; one that is not says why every
    round runs it; every stage's library function exists and its code module is importable."""
    assert s.summary and s.section and s.config
    module, _, function = s.run.partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    if s.reused:
        assert s.inputs and s.configs and s.result
        importlib.import_module(s.code)
        assert not s.always_runs
    else:
        assert s.always_runs and s.inputs is None and s.result is None


def test_the_wiring_follows_the_needs():
    """Each keyed stage's wiring reads only the results of the instances it names as needs (so a plan's
    ``after X`` is right): wired with exactly those results, it makes its configurations."""
    from rrhf_core.pipeline import Built, Ingested, RewardTrained, Sampled, Scored

    cfg = PipelineConfig(reward="trained:rm", reward_models={"rm": RMSettings()})
    all_results = {
        "ingest": Ingested(folder="i", prompts="p.parquet"),
        "train-rm:rm": RewardTrained(folder="r", model_dir="rm-model"),
        "sample": Sampled(folder="s", samples="s.parquet"),
        "score": Scored(folder="c", scores="c.parquet", reward_id="r"),
        "build": Built(folder="b", train_set="t.parquet", best_of_n_mean=0.0),
    }
    for s in STAGES:
        if not s.reused:
            continue
        for instance in s.instances(cfg):
            # the needs' results and those they need in turn (build reads ingest's prompts, needed by sample)
            closure, todo = set(), list(s.needs(cfg, instance))
            while todo:
                n = todo.pop()
                if n not in closure:
                    closure.add(n)
                    todo += BY_NAME[n.split(":")[0]].needs(cfg, n)
            made = s.wire(cfg, {k: v for k, v in all_results.items() if k in closure}, "policy")
            assert instance in made
    score = BY_NAME["score"].wire(cfg, all_results, "policy")["score"]
    assert score.reward == "rm-model"  # trained:rm resolved to the round's reward model


def test_the_cli_offers_each_stage_that_runs_alone_with_its_summary():
    from rrhf_cli import STAGE_COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in STAGE_COMMANDS:
        assert name in BY_NAME
        assert sub.choices[name].description.startswith(BY_NAME[name].summary)
    assert set(BY_NAME) - set(STAGE_COMMANDS) == {"register"}  # registering needs a round's evaluation


def test_the_flow_has_a_task_for_every_keyed_stage():
    from tasks.stages import STAGE_TASKS

    assert set(STAGE_TASKS) == {s.name for s in STAGES if s.reused}
