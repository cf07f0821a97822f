"""``rrhf report SUMMARY...``: the README's result table, rendered from the ``last_summary.json`` files of runs.

Each argument is a ``last_summary.json`` or a run folder holding one. One row per run (seed and precision read from
the run's own configuration), then the machine each run came from; nothing is typed by hand.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rrhf_core.errors import DataError


def _read_json(path: str | Path, name: str, what: str, give: str) -> tuple[Path, Any]:
    """``path`` (or ``path/name`` for a folder) read as JSON; missing or unreadable: a DataError saying ``give``."""
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.exists():
        raise DataError(f"{p} does not exist; {give}")
    try:
        return p, json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{p} is not {what} (cannot read it as JSON: {e})") from None


def load_summary(path: str | Path) -> tuple[Path, dict[str, Any]]:
    p, summary = _read_json(
        path, "last_summary.json", "a run summary", "give a run's last_summary.json or its workdir"
    )
    if not isinstance(summary, dict):
        raise DataError(
            f"{p} is not a run summary: it holds a JSON {type(summary).__name__}, a summary is an object; give a "
            "run's last_summary.json or its workdir"
        )
    missing = [k for k in ("evaluation", "promotion", "config") if not summary.get(k)]
    if missing:
        raise DataError(f"{p} lacks {missing}: was it written by `rrhf pipeline` of this version?")
    return p, summary


def _precision(s: dict[str, Any]) -> str:
    p = {k: v for k, v in (s.get("precision") or {}).items() if k not in ("round", "decided_by")}
    kinds = set(p.values())
    return next(iter(kinds)) if len(kinds) == 1 else ", ".join(f"{k} {v}" for k, v in p.items())


def row(s: dict[str, Any]) -> list[str]:
    e, cfg = s["evaluation"], s["config"]
    lo, hi = e["reward_gain_ci"]
    bok = e.get("baseline_best_of_k")
    return [
        str(cfg["train"]["seed"]),
        _precision(s),
        str(e["prompts"]),
        f"{e['baseline']['reward_mean']:.3f}",
        f"{bok:.3f} (k={e['best_of_k']})" if bok is not None else "-",
        f"{e['candidate']['reward_mean']:.3f}",
        f"{e['reward_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
        f"{e['win_rate']:.3f} ({e['wins']} W, {e['ties']} T, {e['losses']} L)",
        "promoted"
        if s["promotion"]["promoted"]
        else "**inconclusive**"
        if (s["promotion"].get("decision") or {}).get("verdict") == "inconclusive"
        else "**not promoted**",
        f"{s['seconds']:.0f}",
    ]


HEADER = [
    "seed",
    "precision",
    "held-out prompts",
    "base (greedy)",
    "base best-of-k",
    "trained (greedy)",
    "gain [95 % CI]",
    "win rate",
    "gate",
    "pipeline s",
]


def judge_label(s: dict[str, Any]) -> str:
    """The judge as configured (``trained:judge`` names a reward model of the round) or as the report has it."""
    spec = (s["config"].get("evaluate") or {}).get("judge") or ""
    specs = [spec] if isinstance(spec, str) else spec
    if specs and all(x.startswith("trained:") for x in specs):
        return (
            specs[0] if len(specs) == 1 else f"mean of {len(specs)} standardised judges: {', '.join(specs)}"
        )
    return s["evaluation"]["judge"]


def preference_accuracy(s: dict[str, Any]) -> str:
    e = s["evaluation"]
    b, c = e["baseline"].get("preference_accuracy"), e["candidate"].get("preference_accuracy")
    return f"{b:.3f} -> {c:.3f} ({e.get('preference_pairs', 0)})" if b is not None and c is not None else "-"


def each_judge(s: dict[str, Any]) -> str:
    """An ensemble's judges, each with its own gain and CI (in its own units)."""
    judges = s["evaluation"].get("judges") or []
    return (
        "; ".join(
            f"{j['reward_gain']:+.3f} [{j['reward_gain_ci'][0]:+.3f}, {j['reward_gain_ci'][1]:+.3f}]"
            for j in judges
        )
        if len(judges) > 1
        else "-"
    )


def reward_models(s: dict[str, Any]) -> str:
    rms = s.get("reward_models") or {}
    return (
        ", ".join(
            f"{name} {rm['held_out_accuracy']:.3f}" if rm.get("held_out_accuracy") is not None else name
            for name, rm in rms.items()
        )
        or "-"
    )


def length_controlled(s: dict[str, Any]) -> str:
    """The gain at equal length with its CI, and the length ratio."""
    e = s["evaluation"]
    lc, ci = e.get("reward_gain_lc"), e.get("reward_gain_lc_ci")
    gain = f"{lc:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if lc is not None and ci else "not measurable"
    return f"{gain} (length ratio {e.get('length_ratio', 1.0):.2f})"


def benchmark_cells(s: dict[str, Any], tasks: list[str]) -> list[str]:
    """Per benchmark task: its first metric, baseline -> candidate, the difference and its CI."""
    found = {b["task"]: b for b in s["evaluation"].get("benchmarks") or []}
    cells = []
    for t in tasks:
        b = found.get(t)
        m = next((x for x in b["metrics"] if x["name"] == b["primary"]), None) if b else None
        if m is None:
            cells.append("-")
            continue
        ci = m.get("difference_ci")
        ci_text = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        cells.append(f"{m['baseline']:.3f} -> {m['candidate']:.3f}, {m['difference']:+.3f}{ci_text}")
    return cells


def render(paths: Sequence[str | Path]) -> str:
    summaries = [load_summary(p)[1] for p in paths]
    if not summaries:
        raise DataError("no run summaries given")
    extra = any(s.get("reward_models") for s in summaries) or any(
        s["evaluation"]["baseline"].get("preference_accuracy") is not None for s in summaries
    )
    header = HEADER + (["policy-as-RM accuracy (pairs)", "reward models' held-out accuracy"] if extra else [])
    ensemble = any(len(s["evaluation"].get("judges") or []) > 1 for s in summaries)
    header += ["each judge's gain [95 % CI]"] if ensemble else []
    lc = any("reward_gain_lc" in s["evaluation"] for s in summaries)
    header += ["gain at equal length [95 % CI]"] if lc else []
    tasks = sorted({b["task"] for s in summaries for b in s["evaluation"].get("benchmarks") or []})
    prim = {b["task"]: b["primary"] for s in summaries for b in s["evaluation"].get("benchmarks") or []}
    header += [f"lm-eval {t} {prim[t]}: base -> trained, diff [95 % CI]" for t in tasks]
    judges = sorted({judge_label(s) for s in summaries})
    lines = [
        f"Judge: {', '.join(f'`{j}`' for j in judges)}"
        + (
            " (the training reward itself)"
            if any(s["evaluation"]["judge_is_training_reward"] for s in summaries)
            else " (not the training reward)"
        ),
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += [
        "| "
        + " | ".join(
            row(s)
            + ([preference_accuracy(s), reward_models(s)] if extra else [])
            + ([each_judge(s)] if ensemble else [])
            + ([length_controlled(s)] if lc else [])
            + benchmark_cells(s, tasks)
        )
        + " |"
        for s in summaries
    ]
    gains = [s["evaluation"]["reward_gain"] for s in summaries]
    promoted = sum(bool(s["promotion"]["promoted"]) for s in summaries)
    spread = f" (s.d. {statistics.stdev(gains):.3f})" if len(gains) > 1 else ""
    lines += [
        "",
        f"{len(summaries)} run(s): mean gain {statistics.fmean(gains):+.3f}{spread}; "
        f"CI lower bound above 0 in {sum(s['evaluation']['reward_gain_ci'][0] > 0 for s in summaries)}; "
        f"promoted in {promoted}.",
        "Machines: " + "; ".join(sorted({s.get("machine", "not recorded") for s in summaries})) + ".",
    ]
    return "\n".join(lines)


def run_report(paths: Sequence[str]) -> int:
    print(render(paths))
    return 0


def load_comparison(path: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    p, rows = _read_json(
        path,
        "last_comparison.json",
        "a comparison",
        "give an `rrhf compare` workdir or its last_comparison.json",
    )
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "loss" in r for r in rows):
        raise DataError(
            f"{p} is not a comparison: `rrhf compare` writes a JSON list of rows, each with a loss"
        )
    return p, rows


def comparison_columns(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The optional columns of comparison rows (``tasks.round.comparison_row``): the per-group gains
    (``"KEY=VALUE gain"``) and the benchmarks' primary metrics (``"TASK METRIC"``), each sorted."""
    groups = sorted({k for r in rows for k in r if k.endswith(" gain") and "=" in k})
    bench = sorted({k for r in rows for k in r if " " in k and not k.endswith(("(trained)", " gain"))})
    return groups, bench


def _candidate_scores(row: dict[str, Any]) -> dict[str, float]:
    """Per held-out prompt id, the trained model's judge score in this row's evaluation."""
    import pyarrow.parquet as pq

    f = Path(str(row.get("eval_dir", ""))) / "eval_samples.parquet"
    if not row.get("eval_dir") or not f.exists():
        raise DataError(f"the {row['loss']} row names no evaluation folder with eval_samples.parquet ({f})")
    t = pq.read_table(f, columns=["prompt_id", "role", "judge"]).to_pylist()
    return {r["prompt_id"]: float(r["judge"]) for r in t if r["role"] == "candidate"}


def _ci(v: float | None, ci: Sequence[float] | None) -> str:
    return f"{v:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if v is not None and ci else "not measurable"


def render_comparisons(paths: Sequence[str | Path], against: str = "rrhf") -> str:
    """The ablation table of ``rrhf compare`` runs (one per seed, say): a row per loss and run, then per loss over
    the runs the mean gain and ``against`` (RRHF) minus that loss: the paired difference of the two trained models'
    judge scores on the same held-out prompts, pooled over runs, with its bootstrap 95 % CI."""
    from rrhf_core.evaluation.stats import gain_ci

    runs = [load_comparison(p)[1] for p in paths]
    if not runs or not any(runs):
        raise DataError("no comparison rows given")
    rows = [r for run in runs for r in run]
    groups, bench = comparison_columns(rows)
    header = ["loss", "seed", "precision", "base", "trained", "gain [95 % CI]", "gain at equal length [95 % CI]",
              "win rate", "length ratio", "tokens", *groups, *bench]  # fmt: skip
    lines = [
        f"Judge: `{rows[0]['judge']}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for r in rows:
        cells = [r["loss"], str(r.get("seed", "-")), str(r.get("precision", "-")), f"{r['base']:.3f}",
                 f"{r['trained']:.3f}", _ci(r["gain"], r["gain_ci"]), _ci(r.get("gain_lc"), r.get("gain_lc_ci")),
                 f"{r['win_rate']:.3f}", f"{r['length_ratio']:.2f}" if r.get("length_ratio") else "-",
                 f"{r['tokens_mean']:.1f}"]  # fmt: skip
        cells += [f"{r[k]:+.3f}" if isinstance(r.get(k), float) else "-" for k in groups]
        cells += [f"{r[k]:.3f}" if isinstance(r.get(k), float) else "-" for k in bench]
        lines.append("| " + " | ".join(cells) + " |")
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    lines += ["", f"| loss | runs | mean gain (s.d.) | {against} minus this loss, pooled over runs [95 % CI] |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    for loss in losses:
        mine = [r for r in rows if r["loss"] == loss]
        gains = [r["gain"] for r in mine]
        sd = f" ({statistics.stdev(gains):.3f})" if len(gains) > 1 else ""
        diff = "-"
        if loss != against:
            ours_all, theirs_all = [], []
            for run in runs:
                ref = next((r for r in run if r["loss"] == against), None)
                other = next((r for r in run if r["loss"] == loss), None)
                if ref is None or other is None:
                    continue
                a, b = _candidate_scores(ref), _candidate_scores(other)
                for pid in sorted(a.keys() & b.keys()):
                    ours_all.append(a[pid])
                    theirs_all.append(b[pid])
            if ours_all:
                lo, hi = gain_ci(ours_all, theirs_all)
                d = statistics.fmean(ours_all) - statistics.fmean(theirs_all)
                diff = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] ({len(ours_all)} prompt-runs)"
        lines.append(f"| {loss} | {len(mine)} | {statistics.fmean(gains):+.3f}{sd} | {diff} |")
    return "\n".join(lines)


def run_comparison_report(paths: Sequence[str]) -> int:
    print(render_comparisons(paths))
    return 0
