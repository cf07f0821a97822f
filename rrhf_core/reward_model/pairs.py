"""Preference pairs for reward-model training, from the three places users have them.

- **anything ``rrhf ingest`` reads**, e.g. raw HH dialogues (``{chosen, rejected}``, ``.jsonl.gz``): ingested on
  the fly, then as below.
- **prompts.parquet** (``rrhf ingest``): HH records carry ``dataset:chosen`` and ``dataset:rejected`` references
  -> one pair; references with rewards (the ``rrhf`` input format) -> every ordered pair with distinct rewards.
  The file's own ``split`` column decides held-out pairs, so the reward model is held out on the same prompts as the
  policy.
- **pair files** (JSONL or Parquet): ``{prompt | messages, chosen, rejected}`` rows (``prompt`` a user turn as text,
  ``messages`` a list of ``{role, content}``); held-out prompts by ``eval_share`` of the prompt-id hash.
- **listwise sets** (``rrhf build`` -> train.parquet, or any file of that contract): every ordered pair of a row's
  responses with distinct rewards (higher reward = chosen); held out by ``eval_share`` as above.

Pairs are split by prompt id, never by pair: no prompt is in both the training and the held-out pairs. Pairs whose
chosen and rejected texts are identical are skipped and counted. ``data_parts`` splits the training prompts into
disjoint parts by a second hash, so two reward models (the training reward and a judge) can learn from disjoint data.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rrhf_core.data.contracts import load_listwise, read_prompts, read_rows
from rrhf_core.data.ingest import ingest, make_prompt_id, split_for
from rrhf_core.errors import DataError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PreferencePair:
    prompt_id: str
    messages: Messages = field(hash=False)
    chosen: str
    rejected: str


@dataclass
class PairSet:
    """Training and held-out pairs, with what was read and skipped."""

    train: list[PreferencePair] = field(default_factory=list)
    eval: list[PreferencePair] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def stats(self) -> dict[str, int]:
        return {
            "train_pairs": len(self.train),
            "eval_pairs": len(self.eval),
            "train_prompts": len({p.prompt_id for p in self.train}),
            "eval_prompts": len({p.prompt_id for p in self.eval}),
            **dict(self.counts),
        }


def part_of(prompt_id: str, parts: int) -> int:
    """Which of ``parts`` disjoint parts a prompt belongs to (a hash independent of the train/eval split's)."""
    return int(hashlib.sha256(("part:" + prompt_id).encode()).hexdigest()[:8], 16) % parts


def ordered_pairs(
    prompt_id: str, messages: Messages, texts: list[str], rewards: list[float]
) -> list[PreferencePair]:
    """Every (higher, lower) pair of responses with distinct rewards."""
    return [
        PreferencePair(prompt_id, messages, texts[i], texts[j])
        for i, j in itertools.permutations(range(len(texts)), 2)
        if rewards[i] > rewards[j]
    ]


def _from_prompts(path: Path, counts: Counter[str]) -> list[tuple[str, PreferencePair]]:
    out = []
    for row in read_prompts(path):
        refs = row.get("references") or []
        by_source = {r["source"]: r["text"] for r in refs}
        chosen, rejected = by_source.get("dataset:chosen"), by_source.get("dataset:rejected")
        if chosen is not None and rejected is not None:
            pairs = [PreferencePair(row["prompt_id"], row["messages"], chosen, rejected)]
        else:
            scored = [r for r in refs if r.get("reward") is not None]
            pairs = ordered_pairs(
                row["prompt_id"], row["messages"], [r["text"] for r in scored], [r["reward"] for r in scored]
            )
        if not pairs:
            counts["prompts_without_pairs"] += 1
        out += [(row["split"], p) for p in pairs]
    return out


def _messages_of(row: dict[str, Any], where: str) -> Messages:
    if isinstance(row.get("messages"), list):
        msgs = row["messages"]
        if not msgs or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in msgs):
            raise DataError(f"{where}, column 'messages': expected a non-empty list of {{role, content}}")
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return [{"role": "user", "content": row["prompt"]}]
    raise DataError(f"{where}: missing column 'prompt' (text) or 'messages' (list of {{role, content}})")


def _from_pair_rows(path: Path, rows: list[dict[str, Any]]) -> list[tuple[None, PreferencePair]]:
    out: list[tuple[None, PreferencePair]] = []
    for i, row in enumerate(rows):
        where = f"{path}, row {i + 1}"
        messages = _messages_of(row, where)
        for col in ("chosen", "rejected"):
            if not isinstance(row.get(col), str) or not row[col].strip():
                raise DataError(f"{where}, column {col!r}: missing or empty (a pair needs text in both)")
        out.append((None, PreferencePair(make_prompt_id(messages), messages, row["chosen"], row["rejected"])))
    return out


def empty_negatives(pairs: list[PreferencePair]) -> list[PreferencePair]:
    """One extra pair per prompt: its (first) chosen answer preferred over an empty answer."""
    seen: set[str] = set()
    out = []
    for p in pairs:
        if p.prompt_id not in seen and p.chosen.strip():
            seen.add(p.prompt_id)
            out.append(PreferencePair(p.prompt_id, p.messages, p.chosen, ""))
    return out


def _from_ingest(path: Path, counts: Counter[str], eval_share: float) -> list[tuple[str, PreferencePair]]:
    """Any input ``rrhf ingest`` reads (raw HH dialogues, ``.gz``, HF datasets, ...), ingested on the fly."""
    with tempfile.TemporaryDirectory(prefix="rrhf-pairs-") as tmp:
        ingest([str(path)], tmp, eval_share=eval_share)
        counts["ingested_inputs"] += 1
        return _from_prompts(Path(tmp) / "prompts.parquet", counts)


def read_pairs(
    path: str | os.PathLike[str], counts: Counter[str], eval_share: float = 0.1
) -> list[tuple[str | None, PreferencePair]]:
    """``(split or None, pair)`` from one input of any kind (chosen by its columns; see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".jsonl") or not path.exists():
        return list(_from_ingest(path, counts, eval_share))
    rows, columns = read_rows(path, "preference data")
    if {"prompt_id", "references", "split"} <= set(columns):
        return list(_from_prompts(path, counts))
    if {"responses", "rewards"} <= set(columns):
        examples, _ = load_listwise(path)
        return [
            (None, p)
            for ex in examples
            for p in ordered_pairs(ex.prompt_id, ex.messages, ex.responses, ex.rewards)
        ]
    if {"chosen", "rejected"} <= set(columns):
        if not ({"prompt", "messages"} & set(columns)):
            return list(
                _from_ingest(path, counts, eval_share)
            )  # HH dialogues: the prompt is inside both texts
        return list(_from_pair_rows(path, rows))
    raise DataError(
        f"{path}: not preference data. Expected HH records ({{chosen, rejected}} dialogues), a prompts.parquet from "
        "rrhf ingest, rows of {prompt|messages, chosen, rejected}, or a listwise set (responses, rewards); found "
        f"columns {columns}"
    )


def load_pairs(
    paths: list[str],
    eval_share: float = 0.1,
    data_part: int = 0,
    data_parts: int = 1,
    max_train_pairs: int | None = None,
) -> PairSet:
    """Read, split by prompt and de-duplicate the pairs of every input (see the module docstring)."""
    result = PairSet()
    seen: set[tuple[str, str, str]] = set()
    for path in paths:
        for split, pair in read_pairs(path, result.counts, eval_share):
            result.counts["pairs_read"] += 1
            if pair.chosen.strip() == pair.rejected.strip():
                result.counts["skipped_identical"] += 1
                continue
            key = (pair.prompt_id, pair.chosen, pair.rejected)
            if key in seen:
                result.counts["skipped_duplicate"] += 1
                continue
            seen.add(key)
            split = split or split_for(pair.prompt_id, eval_share)
            if split == "eval":
                result.eval.append(pair)
            elif part_of(pair.prompt_id, data_parts) == data_part:
                result.train.append(pair)
            else:
                result.counts["other_parts"] += 1
    if max_train_pairs is not None and len(result.train) > max_train_pairs:
        result.counts["over_max_train_pairs"] += len(result.train) - max_train_pairs
        result.train = result.train[:max_train_pairs]
    if not result.train:
        raise DataError(
            f"no training pairs in {paths} ({dict(result.counts)}); preference data needs prompts with a chosen "
            "and a rejected response (or distinct rewards) in the train split"
        )
    return result
