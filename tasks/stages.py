"""Prefect tasks over the rrhf_core stages: each calls one entry point, tracks it in a child MLflow run, returns paths.

Retries are for transient failures only: user errors (RRHFError: bad data, bad settings) are never retried.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from rrhf_core import plots
from rrhf_core.build import build
from rrhf_core.config import BuildConfig, EvalConfig, SampleConfig, ScoreConfig, TrainConfig
from rrhf_core.errors import RRHFError
from rrhf_core.evaluate import evaluate
from rrhf_core.ingest import ingest
from rrhf_core.promotion import Decision, GateConfig, decide
from rrhf_core.sampling.stage import sample
from rrhf_core.score import read_samples, score
from rrhf_core.stagecache import is_done, mark_done
from rrhf_core.tracking import FanOutLogger, read_metrics
from rrhf_core.train import train
from tasks import registry
from tasks.tracking import MlflowLogger, log_parquet_input, numeric, stage_run


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: anything but a user error (bad input is never retried)."""
    try:
        state.result()
    except RRHFError:
        return False
    except Exception:
        return True
    return False


def _reused(folder: Path, name: str, parent: str | None) -> bool:
    if is_done(folder):
        with stage_run(name, parent, {"reused_from": str(folder)}):
            mlflow.set_tag("rrhf.reused", "true")
        return True
    return False


@task(name="ingest", retries=1, retry_condition_fn=transient)
def ingest_task(inputs: list[str], folder: str, eval_share: float, parent: str | None) -> str:
    """Read the prompt inputs into prompts.parquet."""
    out = Path(folder)
    if not _reused(out, "ingest", parent):
        with stage_run("ingest", parent, {"inputs": inputs, "eval_share": eval_share}):
            report = ingest(inputs, out, eval_share=eval_share)
            mlflow.log_metrics(
                {
                    "records": report.records,
                    "valid": report.valid,
                    "prompts": report.prompts,
                    "rejected": sum(report.rejected.values()),
                    **{f"split_{k}": v for k, v in report.splits.items()},
                }
            )
            mlflow.log_artifact(str(out / "rejects.jsonl"))
            log_parquet_input(out / "prompts.parquet", "prompts")
        mark_done(out)
    return str(out / "prompts.parquet")


@task(name="sample", retries=1, retry_condition_fn=transient)
def sample_task(cfg: SampleConfig, parent: str | None) -> str:
    """Sample k responses per training prompt (resumable shards)."""
    out = Path(cfg.output_dir)
    if not _reused(out, "sample", parent):
        with stage_run("sample", parent, cfg.model_dump()):
            r = sample(cfg, progress=False)
            mlflow.log_metrics(
                {
                    "prompts": r.prompts,
                    "shards": r.shards_total,
                    "shards_sampled": r.shards_done_now,
                    "generated_tokens": r.generated_tokens,
                    "tokens_per_s": r.tokens_per_s,
                }
            )
            rows = pq.read_table(r.samples_path).to_pandas()
            mlflow.log_table(
                rows.head(200)[["prompt_id", "source", "finish_reason", "num_tokens", "text"]],
                "samples_head.json",
            )
            log_parquet_input(r.samples_path, "samples")
        mark_done(out)
    return str(out / "samples.parquet")


@task(name="score", retries=1, retry_condition_fn=transient)
def score_task(cfg: ScoreConfig, parent: str | None) -> str:
    """Score every candidate with the reward."""
    out = Path(cfg.output_dir)
    if not _reused(out, "score", parent):
        with stage_run("score", parent, cfg.model_dump()):
            r = score(cfg, progress=False)
            mlflow.log_metrics(
                {
                    "responses": r.responses,
                    "unique_pairs": r.unique_pairs,
                    "scored_now": r.scored_now,
                    "cached": r.cached,
                    "seconds": r.seconds,
                }
            )
            mlflow.set_tag("reward_model", r.reward_id)
            rewards = {row["response_id"]: row["reward"] for row in pq.read_table(r.scores_path).to_pylist()}
            mlflow.log_figure(
                plots.rewards_by_source(read_samples(cfg.samples), rewards), "rewards_by_source.png"
            )
        mark_done(out)
    return str(out / "scores.parquet")


@task(name="build", retries=1, retry_condition_fn=transient)
def build_task(cfg: BuildConfig, parent: str | None) -> str:
    """Join into the listwise training set."""
    out = Path(cfg.output_dir)
    if not _reused(out, "build", parent):
        with stage_run("build", parent, cfg.model_dump()):
            r = build(cfg)
            stats = json.loads(r.stats_path.read_text())
            mlflow.log_metrics(numeric(stats))
            mlflow.log_artifact(str(r.stats_path))
            log_parquet_input(r.train_path, "training")
        mark_done(out)
    return str(out / "train.parquet")


class PrefectProgress:
    """Training progress as a Prefect progress artifact and log lines (the MetricsLogger protocol)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="training-progress", description="RRHF training"
        )
        self.logger = get_run_logger()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        done = (
            step / self.cfg.max_steps if self.cfg.max_steps else metrics.get("epoch", 0.0) / self.cfg.epochs
        )
        update_progress_artifact(self.artifact_id, progress=min(100.0, 100.0 * done))
        self.logger.info(
            f"step {step}: loss {metrics['loss']:.4f}, ranking accuracy {metrics['ranking_accuracy']:.3f}, "
            f"{metrics['tokens_per_s']:.0f} tok/s"
        )


@task(name="train", retries=0)
def train_stage_task(cfg: TrainConfig, parent: str | None) -> str:
    """Train with RRHF; step metrics stream to MLflow."""
    out = Path(cfg.output_dir)
    if not _reused(out, "train", parent):
        with stage_run("train", parent, cfg.model_dump()) as run:
            log_parquet_input(cfg.data, "training")
            train(
                cfg, logger=FanOutLogger(MlflowLogger(run.info.run_id), PrefectProgress(cfg)), progress=False
            )
            mlflow.log_figure(
                plots.training_curves(read_metrics(out / "metrics.jsonl")), "training_curves.png"
            )
            mlflow.log_artifact(str(out / "train_summary.json"))
        mark_done(out)
    return str(out / "model")


@task(name="evaluate", retries=1, retry_condition_fn=transient)
def evaluate_task(cfg: EvalConfig, parent: str | None) -> dict[str, Any]:
    """Candidate vs baseline on the held-out prompts."""
    with stage_run("evaluate", parent, cfg.model_dump()):
        report = evaluate(cfg).to_dict()
        mlflow.log_metrics(numeric(report))
        mlflow.log_dict(report, "eval_report.json")
        rows = pq.read_table(Path(cfg.output_dir) / "eval_samples.parquet").to_pandas()
        mlflow.log_table(rows, "eval_samples.json")
        groups = {role: rows[rows.role == role].reward.tolist() for role in ("baseline", "candidate")}
        mlflow.log_figure(
            plots.reward_histograms(groups, "Held-out reward: baseline vs trained"), "eval_rewards.png"
        )
    create_table_artifact(
        key="evaluation",
        table=[
            {
                "model": role,
                "reward_mean": report[role]["reward_mean"],
                "reward_median": report[role]["reward_median"],
                "tokens_mean": report[role]["tokens_mean"],
                "preference_accuracy": report[role]["preference_accuracy"],
            }
            for role in ("baseline", "candidate")
        ],
        description=f"win rate {report['win_rate']:.3f}",
    )
    return report


@task(name="register-and-promote", retries=1, retry_condition_fn=transient)
def promote_task(
    model_dir: str, report: dict[str, Any] | None, gate: dict[str, float], name: str, parent: str | None
) -> dict[str, Any]:
    """Register the model as challenger; move champion only if the gate passes."""
    with stage_run("register", parent, {"registered_model": name, **gate}):
        version = registry.register(model_dir, name)
        decision: Decision = decide(report, GateConfig(**gate))
        promoted = registry.record_decision(name, version, decision)
        mlflow.log_dict(decision.to_dict(), "decision.json")
        mlflow.log_metrics({f"gate.{k}": v for k, v in decision.numbers.items()})
    create_table_artifact(
        key="promotion",
        table=[{"version": version, "promoted": promoted, "reasons": "; ".join(decision.reasons)}],
    )
    return {"version": version, "promoted": promoted, "decision": decision.to_dict()}


def summary_markdown(summary: dict[str, Any]) -> str:
    e, d = summary["evaluation"], summary["promotion"]
    lines = [
        "# RRHF round",
        "",
        f"- policy trained: `{summary['start_model']}` -> model version {d['version']} (`challenger`)",
        f"- held-out reward: baseline {e['baseline']['reward_mean']:.4f} -> trained {e['candidate']['reward_mean']:.4f} "
        f"(gain {e['reward_gain']:+.4f}), win rate {e['win_rate']:.3f} ({e['wins']} wins, {e['ties']} ties, {e['losses']} losses)",
        f"- promotion: {'**champion moved**' if d['promoted'] else 'champion kept'}: {'; '.join(d['decision']['reasons'])}",
        f"- MLflow run: {summary['mlflow_run_id']} in {summary['tracking_uri']}",
    ]
    return "\n".join(lines)


def publish_summary(summary: dict[str, Any]) -> None:
    create_markdown_artifact(
        key="rrhf-round", markdown=summary_markdown(summary), description="RRHF round summary"
    )
