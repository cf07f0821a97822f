"""Parsing of Anthropic HH-style dialogues (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``)."""

from __future__ import annotations

import itertools
import re

_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_hh(text: str) -> tuple[list[dict[str, str]], str]:
    """Split an HH dialogue into the prompt messages and the final assistant response.

    The prompt is everything up to and including the last ``"\\n\\nAssistant:"``; the response is what
    follows it (stripped). Raises ValueError when the text has no such turn or no human turn before it.
    """
    marks = list(_TURN.finditer(text))
    if not marks or marks[-1].group(1) != "Assistant":
        raise ValueError("an HH dialogue must end with an '\\n\\nAssistant:' turn")
    messages: list[dict[str, str]] = []
    for m, nxt in itertools.pairwise(marks):
        role = "user" if m.group(1) == "Human" else "assistant"
        messages.append({"role": role, "content": text[m.end() : nxt.start()].strip()})
    if not messages:
        raise ValueError("an HH dialogue needs a human turn before its final assistant response")
    if messages[-1]["role"] != "user":
        raise ValueError(
            "two assistant turns in a row before the final response (an earlier turn may hold an inline "
            "'Human:' without the blank line before it)"
        )
    return messages, text[marks[-1].end() :].strip()
