"""A flow that runs the training stage alone (the pipeline flow chains it after the data stages)."""

from __future__ import annotations

from prefect import flow

from rrhf_core.config import TrainConfig
from tasks.train import train_task


@flow(name="rrhf-train", log_prints=True)
def train_flow(config: TrainConfig) -> str:
    """Train a policy with RRHF on a listwise training set; returns the model folder."""
    return train_task(config)


if __name__ == "__main__":
    import sys

    from rrhf_core.config import build_config, load_yaml

    print(
        train_flow(build_config(TrainConfig, load_yaml(sys.argv[1]), sys.argv[2:], "training configuration"))
    )
