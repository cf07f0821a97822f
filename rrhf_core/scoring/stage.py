"""The scoring stage: samples -> scores.parquet (``response_id``, ``prompt_id``, ``reward``, ``reward_model``).

Identical (prompt, response) pairs are scored once. Scores are cached in SQLite by (reward id, content hash of
the prompt messages and the response), so a rerun, or another stage that needs the same pairs, scores nothing
twice. A NaN or infinite reward is an error that names the response. A cache that cannot be used (corrupt, locked
by another process past ``CACHE_LOCK_TIMEOUT_S``, read-only, or in a folder that cannot be made) is an error that
names it and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from rrhf_core.data.contracts import (
    SCORES_SCHEMA,
    atomic_write_parquet,
    prepare_output_dir,
    read_prompts,
    read_samples,
)
from rrhf_core.errors import DataError
from rrhf_core.models import cache_root
from rrhf_core.scoring.config import ScoreConfig
from rrhf_core.scoring.reward import RewardBackend, make_reward


def content_hash(messages: list[dict[str, str]], response: str) -> str:
    payload = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False) + "\0" + response
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# how long a read or write waits for another process that holds the cache (another `rrhf score`, say)
CACHE_LOCK_TIMEOUT_S = 60.0


def cache_error(path: Path, err: Exception) -> DataError:
    """A DataError naming the score cache, what is wrong with it and what to do."""
    reason = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        reason = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    fix = "or point cache_path (--cache-path) at another file"
    if "locked" in reason or "busy" in reason:
        return DataError(
            f"score cache {path} is locked by another process (waited {CACHE_LOCK_TIMEOUT_S:g} s); let it finish, "
            + fix
        )
    if "not a database" in reason or "malformed" in reason or "corrupt" in reason:
        return DataError(
            f"score cache {path} is corrupt ({reason}); delete it (it only holds scores that can be computed "
            f"again), {fix}"
        )
    return DataError(f"cannot use the score cache {path} ({reason}); make it and its folder writable, {fix}")


class ScoreCache:
    """Rewards by (reward id, content hash) in SQLite; every failure is a DataError naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=CACHE_LOCK_TIMEOUT_S)
        except (OSError, sqlite3.Error) as e:
            raise cache_error(path, e) from None
        try:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS scores "
                "(reward_id TEXT, hash TEXT, reward REAL, PRIMARY KEY (reward_id, hash))"
            )
        except sqlite3.Error as e:
            self.db.close()
            raise cache_error(path, e) from None

    def get(self, reward_id: str, hashes: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            for s in range(0, len(hashes), 500):
                chunk = hashes[s : s + 500]
                q = f"SELECT hash, reward FROM scores WHERE reward_id = ? AND hash IN ({','.join('?' * len(chunk))})"
                out.update(self.db.execute(q, [reward_id, *chunk]).fetchall())
        except sqlite3.Error as e:
            raise cache_error(self.path, e) from None
        return out

    def put(self, reward_id: str, items: list[tuple[str, float]]) -> None:
        try:
            self.db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?)", [(reward_id, h, r) for h, r in items]
            )
            self.db.commit()
        except sqlite3.Error as e:
            raise cache_error(self.path, e) from None

    def close(self) -> None:
        self.db.close()


@dataclass
class ScoreResult:
    scores_path: Path
    responses: int
    unique_pairs: int
    scored_now: int
    cached: int
    seconds: float
    reward_id: str


def _read_inputs(cfg: ScoreConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The samples and each sampled prompt's messages; a sample whose prompt is not in the prompts file is an error."""
    samples = read_samples(cfg.samples)
    messages = {r["prompt_id"]: r["messages"] for r in read_prompts(cfg.prompts)}
    missing = sorted({s["prompt_id"] for s in samples} - set(messages))
    if missing:
        raise DataError(
            f"{len(missing)} sampled prompt(s) are not in {cfg.prompts} (e.g. {missing[0]}); "
            "score with the prompts file the samples came from"
        )
    return samples, messages


class _Scoring:
    """The responses of one run, deduplicated by content; what the cache knows and what is still to score."""

    def __init__(
        self,
        cfg: ScoreConfig,
        unique: dict[str, dict[str, Any]],
        messages: dict[str, Any],
        bar: Any,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self.cfg, self.unique, self.messages, self.bar, self.on_progress = (
            cfg,
            unique,
            messages,
            bar,
            on_progress,
        )
        self.cache = ScoreCache(
            Path(cfg.cache_path) if cfg.cache_path else cache_root(cfg.cache_dir) / "scores.sqlite"
        )
        self.known: dict[str, float] = {}
        self.todo: list[str] = []
        self.done = 0

    def plan(self, reward_id: str) -> list[tuple[list[str], list[Any], list[str]]]:
        """The chunks still to score by ``reward_id``: ``(hashes, messages, responses)`` each."""
        self.known.update(self.cache.get(reward_id, list(self.unique)))
        self.todo.extend(h for h in self.unique if h not in self.known)
        self.bar.reset(total=len(self.todo))
        step = max(self.cfg.batch_size * 8, 64)
        chunks = [self.todo[s : s + step] for s in range(0, len(self.todo), step)]
        return [
            (c, [self.messages[self.unique[h]["prompt_id"]] for h in c], [self.unique[h]["text"] for h in c])
            for c in chunks
        ]

    def accept(self, reward_id: str, chunk: list[str], values: list[float]) -> None:
        """Check and keep one chunk's rewards (in the cache too)."""
        for h, v in zip(chunk, values, strict=True):
            if not isinstance(v, int | float) or not math.isfinite(v):
                r = self.unique[h]
                raise DataError(
                    f"reward {reward_id} gave {v!r} for response {r['response_id']} of prompt "
                    f"{r['prompt_id']} ({r['text'][:80]!r}); rewards must be finite numbers"
                )
        self.cache.put(reward_id, list(zip(chunk, map(float, values), strict=True)))
        self.known.update(zip(chunk, map(float, values), strict=True))
        self.done += len(chunk)
        self.bar.update(len(chunk))
        if self.on_progress:
            self.on_progress(self.done, len(self.todo))


def score(
    cfg: ScoreConfig,
    reward: RewardBackend | None = None,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score every sample (cached pairs are not scored again); ``on_progress(done, total)`` (responses to score)
    is called after each chunk."""
    t0 = time.perf_counter()
    samples, messages = _read_inputs(cfg)
    out = prepare_output_dir(cfg.output_dir)
    hashes = [content_hash(messages[s["prompt_id"]], s["text"]) for s in samples]
    unique: dict[str, dict[str, Any]] = {}
    for h, s in zip(hashes, samples, strict=True):
        unique.setdefault(h, s)
    from tqdm.auto import tqdm

    bar = tqdm(desc="rrhf score", unit="response", disable=not progress)
    run = _Scoring(cfg, unique, messages, bar, on_progress)
    try:
        if cfg.executor == "ray" and reward is None:
            from rrhf_core.scoring.ray_executor import score_on_ray

            reward_id = score_on_ray(cfg, run.plan, run.accept)
        else:
            reward = reward or make_reward(cfg.reward, cfg.batch_size, cfg.max_length, cfg.bucket)
            reward_id = reward.reward_id
            for chunk, msgs, texts in run.plan(reward_id):
                run.accept(reward_id, chunk, reward.score(msgs, texts))
    finally:
        bar.close()
        run.cache.close()
    out_rows = [
        {
            "response_id": s["response_id"],
            "prompt_id": s["prompt_id"],
            "reward": run.known[h],
            "reward_model": reward_id,
        }
        for h, s in zip(hashes, samples, strict=True)
    ]
    path = out / "scores.parquet"
    atomic_write_parquet(pa.Table.from_pylist(out_rows, schema=SCORES_SCHEMA), path)
    todo = len(run.todo)
    return ScoreResult(
        path, len(samples), len(unique), todo, len(unique) - todo, time.perf_counter() - t0, reward_id
    )
