"""Human review before promotion: a side-by-side sheet, the reviewer's choices, and what the gate makes of them.

The round pauses after its evaluation (the flow does that: Prefect's ``pause_flow_run`` with a form built from
:func:`form_fields`); the reviewer sees ``pairs`` held-out prompts, each with the champion's and the challenger's
answers in a random order (A / B, so the reviewer cannot tell which is which) and the judge's scores, and answers per
pair A / B / tie plus approve or reject. :func:`tally` turns the answer into:

- a **human win rate** of the challenger (ties count half) with its 95 % bootstrap CI over the pairs;
- **preference pairs** (``{messages, chosen, rejected}`` rows, the pair-file format of ``reward_models.*.pairs``)
  for reward-model training in later rounds; ties give none;
- the gate's checks (:func:`review_checks`): a reject refuses; ``gate.min_human_win_rate`` (when set) must be
  below the win rate's CI lower bound.

``gate.human``: ``off`` (no pause), ``optional`` (no answer within ``human_timeout_s``: the numbers decide, and the
record says so) or ``required`` (no answer within the timeout: not promoted). Pure: no Prefect, no MLflow.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field

from rrhf_core.evaluation.stats import bootstrap_mean_ci

Choice = Literal["A", "B", "tie"]
CHOICES: tuple[str, ...] = ("A", "B", "tie")


@dataclass(frozen=True)
class ReviewPair:
    """One held-out prompt with both answers; ``candidate_is`` says which letter is the challenger's."""

    prompt_id: str
    prompt: str
    a: str
    b: str
    candidate_is: Literal["A", "B"]
    judge_a: float
    judge_b: float

    @property
    def candidate(self) -> str:
        return self.a if self.candidate_is == "A" else self.b

    @property
    def baseline(self) -> str:
        return self.b if self.candidate_is == "A" else self.a


def review_sheet(samples: list[dict[str, Any]], n: int, seed: int = 0) -> list[ReviewPair]:
    """``n`` held-out prompts (a seeded draw, in prompt-id order) from the evaluation's per-answer rows
    (``eval_samples.parquet``: prompt_id, prompt, role candidate|baseline, text, judge), each pair's order drawn by
    coin. Fewer prompts than ``n``: all of them."""
    by_prompt: dict[str, dict[str, dict[str, Any]]] = {}
    for row in samples:
        by_prompt.setdefault(str(row["prompt_id"]), {})[row["role"]] = row
    ids = sorted(pid for pid, sides in by_prompt.items() if {"candidate", "baseline"} <= set(sides))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(ids, min(n, len(ids))))
    out = []
    for pid in chosen:
        cand, base = by_prompt[pid]["candidate"], by_prompt[pid]["baseline"]
        first = rng.random() < 0.5
        a, b = (cand, base) if first else (base, cand)
        out.append(
            ReviewPair(
                pid,
                str(cand["prompt"]),
                str(a["text"]),
                str(b["text"]),
                "A" if first else "B",
                float(a["judge"]),
                float(b["judge"]),
            )
        )
    return out


def _quote(text: str) -> str:
    return "<br>".join(text.replace("|", "\\|").splitlines()) or "*(empty)*"


def sheet_markdown(pairs: list[ReviewPair], title: str = "Review before promotion") -> str:
    """The side-by-side sheet as Markdown (the Prefect artifact and the form's description)."""
    lines = [
        f"# {title}",
        "",
        f"{len(pairs)} held-out prompts; in each pair one answer is the champion's and one the challenger's, in a "
        "random order. Choose the better answer (A, B or tie) per pair, then approve or reject the challenger.",
        "",
        "| pair | prompt | A | B | judge A | judge B |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, p in enumerate(pairs, 1):
        lines.append(
            f"| {i} | {_quote(p.prompt)} | {_quote(p.a)} | {_quote(p.b)} | {p.judge_a:.3f} | {p.judge_b:.3f} |"
        )
    return "\n".join(lines)


def form_fields(pairs: list[ReviewPair]) -> dict[str, Any]:
    """The review form's fields for ``pydantic.create_model`` (the flow builds a Prefect ``RunInput`` from them):
    ``pair_1`` ... ``pair_N`` (A / B / tie, default tie), ``approve`` (default False: approving is an act), and
    ``note``."""
    fields: dict[str, Any] = {
        f"pair_{i}": (
            Choice,
            Field("tie", description=f"Pair {i}: the better answer to {_short(p.prompt)!r}"),
        )
        for i, p in enumerate(pairs, 1)
    }
    fields["approve"] = (bool, Field(False, description="Approve the challenger for promotion"))
    fields["note"] = (str, Field("", description="Anything the next reviewer should know"))
    return fields


def _short(text: str, n: int = 60) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1] + "…"


@dataclass
class Review:
    """What became of the pause: ``status`` answered | timeout; for an answer, the tally."""

    status: Literal["answered", "timeout"]
    mode: str
    pairs: int
    approve: bool = False
    note: str = ""
    wins: int = 0
    ties: int = 0
    losses: int = 0
    win_rate: float | None = None
    win_rate_ci: tuple[float, float] | None = None
    timeout_s: int | None = None
    preference_pairs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preference_pairs"] = len(self.preference_pairs)
        return d


def tally(pairs: list[ReviewPair], answer: dict[str, Any], mode: str) -> Review:
    """The reviewer's answer (``pair_1`` ... ``pair_N``, ``approve``, ``note``) against the sheet."""
    scores, prefs = [], []
    for i, p in enumerate(pairs, 1):
        choice = answer.get(f"pair_{i}", "tie")
        if choice not in CHOICES:
            raise ValueError(f"pair_{i}: {choice!r} is not one of {', '.join(CHOICES)}")
        if choice == "tie":
            scores.append(0.5)
            continue
        won = choice == p.candidate_is
        scores.append(1.0 if won else 0.0)
        chosen, rejected = (p.candidate, p.baseline) if won else (p.baseline, p.candidate)
        if chosen != rejected:
            prefs.append(
                {
                    "prompt_id": p.prompt_id,
                    "messages": [{"role": "user", "content": p.prompt}],
                    "chosen": chosen,
                    "rejected": rejected,
                    "source": "human-review",
                }
            )
    rate = sum(scores) / len(scores) if scores else None
    return Review(
        "answered", mode, len(pairs), bool(answer.get("approve", False)), str(answer.get("note", "")),
        wins=scores.count(1.0), ties=scores.count(0.5), losses=scores.count(0.0), win_rate=rate,
        win_rate_ci=bootstrap_mean_ci(scores) if scores else None, preference_pairs=prefs,
    )  # fmt: skip


def timed_out(mode: str, pairs: int, timeout_s: int) -> Review:
    return Review("timeout", mode, pairs, timeout_s=timeout_s)


def review_checks(review: Review | None, mode: str, min_win_rate: float | None) -> list[tuple[bool, str]]:
    """The gate's human checks: none when review is off; otherwise one line saying what the reviewer did."""
    if mode == "off" or review is None:
        return []
    if review.status == "timeout":
        if mode == "required":
            return [(False, f"human review required but nobody answered within {review.timeout_s} s")]
        return [(True, f"no human review within {review.timeout_s} s (optional): the numbers decided")]
    rate = (
        f"human win rate {review.win_rate:.3f} (95 % CI {review.win_rate_ci[0]:.3f}..{review.win_rate_ci[1]:.3f}; "
        f"{review.wins} W {review.ties} T {review.losses} L over {review.pairs} pairs)"
        if review.win_rate is not None and review.win_rate_ci is not None
        else "no pairs reviewed"
    )
    out = [(review.approve, f"reviewer {'approved' if review.approve else 'rejected'}: {rate}")]
    if min_win_rate is not None:
        lo = review.win_rate_ci[0] if review.win_rate_ci else None
        ok = lo is not None and lo > min_win_rate
        shown = f"{lo:.3f}" if lo is not None else "n/a (no pairs)"
        out.append((ok, f"human win rate CI lower bound {shown} {'>' if ok else '<='} {min_win_rate}"))
    return out
