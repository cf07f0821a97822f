"""Sampling with transformers ``generate``: the fallback where vLLM cannot run, and the reference for tests."""

from __future__ import annotations

from typing import Any

import torch

from rrhf_core.batching import length_batches
from rrhf_core.models import load_causal_lm, load_tokenizer
from rrhf_core.sampling import Completion, GenerationParams, cut_at_stop


class HFSampler:
    name = "hf"

    def __init__(
        self, model: str, cache_dir: str | None = None, dtype: str = "auto", batch_size: int = 8
    ) -> None:
        self.tokenizer = load_tokenizer(model, cache_dir)
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(model, cache_dir)
        self.model.eval()
        from rrhf_core.hardware import bf16_available

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = dtype == "bf16" or (dtype == "auto" and bf16_available(self.device))
        # bf16 means bf16 weights, not fp32 weights under autocast, which casts every weight at every decoding step
        # (benchmarks/generation.py: 1.2-1.5x faster on a 2-core CPU; docs/performance.md, "Generation on a CPU")
        self.model.to(self.device, dtype=torch.bfloat16 if self.bf16 else None)
        self.batch_size = batch_size
        # prompts of similar length share a generate call: left padding up to the longest prompt of a call costs
        # prefill and attention for every row (HH prompts run from 20 to 256 tokens)
        self.group_by_length = True

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def generate(
        self, prompts: list[str], params: GenerationParams, batch_size: int | None = None
    ) -> list[list[Completion]]:
        """k completions per prompt, in the prompts' order; ``batch_size`` prompts per generate call (default: the
        sampler's), grouped by prompt length when ``group_by_length`` and there is more than one call."""
        per_call = batch_size or self.batch_size
        grouped = self.group_by_length and len(prompts) > per_call
        lengths = (
            [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
            if grouped
            else [0] * len(prompts)
        )
        out: list[list[Completion]] = [[] for _ in prompts]
        for idx in length_batches(lengths, per_call, grouped):
            for i, group in zip(idx, self._batch([prompts[i] for i in idx], params), strict=True):
                out[i] = group
        return out

    def _diverse(self, prompt: str, p: GenerationParams) -> list[Completion]:
        from rrhf_core.sampling.diverse_beam import diverse_beam_search

        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        hyps = diverse_beam_search(
            self.model,
            ids,
            num_return=p.k,
            groups=p.num_beam_groups,
            diversity_penalty=p.diversity_penalty,
            max_new_tokens=p.max_new_tokens,
            eos_id=self.tokenizer.eos_token_id,
            bf16=self.bf16,
        )
        return [self._completion(row, ended, p) for row, ended in hyps]

    def _completion(self, ids: list[int], ended: bool, p: GenerationParams) -> Completion:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, p.stop)
        n = len(ids) if not stopped else self.count_tokens(text) + 1
        return Completion(text.strip(), n, "stop" if ended or stopped else "length")

    def _batch(self, prompts: list[str], p: GenerationParams) -> list[list[Completion]]:
        if p.strategy == "diverse_beam":
            return [self._diverse(prompt, p) for prompt in prompts]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        greedy = p.strategy == "sample" and p.temperature == 0
        n_return = 1 if greedy else p.k  # greedy decoding gives one answer; it is repeated k times
        kwargs: dict[str, Any] = {
            "max_new_tokens": p.max_new_tokens,
            "num_return_sequences": n_return,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if p.strategy == "beam":
            kwargs.update(num_beams=p.k, do_sample=False, early_stopping=True)
        else:
            kwargs.update(do_sample=p.temperature > 0, temperature=p.temperature or None, top_p=p.top_p)
        if p.stop:
            kwargs.update(stop_strings=list(p.stop), tokenizer=self.tokenizer)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            seqs = self.model.generate(**enc, **kwargs)
        new = seqs[:, enc["input_ids"].shape[1] :]
        eos = self.tokenizer.eos_token_id
        results: list[list[Completion]] = []
        for i in range(len(prompts)):
            group = []
            rows = new[i * n_return : (i + 1) * n_return].tolist() * (p.k // n_return)
            for row in rows:
                ended = eos in row
                ids = (
                    row[: row.index(eos) + 1]
                    if ended
                    else [t for t in row if t != self.tokenizer.pad_token_id]
                )
                group.append(self._completion(ids, ended, p))
            results.append(group)
        return results

    def close(self) -> None:
        del self.model
