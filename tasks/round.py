"""The round's own bookkeeping: the champion it starts from, its parent MLflow run's parameters, and its summary
(an MLflow artifact, a Prefect markdown artifact and ``last_summary.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from prefect.artifacts import create_markdown_artifact

from rrhf_core.config import redacted
from rrhf_core.pipeline import PipelineConfig
from tasks import registry


def start_and_baseline(config: PipelineConfig) -> tuple[str, str]:
    """The model this round samples from and trains, and the one it is judged against."""
    champ = registry.champion(config.registered_model, trusted_root=config.workdir)
    start = champ["model_dir"] if (config.from_champion and champ) else config.policy
    baseline = champ["model_dir"] if champ else config.policy
    return start, baseline


def log_round_start(
    config: PipelineConfig, start_model: str, baseline: str, precision: dict[str, str] | None = None
) -> None:
    mlflow.log_params(
        {
            "start_model": start_model,
            "baseline": baseline,
            "reward": config.reward,
            "registered_model": config.registered_model,
            **{f"precision.{k}": v for k, v in (precision or {}).items()},
        }
    )
    mlflow.log_dict(redacted(config.model_dump(mode="json")), "pipeline_config.json")


def summary_markdown(summary: dict[str, Any]) -> str:
    e, d = summary["evaluation"], summary["promotion"]
    lines = [
        "# RRHF round",
        "",
        f"- policy trained: `{summary['start_model']}` -> model version {d['version']} (`challenger`)",
        f"- held-out judge `{e['judge']}`"
        + (" (**the training reward itself**)" if e["judge_is_training_reward"] else "")
        + f": baseline {e['baseline']['reward_mean']:.4f} -> trained {e['candidate']['reward_mean']:.4f} "
        f"(gain {e['reward_gain']:+.4f}, 95 % CI {e['reward_gain_ci'][0]:+.4f}..{e['reward_gain_ci'][1]:+.4f}), "
        f"win rate {e['win_rate']:.3f} ({e['wins']} wins, {e['ties']} ties, {e['losses']} losses)",
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
            "held_out_reward_gain_ci_lo": e["reward_gain_ci"][0],
            "held_out_reward_gain_ci_hi": e["reward_gain_ci"][1],
            "win_rate": e["win_rate"],
            "promoted": float(summary["promotion"]["promoted"]),
        }
    )
    mlflow.log_dict(summary, "summary.json")
    create_markdown_artifact(
        key="rrhf-round", markdown=summary_markdown(summary), description="RRHF round summary"
    )
    (workdir / "last_summary.json").write_text(json.dumps(summary, indent=2, default=str))


def comparison_row(loss: str, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "loss": loss,
        "judge": report["judge"],
        "base": report["baseline"]["reward_mean"],
        "trained": report["candidate"]["reward_mean"],
        "gain": report["reward_gain"],
        "gain_ci": report["reward_gain_ci"],
        "win_rate": report["win_rate"],
        "gain_lc": report.get("reward_gain_lc"),
        "gain_lc_ci": report.get("reward_gain_lc_ci"),
        "length_ratio": report.get("length_ratio"),
        "tokens_mean": report["candidate"]["tokens_mean"],
        **{f"{report['group_by']}={g['group']} gain": g["gain"] for g in report.get("groups") or []},
        **{
            f"{b['task']} {m['name']}": m["candidate"]
            for b in report.get("benchmarks") or []
            for m in b["metrics"][:1]
        },
        **{f"{k} (trained)": v for k, v in report["candidate"]["also"].items()},
    }


def publish_comparison(rows: list[dict[str, Any]], workdir: Path) -> None:
    """The comparison as an MLflow table, plot and JSON, a Prefect table artifact and ``last_comparison.json``."""
    from prefect.artifacts import create_table_artifact

    from rrhf_core.evaluation import plots

    judge = rows[0]["judge"] if rows else "judge"
    mlflow.log_dict({"rows": rows}, "comparison.json")
    mlflow.log_table({k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}, "comparison_table.json")
    mlflow.log_figure(plots.comparison(rows, judge), "comparison.png")
    create_table_artifact(
        key="rrhf-compare",
        table=[{**r, "gain_ci": f"{r['gain_ci'][0]:+.3f}..{r['gain_ci'][1]:+.3f}"} for r in rows],
        description=f"Training methods on the same data and steps, judged by {judge}",
    )
    (workdir / "last_comparison.json").write_text(json.dumps(rows, indent=2))
