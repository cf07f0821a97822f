"""The promotion gate: does a candidate replace the champion? A pure decision over evaluation numbers.

Rules (all must hold; each is configurable):
1. the held-out gain by the judge beats ``min_reward_gain``: its 95 % CI lower bound does (``decide_on: ci_lower``,
   the default: a gain that could be noise does not promote), or its mean (``decide_on: mean``);
2. the reward-judged win rate (ties count half) is above ``min_win_rate``;
3. length guard: the candidate's mean answer length is at most ``max_length_ratio`` times the baseline's (a reward
   that pays for length is the classic way a policy games its reward);
4. collapse guard: the candidate's share of empty answers exceeds the baseline's by at most ``max_empty_increase``
   (a reward that never saw an empty answer may score it high: saying nothing must not win);
5. the evaluation itself succeeded (a failed evaluation never promotes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
    decide_on: Literal["ci_lower", "mean"] = Field(
        "ci_lower",
        description="Compare the gain's CI lower bound (default) or its mean with min_reward_gain.",
    )


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, has_champion: bool = True) -> str:
        """One line for the model version's description; ``has_champion``: whether the registry has one to keep."""
        if self.promote:
            verdict = "PROMOTE to champion"
        else:
            verdict = (
                "keep the current champion" if has_champion else "not promoted (there is no champion yet)"
            )
        return f"{verdict}: " + "; ".join(self.reasons)


def decide(report: dict[str, Any] | None, gate: GateConfig) -> Decision:
    """Apply the gate to an evaluation report (``EvalReport.to_dict()``); ``None`` means the evaluation failed."""
    if report is None:
        return Decision(False, ["the evaluation failed: nothing to compare"])
    cand, base = report["candidate"], report["baseline"]
    gain = cand["reward_mean"] - base["reward_mean"]
    lo, hi = report.get("reward_gain_ci") or (gain, gain)
    tested = lo if gate.decide_on == "ci_lower" else gain
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
    checks = [
        (
            tested > gate.min_reward_gain,
            f"judge gain {gain:+.4f} (95 % CI {lo:+.4f}..{hi:+.4f}): "
            f"{'CI lower bound' if gate.decide_on == 'ci_lower' else 'mean'} "
            f"{'>' if tested > gate.min_reward_gain else '<='} {gate.min_reward_gain}",
        ),
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
    return Decision(all(ok for ok, _ in checks), [text for _, text in checks], numbers)
