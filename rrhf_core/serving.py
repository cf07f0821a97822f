"""What the served policy does besides generating: read chats, render them as training did, cut the answer.

Pure functions used by the registered pyfunc model (``tasks/chat_model.py``), which MLflow runs in the model server.
"""

from __future__ import annotations

from typing import Any

from rrhf_core.encoding import render_hh
from rrhf_core.types import PromptFormat

ARTIFACT = "hf_model"
DEFAULT_PARAMS: dict[str, Any] = {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0}


def chats(model_input: Any) -> list[list[dict[str, str]]]:
    """The chats of a DataFrame, a list of rows or one row (each row has ``messages``, a list of turns)."""
    if hasattr(model_input, "to_dict"):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    else:
        rows = list(model_input)
    out = []
    for i, row in enumerate(rows):
        messages = row.get("messages") if isinstance(row, dict) else None
        if messages is None or len(messages) == 0:
            raise ValueError(f"row {i}: expected 'messages', a non-empty list of {{'role', 'content'}} turns")
        try:
            out.append([{"role": str(m["role"]), "content": str(m["content"])} for m in messages])
        except (KeyError, TypeError) as e:
            raise ValueError(f"row {i}: every turn needs 'role' and 'content' ({e!r})") from None
    return out


def render(tokenizer: Any, chat: list[dict[str, str]], prompt_format: PromptFormat) -> str:
    """The prompt text exactly as training renders it (``PromptEncoder.prompt_text``)."""
    if prompt_format == "hh":
        return render_hh(chat)
    return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def answer(text: str, prompt_format: PromptFormat) -> str:
    """The model's own turn: an HH model goes on with the next ``Human:`` turn, which is cut."""
    if prompt_format == "hh":
        text = text.split("\n\nHuman:")[0]
    return text.strip()
