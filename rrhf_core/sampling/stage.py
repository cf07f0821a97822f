"""The sampling stage: prompts.parquet -> samples.parquet, in resumable shards.

Samples table (one row per candidate response): ``prompt_id``, ``response_id`` (hash of prompt id and text),
``text``, ``source`` (``policy:<model>`` or the reference's source, e.g. ``dataset:chosen``), ``num_tokens``,
``finish_reason`` (``stop``, ``length`` or ``reference``) and ``sampler`` (hash of the sampling settings).

Shards: prompts are cut into shards of ``shard_size``; each finished shard is written atomically as
``shards/shard-NNNNN-<sampler>.parquet`` and skipped when the stage runs again with the same settings, so a killed
run redoes only the missing shards. The transformers backend is seeded per shard (``seed + shard index``), so a
resumed run produces the same samples as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rrhf_core.data.contracts import (
    SAMPLES_SCHEMA,
    atomic_write_parquet,
    atomic_write_text,
    prepare_output_dir,
    published,
    read_prompts,
)
from rrhf_core.errors import ConfigError
from rrhf_core.sampling import Sampler
from rrhf_core.sampling.config import SampleConfig
from rrhf_core.sampling.ray_executor import sample_on_ray
from rrhf_core.sampling.shard import make_sampler, sample_seeded_shard


@dataclass
class SampleResult:
    samples_path: Path
    prompts: int
    shards_total: int
    shards_done_now: int
    generated_tokens: int
    seconds: float
    dropped_for_length: list[str] = field(default_factory=list)  # prompt ids longer than max_prompt_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def sample(
    cfg: SampleConfig,
    sampler: Sampler | None = None,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> SampleResult:
    """Run the sampling stage; reuses finished shards. ``sampler`` may be passed in to reuse a loaded backend;
    ``on_progress(done, total)`` (prompts) is called after each shard."""
    rows = read_prompts(cfg.prompts, None if cfg.split == "all" else cfg.split)[: cfg.limit]
    if not rows:
        raise ConfigError(f"{cfg.prompts} has no prompts in split {cfg.split!r}")
    out = prepare_output_dir(cfg.output_dir)
    prepare_output_dir(out / "shards")
    sid = cfg.sampler_id()
    n_shards = (len(rows) + cfg.shard_size - 1) // cfg.shard_size
    shard_paths = [out / "shards" / f"shard-{i:05d}-{sid}.parquet" for i in range(n_shards)]
    todo = [i for i, p in enumerate(shard_paths) if not p.exists()]
    tokens, t0 = 0, time.perf_counter()
    owned = sampler is None
    on_ray = bool(todo) and cfg.executor == "ray"
    if todo and sampler is None and not on_ray:
        sampler = make_sampler(cfg)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(rows),
        initial=len(rows) - sum(len(rows[i * cfg.shard_size : (i + 1) * cfg.shard_size]) for i in todo),
        desc=f"rrhf sample ({'ray' if on_ray else sampler.name if sampler else 'cached'})",
        unit="prompt",
        disable=not progress,
    )
    done = len(rows) - sum(len(rows[i * cfg.shard_size : (i + 1) * cfg.shard_size]) for i in todo)
    shards = {i: rows[i * cfg.shard_size : (i + 1) * cfg.shard_size] for i in todo}

    def finished(i: int, records: list[dict[str, Any]], n_tokens: int, skipped: int) -> None:
        nonlocal tokens, done
        tokens += n_tokens
        atomic_write_parquet(pa.Table.from_pylist(records, schema=SAMPLES_SCHEMA), shard_paths[i])
        bar.update(len(shards[i]))
        bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}", skipped=skipped)
        done += len(shards[i])
        if on_progress:
            on_progress(done, len(rows))

    try:
        if on_ray:
            sample_on_ray(cfg, shards, sid, finished)
        else:
            for i in todo:
                assert sampler is not None
                finished(i, *sample_seeded_shard(shards[i], i, sampler, cfg, sid))
    finally:
        bar.close()
        if owned and sampler is not None:
            sampler.close()
    seconds = time.perf_counter() - t0
    table = pa.concat_tables([pq.read_table(p) for p in shard_paths])
    samples_path = out / "samples.parquet"
    sampled = set(table.column("prompt_id").to_pylist())
    dropped = [r["prompt_id"] for r in rows if r["prompt_id"] not in sampled]  # found again on a resume too
    report = {
        "prompts": len(rows),
        "shards": n_shards,
        "shards_done_now": len(todo),
        "samples": table.num_rows,
        "generated_tokens": tokens,
        "seconds": seconds,
        "sampler": sid,
        "dropped_for_length": {
            "count": len(dropped),
            "prompt_ids": dropped,
            "max_prompt_tokens": cfg.max_prompt_tokens,
        },
        "config": cfg.model_dump(),
    }
    with published(out, last="sample_report.json") as staging:  # samples and report appear as one set
        atomic_write_parquet(table, staging / samples_path.name)
        atomic_write_text(staging / "sample_report.json", json.dumps(report, indent=2))
    return SampleResult(samples_path, len(rows), n_shards, len(todo), tokens, seconds, dropped)
