"""evaluate: the trained model against the baseline on the held-out prompts (judges' gain and win rate with CIs)."""

from __future__ import annotations

from rrhf_core.evaluation.config import EvalConfig
from rrhf_core.stages.base import Stage

STAGE = Stage(
    name="evaluate",
    summary="a trained model against a baseline on held-out prompts: judge gain and win rate with CIs",
    config=EvalConfig,
    section="evaluate",
    run="rrhf_core.evaluation.evaluate:evaluate",
    always_runs="every round judges its model on the held-out prompts",
)
