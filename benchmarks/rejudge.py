"""Judge the saved answers of finished rounds again, with other judges: is a gain the policy's or the judge's?

    python benchmarks/rejudge.py --workdir runs/a runs/b --judge-of runs/a runs/b [--judge PATH ...]

For every workdir (a finished ``rrhf pipeline`` round), the held-out greedy answers of the trained and the base
policy (``eval/*/eval_samples.parquet``) are scored by every judge: the judges the named workdirs' rounds used
(``--judge-of``, read from their ``last_summary.json``) and any reward folder or spec (``--judge``). Prints the mean
gain with the paired bootstrap 95 % CI (seed 0) and wins, ties and losses, as the evaluation stage computes them;
``--ensemble`` adds the verdict of all the judges together (the mean of their standardised scores, as the evaluation
stage computes it for ``evaluate.judge`` given as a list).
No generation: a judge on 64 prompts takes seconds.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", nargs="+", required=True, help="finished rounds whose answers are judged")
    ap.add_argument("--judge-of", nargs="*", default=[], help="rounds whose judge is used")
    ap.add_argument("--judge", nargs="*", default=[], help="further reward specs or folders")
    ap.add_argument("--tie-margin", type=float, default=1e-6)
    ap.add_argument(
        "--ensemble",
        action="store_true",
        help="also the judges' standardised mean (evaluate.judge as a list)",
    )
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from rrhf_core.data.contracts import read_prompts
    from rrhf_core.evaluation.stats import gain_ci, standardised_mean, win_scores
    from rrhf_core.scoring.reward import make_reward

    def summary(w: str) -> dict:
        return json.loads((Path(w) / "last_summary.json").read_text())

    judges = {}
    for w in args.judge_of:  # a round judged by several judges contributes each of them
        e = summary(w)["evaluation"]
        several = [j["spec"] for j in e.get("judges") or []]
        if len(several) > 1:
            judges.update({f"judge {i} of {w}": spec for i, spec in enumerate(several)})
        else:
            judges[f"judge of {w}"] = e["judge"]
    judges.update({spec: spec for spec in args.judge})
    messages = {}
    for w in args.workdir:
        for path in glob.glob(f"{w}/stages/ingest-*/prompts.parquet"):
            messages.update({r["prompt_id"]: r["messages"] for r in read_prompts(path)})
    print("| answers of | judge | gain [95 % CI] | W / T / L |\n| --- | --- | --- | --- |")

    def row(w: str, name: str, cand: list[float], base: list[float]) -> None:
        lo, hi = gain_ci(cand, base, seed=0)  # as the evaluation stage computes them
        s = win_scores(cand, base, args.tie_margin)
        gain = statistics.fmean(cand) - statistics.fmean(base)
        print(f"| {w} | {name} | {gain:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
              f"{s.count(1.0)} / {s.count(0.5)} / {s.count(0.0)} |")  # fmt: skip

    scored: dict[str, list[tuple[list[float], list[float]]]] = {w: [] for w in args.workdir}
    for name, spec in judges.items():
        reward = make_reward(spec)
        for w in args.workdir:
            (table,) = glob.glob(f"{w}/eval/*/eval_samples.parquet")
            rows = pq.read_table(table).to_pylist()
            answers = {(r["role"], r["prompt_id"]): r["text"] for r in rows}
            ids = [r["prompt_id"] for r in rows if r["role"] == "candidate"]
            scores = reward.score(
                [messages[i] for i in ids] * 2,
                [answers["candidate", i] for i in ids] + [answers["baseline", i] for i in ids],
            )
            scored[w].append((scores[: len(ids)], scores[len(ids) :]))
            row(w, name, *scored[w][-1])
    if args.ensemble and len(judges) > 1:  # the evaluation stage's verdict with `evaluate.judge` as this list
        for w in args.workdir:
            row(w, f"mean of the {len(judges)} standardised judges", *standardised_mean(scored[w]))


if __name__ == "__main__":
    main()
