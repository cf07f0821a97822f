"""Prompts and responses as token ids: the prompt formats and the length policy every stage shares (sampling,
scoring, training, evaluation), so a prompt is the same tokens wherever it goes.

Each response row is ``prompt tokens + response tokens (+ EOS)``. Prompt and response are tokenised
separately and concatenated, so the boundary is exact and the label mask covers the response
tokens and its EOS, never the prompt and never padding.

Prompt formats:
- ``"chat"``: messages through the tokenizer's chat template with the generation prompt appended;
  the response is the assistant turn, ended by the tokenizer's EOS (``<|im_end|>`` for ChatML).
- ``"hh"``: Anthropic HH text, ``"\\n\\nHuman: ...\\n\\nAssistant:"``; the response follows after a
  space and is ended by EOS.

Length policy (``max_length`` tokens per row, ``max_response_tokens`` per response):
- a response longer than ``max_response_tokens`` is cut there and gets no EOS (it did not end);
- the prompt may use ``max_length`` minus its longest response; a longer prompt is left-truncated at
  a turn boundary (oldest turns dropped, system messages kept, always starting at a user turn);
- a prompt whose last user turn alone does not fit is dropped with a reason (counted and reported).
No row ever exceeds ``max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rrhf_core.types import PromptFormat

if TYPE_CHECKING:
    from rrhf_core.data.contracts import ListwiseExample


def render_hh(messages: Sequence[dict[str, str]]) -> str:
    """Messages as HH text ending with ``"\\n\\nAssistant:"``; system text is folded into the first turn."""
    parts: list[str] = []
    system = " ".join(m["content"].strip() for m in messages if m["role"] == "system")
    for m in messages:
        if m["role"] == "system":
            continue
        speaker = "Human" if m["role"] == "user" else "Assistant"
        content = m["content"].strip()
        if system and speaker == "Human" and not parts:
            content = f"{system}\n\n{content}"
        parts.append(f"\n\n{speaker}: {content}")
    return "".join(parts) + "\n\nAssistant:"


@dataclass
class EncodedExample:
    prompt_id: str
    prompt_ids: list[int]
    response_ids: list[list[int]]
    rewards: list[float]
    dropped_turns: int = 0
    truncated_responses: int = 0


@dataclass
class Dropped:
    prompt_id: str
    reason: str


class Encoder:
    """Turns :class:`ListwiseExample` rows into token ids under the length policy above."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 512,
        max_response_tokens: int = 256,
        prompt_format: PromptFormat = "chat",
    ) -> None:
        if max_response_tokens >= max_length:
            raise ValueError(
                f"max_response_tokens ({max_response_tokens}) must be below max_length ({max_length})"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; responses need one to mark their end")
        if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt_format='chat' needs a tokenizer with a chat template; this one has none. "
                "Use prompt_format='hh' for plain-text dialogues."
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_response_tokens = max_response_tokens
        self.prompt_format = prompt_format
        self.eos_id = int(tokenizer.eos_token_id)

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_text(self, messages: Sequence[dict[str, str]]) -> str:
        if self.prompt_format == "hh":
            return render_hh(messages)
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def response_ids(self, response: str) -> tuple[list[int], bool]:
        """Token ids of one response with EOS; ``(ids, truncated)``."""
        text = " " + response.strip() if self.prompt_format == "hh" else response
        ids = [*self._tokens(text), self.eos_id]
        if len(ids) > self.max_response_tokens:
            return ids[: self.max_response_tokens], True
        return ids, False

    def prompt_ids(self, messages: Sequence[dict[str, str]], budget: int) -> tuple[list[int], int] | None:
        """Prompt token ids within ``budget``, left-truncated at turn boundaries; ``(ids, dropped_turns)``."""
        system = [m for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        starts = [i for i, m in enumerate(turns) if m["role"] == "user"]
        for start in starts:
            ids = self._tokens(self.prompt_text(system + turns[start:]))
            if len(ids) <= budget:
                return ids, start
        return None

    def encode(self, example: ListwiseExample) -> EncodedExample | Dropped:
        responses = [self.response_ids(r) for r in example.responses]
        longest = max(len(ids) for ids, _ in responses)
        budget = self.max_length - longest
        prompt = self.prompt_ids(example.messages, budget)
        if prompt is None:
            return Dropped(
                example.prompt_id,
                f"prompt does not fit in {budget} tokens (max_length {self.max_length} minus the longest "
                f"response, {longest} tokens) even when cut to its last user turn",
            )
        ids, dropped_turns = prompt
        return EncodedExample(
            prompt_id=example.prompt_id,
            prompt_ids=ids,
            response_ids=[r for r, _ in responses],
            rewards=list(example.rewards),
            dropped_turns=dropped_turns,
            truncated_responses=sum(t for _, t in responses),
        )
