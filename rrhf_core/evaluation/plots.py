"""Figures a person would rather look at than read: reward distributions and training curves (matplotlib, Agg)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def reward_histograms(groups: Mapping[str, Sequence[float]], title: str, xlabel: str = "reward") -> Any:
    """Overlaid reward histograms, one per group (e.g. per source, or base vs trained)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    values = [v for vs in groups.values() for v in vs]
    if values:
        lo, hi = min(values), max(values)
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
        for name, vs in groups.items():
            ax.hist(
                list(vs),
                bins=bins,
                alpha=0.5,
                label=f"{name} (n={len(vs)}, mean {sum(vs) / max(len(vs), 1):.3f})",
            )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("responses")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rewards_by_source(samples: Sequence[Mapping[str, Any]], rewards: Mapping[str, float]) -> Any:
    groups: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        if s["response_id"] in rewards:
            groups[s["source"]].append(rewards[s["response_id"]])
    return reward_histograms(groups, "Reward of the training candidates by source")


def training_curves(history: Sequence[Mapping[str, float]]) -> Any:
    """Loss terms and ranking accuracy against the optimizer step."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [h["step"] for h in history]
    for key in ("loss", "rank_loss", "sft_loss"):
        ax1.plot(steps, [h[key] for h in history], label=key)
    ax1.set_xlabel("step")
    ax1.set_title("RRHF loss")
    ax1.legend()
    ax2.plot(steps, [h["ranking_accuracy"] for h in history], color="tab:green")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("step")
    ax2.set_title("ranking accuracy (training batches)")
    fig.tight_layout()
    return fig


def reward_model(history: Sequence[Mapping[str, float]], pairs: Sequence[Mapping[str, Any]]) -> Any:
    """A trained reward model at a glance: BT loss and batch accuracy against the step; the held-out margin
    (chosen minus rejected reward: right of zero is right); reward against response length (length hacking shows as
    a slope)."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    steps = [h["step"] for h in history]
    ax1.plot(steps, [h["loss"] for h in history], label="loss")
    ax1.plot(steps, [h["accuracy"] for h in history], label="batch accuracy")
    ax1.set_xlabel("step")
    ax1.set_title("Bradley-Terry training")
    ax1.legend()
    margins = [p["reward_chosen"] - p["reward_rejected"] for p in pairs]
    if margins:
        ax2.hist(margins, bins=30, color="tab:blue", alpha=0.7)
    ax2.axvline(0.0, color="black", linewidth=0.8)
    ax2.set_xlabel("reward(chosen) - reward(rejected)")
    ax2.set_title(f"held-out margins ({sum(m > 0 for m in margins)}/{len(margins)} right)")
    for key, color in (("chosen", "tab:green"), ("rejected", "tab:red")):
        ax3.scatter(
            [len(str(p[key]).split()) for p in pairs],
            [p[f"reward_{key}"] for p in pairs],
            s=6,
            alpha=0.5,
            color=color,
            label=key,
        )
    ax3.set_xlabel("response words")
    ax3.set_ylabel("reward")
    ax3.set_title("reward against length (held-out)")
    ax3.legend()
    fig.tight_layout()
    return fig


def comparison(rows: Sequence[Mapping[str, Any]], judge: str) -> Any:
    """Judge gain with its 95 % CI per training method (one bar each, zero marked)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["loss"] for r in rows]
    gains = [r["gain"] for r in rows]
    lo = [r["gain"] - r["gain_ci"][0] for r in rows]
    hi = [r["gain_ci"][1] - r["gain"] for r in rows]
    ax.bar(names, gains, yerr=[lo, hi], capsize=6, color="tab:blue", alpha=0.7)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel(f"held-out gain by {judge}")
    ax.set_title("Training methods on the same data, same steps, same judge (95 % CI)")
    fig.tight_layout()
    return fig
