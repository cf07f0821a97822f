"""The promotion gate: does a candidate replace the champion? A pure decision over evaluation numbers.

Rules (all must hold; each is configurable):
1. the held-out gain by the judge beats ``min_reward_gain``: its 95 % CI lower bound does (``decide_on: ci_lower``,
   the default: a gain that could be noise does not promote), or its mean (``decide_on: mean``);
2. the reward-judged win rate (ties count half) is above ``min_win_rate``;
3. length guard: the candidate's mean answer length is at most ``max_length_ratio`` times the baseline's (a reward
   that pays for length is the classic way a policy games its reward);
4. collapse guard: the candidate's share of empty answers exceeds the baseline's by at most ``max_empty_increase``
   (a reward that never saw an empty answer may score it high: saying nothing must not win);
5. the evaluation itself succeeded (a failed evaluation never promotes);
6. every judge that is a model (not a rule: the instruction checkers, a user's function) has proved itself: its
   held-out pair accuracy's 95 % CI lower bound is above ``min_judge_accuracy``. Otherwise the verdict is
   *inconclusive* (a judge that may be a coin cannot say the candidate is better) and nothing is promoted; a model
   judge with no held-out pairs to measure it on is refused as a gate input, with that reason.

7. no guarded lm-eval benchmark (``no_regression``) has regressed;
8. with ``human`` on, the reviewer approved (and, when ``min_human_win_rate`` is set, the human win rate's CI
   lower bound is above it); no answer within ``human_timeout_s``: ``optional`` lets the numbers decide,
   ``required`` refuses (:mod:`rrhf_core.evaluation.review`).

``decide_on: ci_lower_lc`` decides on the length-controlled gain's CI lower bound (the judge's gain at equal answer
length, :func:`~rrhf_core.evaluation.stats.length_controlled_gain`): a candidate that wins by being shorter or longer
alone does not pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rrhf_core.evaluation.review import Review, review_checks


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_reward_gain: float = Field(
        0.0,
        description="The judge gain over the champion (its CI lower bound, or its mean: decide_on) must exceed this.",
    )
    min_win_rate: float = Field(0.5, ge=0.0, le=1.0, description="Win rate (ties half) must be above this.")
    max_length_ratio: float = Field(
        2.0, gt=0.0, description="Candidate mean tokens / champion mean tokens at most this."
    )
    max_empty_increase: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Candidate share of empty answers minus the champion's at most this.",
    )
    decide_on: Literal["ci_lower", "mean", "ci_lower_lc"] = Field(
        "ci_lower",
        description="Compare with min_reward_gain the gain's CI lower bound (default), its mean, or the "
        "length-controlled gain's CI lower bound (ci_lower_lc: the gain at equal answer length).",
    )
    min_judge_accuracy: float | None = Field(
        0.55,
        ge=0.0,
        le=1.0,
        description="A model judge's held-out pair accuracy must have its 95 % CI lower bound above this, or the "
        "verdict is inconclusive (null: model judges are trusted untested; rules never need it).",
    )
    no_regression: list[str] = Field(
        default_factory=list,
        description="lm-eval benchmarks (evaluate.benchmarks) that must not regress: 'task' (its first metric) or "
        "'task:metric'. Refused when the whole 95 % CI of candidate minus baseline lies below -regression_margin.",
    )
    regression_margin: float = Field(
        0.0,
        ge=0.0,
        description="How far below zero a guarded benchmark's CI may reach before it is a regression.",
    )
    human: Literal["off", "optional", "required"] = Field(
        "off",
        description="Human review before promotion: the round pauses in the Prefect UI with a side-by-side form. "
        "optional: no answer within human_timeout_s and the numbers decide; required: no answer, no promotion.",
    )
    human_pairs: int = Field(8, ge=1, description="Held-out prompts the reviewer compares side by side.")
    human_timeout_s: int = Field(
        86400, ge=1, description="How long the round waits for the review (seconds; then gate.human decides)."
    )
    min_human_win_rate: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="When set, the reviewer's win rate for the challenger (ties half) must have its 95 % CI lower "
        "bound above this, besides the approval.",
    )


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    numbers: dict[str, float] = field(default_factory=dict)
    # "promote", "reject" (the numbers say no) or "inconclusive" (a judge did not prove itself: nothing is known)
    verdict: str = ""

    def __post_init__(self) -> None:
        self.verdict = self.verdict or ("promote" if self.promote else "reject")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def outcome(self) -> str:
        """The tag a round and a model version carry: promoted, rejected or inconclusive."""
        return {"promote": "promoted", "inconclusive": "inconclusive"}.get(self.verdict, "rejected")

    def summary(self, has_champion: bool = True) -> str:
        """One line for the model version's description; ``has_champion``: whether the registry has one to keep."""
        if self.promote:
            verdict = "PROMOTE to champion"
        else:
            verdict = (
                "keep the current champion" if has_champion else "not promoted (there is no champion yet)"
            )
            if self.verdict == "inconclusive":
                verdict = "inconclusive, " + verdict
        return f"{verdict}: " + "; ".join(self.reasons)


def decide(report: dict[str, Any] | None, gate: GateConfig, review: Review | None = None) -> Decision:
    """Apply the gate to an evaluation report (``EvalReport.to_dict()``; ``None`` means the evaluation failed) and,
    with ``gate.human`` on, to the human review (rule 8)."""
    if report is None:
        return Decision(False, ["the evaluation failed: nothing to compare"])
    cand, base = report["candidate"], report["baseline"]
    gain = cand["reward_mean"] - base["reward_mean"]
    lo, hi = report.get("reward_gain_ci") or (gain, gain)
    gain_check = _gain_check(report, gain, (lo, hi), gate)
    ratio = cand["tokens_mean"] / max(base["tokens_mean"], 1e-9)
    empty = cand.get("empty_share", 0.0) - base.get("empty_share", 0.0)
    numbers = {
        "reward_gain": gain,
        "reward_gain_ci_lo": lo,
        "reward_gain_ci_hi": hi,
        "win_rate": report["win_rate"],
        "length_ratio": ratio,
        "empty_share_increase": empty,
        "candidate_reward_mean": cand["reward_mean"],
        "champion_reward_mean": base["reward_mean"],
    }
    if report.get("reward_gain_lc") is not None:
        numbers["reward_gain_lc"] = report["reward_gain_lc"]
        numbers["reward_gain_lc_ci_lo"], numbers["reward_gain_lc_ci_hi"] = report["reward_gain_lc_ci"]
    checks = [
        gain_check,
        (
            report["win_rate"] > gate.min_win_rate,
            f"win rate {report['win_rate']:.3f} {'>' if report['win_rate'] > gate.min_win_rate else '<='} {gate.min_win_rate}",
        ),
        (
            ratio <= gate.max_length_ratio,
            f"length ratio {ratio:.2f} {'<=' if ratio <= gate.max_length_ratio else '>'} {gate.max_length_ratio}",
        ),
        (
            empty <= gate.max_empty_increase,
            f"empty answers {cand.get('empty_share', 0.0):.0%} vs {base.get('empty_share', 0.0):.0%}: increase "
            f"{empty:+.2f} {'<=' if empty <= gate.max_empty_increase else '>'} {gate.max_empty_increase}",
        ),
    ]
    checks += regression_checks(report, gate)
    checks += review_checks(review, gate.human, gate.min_human_win_rate)
    judged = judge_checks(report, gate)
    reasons = [text for _, text in checks] + [text for _, text in judged]
    if not all(ok for ok, _ in judged):
        return Decision(False, reasons, numbers, "inconclusive")
    return Decision(all(ok for ok, _ in checks), reasons, numbers)


def _gain_check(
    report: dict[str, Any], gain: float, ci: tuple[float, float], gate: GateConfig
) -> tuple[bool, str]:
    lo, hi = ci
    if gate.decide_on == "ci_lower_lc":
        lc, lc_ci = report.get("reward_gain_lc"), report.get("reward_gain_lc_ci")
        if lc is None or lc_ci is None:
            return False, (
                f"judge gain {gain:+.4f}: the length-controlled gain cannot be measured (every candidate answer "
                "differs from the baseline's by the same length, so length and model cannot be told apart)"
            )
        ok = lc_ci[0] > gate.min_reward_gain
        return ok, (
            f"length-controlled judge gain {lc:+.4f} (95 % CI {lc_ci[0]:+.4f}..{lc_ci[1]:+.4f}; plain gain "
            f"{gain:+.4f}): CI lower bound {'>' if ok else '<='} {gate.min_reward_gain}"
        )
    tested = lo if gate.decide_on == "ci_lower" else gain
    ok = tested > gate.min_reward_gain
    return ok, (
        f"judge gain {gain:+.4f} (95 % CI {lo:+.4f}..{hi:+.4f}): "
        f"{'CI lower bound' if gate.decide_on == 'ci_lower' else 'mean'} "
        f"{'>' if ok else '<='} {gate.min_reward_gain}"
    )


def regression_checks(report: dict[str, Any], gate: GateConfig) -> list[tuple[bool, str]]:
    """Rule 7: one check per ``gate.no_regression`` entry: the benchmark's difference (candidate minus baseline, in
    the metric's better direction) must not have its whole CI below ``-regression_margin``; a benchmark that did
    not run, or a metric without a per-item CI, cannot guard and refuses."""
    out = []
    results = {b["task"]: b for b in report.get("benchmarks") or []}
    for guard in gate.no_regression:
        task, _, metric = guard.partition(":")
        res = results.get(task)
        if res is None:
            out.append(
                (
                    False,
                    f"benchmark {task} is a regression guard but did not run: add it to evaluate.benchmarks",
                )
            )
            continue
        name = metric or res["primary"]
        m = next((x for x in res["metrics"] if x["name"] == name), None)
        if m is None:
            known = ", ".join(x["name"] for x in res["metrics"])
            out.append((False, f"benchmark {task} has no metric {name!r} (it reports {known})"))
            continue
        if not m.get("difference_ci"):
            out.append(
                (
                    False,
                    f"benchmark {task}:{name} has no per-item CI, so it cannot guard against a regression",
                )
            )
            continue
        sign = 1.0 if m.get("higher_is_better", True) else -1.0
        hi = max(sign * v for v in m["difference_ci"])  # the better end, in the better direction
        ok = not hi < -gate.regression_margin
        out.append(
            (
                ok,
                f"benchmark {task}:{name} {m['baseline']:.3f} -> {m['candidate']:.3f} ({m['difference']:+.3f}, "
                f"95 % CI {m['difference_ci'][0]:+.3f}..{m['difference_ci'][1]:+.3f}): "
                + (
                    "no regression"
                    if ok
                    else f"a regression (the whole CI is below {-gate.regression_margin:+.3f})"
                ),
            )
        )
    return out


def judge_checks(report: dict[str, Any], gate: GateConfig) -> list[tuple[bool, str]]:
    """Rule 6: one check per model judge of the report (a rule judge, or ``min_judge_accuracy: null``, none)."""
    if gate.min_judge_accuracy is None:
        return []
    out = []
    for j in report.get("judges") or []:
        if j.get("rule", True):
            continue
        spec, n, acc = j["spec"], j.get("held_out_pairs", 0), j.get("held_out_accuracy")
        if not n or acc is None:
            out.append(
                (
                    False,
                    f"judge {spec} is a model whose accuracy cannot be measured: the held-out prompts carry no "
                    "human preference pairs (dataset:chosen / dataset:rejected references); give the eval split "
                    "such pairs, judge with a rule, or set gate.min_judge_accuracy: null to trust it untested",
                )
            )
            continue
        lo, hi = j["held_out_accuracy_ci"]
        ok = lo > gate.min_judge_accuracy
        out.append(
            (
                ok,
                f"judge {spec}: held-out pair accuracy {acc:.3f} (95 % CI {lo:.3f}..{hi:.3f}) on {n} pairs: CI "
                f"lower bound {'>' if ok else '<='} {gate.min_judge_accuracy}"
                + ("" if ok else ": it may be a coin, so the verdict is inconclusive"),
            )
        )
    return out
