"""The embedded demo set: a listwise training set built from the project's own prompts, no model needed.

``data/demo_prompts.jsonl`` holds 32 everyday questions with a reference answer written for this
project. Each prompt gets four candidate responses whose order is known by construction, so the
rewards are a rule, not a model (the reward-model stages replace this rule in the full pipeline):

- the reference answer (reward 1.0, source ``dataset:reference``);
- its first sentence only, helpful but incomplete (0.5, ``rule:first-sentence``);
- a refusal (-0.5, ``rule:refusal``);
- an echo of the question (-1.0, ``rule:echo``).

What a model learns here: prefer complete answers to partial ones, and answers to refusals and echoes.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files

from rrhf_core.data.contracts import ListwiseExample
from rrhf_core.data.ingest import make_prompt_id, split_for

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I am not able to answer this question.",
    "Sorry, I don't know.",
    "I cannot provide that information.",
)


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def demo_examples(eval_share: float = 0.25) -> dict[str, list[ListwiseExample]]:
    """The demo listwise set, split into ``{"train": [...], "eval": [...]}``."""
    lines = files("rrhf_core").joinpath("data/demo_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    out: dict[str, list[ListwiseExample]] = {"train": [], "eval": []}
    for i, line in enumerate(lines):
        row = json.loads(line)
        messages = [{"role": "user", "content": row["prompt"]}]
        pid = make_prompt_id(messages)
        responses = [
            row["reference"],
            first_sentence(row["reference"]),
            REFUSALS[i % len(REFUSALS)],
            f"You asked: {row['prompt']}",
        ]
        ex = ListwiseExample(
            prompt_id=pid,
            messages=messages,
            responses=responses,
            rewards=[1.0, 0.5, -0.5, -1.0],
            sources=["dataset:reference", "rule:first-sentence", "rule:refusal", "rule:echo"],
        )
        out[split_for(pid, eval_share)].append(ex)
    return out
