"""The stage table: every stage of a round, in the round's order, each declared in a module of its own.

One record per stage (:class:`~rrhf_core.stages.base.Stage`: its configuration, the library function that runs
it, the code that keys its reuse, its input fingerprints, its wiring from the pipeline's configuration and what it
needs first). The table is read by the reuse keys (:mod:`rrhf_core.reuse`), the plan of a round
(:mod:`rrhf_core.plan`, ``rrhf pipeline --plan``), the round's flow (``flows/pipeline.py``) and the CLI's stage
subcommands; a new stage is a new module here and a row below.
"""

from __future__ import annotations

from rrhf_core.stages import build, evaluate, ingest, register, sample, score, train, train_rm
from rrhf_core.stages.base import Stage

STAGES: tuple[Stage, ...] = (
    ingest.STAGE,
    train_rm.STAGE,
    sample.STAGE,
    score.STAGE,
    build.STAGE,
    train.STAGE,
    evaluate.STAGE,
    register.STAGE,
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
# the stages before training, run in this order by a round and by the comparison of losses
DATA_STAGES: tuple[Stage, ...] = STAGES[:5]


def stage(name: str) -> Stage:
    """The stage called ``name``; a ValueError names the known ones."""
    if name not in BY_NAME:
        raise ValueError(f"no stage named {name!r}; stages: {', '.join(BY_NAME)}")
    return BY_NAME[name]


__all__ = ["BY_NAME", "DATA_STAGES", "STAGES", "Stage", "stage"]
