"""One shard of the sampling stage: the policy backend chosen from the settings (:func:`make_sampler`) and the
samples of a shard of prompts (:func:`sample_seeded_shard`). The unit of work that the local loop
(:mod:`.stage`) and a Ray worker (:mod:`.ray_executor`) both run."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from rrhf_core.encoding import Encoder
from rrhf_core.models import check_model_available
from rrhf_core.sampling import Sampler
from rrhf_core.sampling.config import SampleConfig
from rrhf_core.types import PromptFormat


def response_id(prompt_id: str, text: str) -> str:
    return hashlib.sha256(f"{prompt_id}\0{text}".encode()).hexdigest()[:16]


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
    if cfg.include_references or cfg.include_human:
        for r in shard:
            for ref in r.get("references") or []:
                if not ref["text"].strip():  # a blank answer (prompts ingested before blanks were dropped)
                    continue
                human = ref["source"].startswith("human:")
                if not (cfg.include_human if human else cfg.include_references):
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
