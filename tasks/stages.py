"""Prefect tasks over the rrhf_core stages: each calls one entry point, tracks it in a child MLflow run and returns
the stage's result (:mod:`rrhf_core.pipeline`: paths plus what the next stage needs).

Reuse happens in one place, :func:`reuse_or_run`: a stage's output folder is keyed on its input contents, its
output-changing settings and its code (:mod:`rrhf_core.reuse`); a finished folder with the same key is reused with
its stored result, and its MLflow run says so. Retries are for transient failures only: user errors (RRHFError:
bad data, bad settings) are never retried.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.events import emit_event
from pydantic import BaseModel

from rrhf_core.config import redact_credentials
from rrhf_core.data.arrivals import WATERMARK, ArrivalsSettings, RoundTake, Watermark, prepare_round
from rrhf_core.data.build import build
from rrhf_core.data.config import BuildConfig, IngestConfig
from rrhf_core.data.contracts import read_samples, read_scores
from rrhf_core.data.ingest import run_ingest
from rrhf_core.errors import RRHFError
from rrhf_core.evaluation import plots
from rrhf_core.evaluation.benchmarks import summary_line as benchmark_line
from rrhf_core.evaluation.config import EvalConfig
from rrhf_core.evaluation.evaluate import evaluate, length_controlled_line
from rrhf_core.evaluation.promotion import GateConfig, decide
from rrhf_core.evaluation.review import Review
from rrhf_core.metrics import FanOutLogger, read_metrics
from rrhf_core.pipeline import Built, Ingested, RewardTrained, Sampled, Scored, StageResult, Trained
from rrhf_core.reuse import StageKey, StageStore, stage_inputs
from rrhf_core.reward_model.config import RMTrainConfig
from rrhf_core.reward_model.trainer import train_reward_model
from rrhf_core.sampling.config import SampleConfig
from rrhf_core.sampling.stage import sample
from rrhf_core.scoring.config import ScoreConfig
from rrhf_core.scoring.stage import score
from rrhf_core.training.config import TrainConfig
from rrhf_core.training.launch import train
from tasks import registry
from tasks.traces import read_served
from tasks.tracking import MlflowLogger, log_parquet_input, numeric, stage_run

C = TypeVar("C", bound=BaseModel)
CHAMPION_EVENT = "rrhf.champion.promoted"  # emitted by a promotion, for automations (docs/pipeline.md)
R = TypeVar("R", bound=StageResult)


def interval_metrics(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The report's confidence intervals as ``<prefix><name>_lo`` / ``<prefix><name>_hi`` metrics."""
    out = {}
    for key, value in report.items():
        if key.endswith("_ci") and isinstance(value, list | tuple) and len(value) == 2:
            out[f"{prefix}{key}_lo"], out[f"{prefix}{key}_hi"] = float(value[0]), float(value[1])
    return out


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: anything but a user error (bad input is never retried)."""
    try:
        state.result()
    except RRHFError:
        return False
    except Exception:
        return True
    return False


def reuse_or_run(
    stage: str,
    cfg: C,
    inputs: Mapping[str, str],
    stages: str | None,
    parent: str | None,
    work: Callable[[C, Any], R],
    result_type: type[R],
) -> R:
    """Run ``work(cfg, mlflow_run)`` in the stage's keyed folder, or return the stored result of a finished one.

    ``stages`` is the root of the stage folders; None runs in ``cfg.output_dir`` without reuse (standalone flows).
    """
    log = get_run_logger()
    if stages is None:
        with stage_run(stage, parent, cfg.model_dump()) as run:
            result = work(cfg, run)
            mlflow.log_metrics(result.metrics)
        return result
    store = StageStore(stages)
    key = StageKey.of(stage, cfg, inputs)
    folder = store.folder(key)
    cfg = cfg.model_copy(update={"output_dir": str(folder)})
    done = store.load(key, result_type)
    if done is not None:
        log.info(f"{stage}: reusing {folder} (same inputs, settings and code)")
        with stage_run(stage, parent, {"reused_from": str(folder)}):
            mlflow.set_tag("rrhf.reused", "true")
            mlflow.log_metrics(done.metrics)
        return done.model_copy(update={"reused": True})
    log.info(f"{stage}: running into {folder} ({store.why_runs(key)})")
    with stage_run(stage, parent, cfg.model_dump()) as run:
        mlflow.log_dict(key.as_dict(), "stage_key.json")
        result = work(cfg, run)
        mlflow.log_metrics(result.metrics)
    store.save(key, result)
    return result


@task(name="ingest", retries=1, retry_condition_fn=transient)
def ingest_task(cfg: IngestConfig, stages: str | None, parent: str | None) -> Ingested:
    """Read the prompt inputs into prompts.parquet."""

    def work(cfg: IngestConfig, run: Any) -> Ingested:
        out = Path(cfg.output_dir)
        report = run_ingest(cfg)
        mlflow.log_artifact(str(out / "rejects.jsonl"))
        log_parquet_input(out / "prompts.parquet", "prompts")
        metrics = {
            "records": report.records,
            "valid": report.valid,
            "prompts": report.prompts,
            "rejected": sum(report.rejected.values()),
            **{f"split_{k}": v for k, v in report.splits.items()},
        }
        return Ingested(folder=str(out), prompts=str(out / "prompts.parquet"), metrics=metrics)

    return reuse_or_run("ingest", cfg, stage_inputs("ingest", cfg), stages, parent, work, Ingested)


@task(name="sample", retries=1, retry_condition_fn=transient)
def sample_task(cfg: SampleConfig, stages: str | None, parent: str | None) -> Sampled:
    """Sample k responses per training prompt (resumable shards)."""

    def work(cfg: SampleConfig, run: Any) -> Sampled:
        r = sample(cfg, progress=False, on_progress=StageProgress("sample", "prompts"))
        rows = pq.read_table(r.samples_path).to_pandas()
        mlflow.log_table(
            rows.head(200)[["prompt_id", "source", "finish_reason", "num_tokens", "text"]],
            "samples_head.json",
        )
        log_parquet_input(r.samples_path, "samples")
        metrics = {
            "prompts": r.prompts,
            "shards": r.shards_total,
            "shards_sampled": r.shards_done_now,
            "generated_tokens": r.generated_tokens,
            "tokens_per_s": r.tokens_per_s,
            "dropped_for_length": len(r.dropped_for_length),
        }
        if r.dropped_for_length:
            get_run_logger().warning(
                f"sample: {len(r.dropped_for_length)} prompt(s) longer than max_prompt_tokens "
                f"{cfg.max_prompt_tokens} were not sampled (ids in sample_report.json), e.g. {r.dropped_for_length[0]}"
            )
        return Sampled(folder=cfg.output_dir, samples=str(r.samples_path), metrics=metrics)

    return reuse_or_run("sample", cfg, stage_inputs("sample", cfg), stages, parent, work, Sampled)


@task(name="score", retries=1, retry_condition_fn=transient)
def score_task(cfg: ScoreConfig, stages: str | None, parent: str | None) -> Scored:
    """Score every candidate with the reward."""

    def work(cfg: ScoreConfig, run: Any) -> Scored:
        r = score(cfg, progress=False, on_progress=StageProgress("score", "responses"))
        mlflow.set_tag("reward_model", r.reward_id)
        for i, path in enumerate(cfg.samples):
            log_parquet_input(path, "samples", name=f"samples{i}" if len(cfg.samples) > 1 else None)
        rewards = read_scores([r.scores_path])
        samples = read_samples(cfg.samples)
        mlflow.log_figure(plots.rewards_by_source(samples, rewards), "rewards_by_source.png")
        head = [s for s in samples if s["response_id"] in rewards][:200]
        mlflow.log_table(
            {
                "prompt_id": [s["prompt_id"] for s in head],
                "source": [s["source"] for s in head],
                "reward": [rewards[s["response_id"]] for s in head],
                "num_tokens": [s["num_tokens"] for s in head],
                "text": [s["text"] for s in head],
            },
            "scored_samples_head.json",
        )
        metrics = {
            "responses": r.responses,
            "unique_pairs": r.unique_pairs,
            "scored_now": r.scored_now,
            "cached": r.cached,
            "seconds": r.seconds,
        }
        return Scored(
            folder=cfg.output_dir, scores=str(r.scores_path), reward_id=r.reward_id, metrics=metrics
        )

    return reuse_or_run("score", cfg, stage_inputs("score", cfg), stages, parent, work, Scored)


@task(name="build", retries=1, retry_condition_fn=transient)
def build_task(cfg: BuildConfig, stages: str | None, parent: str | None) -> Built:
    """Join into the listwise training set."""

    def work(cfg: BuildConfig, run: Any) -> Built:
        r = build(cfg)
        mlflow.log_artifact(str(r.stats_path))
        log_parquet_input(r.train_path, "training")
        return Built(
            folder=cfg.output_dir,
            train_set=str(r.train_path),
            best_of_n_mean=r.best_of_n_mean,
            metrics={
                "prompts_in": r.prompts_in,
                "prompts_out": r.prompts_out,
                "reward_mean": r.reward_mean,
                "best_of_n_mean": r.best_of_n_mean,
                **{f"dropped.{k}": v for k, v in numeric(r.dropped).items()},
            },
        )

    return reuse_or_run("build", cfg, stage_inputs("build", cfg), stages, parent, work, Built)


class StageProgress:
    """A stage's progress as a Prefect progress artifact and a log line at every 10 % (``on_progress(done, total)``
    callbacks of the rrhf_core stages)."""

    def __init__(self, stage: str, unit: str) -> None:
        self.stage, self.unit, self.shown = stage, unit, -1
        self.artifact_id = create_progress_artifact(progress=0.0, key=f"{stage}-progress", description=stage)
        self.logger = get_run_logger()

    def __call__(self, done: int, total: int) -> None:
        share = done / max(total, 1)
        update_progress_artifact(self.artifact_id, progress=100.0 * share)
        if int(share * 10) > self.shown:
            self.shown = int(share * 10)
            self.logger.info(f"{self.stage}: {done}/{total} {self.unit} ({100 * share:.0f} %)")


class PrefectProgress:
    """Training progress as a Prefect progress artifact and log lines (the MetricsLogger protocol)."""

    def __init__(self, cfg: TrainConfig | RMTrainConfig, key: str = "training-progress") -> None:
        self.cfg = cfg
        self.artifact_id = create_progress_artifact(progress=0.0, key=key, description=key.replace("-", " "))
        self.logger = get_run_logger()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        max_steps = getattr(self.cfg, "max_steps", None)
        done = step / max_steps if max_steps else metrics.get("epoch", 0.0) / self.cfg.epochs
        update_progress_artifact(self.artifact_id, progress=min(100.0, 100.0 * done))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("epoch", "lr"))
        self.logger.info(f"step {step}: {shown}")


@task(name="train", retries=0)
def train_task(cfg: TrainConfig, stages: str | None, parent: str | None) -> Trained:
    """Train with RRHF; step metrics stream to MLflow and to a Prefect progress artifact."""

    def work(cfg: TrainConfig, run: Any) -> Trained:
        log_parquet_input(cfg.data, "training")
        r = train(
            cfg, logger=FanOutLogger(MlflowLogger(run.info.run_id), PrefectProgress(cfg)), progress=False
        )
        out = Path(cfg.output_dir)
        mlflow.log_figure(plots.training_curves(read_metrics(out / "metrics.jsonl")), "training_curves.png")
        mlflow.log_artifact(str(out / "train_summary.json"))
        final = {f"final_{k}": v for k, v in numeric(r.summary.get("final") or {}).items()}
        return Trained(
            folder=str(out),
            model_dir=str(r.model_dir),
            run_id=run.info.run_id,
            metrics={"steps": r.steps, **final},
        )

    return reuse_or_run("train", cfg, stage_inputs("train", cfg), stages, parent, work, Trained)


@task(name="train-rm", retries=0)
def train_rm_task(cfg: RMTrainConfig, stages: str | None, parent: str | None) -> RewardTrained:
    """Train a reward model on preference pairs (Bradley-Terry); held-out accuracy with CI, margin, calibration and
    length correlation beside the compared rewards'."""

    def work(cfg: RMTrainConfig, run: Any) -> RewardTrained:
        progress = PrefectProgress(cfg, key="reward-model-training")
        r = train_reward_model(
            cfg,
            logger=FanOutLogger(MlflowLogger(run.info.run_id), progress),
            progress=False,
            log=get_run_logger().info,
        )
        out = Path(cfg.output_dir)
        mlflow.log_artifact(str(out / "rm_report.json"))
        held_out = out / "eval_pairs.parquet"
        table = pq.read_table(held_out) if held_out.exists() else None
        pairs = table.to_pylist() if table is not None else []
        if table is not None and pairs:
            mlflow.log_table(table.to_pandas(), "eval_pairs.json")
        mlflow.log_figure(plots.reward_model(read_metrics(out / "metrics.jsonl"), pairs), "reward_model.png")
        ev = r.report["eval"] or {}
        metrics = {
            **numeric(r.report["data"], "data."),
            **numeric({k: v for k, v in ev.items() if k != "accuracy_ci"}, "eval."),
            **{f"eval.{k}": v for k, v in interval_metrics(ev).items()},
            **{
                "compare." + re.sub(r"[^\w.-]", "_", spec) + ".accuracy": m["accuracy"]
                for spec, m in r.report["compare"].items()
            },
            "seconds": r.seconds,
        }
        return RewardTrained(
            folder=str(out), model_dir=str(r.model_dir), accuracy=ev.get("accuracy"), metrics=metrics
        )

    return reuse_or_run("train-rm", cfg, stage_inputs("train-rm", cfg), stages, parent, work, RewardTrained)


@task(name="arrivals")
def arrivals_task(
    settings: ArrivalsSettings, workdir: Path, round_id: str, seed: int, parent: str
) -> RoundTake:
    """The drop folder's and the served traces' new prompts for this round (nothing is marked consumed until the
    round commits)."""
    with stage_run("arrivals", parent, settings.model_dump()):
        served = None
        if settings.traces:
            since = Watermark.load(workdir / WATERMARK).traces.get("until_ms", 0)
            served = read_served(
                settings.traces, settings.traces_tracking_uri or mlflow.get_tracking_uri(), since
            )
        take = prepare_round(settings, workdir, round_id, seed, served)
        a = take.arrivals
        mlflow.log_metrics(
            {
                "arrivals.new_files": len(a.new_files),
                "arrivals.new_prompts": a.new_prompts,
                "arrivals.already_seen": a.already_seen,
                "arrivals.replayed": len(a.replay),
                "arrivals.invalid_files": len(a.invalid),
                "arrivals.held_out_dropped": a.held_out_dropped,
                **(
                    {
                        "arrivals.traces_read": len(a.traffic.trace_ids),
                        "arrivals.traces_with_feedback": a.traffic.with_feedback,
                        "arrivals.traces_left_out": sum(a.traffic.left_out.values()),
                    }
                    if a.traffic is not None
                    else {}
                ),
            }
        )
        mlflow.log_dict(
            {
                "summary": a.summary(),
                "new_files": a.new_files,
                "invalid": a.invalid,
                "skip": take.skip_reason,
            },
            "arrivals_take.json",
        )
        if take.input_file is not None:
            mlflow.log_artifact(str(take.input_file), "arrivals")
    get_run_logger().info(f"arrivals: {a.summary()}" + (f"; {take.skip_reason}" if take.skip_reason else ""))
    return take


@task(name="evaluate", retries=1, retry_condition_fn=transient)
def evaluate_task(cfg: EvalConfig, parent: str | None) -> dict[str, Any]:
    """Candidate vs baseline on the held-out prompts (always run: the baseline may have changed)."""
    with stage_run("evaluate", parent, cfg.model_dump()):
        log_parquet_input(cfg.prompts, "evaluation")
        report = evaluate(cfg, log=get_run_logger().info).to_dict()
        mlflow.set_tags(
            {"judge": report["judge"], "judge_is_training_reward": report["judge_is_training_reward"]}
        )
        mlflow.log_metrics(numeric(report) | interval_metrics(report))
        # each judge's own verdict and held-out pair accuracy, as judge_0.reward_gain, judge_0.held_out_accuracy, ...
        for i, j in enumerate(report["judges"]):
            mlflow.set_tag(f"judge_{i}", j["spec"])
            mlflow.log_metrics(numeric(j, f"judge_{i}.") | interval_metrics(j, f"judge_{i}."))
        log_groups_and_benchmarks(report)
        mlflow.log_dict(report, "eval_report.json")
        rows = pq.read_table(Path(cfg.output_dir) / "eval_samples.parquet").to_pandas()
        mlflow.log_table(rows, "eval_samples.json")
        groups = {role: rows[rows.role == role].judge.tolist() for role in ("baseline", "candidate")}
        title = f"Held-out judge ({report['judge']}): baseline vs trained"
        mlflow.log_figure(plots.reward_histograms(groups, title, xlabel="judge score"), "eval_rewards.png")
    create_table_artifact(
        key="evaluation",
        table=[
            {
                "model": role,
                "judge_mean": report[role]["reward_mean"],
                "training_reward_mean": report[role]["training_reward_mean"],
                "reward_median": report[role]["reward_median"],
                "tokens_mean": report[role]["tokens_mean"],
                "preference_accuracy": report[role]["preference_accuracy"],
            }
            for role in ("baseline", "candidate")
        ],
        description=(
            f"judge {report['judge']}: gain {report['reward_gain']:+.4f} "
            f"(95 % CI {report['reward_gain_ci'][0]:+.4f}..{report['reward_gain_ci'][1]:+.4f}), "
            f"win rate {report['win_rate']:.3f}; {length_controlled_line(report)}"
            + "".join(
                f"; judge {j['spec']} held-out pair accuracy {j['held_out_accuracy']:.3f} on "
                f"{j['held_out_pairs']} pairs"
                for j in report["judges"]
                if j.get("held_out_accuracy") is not None
            )
            + "".join(f"; benchmark {benchmark_line(b)}" for b in report["benchmarks"])
            + "".join(
                f"; {report['group_by']}={g['group']}: gain {g['gain']:+.4f} "
                f"({g['gain_ci'][0]:+.4f}..{g['gain_ci'][1]:+.4f}, {g['prompts']} prompts)"
                for g in report.get("groups") or []
            )
        ),
    )
    return report


def log_groups_and_benchmarks(report: dict[str, Any]) -> None:
    """The gain per prompt group and each lm-eval benchmark's metrics and per-item table, into the active run."""
    # the gain per prompt group (group.held_out_kind=true.gain, ...), when evaluate.group_by is set
    for g in report.get("groups") or []:
        key = re.sub(r"[^0-9A-Za-z_.\-/ ]", "_", f"group.{report['group_by']}={g['group']}").replace("=", ".")
        mlflow.log_metrics(
            {
                f"{key}.gain": g["gain"],
                f"{key}.gain_ci_lo": g["gain_ci"][0],
                f"{key}.gain_ci_hi": g["gain_ci"][1],
                f"{key}.candidate_mean": g["candidate_mean"],
                f"{key}.baseline_mean": g["baseline_mean"],
            }
        )
    # each benchmark's metrics (bench.ifeval.prompt_level_strict_acc.candidate, ...) and its per-item table
    for b in report["benchmarks"]:
        for m in b["metrics"]:
            key = f"bench.{b['task']}.{m['name']}"
            mlflow.log_metrics(
                {
                    f"{key}.candidate": m["candidate"],
                    f"{key}.baseline": m["baseline"],
                    f"{key}.difference": m["difference"],
                }
                | (
                    {
                        f"{key}.difference_ci_lo": m["difference_ci"][0],
                        f"{key}.difference_ci_hi": m["difference_ci"][1],
                    }
                    if m["difference_ci"]
                    else {}
                )
            )
        mlflow.log_table(pq.read_table(b["items_file"]).to_pandas(), f"benchmarks/{b['task']}_items.json")


@task(name="register-and-promote", retries=1, retry_condition_fn=transient)
def promote_task(
    trained: Trained,
    report: dict[str, Any] | None,
    gate: GateConfig,
    name: str,
    parent: str | None,
    prompt_format: str = "chat",
    review: Review | None = None,
) -> dict[str, Any]:
    """Register the model as challenger (once per model content, so a retry registers nothing twice), logged in its
    training run (the version's source run); move champion only if the gate passes (with ``gate.human`` on, the
    human review is part of it). The round's run is tagged with the registered version and the decision."""
    with stage_run("register", parent, {"registered_model": name, **gate.model_dump()}):
        version = registry.register(
            trained.model_dir, name, source_run_id=trained.run_id, prompt_format=prompt_format
        )
        decision = decide(report, gate, review)
        promoted = registry.record_decision(name, version, decision)
        mlflow.log_dict(decision.to_dict(), "decision.json")
        mlflow.log_metrics({f"gate.{k}": v for k, v in decision.numbers.items()})
    if parent:
        MlflowClient().set_tag(parent, "rrhf.registered_model", f"{name} v{version}")
        MlflowClient().set_tag(parent, "rrhf.promotion", decision.outcome)
    create_table_artifact(
        key="promotion",
        table=[
            {
                "version": version,
                "promoted": promoted,
                "verdict": decision.verdict,
                "reasons": "; ".join(decision.reasons),
            }
        ],
    )
    if promoted:  # for automations that react to a new champion (reload the server, notify): docs/pipeline.md
        emit_event(
            event=CHAMPION_EVENT,
            resource={
                "prefect.resource.id": f"mlflow.registered-model.{name}",
                "prefect.resource.name": name,
            },
            payload={
                "version": version,
                "alias": "champion",
                "tracking_uri": redact_credentials(mlflow.get_tracking_uri()),
            },
        )
    out = {"version": version, "promoted": promoted, "decision": decision.to_dict()}
    if review is not None:
        out["review"] = review.to_dict()
    return out


# the task that runs each keyed stage of the stage table (rrhf_core.stages), by stage name
STAGE_TASKS: dict[str, Any] = {
    "ingest": ingest_task,
    "train-rm": train_rm_task,
    "sample": sample_task,
    "score": score_task,
    "build": build_task,
    "train": train_task,
}
