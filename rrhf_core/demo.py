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

import hashlib
import json
import re
from importlib.resources import files

from rrhf_core.data import ListwiseExample

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I am not able to answer this question.",
    "Sorry, I don't know.",
    "I cannot provide that information.",
)


def prompt_id(messages: list[dict[str, str]]) -> str:
    """Stable id of a prompt: a hash of its normalised messages."""
    canon = json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def split_of(pid: str, eval_share: float) -> str:
    """Deterministic train/eval assignment from the id."""
    return "eval" if int(pid[:8], 16) / 0xFFFFFFFF < eval_share else "train"


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def demo_examples(eval_share: float = 0.25) -> dict[str, list[ListwiseExample]]:
    """The demo listwise set, split into ``{"train": [...], "eval": [...]}``."""
    lines = files("rrhf_core").joinpath("data/demo_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    out: dict[str, list[ListwiseExample]] = {"train": [], "eval": []}
    for i, line in enumerate(lines):
        row = json.loads(line)
        messages = [{"role": "user", "content": row["prompt"]}]
        pid = prompt_id(messages)
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
        out[split_of(pid, eval_share)].append(ex)
    return out
