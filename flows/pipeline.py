"""The end-to-end RRHF round and the retraining round, as Prefect flows tracked in one MLflow parent run each."""

from __future__ import annotations

import json
import shutil
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger

from rrhf_core.config import BuildConfig, EvalConfig, PipelineConfig, SampleConfig, ScoreConfig, TrainConfig
from rrhf_core.stagecache import stage_dir
from tasks import registry
from tasks.stages import (
    build_task,
    evaluate_task,
    ingest_task,
    promote_task,
    publish_summary,
    sample_task,
    score_task,
    train_stage_task,
)
from tasks.tracking import configure

EMBEDDED_PROMPTS = "embedded:demo-prompts"


def resolve_inputs(inputs: list[str]) -> list[str]:
    """``embedded:demo-prompts`` is the project's own prompt set, shipped in the package."""
    return [
        str(files("rrhf_core").joinpath("data/demo_prompts.jsonl")) if i == EMBEDDED_PROMPTS else i
        for i in inputs
    ]


def _best_of_n(build_folder: str) -> float | None:
    stats = Path(build_folder).parent / "build_stats.json"
    return json.loads(stats.read_text())["best_of_n_mean"] if stats.exists() else None


@flow(name="rrhf-pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig) -> dict[str, Any]:
    """Ingest -> sample -> score -> build -> train -> evaluate -> register (challenger) -> gate (champion)."""
    log = get_run_logger()
    t0 = time.perf_counter()
    work = Path(config.workdir).resolve()
    uri = configure(work, config.experiment, config.tracking_uri)
    champ = registry.champion(config.registered_model)
    start_model = champ["model_dir"] if (config.from_champion and champ) else config.policy
    baseline = champ["model_dir"] if champ else config.policy
    log.info(f"start model: {start_model}; baseline for evaluation: {baseline}")
    stages = work / "stages"
    with mlflow.start_run(run_name="rrhf-round") as parent:
        pid = parent.info.run_id
        mlflow.log_params(
            {
                "start_model": start_model,
                "baseline": baseline,
                "reward": config.reward,
                "registered_model": config.registered_model,
            }
        )
        mlflow.log_dict(config.model_dump(), "pipeline_config.json")

        inputs = resolve_inputs(config.prompts)
        ingest_dir = stage_dir(stages, "ingest", {"eval_share": config.eval_share}, inputs)
        prompts = ingest_task(inputs, str(ingest_dir), config.eval_share, pid)
        shutil.copyfile(prompts, work / "prompts.parquet")  # a stable path for evaluation-only runs

        sample_settings = {
            **config.sample.model_dump(),
            "model": start_model,
            "prompt_format": config.prompt_format,
            "max_prompt_tokens": config.max_prompt_tokens,
            "cache_dir": config.cache_dir,
        }
        sample_dir = stage_dir(stages, "sample", sample_settings, [prompts])
        samples = sample_task(
            SampleConfig(prompts=prompts, output_dir=str(sample_dir), **sample_settings), pid
        )

        score_settings = {"reward": config.reward}
        score_dir = stage_dir(stages, "score", score_settings, [samples])
        cache = str(Path(config.cache_dir) / "scores.sqlite") if config.cache_dir else None
        scores = score_task(
            ScoreConfig(
                samples=[samples],
                prompts=prompts,
                output_dir=str(score_dir),
                cache_path=cache,
                **score_settings,
            ),
            pid,
        )

        build_dir = stage_dir(stages, "build", {"max_k": config.max_k}, [samples, scores])
        train_set = build_task(
            BuildConfig(
                prompts=prompts,
                samples=[samples],
                scores=[scores],
                output_dir=str(build_dir),
                max_k=config.max_k,
            ),
            pid,
        )

        train_settings = {
            **config.train.model_dump(),
            "model": start_model,
            "prompt_format": config.prompt_format,
            "cache_dir": config.cache_dir,
        }
        train_dir = stage_dir(stages, "train", train_settings, [train_set])
        model_dir = train_stage_task(
            TrainConfig(data=train_set, output_dir=str(train_dir), resume=True, **train_settings), pid
        )

        eval_cfg = EvalConfig(
            prompts=prompts,
            output_dir=str(work / "eval" / pid),
            candidate=model_dir,
            baseline=baseline,
            reward=config.reward,
            prompt_format=config.prompt_format,
            max_prompt_tokens=config.max_prompt_tokens,
            best_of_n_ceiling=_best_of_n(train_set),
            cache_dir=config.cache_dir,
            **config.evaluate.model_dump(),
        )
        eval_state = evaluate_task(eval_cfg, pid, return_state=True)
        report = eval_state.result(raise_on_failure=False) if eval_state.is_completed() else None
        # every trained model is registered as challenger; a failed evaluation never moves champion
        promotion = promote_task(model_dir, report, config.gate, config.registered_model, pid)
        if report is None:
            eval_state.result()  # re-raise the evaluation's error: the round failed

        from prefect.runtime import flow_run

        summary = {
            "flow_run_id": str(flow_run.id),
            "start_model": start_model,
            "baseline": baseline,
            "model_dir": model_dir,
            "evaluation": report,
            "promotion": promotion,
            "mlflow_run_id": pid,
            "tracking_uri": uri,
            "seconds": time.perf_counter() - t0,
        }
        mlflow.log_metrics(
            {
                "held_out_reward_gain": report["reward_gain"],
                "win_rate": report["win_rate"],
                "promoted": float(promotion["promoted"]),
            }
        )
        mlflow.log_dict(summary, "summary.json")
    publish_summary(summary)
    (work / "last_summary.json").write_text(json.dumps(summary, indent=2, default=str))
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
    configure(workdir, experiment, tracking_uri)
    with mlflow.start_run(run_name="rrhf-evaluate") as run:
        return evaluate_task(config, run.info.run_id)
