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

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rrhf_core.data.contracts import SAMPLES_SCHEMA, atomic_write_parquet, prepare_output_dir, read_prompts
from rrhf_core.encoding import Encoder
from rrhf_core.errors import ConfigError
from rrhf_core.models import check_model_available
from rrhf_core.sampling import Sampler
from rrhf_core.sampling.config import SampleConfig
from rrhf_core.types import PromptFormat


def response_id(prompt_id: str, text: str) -> str:
    return hashlib.sha256(f"{prompt_id}\0{text}".encode()).hexdigest()[:16]


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


def model_tag(model: str) -> str:
    return model if model.startswith("embedded:") else Path(model).name or model


def make_sampler(cfg: SampleConfig) -> Sampler:
    check_model_available(cfg.model)  # a missing folder or an uncached hub id: one clear line, either backend
    backend = cfg.backend
    if backend == "auto":
        vllm_ok = torch.cuda.is_available() and _vllm_importable() and cfg.strategy != "diverse_beam"
        backend = "vllm" if vllm_ok else "hf"
    if backend == "vllm":
        from rrhf_core.sampling.vllm_backend import VLLMSampler

        return VLLMSampler(
            cfg.model,
            cfg.cache_dir,
            cfg.dtype,
            cfg.seed,
            cfg.vllm_memory_utilization,
            cfg.vllm_max_model_len,
            tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        )
    from rrhf_core.sampling.hf_backend import HFSampler

    return HFSampler(cfg.model, cfg.cache_dir, cfg.dtype, cfg.batch_size)


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def render_prompts(
    rows: list[dict[str, Any]], tokenizer: Any, prompt_format: PromptFormat, max_prompt_tokens: int
) -> tuple[list[str], list[str]]:
    """Prompt texts within ``max_prompt_tokens`` (left-truncated at turn boundaries); ``(texts, skipped ids)``."""
    enc = Encoder(
        tokenizer,
        max_length=max_prompt_tokens + 1,
        max_response_tokens=1,
        prompt_format=prompt_format,
    )
    texts, skipped = [], []
    for r in rows:
        ids = enc.prompt_ids(r["messages"], max_prompt_tokens)
        if ids is None:
            skipped.append(r["prompt_id"])
            texts.append("")
        else:
            texts.append(tokenizer.decode(ids[0], skip_special_tokens=False))
    return texts, skipped


def _record(pid: str, text: str, source: str, num_tokens: int, finish: str, sid: str) -> dict[str, Any]:
    return {
        "prompt_id": pid,
        "response_id": response_id(pid, text),
        "text": text,
        "source": source,
        "num_tokens": num_tokens,
        "finish_reason": finish,
        "sampler": sid,
    }


def sample_shard(
    shard: list[dict[str, Any]], sampler: Sampler, cfg: SampleConfig, sid: str
) -> tuple[list[dict[str, Any]], int, int]:
    """Samples for one shard of prompts (plus their references): ``(records, generated tokens, prompts skipped)``."""
    texts, skipped = render_prompts(shard, sampler.tokenizer, cfg.prompt_format, cfg.max_prompt_tokens)
    keep = [j for j, t in enumerate(texts) if t]
    completions = sampler.generate([texts[j] for j in keep], cfg.generation_params()) if keep else []
    source = f"policy:{model_tag(cfg.model)}"
    records, tokens = [], 0
    for j, group in zip(keep, completions, strict=True):
        for c in group:
            tokens += c.num_tokens
            if c.text:
                records.append(
                    _record(shard[j]["prompt_id"], c.text, source, c.num_tokens, c.finish_reason, sid)
                )
    if cfg.include_references:
        for r in shard:
            for ref in r.get("references") or []:
                if not ref["text"].strip():  # a blank answer (prompts ingested before blanks were dropped)
                    continue
                n = sampler.count_tokens(ref["text"]) + 1
                records.append(_record(r["prompt_id"], ref["text"], ref["source"], n, "reference", sid))
    return records, tokens, len(skipped)


def sample_seeded_shard(
    shard: list[dict[str, Any]], index: int, sampler: Sampler, cfg: SampleConfig, sid: str
) -> tuple[list[dict[str, Any]], int, int]:
    """:func:`sample_shard` seeded by its index (``seed + index``): a resumed run, or a shard run anywhere else
    (a Ray worker), samples the same as an uninterrupted local run."""
    torch.manual_seed(cfg.seed + index)
    return sample_shard(shard, sampler, cfg, sid)


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
            from rrhf_core.sampling.ray_executor import sample_on_ray

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
    atomic_write_parquet(table, samples_path)
    sampled = set(table.column("prompt_id").to_pylist())
    dropped = [
        r["prompt_id"] for r in rows if r["prompt_id"] not in sampled
    ]  # found again on a resumed run too
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
    (out / "sample_report.json").write_text(json.dumps(report, indent=2))
    return SampleResult(samples_path, len(rows), n_shards, len(todo), tokens, seconds, dropped)
