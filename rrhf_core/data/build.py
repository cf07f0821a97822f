"""The build stage: prompts + samples + scores -> the listwise training set (train.parquet) and its statistics.

Per prompt: candidates with identical text are merged (the first source is kept) and blank ones (a blank reference
answer sampled from prompts ingested before ingest dropped them) are left out and counted; prompts with fewer than two
distinct responses, or whose rewards are all equal (gap not above ``min_reward_gap``), carry no ranking signal and
are dropped and counted. ``max_k`` caps the responses per prompt: the best is always kept, the others are spread
evenly over the reward order (so the range of rewards survives).

Statistics (``build_stats.json``): per prompt, reward mean / std / max (the max over a prompt's candidates is the
best-of-n ceiling that RRHF tracks); per source, count, mean reward and mean tokens; the drop reasons. The per-prompt
numbers are also in ``prompt_stats.parquet``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from rrhf_core.data.config import BuildConfig
from rrhf_core.data.contracts import (
    ListwiseExample,
    atomic_write_parquet,
    atomic_write_text,
    prepare_output_dir,
    published,
    read_prompts,
    read_samples,
    read_scores,
    write_listwise,
)
from rrhf_core.errors import DataError


def _at_any_scale(stat: Callable[[list[float]], float], values: list[float]) -> float:
    """``stat(values)``, or, where that overflows (rewards near the float64 limit, 1e308), ``stat`` of the values
    scaled by their largest magnitude, scaled back."""
    try:
        out = stat(values)
    except OverflowError:
        out = math.inf
    if math.isfinite(out):
        return out
    top = max(abs(v) for v in values)
    return top * stat([v / top for v in values])


def mean(values: list[float]) -> float:
    """The mean of finite ``values`` at any scale."""
    return _at_any_scale(statistics.fmean, values)


def spread(values: list[float]) -> float:
    """The population standard deviation of finite ``values`` at any scale."""
    return _at_any_scale(statistics.pstdev, values)


@dataclass
class BuildResult:
    train_path: Path
    stats_path: Path
    prompts_in: int
    prompts_out: int
    dropped: dict[str, int]
    best_of_n_mean: float
    reward_mean: float
    blank_responses_skipped: int = 0


def cap_k(cands: list[dict[str, Any]], max_k: int) -> list[dict[str, Any]]:
    """The best candidate plus ``max_k - 1`` others spread evenly over the reward order."""
    if len(cands) <= max_k:
        return cands
    ranked = sorted(cands, key=lambda c: -c["reward"])
    rest = ranked[1:]
    picks = (
        [round(i * (len(rest) - 1) / (max_k - 2)) for i in range(max_k - 1)] if max_k > 2 else [len(rest) - 1]
    )
    return [ranked[0], *(rest[i] for i in sorted(set(picks)))]


def candidates_by_prompt(
    samples: list[dict[str, Any]], rewards: dict[str, float]
) -> dict[str, list[dict[str, Any]]]:
    """Each prompt's distinct candidates (first of identical texts kept) with their rewards; blank texts left out
    (:func:`blank_responses` counts them)."""
    by_prompt: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in samples:
        if not s["text"].strip():
            continue
        if s["response_id"] not in rewards:
            raise DataError(
                f"response {s['response_id']} of prompt {s['prompt_id']} has no score; score every samples file"
            )
        kept = by_prompt[s["prompt_id"]].setdefault(s["text"], {**s, "reward": rewards[s["response_id"]]})
        if s["source"].startswith(HUMAN):  # a person judged this text: that label wins over the other source
            kept["source"] = s["source"]
    return {pid: list(c.values()) for pid, c in by_prompt.items()}


HUMAN = "human:"


def human_ranked(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A person's judgement outranks the reward model: every ``human:chosen`` candidate gets a reward above, every
    ``human:rejected`` one below, all the others' (their order among themselves, and the others' rewards, are kept).

    With ``lo``/``hi`` the lowest and highest reward of the prompt's candidates and ``gap = hi - lo + 1``: chosen
    ``r + gap`` (> ``hi``), rejected ``r - gap`` (< ``lo``). RRHF's ranking term (Eq. 2) uses only the order of the
    rewards and its SFT term (Eq. 3) the best response, so a chosen answer becomes the SFT target and a rejected one
    the response every other must beat. Returns new dicts; a prompt without human labels comes back unchanged.
    """
    if not any(c["source"].startswith(HUMAN) for c in cands):
        return cands
    rs = [c["reward"] for c in cands]
    gap = max(rs) - min(rs) + 1.0
    shift = {f"{HUMAN}chosen": gap, f"{HUMAN}rejected": -gap}
    return [{**c, "reward": c["reward"] + shift.get(c["source"], 0.0)} for c in cands]


def prompt_stat(pid: str, cands: list[dict[str, Any]]) -> dict[str, Any]:
    rs = [c["reward"] for c in cands]
    return {
        "prompt_id": pid,
        "k": len(cands),
        "reward_mean": mean(rs),
        "reward_std": spread(rs),
        "reward_max": max(rs),
        "reward_min": min(rs),
    }


def drop_reason(cands: list[dict[str, Any]], min_reward_gap: float) -> str | None:
    """Why a prompt carries no ranking signal, or None when it does."""
    if len(cands) < 2:
        return "fewer than 2 distinct responses"
    rs = [c["reward"] for c in cands]
    if max(rs) - min(rs) <= min_reward_gap:
        return "all rewards equal (no ranking signal)"
    return None


def build_stats(
    by_prompt: dict[str, list[dict[str, Any]]],
    examples: list[ListwiseExample],
    prompt_stats: list[dict[str, Any]],
    dropped: dict[str, int],
) -> dict[str, Any]:
    per_source: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for cands in by_prompt.values():
        for c in cands:
            per_source[c["source"]].append((c["reward"], c["num_tokens"]))
    return {
        "prompts_in": len(by_prompt),
        "prompts_out": len(examples),
        "dropped": dict(dropped),
        "responses_out": sum(len(e.responses) for e in examples),
        "reward_mean": mean([s["reward_mean"] for s in prompt_stats]),
        "best_of_n_mean": mean([s["reward_max"] for s in prompt_stats]),
        "per_source": {
            src: {
                "count": len(v),
                "reward_mean": mean([r for r, _ in v]),
                "tokens_mean": statistics.fmean(t for _, t in v),
            }
            for src, v in sorted(per_source.items())
        },
    }


def blank_responses(samples: list[dict[str, Any]]) -> int:
    """Candidates whose text is blank: no training response, so build leaves them out."""
    return sum(1 for s in samples if not s["text"].strip())


def sampling_drops(samples: list[str]) -> list[str]:
    """Prompt ids the sampling stage left out for length (its ``sample_report.json`` beside each samples file)."""
    ids: list[str] = []
    for path in samples:
        report = Path(path).with_name("sample_report.json")
        if report.exists():
            ids += (json.loads(report.read_text()).get("dropped_for_length") or {}).get("prompt_ids", [])
    return ids


def build(cfg: BuildConfig) -> BuildResult:
    """Join prompts, samples and scores into train.parquet; write prompt_stats.parquet and build_stats.json."""
    out = prepare_output_dir(cfg.output_dir)
    prompts = {r["prompt_id"]: r for r in read_prompts(cfg.prompts)}
    samples = read_samples(cfg.samples)
    by_prompt = candidates_by_prompt(samples, read_scores(cfg.scores))
    dropped: dict[str, int] = defaultdict(int)
    too_long = sampling_drops(cfg.samples)
    if too_long:
        dropped["prompt_too_long_to_sample"] = len(too_long)
    examples, prompt_stats = [], []
    for pid, cands in by_prompt.items():
        if pid not in prompts:
            raise DataError(f"sampled prompt {pid} is not in {cfg.prompts}")
        prompt_stats.append(prompt_stat(pid, cands))
        ranked = human_ranked(cands)  # a person's label gives a ranking signal where the rewards tie
        reason = drop_reason(ranked, cfg.min_reward_gap)
        if reason:
            dropped[reason] += 1
            continue
        kept = cap_k(ranked, cfg.max_k)
        examples.append(
            ListwiseExample(
                pid,
                prompts[pid]["messages"],
                [c["text"] for c in kept],
                [c["reward"] for c in kept],
                [c["source"] for c in kept],
            )
        )
    if not examples:
        raise DataError(f"no prompt has a ranking signal ({dict(dropped)}); sample more responses per prompt")
    stats = build_stats(by_prompt, examples, prompt_stats, dropped)
    stats["prompts_too_long_to_sample"] = too_long
    stats["blank_responses_skipped"] = blank_responses(samples)
    with published(out, last="build_stats.json") as staging:
        write_listwise(examples, staging / "train.parquet")
        atomic_write_parquet(pa.Table.from_pylist(prompt_stats), staging / "prompt_stats.parquet")
        atomic_write_text(staging / "build_stats.json", json.dumps(stats, indent=2))
    return BuildResult(
        out / "train.parquet",
        out / "build_stats.json",
        len(by_prompt),
        len(examples),
        dict(dropped),
        stats["best_of_n_mean"],
        stats["reward_mean"],
        stats["blank_responses_skipped"],
    )
