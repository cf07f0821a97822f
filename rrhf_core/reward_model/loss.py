"""The reward model's loss and held-out metrics: small pure functions on per-pair rewards.

Bradley-Terry preference model (Bradley & Terry, 1952; the reward-model loss of Ouyang et al., 2022, Eq. 1):
``P(chosen > rejected) = sigmoid(r_c - r_r)``, trained by ``-log sigmoid(r_c - r_r - m)`` with an optional margin
``m`` (Touvron et al., 2023, Eq. 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean of ``-log sigmoid(r_chosen - r_rejected - margin)``.

    ``r_chosen``, ``r_rejected``: ``(n,)`` rewards of the two responses of each pair. Returns a scalar.
    """
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def pair_outcomes(r_chosen: Sequence[float], r_rejected: Sequence[float], tie: float = 0.0) -> list[float]:
    """Per pair: 1 when the chosen response scores higher, 0 when lower, 0.5 within ``tie``; ``(n,)``."""
    return [
        1.0 if c > r + tie else 0.0 if r > c + tie else 0.5 for c, r in zip(r_chosen, r_rejected, strict=True)
    ]


def calibration_error(r_chosen: Sequence[float], r_rejected: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error of the BT probability ``p = sigmoid(r_c - r_r)``.

    Each pair enters twice, as (p, outcome 1) and (1 - p, outcome 0), so the data's fixed order (chosen first) does
    not matter; within each of ``bins`` equal-width probability bins, |mean p - share of outcome 1| is weighted by
    the bin's share of entries. 0 is perfectly calibrated.
    """
    probs: list[tuple[float, float]] = []
    for c, r in zip(r_chosen, r_rejected, strict=True):
        p = 1.0 / (1.0 + math.exp(-(c - r))) if c - r > -700 else 0.0
        probs += [(p, 1.0), (1.0 - p, 0.0)]
    if not probs:
        return math.nan
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(p, y) for p, y in probs if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if inside:
            mean_p = sum(p for p, _ in inside) / len(inside)
            mean_y = sum(y for _, y in inside) / len(inside)
            total += len(inside) / len(probs) * abs(mean_p - mean_y)
    return total


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two ``(n,)`` sequences (NaN when either is constant)."""
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan
