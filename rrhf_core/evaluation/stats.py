"""Uncertainty of evaluation numbers over held-out prompts: percentile bootstrap confidence intervals.

Prompts are the unit of resampling; for a candidate/baseline comparison the bootstrap is *paired* (both models' values
for a prompt are resampled together), which is what makes a small gain on the same prompts detectable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000
CIOrNone = tuple[float, float] | None


def bootstrap_mean_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (one value per prompt).

    ``values``: ``(n,)``. Returns ``(lo, hi)``; a single value (or all equal) gives a zero-width interval.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_differences(candidate: Sequence[float], baseline: Sequence[float]) -> list[float]:
    if len(candidate) != len(baseline):
        raise ValueError(f"paired values differ in length: {len(candidate)} vs {len(baseline)}")
    return [c - b for c, b in zip(candidate, baseline, strict=True)]


def win_scores(candidate: Sequence[float], baseline: Sequence[float], tie_margin: float) -> list[float]:
    """Per prompt: 1 for a candidate win, 0.5 for a tie (within ``tie_margin``), 0 for a loss."""
    return [
        1.0 if c > b + tie_margin else 0.0 if b > c + tie_margin else 0.5
        for c, b in zip(candidate, baseline, strict=True)
    ]


def gain_ci(
    candidate: Sequence[float], baseline: Sequence[float], level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Paired bootstrap CI of ``mean(candidate) - mean(baseline)``."""
    return bootstrap_mean_ci(paired_differences(candidate, baseline), level, seed=seed)


def win_rate_ci(
    candidate: Sequence[float],
    baseline: Sequence[float],
    tie_margin: float,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired bootstrap CI of the win rate (ties count half)."""
    return bootstrap_mean_ci(win_scores(candidate, baseline, tie_margin), level, seed=seed)


def judge_scales(scores: Sequence[tuple[Sequence[float], Sequence[float]]]) -> list[tuple[float, float]]:
    """Per judge, the mean and (population) standard deviation of its scores pooled over both models' answers.

    ``scores``: one ``(candidate (n,), baseline (n,))`` pair per judge. A judge that gives every answer the same
    score sees no difference between them: its scale is 1, so its standardised scores are all 0 (it adds nothing to
    an ensemble's verdict instead of dividing by zero).
    """
    if not scores:
        raise ValueError("no judges' scores to combine")
    n = len(scores[0][0])
    out = []
    for j, (c, b) in enumerate(scores):
        if len(c) != n or len(b) != n:
            raise ValueError(f"judge {j} scored {len(c)} and {len(b)} answers, expected {n} each")
        both = np.asarray([*c, *b], dtype=np.float64)
        out.append((float(both.mean()), float(both.std()) if both.std() > 0 else 1.0))
    return out


def mean_standardised(
    values: Sequence[Sequence[float]], scales: Sequence[tuple[float, float]]
) -> list[float]:
    """``values[j]``: judge j's scores of the same ``(n,)`` answers; each standardised by judge j's ``(mean, s.d.)``
    from :func:`judge_scales`, then averaged over judges. Returns ``(n,)``."""
    return np.mean(
        [(np.asarray(v, dtype=np.float64) - m) / sd for v, (m, sd) in zip(values, scales, strict=True)],
        axis=0,
    ).tolist()


def standardised_mean(
    scores: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> tuple[list[float], list[float]]:
    """Several judges' scores of the same answers on one scale, for an ensemble verdict.

    ``scores``: one ``(candidate (n,), baseline (n,))`` pair per judge. Each judge's scores are standardised by its
    :func:`judge_scales` (pooled over both models' answers), so every judge counts alike whatever its scale, then
    averaged over judges. Returns the candidate's and the baseline's averaged scores, ``(n,)`` each; their mean
    difference is an effect size in pooled standard deviations.
    """
    scales = judge_scales(scores)
    return mean_standardised([c for c, _ in scores], scales), mean_standardised(
        [b for _, b in scores], scales
    )


def length_controlled_gain(
    diffs: Sequence[float],
    length_diffs: Sequence[float],
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float | None, CIOrNone]:
    """The judge's gain at equal answer length, with a paired bootstrap CI over prompts.

    ``diffs``: ``(n,)`` per prompt, candidate score minus baseline score; ``length_diffs``: ``(n,)`` candidate
    answer length minus baseline answer length (tokens). Fits ``diff_i = gamma + beta * length_diff_i`` by least
    squares and returns ``gamma``, the gain the judge would give two answers of the same length (the idea of
    AlpacaEval's length-controlled win rate, Dubois et al. 2024, with a linear model for a score difference): a
    candidate that wins only by being shorter (or longer) gets ``gamma`` near 0.

    Where the length difference does not vary (``var(length_diffs) == 0``): with every difference 0 there is no
    length to control and ``gamma`` is the plain mean gain; with a constant non-zero difference length and model
    cannot be told apart and the result is ``(None, None)``. Resamples that fall in that case are left out of the CI.
    """
    d = np.asarray(diffs, dtype=np.float64)
    x = np.asarray(length_diffs, dtype=np.float64)
    if d.shape != x.shape or d.ndim != 1 or d.size == 0:
        raise ValueError(f"paired score and length differences differ in shape: {d.shape} vs {x.shape}")
    point = _intercepts(d[None, :], x[None, :])[0]
    if math.isnan(point):
        return None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))
    gammas = _intercepts(d[idx], x[idx])
    gammas = gammas[~np.isnan(gammas)]
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(gammas, [alpha, 1.0 - alpha])
    return float(point), (float(lo), float(hi))


def _intercepts(d: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Row-wise least-squares intercepts of ``d ~ gamma + beta x``; ``d``, ``x``: ``(r, n)``. Returns ``(r,)``, NaN
    where ``x`` is constant and non-zero (intercept and slope not identifiable)."""
    xm, dm = x.mean(axis=1), d.mean(axis=1)
    var = ((x - xm[:, None]) ** 2).mean(axis=1)
    cov = ((x - xm[:, None]) * (d - dm[:, None])).mean(axis=1)
    flat = var <= 1e-12 * np.maximum(1.0, xm**2)
    beta = np.where(flat, 0.0, cov / np.where(flat, 1.0, var))
    gamma = dm - beta * xm
    return np.where(flat & (np.abs(xm) > 1e-12), np.nan, gamma)


def length_matched(
    lengths_a: Sequence[int], lengths_b: Sequence[int], tolerance: float = 0.1, slack: int = 2
) -> list[int]:
    """Indices of the prompts whose two answers have about the same length: ``|a - b| <= max(slack, tolerance *
    max(a, b))`` tokens. A win rate over these pairs cannot be bought by length."""
    return [
        i
        for i, (a, b) in enumerate(zip(lengths_a, lengths_b, strict=True))
        if abs(a - b) <= max(slack, tolerance * max(a, b))
    ]


def paired_ratio_ci(
    cand_num: Sequence[float],
    cand_den: Sequence[float],
    base_num: Sequence[float],
    base_den: Sequence[float],
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired bootstrap CI of ``sum(cand_num) / sum(cand_den) - sum(base_num) / sum(base_den)``, items resampled
    together (a benchmark's items are the unit: the same item for both models).

    All four: ``(n,)``. A mean metric has denominators of 1 (the CI of the mean difference); a metric pooled over
    an item's parts (IFEval's instruction-level accuracy: ``num`` instructions followed of ``den``) is a ratio of
    sums. Returns ``(lo, hi)``.
    """
    cn, cd, bn, bd = (np.asarray(v, dtype=np.float64) for v in (cand_num, cand_den, base_num, base_den))
    if not cn.size or len({cn.size, cd.size, bn.size, bd.size}) != 1:
        raise ValueError(
            f"paired items differ in number or are none: {cn.size}, {cd.size}, {bn.size}, {bd.size}"
        )
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cn.size, size=(resamples, cn.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = cn[idx].sum(1) / cd[idx].sum(1) - bn[idx].sum(1) / bd[idx].sum(1)
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def group_gains(
    groups: Sequence[str], candidate: Sequence[float], baseline: Sequence[float], seed: int = 0
) -> list[dict[str, object]]:
    """Per group (one label per prompt, sorted by label): prompts, both sides' means, the gain and its paired
    bootstrap CI over that group's prompts. ``groups``, ``candidate``, ``baseline``: (P,) each."""
    out: list[dict[str, object]] = []
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        c, b = [candidate[i] for i in idx], [baseline[i] for i in idx]
        out.append(
            {
                "group": g,
                "prompts": len(idx),
                "baseline_mean": float(np.mean(b)),
                "candidate_mean": float(np.mean(c)),
                "gain": float(np.mean(c) - np.mean(b)),
                "gain_ci": gain_ci(c, b, seed=seed),
            }
        )
    return out
