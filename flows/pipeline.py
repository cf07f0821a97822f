"""The RRHF round, the retraining round, evaluation and training alone: Prefect flows, each tracked in one MLflow
parent run. The round reads as the pipeline: each stage's result feeds the next."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from rrhf_core import pipeline as plan
from rrhf_core import redaction
from rrhf_core.config import redact_credentials, redacted
from rrhf_core.data import arrivals
from rrhf_core.evaluation.config import EvalConfig
from rrhf_core.hardware import describe_machine
from rrhf_core.pipeline import PipelineConfig
from rrhf_core.reward_model.config import RMTrainConfig
from rrhf_core.stages import BY_NAME, DATA_STAGES
from rrhf_core.training.config import TrainConfig
from tasks import registry
from tasks.review import human_review
from tasks.round import (
    comparison_row,
    finish_round,
    log_round_start,
    publish_comparison,
    start_and_baseline,
)
from tasks.stages import STAGE_TASKS, arrivals_task, evaluate_task, promote_task, train_rm_task, train_task
from tasks.tracking import start_run, tracked_workdir

REWARD_REGISTRY = "rrhf-reward"
redaction.install()  # a worker runs these flows: its logs and output carry no credentials either


def register_reward_model(model_dir: str, name: str, alias: str | None = None) -> str:
    """Register a trained reward model (as a text-classification model) with `challenger` and its round role."""
    aliases = ("challenger", re.sub(r"[^A-Za-z0-9_-]", "-", alias)) if alias else ("challenger",)
    return registry.register(model_dir, name, task="text-classification", aliases=aliases)


def data_stages(
    config: PipelineConfig, model: str, stages: str, parent: str
) -> tuple[PipelineConfig, dict[str, Any]]:
    """The data stages of the stage table, in its order: ingest -> the round's reward models (each registered) ->
    sample (from ``model``) -> score -> build, each wired from the results before it. Returns the configuration
    with ``trained:NAME`` rewards resolved to their folders, and each stage's result by instance name."""
    results: dict[str, Any] = {}
    for stage in DATA_STAGES:
        for instance, stage_cfg in stage.wire(config, results, model).items():
            results[instance] = STAGE_TASKS[stage.name](stage_cfg, stages, parent)
            if instance == "ingest":
                plan.check_splits(config, results[instance].prompts)
            if stage.per_reward_model:
                register_reward_model(
                    results[instance].model_dir, REWARD_REGISTRY, alias=instance.split(":", 1)[1]
                )
    rms = {name: results[f"train-rm:{name}"].model_dir for name in config.reward_models}
    return plan.with_trained_rewards(config, rms), results


@flow(name="rrhf-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig) -> dict[str, Any]:
    """Ingest -> sample -> score -> build -> train -> evaluate -> register (challenger) -> gate (champion)."""
    t0 = time.perf_counter()
    plan.preflight(config)  # inputs and models checked before the workdir is taken or any stage runs
    config, precision = plan.with_precision(config)  # decided once: every stage, its key and the record agree
    work = Path(config.workdir).resolve()
    stages = str(work / "stages")
    with tracked_workdir(work, config.experiment, config.tracking_uri, "rrhf-pipeline") as uri:
        return _round(config, precision, work, stages, uri, t0)


def _round(
    config: PipelineConfig, precision: dict[str, Any], work: Path, stages: str, uri: str, t0: float
) -> dict[str, Any]:
    start_model, baseline = start_and_baseline(config)
    log = get_run_logger()
    log.info(f"start model: {start_model}; baseline for evaluation: {baseline}")
    log.info(f"precision: {precision['round']} ({precision['decided_by']})")
    with start_run("rrhf-round") as parent:
        pid = parent.info.run_id
        log_round_start(config, start_model, baseline, precision)
        take = None
        if config.arrivals is not None:
            take = arrivals_task(config.arrivals, work, pid, config.sample.seed, pid)
            if take.input_file is None:
                return skipped_round(config, take, work, pid, uri, t0)
            inputs = {
                "prompts": [str(take.input_file)],
                "ingest": config.ingest.model_copy(update={"eval_share": 0.0}),
            }
            config = config.model_copy(update=inputs)

        resolved, results = data_stages(config, start_model, stages, pid)
        prompts, built = results["ingest"].prompts, results["build"]
        # stable paths of the latest round's prompts and training set: evaluation-only and training-only runs (the
        # `evaluate` and `train` deployments) read them
        shutil.copyfile(prompts, work / "prompts.parquet")
        shutil.copyfile(built.train_set, work / "train.parquet")
        train_cfg = BY_NAME["train"].wire(resolved, results, start_model)["train"]
        trained = results["train"] = train_task(train_cfg, stages, pid)

        eval_dir = str(work / "eval" / pid)
        eval_cfg = plan.eval_config(
            resolved, prompts, trained.model_dir, baseline, eval_dir, built.best_of_n_mean
        )
        eval_state = evaluate_task(eval_cfg, pid, return_state=True)
        report = eval_state.result(raise_on_failure=False) if eval_state.is_completed() else None
        review = None
        if report is not None and resolved.gate.human != "off":
            review = human_review(eval_dir, resolved.gate, work, pid, resolved.evaluate.seed)
        # every trained model is registered as challenger; a failed evaluation never moves champion
        promotion = promote_task(
            trained, report, resolved.gate, resolved.registered_model, pid, resolved.prompt_format, review
        )
        if report is None:
            eval_state.result()  # re-raise the evaluation's error: the round failed

        summary = {
            "flow_run_id": str(flow_run.id),
            "start_model": start_model,
            "baseline": baseline,
            "model_dir": trained.model_dir,
            "reused": [name for name, res in results.items() if res.reused],
            "reward_models": {
                name.removeprefix("train-rm:"): {
                    "model_dir": res.model_dir,
                    "held_out_accuracy": res.accuracy,
                }
                for name, res in results.items()
                if name.startswith("train-rm:")
            },
            "evaluation": report,
            "promotion": promotion,
            "mlflow_run_id": pid,
            "tracking_uri": redact_credentials(uri),
            "seconds": time.perf_counter() - t0,
            "precision": precision,
            "machine": describe_machine(),
            "config": redacted(config.model_dump(mode="json")),
        }
        if take is not None:
            summary["arrivals"] = take.arrivals.summary()
            mark = arrivals.commit(work / arrivals.WATERMARK, arrivals.Watermark.load(work / arrivals.WATERMARK),
                                   take.arrivals, pid, bool(promotion["promoted"]))  # fmt: skip
            mlflow.log_artifact(str(work / arrivals.WATERMARK))
            log.info(
                f"arrivals: watermark committed ({len(mark.files)} files consumed over {len(mark.rounds)} rounds)"
            )
        finish_round(summary, work)
    return summary


def skipped_round(
    config: PipelineConfig, take: Any, work: Path, pid: str, uri: str, t0: float
) -> dict[str, Any]:
    """A round with too few new prompts: nothing sampled, trained or registered; the summary and the run say why."""
    summary = {
        "flow_run_id": str(flow_run.id),
        "skipped": take.skip_reason,
        "arrivals": take.arrivals.summary(),
        "mlflow_run_id": pid,
        "tracking_uri": redact_credentials(uri),
        "seconds": time.perf_counter() - t0,
        "config": redacted(config.model_dump(mode="json")),
    }
    mlflow.set_tag("rrhf.skipped", take.skip_reason)
    mlflow.log_dict(summary, "summary.json")
    (work / "last_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    get_run_logger().info(f"round skipped: {take.skip_reason}")
    return summary


@flow(name="rrhf-retrain", log_prints=True)
def retrain_flow(config: PipelineConfig) -> dict[str, Any]:
    """Another RRHF round sampled from (and training) the current champion: the paper's iterative IP-n."""
    return pipeline_flow(config.model_copy(update={"from_champion": True}))


@flow(name="rrhf-evaluate", log_prints=True)
def evaluate_flow(
    config: EvalConfig,
    workdir: str = "runs/pipeline",
    experiment: str = "rrhf",
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Evaluation only: a candidate against a baseline on held-out prompts, tracked in MLflow."""
    with (
        tracked_workdir(workdir, experiment, tracking_uri, "rrhf-evaluate"),
        start_run("rrhf-evaluate") as run,
    ):
        return evaluate_task(config, run.info.run_id)


@flow(name="rrhf-train", log_prints=True)
def train_flow(
    config: TrainConfig,
    workdir: str = "runs/pipeline",
    experiment: str = "rrhf",
    tracking_uri: str | None = None,
) -> str:
    """Training alone on a listwise set, into ``config.output_dir``, tracked in MLflow; returns the model folder."""
    with tracked_workdir(workdir, experiment, tracking_uri, "rrhf-train"), start_run("rrhf-train") as run:
        return train_task(config, None, run.info.run_id).model_dir


@flow(name="rrhf-train-rm", log_prints=True)
def train_rm_flow(
    config: RMTrainConfig,
    workdir: str = "runs/pipeline",
    experiment: str = "rrhf",
    tracking_uri: str | None = None,
    registered_model: str = REWARD_REGISTRY,
) -> dict[str, Any]:
    """Reward-model training alone, into ``config.output_dir``, tracked in MLflow and registered (`challenger`);
    returns the model folder, its registered version and the held-out report."""
    with (
        tracked_workdir(workdir, experiment, tracking_uri, "rrhf-train-rm"),
        start_run("rrhf-train-rm") as run,
    ):
        trained = train_rm_task(config, None, run.info.run_id)
        version = register_reward_model(trained.model_dir, registered_model)
    report = json.loads((Path(trained.folder) / "rm_report.json").read_text())
    return {"model_dir": trained.model_dir, "version": version, "report": report}


# the paper's Table 7 rows and the pairwise baselines: name -> the training settings that make it
COMPARE_LOSSES: dict[str, dict[str, Any]] = {
    "rrhf": {"loss": "rrhf"},
    "ranking": {"loss": "rrhf", "sft_weight": 0.0},  # the ranking term alone (Table 7, "w/o L_ft")
    "sft_best": {"loss": "sft_best"},
    "dpo": {"loss": "dpo"},
    "simpo": {"loss": "simpo"},
}


@flow(name="rrhf-compare", log_prints=True)
def compare_flow(config: PipelineConfig, losses: list[str] | None = None) -> list[dict[str, Any]]:
    """RRHF beside its ablation and baselines (``COMPARE_LOSSES``): one built dataset (the round's data stages, reused when done), then each loss
    trained with the same settings and steps and evaluated by the same judge against the same base policy; one
    comparison table and plot in MLflow and as a Prefect artifact."""
    losses = losses or list(COMPARE_LOSSES)
    plan.preflight(config)
    config, _ = plan.with_precision(config)
    work = Path(config.workdir).resolve()
    stages = str(work / "stages")
    with (
        tracked_workdir(work, config.experiment, config.tracking_uri, "rrhf-compare"),
        start_run("rrhf-compare") as parent,
    ):
        pid = parent.info.run_id
        log_round_start(config, config.policy, config.policy)
        config, data = data_stages(config, config.policy, stages, pid)
        prompts, built = data["ingest"].prompts, data["build"]
        rows = []
        for loss in losses:
            variant = config.model_copy(
                update={"train": config.train.model_copy(update=COMPARE_LOSSES[loss])}
            )
            trained = train_task(plan.train_config(variant, built.train_set, config.policy), stages, pid)
            out = str(work / "eval" / pid / loss)
            cfg = plan.eval_config(
                variant, prompts, trained.model_dir, config.policy, out, built.best_of_n_mean
            )
            row = comparison_row(loss, evaluate_task(cfg, pid))
            rows.append({**row, "seed": config.train.seed, "precision": variant.train.dtype, "eval_dir": out})
        publish_comparison(rows, work)
    return rows
