"""register: the trained model registered in MLflow as challenger; the gate (a pure decision,
:mod:`rrhf_core.evaluation.promotion`) says whether it becomes champion. The registry calls are the tasks' (MLflow
is never imported by the library)."""

from __future__ import annotations

from rrhf_core.evaluation.promotion import GateConfig
from rrhf_core.stages.base import Stage

STAGE = Stage(
    name="register",
    summary="register the trained model as challenger; the gate decides on champion",
    config=GateConfig,
    section="gate",
    run="rrhf_core.evaluation.promotion:decide",
    always_runs="every round registers its model; the gate decides on champion",
)
