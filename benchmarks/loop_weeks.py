"""Four weeks of the continuous loop on the main job: each week a drop of new prompts and a scheduled round.

    python benchmarks/loop_weeks.py --workdir runs/loop [--weeks 4] [--per-week 40] [--set KEY=VALUE ...]

The suite's 160 training prompts (``embedded:instructions``, records marked ``train``; its held-out prompts are never
dropped) are shuffled once (``--seed``) and cut into ``--weeks`` drops of ``--per-week``. Week n writes its drop into
``<workdir>/drop`` and runs the round exactly as the ``retrain-weekly`` deployment does (``rrhf retrain`` with the
main job's preset and ``arrivals.folder`` set: only new prompts, a replay share of earlier ones and the prompts of
earlier weeks whose model was not promoted, sampled from and training the current champion, two epochs); one more
week follows with no drop, which must train nothing. Review is ``gate.human: optional`` with a short timeout: nobody
answers in a simulation, so every round records the timeout and the numbers decide (the review form answered through
the API and in the Prefect UI is tested in ``tests/test_pipeline.py`` and ``tests/test_review_ui.py``).

Prints, per week: new prompts taken, the held-out pass rate (the round's judge, ``lm-eval:ifeval``) of the champion
before and of the challenger with 95 % CIs, the gain with its paired CI, the gate's decision and the review path;
then the champion after the last week against the champion after week 1 (and against the base policy) on the same
held-out prompts, a paired bootstrap CI over them (the answers are greedy, so each model's answers are those its
round's evaluation stored). Weeks already finished in the workdir are not run again (``weeks.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def drops(weeks: int, per_week: int, seed: int) -> list[list[dict]]:
    suite = ROOT / "rrhf_core" / "data" / "instructions.jsonl"
    train = [json.loads(line) for line in suite.read_text().splitlines() if line.strip()]
    train = [r for r in train if r.get("split") == "train"]
    if weeks * per_week > len(train):
        raise SystemExit(f"{weeks} weeks x {per_week} prompts > the suite's {len(train)} training prompts")
    random.Random(seed).shuffle(train)
    return [train[i * per_week : (i + 1) * per_week] for i in range(weeks)]


def answers(workdir: Path, summary: dict) -> dict[str, dict[str, float]]:
    """Per role (candidate, baseline): prompt id -> the judge's score, from the round's stored evaluation."""
    import pyarrow.parquet as pq

    (table,) = (workdir / "eval" / summary["mlflow_run_id"]).glob("eval_samples.parquet")
    out: dict[str, dict[str, float]] = {"candidate": {}, "baseline": {}}
    for r in pq.read_table(table).to_pylist():
        out[r["role"]][r["prompt_id"]] = float(r["judge"])
    return out


def mean_ci(values: list[float]) -> str:
    from rrhf_core.evaluation.stats import bootstrap_mean_ci

    lo, hi = bootstrap_mean_ci(values, seed=0)
    return f"{statistics.fmean(values):.3f} [{lo:.3f}, {hi:.3f}]"


def paired(a: dict[str, float], b: dict[str, float]) -> str:
    from rrhf_core.evaluation.stats import gain_ci

    ids = sorted(a)
    assert set(ids) == set(b), "the two models were judged on different prompts"
    x, y = [a[i] for i in ids], [b[i] for i in ids]
    lo, hi = gain_ci(x, y, seed=0)
    return f"{statistics.fmean(x) - statistics.fmean(y):+.3f} [{lo:+.3f}, {hi:+.3f}] ({len(ids)} prompts)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="runs/loop")
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--per-week", type=int, default=40)
    ap.add_argument(
        "--seed", type=int, default=0, help="the shuffle of the suite's training prompts into drops"
    )
    ap.add_argument("--review-timeout", type=int, default=10, help="seconds each round waits for a review")
    ap.add_argument("--set", action="append", default=[], help="further settings for every round")
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    box = work / "drop"
    box.mkdir(parents=True, exist_ok=True)
    log_path = work / "weeks.json"
    done: list[dict] = json.loads(log_path.read_text()) if log_path.exists() else []
    weekly = [*drops(args.weeks, args.per_week, args.seed), []]  # and a week with nothing new
    settings = [
        f"arrivals.folder={box}",
        "arrivals.held_out=[embedded:instructions]",
        "arrivals.replay_share=0.25",  # as retrain-weekly
        "gate.human=optional",
        f"gate.human_timeout_s={args.review_timeout}",
        "train.max_steps=null",  # two passes over what the round trains on (new, replayed, carried over)
        "train.epochs=2",
        "evaluate.best_of_k=0",
        *args.set,
    ]
    for week, records in enumerate(weekly, start=1):
        if week <= len(done):
            continue
        if records:
            (box / f"week{week}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        cmd = [sys.executable, "-m", "rrhf_cli", "retrain", "--config", str(ROOT / "configs" / "demo.yaml"),
               "--workdir", str(work / "round")] + [a for s in settings for a in ("--set", s)]  # fmt: skip
        print(f"week {week}: {len(records)} prompts dropped; {' '.join(cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        summary = json.loads((work / "round" / "last_summary.json").read_text())
        done.append(
            {"week": week, "dropped": len(records), "seconds": time.perf_counter() - t0, "summary": summary}
        )
        log_path.write_text(json.dumps(done, indent=2, default=str))
    print(table(done, work / "round"))


def _taken(arrivals: str) -> str:
    """ "1 new file(s) in F: 40 new prompt(s), 0 already trained on, 10 replayed" -> "40 + 10 replayed"."""
    import re

    m = re.search(r"(\d+) new prompt\(s\).*?(\d+) replayed", arrivals)
    carried = re.search(r"(\d+) carried over", arrivals)
    return (f"{m[1]} + {m[2]} replayed" + (f" + {carried[1]} carried over" if carried else "")) if m else "-"


def table(done: list[dict], round_dir: Path) -> str:
    lines = [
        "| week | dropped | new prompts taken | champion before | challenger | gain [95 % CI] | gate | review | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    champions: list[dict[str, float]] = []  # the champion's held-out scores after each trained week
    first_challenger: dict[str, float] | None = None
    base: dict[str, float] | None = None
    for w in done:
        s = w["summary"]
        taken = _taken(s.get("arrivals") or "")
        if s.get("skipped"):
            lines.append(f"| {w['week']} | {w['dropped']} | {taken} | - | - | - | skipped: {s['skipped']} | - | "
                         f"{w['seconds']:.0f} |")  # fmt: skip
            continue
        e, promo = s["evaluation"], s["promotion"]
        scores = answers(round_dir, s)
        base = base or scores["baseline"]
        first_challenger = first_challenger or scores["candidate"]
        champions.append(scores["candidate"] if promo["promoted"] else scores["baseline"])
        lo, hi = e["reward_gain_ci"]
        rv = promo.get("review") or {}
        review = f"{rv['status']} ({rv['mode']})" if rv else "-"
        lines.append(
            f"| {w['week']} | {w['dropped']} | {taken} | {mean_ci(list(scores['baseline'].values()))} | "
            f"{mean_ci(list(scores['candidate'].values()))} | {e['reward_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
            f"{'promoted' if promo['promoted'] else 'not promoted'} | {review} | {w['seconds']:.0f} |"
        )
    if len(champions) >= 2 and base is not None:
        lines += [
            "",
            f"champion after the last trained week vs after week 1: {paired(champions[-1], champions[0])}",
            f"champion after the last trained week vs the base policy: {paired(champions[-1], base)}",
        ]
        if first_challenger is not None:
            lines.append(
                f"champion after the last trained week vs week 1's model: {paired(champions[-1], first_challenger)}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
