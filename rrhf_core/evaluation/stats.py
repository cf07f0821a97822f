"""Uncertainty of evaluation numbers over held-out prompts: percentile bootstrap confidence intervals.

Prompts are the unit of resampling; for a candidate/baseline comparison the bootstrap is *paired* (both models' values
for a prompt are resampled together), which is what makes a small gain on the same prompts detectable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000


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
