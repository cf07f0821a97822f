"""The project's own instruction-following suite: everyday questions, each with one or two verifiable constraints.

Training prompts: 16 topics x (9 single constraints + 1 pair of constraints). Held-out prompts: 8 *other* topics x
(6 single constraints + 2 pairs that never occur together in training), so evaluation measures whether following an
instruction generalised, not whether a topic was memorised. Every training prompt also carries a reference answer
written by the project (a short factual answer reshaped to satisfy the constraints, checked when the suite is built),
which enters RRHF as an extra candidate, as human answers do in the paper.

``python -m rrhf_core.instructions.suite`` rewrites ``rrhf_core/data/instructions.jsonl``; a test checks that the
committed file is exactly what this module builds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rrhf_core.instructions.constraints import Constraint

# (question, answer in three short sentences); answers avoid commas so that any reshaping stays checkable
TRAIN_TOPICS: list[tuple[str, str]] = [
    (
        "How do I boil an egg?",
        "Put the egg in boiling water. Cook it for nine minutes. Cool it in cold water before peeling.",
    ),
    (
        "How can I sleep better?",
        "Go to bed at the same time every night. Keep your room dark and cool. Avoid screens before bed.",
    ),
    (
        "How do I keep a houseplant alive?",
        "Water it when the soil feels dry. Give it bright indirect light. Do not let it sit in water.",
    ),
    (
        "How can I save money on food?",
        "Plan your meals for the week. Buy staples in bulk. Cook at home instead of eating out.",
    ),
    (
        "How do I start running?",
        "Begin with short easy runs. Mix running with walking at first. Add a little distance each week.",
    ),
    (
        "How do I learn a new language?",
        "Practise a little every day. Speak with native speakers when you can. Learn the most common words first.",
    ),
    (
        "How do I make good coffee?",
        "Use freshly ground beans. Keep the water just below boiling. Clean your coffee maker often.",
    ),
    (
        "How can I focus better at work?",
        "Turn off notifications while you work. Work in short blocks with breaks. Do the hardest task first.",
    ),
    (
        "How do I clean a cast iron pan?",
        "Rinse it with hot water while it is warm. Scrub off food with a brush. Dry it and rub in a little oil.",
    ),
    (
        "How do I write a good email?",
        "State your point in the first line. Keep it short and clear. End with the action you need.",
    ),
    (
        "How can I drink more water?",
        "Carry a bottle with you all day. Drink a glass with every meal. Add fruit to the water for taste.",
    ),
    (
        "How do I prepare for a job interview?",
        "Research the company before the day. Practise answers to common questions. Prepare questions of your own.",
    ),
    (
        "How do I care for a new puppy?",
        "Feed it at the same times each day. Take it outside often to learn toilet habits. Give it toys and lots of rest.",
    ),
    (
        "How can I reduce stress?",
        "Take slow deep breaths. Go for a walk outside. Talk to a friend about what worries you.",
    ),
    (
        "How do I grow tomatoes?",
        "Plant them in a sunny spot. Water the soil deeply a few times a week. Support the stems with a stake.",
    ),
    (
        "How do I remember names better?",
        "Repeat the name when you hear it. Link it to something you know. Use the name again before you leave.",
    ),
]
EVAL_TOPICS: list[str] = [
    "How do I bake bread at home?",
    "How can I keep my phone battery healthy?",
    "How do I pack a suitcase well?",
    "How can I make friends in a new city?",
    "How do I choose a good book to read?",
    "How do I keep my kitchen clean?",
    "How can I stay warm in winter?",
    "How do I teach a child to ride a bike?",
]

END_PHRASE = "Hope this helps!"
TRAIN_SINGLES = [
    "max_words:12",
    "start_yes_no",
    "lowercase",
    "end_question",
    "bullets:3",
    "no_letter:e",
    "title",
    f"end_phrase:{END_PHRASE}",
    "numbered:3",
]
TRAIN_PAIRS = [
    ("title", "lowercase"),
    ("max_words:12", "end_question"),
    ("start_yes_no", "no_comma"),
    ("bullets:3", "lowercase"),
]
EVAL_SINGLES = ["max_words:12", "start_yes_no", "lowercase", "end_question", "bullets:3", "title"]
EVAL_PAIRS = [("start_yes_no", "max_words:12"), ("lowercase", "end_question")]


def _sentences(answer: str) -> list[str]:
    return [s.strip().rstrip(".") for s in answer.split(". ") if s.strip()]


def _title(question: str) -> str:
    return question.removeprefix("How do I ").removeprefix("How can I ").rstrip("?").capitalize()


# how a project-written reference is reshaped to satisfy each constraint (None: no reference for this kind)
RESHAPE: dict[str, Callable[[str, str, str], str] | None] = {
    "max_words": lambda q, a, arg: " ".join(_sentences(a)[0].split()[: int(arg) - 2]) + ".",
    "start_yes_no": lambda q, a, arg: "Yes. " + a,
    "lowercase": lambda q, a, arg: a.lower(),
    "end_question": lambda q, a, arg: a + " Would you like more tips?",
    "bullets": lambda q, a, arg: "\n".join(f"- {s}." for s in _sentences(a)[: int(arg)]),
    "numbered": lambda q, a, arg: "\n".join(f"{i}. {s}." for i, s in enumerate(_sentences(a)[: int(arg)], 1)),
    "title": lambda q, a, arg: f"<<{_title(q)}>>\n{a}",
    "end_phrase": lambda q, a, arg: f"{a} {arg}",
    "no_comma": lambda q, a, arg: a.replace(",", ""),
    "no_letter": None,
}


def prompt_text(question: str, constraints: list[Constraint]) -> str:
    return " ".join([question, *(c.instruction() for c in constraints)])


def reference(question: str, answer: str, constraints: list[Constraint]) -> str | None:
    """The answer reshaped for every constraint in turn; None when a kind has no reshaping or the result fails."""
    text = answer
    for c in constraints:
        fn = RESHAPE.get(c.kind)
        if fn is None:
            return None
        text = fn(question, text, c.arg)
    return text if all(c.check(text) for c in constraints) else None


def _specs(items: list[str | tuple[str, ...]]) -> list[list[Constraint]]:
    return [[Constraint.parse(s) for s in ((i,) if isinstance(i, str) else i)] for i in items]


def build_suite() -> list[dict[str, object]]:
    """Every prompt record of the suite (the ingest 'prompt' format with split, reference and constraints)."""
    records: list[dict[str, object]] = []
    for t, (question, answer) in enumerate(TRAIN_TOPICS):
        for cs in _specs([*TRAIN_SINGLES, TRAIN_PAIRS[t % len(TRAIN_PAIRS)]]):
            rec: dict[str, object] = {
                "prompt": prompt_text(question, cs),
                "split": "train",
                "meta": {"topic": question, "constraints": [c.spec() for c in cs]},
            }
            ref = reference(question, answer, cs)
            if ref is not None:
                rec["reference"] = ref
            records.append(rec)
    for question in EVAL_TOPICS:
        for cs in _specs([*EVAL_SINGLES, *EVAL_PAIRS]):
            records.append(
                {
                    "prompt": prompt_text(question, cs),
                    "split": "eval",
                    "meta": {"topic": question, "constraints": [c.spec() for c in cs]},
                }
            )
    return records


SUITE_FILE = Path(__file__).resolve().parents[1] / "data" / "instructions.jsonl"


def render() -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in build_suite())


if __name__ == "__main__":
    SUITE_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {SUITE_FILE}")
