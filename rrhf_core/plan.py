"""The plan of a round: which stages a round would reuse or run in a workdir and why, without running any.

Found the way the round finds them: each stage of the table (:mod:`rrhf_core.stages`), in order, wired from the
results of the stages before it and keyed by the same keys (settings, input contents, code). A stage whose input
comes from a stage that runs first is planned as ``after X``: whether it is reused is known only once X has run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rrhf_core.pipeline import PipelineConfig
from rrhf_core.reuse import StageKey, StageStore
from rrhf_core.stages import STAGES, Stage


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a planned round. ``action``: ``reuse`` (its keyed folder is done), ``run``, or ``after X``: its
    input is stage X's output, which runs first, so whether it is reused is known only then."""

    stage: str
    action: str
    why: str
    folder: str = ""


def _plan_instance(
    stage: Stage,
    instance: str,
    cfg: PipelineConfig,
    results: dict[str, Any],
    start_model: str,
    store: StageStore,
) -> PlannedStage:
    """One instance of a keyed stage whose inputs are all known; its result goes into ``results`` when reused."""
    assert stage.inputs is not None and stage.result is not None
    made = stage.wire(cfg, results, start_model)[instance]
    key = StageKey.of(stage.name, made, stage.inputs(made))
    done = store.load(key, stage.result)
    if done is not None:
        results[instance] = done
        return PlannedStage(instance, "reuse", "same inputs, settings and code", str(store.folder(key)))
    return PlannedStage(instance, "run", store.why_runs(key), str(store.folder(key)))


def plan_round(
    cfg: PipelineConfig, start_model: str, stages_root: str | os.PathLike[str]
) -> list[PlannedStage]:
    """The stages a round of ``cfg`` sampling from ``start_model`` would reuse or run in ``stages_root`` and why,
    found the way the round finds them (the same keys: settings, input contents, code) and without running any."""
    store = StageStore(stages_root)
    plan: list[PlannedStage] = []
    results: dict[str, Any] = {}  # the instances found reused, by name
    for stage in STAGES:
        if not stage.reused:
            plan.append(PlannedStage(stage.name, "run", stage.always_runs))
            continue
        for instance in stage.instances(cfg):
            waits = next((n for n in stage.needs(cfg, instance) if n not in results), None)
            if waits is not None:
                plan.append(
                    PlannedStage(instance, f"after {waits}", f"reused if {waits}'s output is unchanged")
                )
            else:
                plan.append(_plan_instance(stage, instance, cfg, results, start_model, store))
    return plan
