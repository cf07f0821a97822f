"""The round's own bookkeeping: the champion it starts from, its parent MLflow run's parameters, and its summary
(an MLflow artifact, a Prefect markdown artifact and ``last_summary.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from prefect.artifacts import create_markdown_artifact

from rrhf_core.pipeline import PipelineConfig
from tasks import registry


def start_and_baseline(config: PipelineConfig) -> tuple[str, str]:
    """The model this round samples from and trains, and the one it is judged against."""
    champ = registry.champion(config.registered_model)
    start = champ["model_dir"] if (config.from_champion and champ) else config.policy
    baseline = champ["model_dir"] if champ else config.policy
    return start, baseline


def log_round_start(config: PipelineConfig, start_model: str, baseline: str) -> None:
    mlflow.log_params(
        {
            "start_model": start_model,
            "baseline": baseline,
            "reward": config.reward,
            "registered_model": config.registered_model,
        }
    )
    mlflow.log_dict(config.model_dump(mode="json"), "pipeline_config.json")


def summary_markdown(summary: dict[str, Any]) -> str:
    e, d = summary["evaluation"], summary["promotion"]
    lines = [
        "# RRHF round",
        "",
        f"- policy trained: `{summary['start_model']}` -> model version {d['version']} (`challenger`)",
        f"- held-out reward: baseline {e['baseline']['reward_mean']:.4f} -> trained {e['candidate']['reward_mean']:.4f} "
        f"(gain {e['reward_gain']:+.4f}), win rate {e['win_rate']:.3f} ({e['wins']} wins, {e['ties']} ties, {e['losses']} losses)",
        f"- promotion: {'**champion moved**' if d['promoted'] else 'champion kept'}: {'; '.join(d['decision']['reasons'])}",
        f"- reused stages: {', '.join(summary['reused']) or 'none'}",
        f"- MLflow run: {summary['mlflow_run_id']} in {summary['tracking_uri']}",
    ]
    return "\n".join(lines)


def finish_round(summary: dict[str, Any], workdir: Path) -> None:
    """Log the round's headline numbers and summary; publish it in Prefect and beside the stages."""
    e = summary["evaluation"]
    mlflow.log_metrics(
        {
            "held_out_reward_gain": e["reward_gain"],
            "win_rate": e["win_rate"],
            "promoted": float(summary["promotion"]["promoted"]),
        }
    )
    mlflow.log_dict(summary, "summary.json")
    create_markdown_artifact(
        key="rrhf-round", markdown=summary_markdown(summary), description="RRHF round summary"
    )
    (workdir / "last_summary.json").write_text(json.dumps(summary, indent=2, default=str))
