"""The training stage as a Prefect task."""

from __future__ import annotations

from prefect import task

from rrhf_core.config import TrainConfig
from rrhf_core.train import train


@task(name="rrhf-train", retries=0, log_prints=True)
def train_task(config: TrainConfig) -> str:
    """Train with RRHF in this process; return the saved model folder (a path, never a model object)."""
    result = train(config, progress=False)
    return str(result.model_dir)
