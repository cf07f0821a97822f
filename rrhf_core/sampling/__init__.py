"""Sampling: one interface, two backends (vLLM, transformers ``generate``).

A backend turns rendered prompt texts into ``k`` :class:`Completion` objects each. The stage function in
:mod:`rrhf_core.sampling.stage` adds everything around it: prompt rendering and truncation, shards and resume,
references from the data as extra candidates, the samples table and progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


@dataclass(frozen=True)
class GenerationParams:
    k: int
    strategy: str  # "sample" | "beam" | "diverse_beam"
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...]
    seed: int
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0


class Sampler(Protocol):
    name: str
    tokenizer: Any

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[Completion]]:
        """``k`` completions for each prompt text, in prompt order."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; ``(text, stopped)``."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
