"""The build stage: prompts + samples + scores -> the listwise training set (train.parquet) and its statistics.

Per prompt: candidates with identical text are merged (the first source is kept); prompts with fewer than two
distinct responses, or whose rewards are all equal (gap not above ``min_reward_gap``), carry no ranking signal and
are dropped and counted. ``max_k`` caps the responses per prompt: the best is always kept, the others are spread
evenly over the reward order (so the range of rewards survives).

Statistics (``build_stats.json``): per prompt, reward mean / std / max (the max over a prompt's candidates is the
best-of-n ceiling that RRHF tracks); per source, count, mean reward and mean tokens; the drop reasons. The per-prompt
numbers are also in ``prompt_stats.parquet``.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rrhf_core.config import BuildConfig
from rrhf_core.data import ListwiseExample, atomic_write_parquet, write_listwise
from rrhf_core.errors import DataError
from rrhf_core.ingest import read_prompts
from rrhf_core.score import read_samples


@dataclass
class BuildResult:
    train_path: Path
    stats_path: Path
    prompts_in: int
    prompts_out: int
    dropped: dict[str, int]


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


def build(cfg: BuildConfig) -> BuildResult:
    prompts = {r["prompt_id"]: r for r in read_prompts(cfg.prompts)}
    samples = read_samples(cfg.samples)
    rewards: dict[str, float] = {}
    for p in cfg.scores:
        if not Path(p).exists():
            raise DataError(f"scores file {p} does not exist; run `rrhf score` first")
        for r in pq.read_table(p).to_pylist():
            rewards[r["response_id"]] = r["reward"]
    by_prompt: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in samples:
        if s["response_id"] not in rewards:
            raise DataError(
                f"response {s['response_id']} of prompt {s['prompt_id']} has no score; score every samples file"
            )
        by_prompt[s["prompt_id"]].setdefault(s["text"], {**s, "reward": rewards[s["response_id"]]})
    dropped: dict[str, int] = defaultdict(int)
    examples, prompt_stats = [], []
    per_source: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for pid, cands_by_text in by_prompt.items():
        if pid not in prompts:
            raise DataError(f"sampled prompt {pid} is not in {cfg.prompts}")
        cands = list(cands_by_text.values())
        for c in cands:
            per_source[c["source"]].append((c["reward"], c["num_tokens"]))
        rs = [c["reward"] for c in cands]
        prompt_stats.append(
            {
                "prompt_id": pid,
                "k": len(cands),
                "reward_mean": statistics.fmean(rs),
                "reward_std": statistics.pstdev(rs),
                "reward_max": max(rs),
                "reward_min": min(rs),
            }
        )
        if len(cands) < 2:
            dropped["fewer than 2 distinct responses"] += 1
            continue
        if max(rs) - min(rs) <= cfg.min_reward_gap:
            dropped["all rewards equal (no ranking signal)"] += 1
            continue
        kept = cap_k(cands, cfg.max_k)
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
    out = Path(cfg.output_dir)
    train_path = write_listwise(examples, out / "train.parquet")
    atomic_write_parquet(pa.Table.from_pylist(prompt_stats), out / "prompt_stats.parquet")
    best = [s["reward_max"] for s in prompt_stats]
    stats = {
        "prompts_in": len(by_prompt),
        "prompts_out": len(examples),
        "dropped": dict(dropped),
        "responses_out": sum(len(e.responses) for e in examples),
        "reward_mean": statistics.fmean(r for s in prompt_stats for r in [s["reward_mean"]]),
        "best_of_n_mean": statistics.fmean(best),
        "per_source": {
            src: {
                "count": len(v),
                "reward_mean": statistics.fmean(r for r, _ in v),
                "tokens_mean": statistics.fmean(t for _, t in v),
            }
            for src, v in sorted(per_source.items())
        },
    }
    stats_path = out / "build_stats.json"
    stats_path.write_text(json.dumps(stats, indent=2))
    return BuildResult(train_path, stats_path, len(by_prompt), len(examples), dict(dropped))
