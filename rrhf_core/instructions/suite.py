"""The project's own instruction-following suite: everyday questions and writing tasks with verifiable constraints.

Two families, each with its own held-out split:

- ``embedded:instructions`` (the main job): 16 training topics x 10 prompts (9 single constraints, rotating over the
  22 training kinds, + 1 pair) and 8 *other* topics x 8 held-out prompts (6 single constraints + 2 pairs that never
  occur together in training). Four kinds (``HELD_OUT_KINDS``: uppercase, quotation, forbidden words, placeholders)
  occur only in held-out prompts, two of them per held-out topic, so evaluation measures both instructions it trained
  on, on unseen topics, and instructions it never saw.
- ``embedded:writing``: letters, stories, essays and lists of 100-300 words (8 training tasks x 3 constraint sets, 4
  held-out tasks x 3), with length, paragraph, section, title and postscript constraints; no references.

Every training prompt of the first family can carry a reference answer written by the project (a short factual
answer reshaped to satisfy the constraints, checked when the suite is built). It enters RRHF as an extra candidate
only when ``sample.include_references`` is on; the main job ranks the policy's own samples alone (self-ranking, as
the paper's main setting).

``python -m rrhf_core.instructions.suite`` rewrites ``rrhf_core/data/instructions.jsonl`` and ``writing.jsonl``; a
test checks that the committed files are exactly what this module builds.
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

# a word of each training topic's answer, for the kinds that name a word
TOPIC_WORDS = ["water", "bed", "light", "meals", "week", "words", "beans", "work", "brush", "line", "bottle",
               "questions", "toys", "walk", "soil", "name"]  # fmt: skip
EVAL_WORDS = ["dough", "charge", "clothes", "club", "author", "sink", "layers", "balance"]

END_PHRASE = "Hope this helps!"
START_PHRASE = "Here is my advice"
# the kinds trained on, in the order the training prompts rotate through them ({w}: the topic's word)
TRAIN_KINDS = [
    "max_words:12",
    "start_yes_no",
    "lowercase",
    "end_question",
    "bullets:3",
    "no_letter:e",
    "title",
    f"end_phrase:{END_PHRASE}",
    "numbered:3",
    "min_words:30",
    "include_word:{w}",
    "no_comma",
    "sentences:2",
    "json_keys:answer",
    "postscript",
    "highlights:2",
    "sections:2",
    "paragraphs:2",
    "word_twice:{w}",
    f"start_phrase:{START_PHRASE}",
    "two_answers",
    "options",
]
# kinds that occur only in held-out prompts
HELD_OUT_KINDS = ["uppercase", "quotation", "forbidden_word:{w}", "placeholders:2"]
TRAIN_PAIRS = [
    ("title", "lowercase"),
    ("max_words:12", "end_question"),
    ("start_yes_no", "no_comma"),
    ("bullets:3", "lowercase"),
    ("postscript", "sentences:2"),
    (f"start_phrase:{START_PHRASE}", "max_words:12"),
    ("highlights:2", "no_comma"),
    ("paragraphs:2", "end_question"),
]
# per held-out topic: 4 seen kinds + 2 held-out kinds (rotating), and 2 pairs never trained together
EVAL_SEEN = ["max_words:12", "start_yes_no", "lowercase", "end_question", "bullets:3", "title", "postscript",
             "sections:2", "options", "include_word:{w}", "paragraphs:2", "two_answers"]  # fmt: skip
EVAL_PAIRS = [
    ("start_yes_no", "max_words:12"),
    ("lowercase", "end_question"),
    ("title", "postscript"),
    ("bullets:3", "no_comma"),
]

# writing tasks: (task, training or held-out)
WRITING_TRAIN = [
    "Write a letter to a neighbour inviting them to a garden party.",
    "Write a short story about a lost dog that finds its way home.",
    "Write an essay about why people should learn to cook.",
    "Write a list of tips for a first trip abroad.",
    "Write a letter to a teacher thanking them for a good year.",
    "Write a short story about a child who builds a boat.",
    "Write an essay about the value of public libraries.",
    "Write a list of ideas for a rainy weekend at home.",
]
WRITING_EVAL = [
    "Write a letter to a friend who has moved to another country.",
    "Write a short story about an old clock that stops working.",
    "Write an essay about why sleep matters for students.",
    "Write a list of ways to make a small flat feel bigger.",
]
WRITING_TRAIN_SETS = [
    ("min_words:100",),
    ("min_words:120", "paragraphs:3"),
    ("title", "min_words:100", "postscript"),
]
WRITING_EVAL_SETS = [
    ("min_words:150",),
    ("sections:2", "min_words:100"),
    ("title", "paragraphs:3", f"end_phrase:{END_PHRASE}"),
]


def _sentences(answer: str) -> list[str]:
    return [s.strip().rstrip(".") for s in answer.split(". ") if s.strip()]


def _title(question: str) -> str:
    return question.removeprefix("How do I ").removeprefix("How can I ").rstrip("?").capitalize()


def _n(arg: str) -> int:
    return int(arg)


# how a project-written reference is reshaped to satisfy each constraint (None: no reference for this kind); a
# reshaping that does not satisfy its constraint (a word the answer lacks) leaves the prompt without a reference
RESHAPE: dict[str, Callable[[str, str, str], str] | None] = {
    "max_words": lambda q, a, arg: " ".join(_sentences(a)[0].split()[: _n(arg) - 2]) + ".",
    "min_words": None,
    "start_yes_no": lambda q, a, arg: "Yes. " + a,
    "lowercase": lambda q, a, arg: a.lower(),
    "uppercase": lambda q, a, arg: a.upper(),
    "end_question": lambda q, a, arg: a + " Would you like more tips?",
    "bullets": lambda q, a, arg: "\n".join(f"- {s}." for s in _sentences(a)[: _n(arg)]),
    "numbered": lambda q, a, arg: "\n".join(f"{i}. {s}." for i, s in enumerate(_sentences(a)[: _n(arg)], 1)),
    "title": lambda q, a, arg: f"<<{_title(q)}>>\n{a}",
    "end_phrase": lambda q, a, arg: f"{a} {arg}",
    "no_comma": lambda q, a, arg: a.replace(",", ""),
    "no_letter": None,
    "include_word": lambda q, a, arg: a,
    "word_twice": lambda q, a, arg: a,
    "forbidden_word": lambda q, a, arg: a,
    "sentences": lambda q, a, arg: " ".join(f"{s}." for s in _sentences(a)[: _n(arg)]),
    "json_keys": lambda q, a, arg: json.dumps({k: a for k in arg.split(" and ")}),
    "postscript": lambda q, a, arg: f"{a}\nP.S. Good luck!",
    "highlights": lambda q, a, arg: " ".join(
        f"*{s}.*" if i < _n(arg) else f"{s}." for i, s in enumerate(_sentences(a))
    ),
    "sections": lambda q, a, arg: "\n".join(
        f"Section {i}\n{s}." for i, s in enumerate(_sentences(a)[: _n(arg)], 1)
    ),
    "paragraphs": lambda q, a, arg: "\n***\n".join(f"{s}." for s in _sentences(a)[: _n(arg)]),
    "start_phrase": lambda q, a, arg: f"{arg}: {a}",
    "two_answers": lambda q, a, arg: "\n******\n".join(f"{s}." for s in _sentences(a)[:2]),
    "options": lambda q, a, arg: f"My answer is yes. {a}",
    "quotation": lambda q, a, arg: f'"{a}"',
    "placeholders": None,
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


def _specs(items: list[str | tuple[str, ...]], word: str = "") -> list[list[Constraint]]:
    return [
        [Constraint.parse(s.replace("{w}", word)) for s in ((i,) if isinstance(i, str) else i)] for i in items
    ]


def _record(
    question: str, split: str, cs: list[Constraint], family: str, **meta: object
) -> dict[str, object]:
    return {
        "prompt": prompt_text(question, cs),
        "split": split,
        "meta": {"topic": question, "family": family, "constraints": [c.spec() for c in cs], **meta},
    }


def build_suite() -> list[dict[str, object]]:
    """Every prompt record of ``embedded:instructions`` (the ingest 'prompt' format with split, reference and
    constraints; ``meta.held_out_kind`` marks a held-out prompt with a kind never trained on)."""
    records: list[dict[str, object]] = []
    n = len(TRAIN_KINDS)
    for t, (question, answer) in enumerate(TRAIN_TOPICS):
        singles: list[str | tuple[str, ...]] = [TRAIN_KINDS[(t * 9 + j) % n] for j in range(9)]
        for cs in _specs([*singles, TRAIN_PAIRS[t % len(TRAIN_PAIRS)]], TOPIC_WORDS[t]):
            rec = _record(question, "train", cs, "instructions")
            ref = reference(question, answer, cs)
            if ref is not None:
                rec["reference"] = ref
            records.append(rec)
    held = {c.split(":")[0] for c in HELD_OUT_KINDS}
    for t, question in enumerate(EVAL_TOPICS):
        seen: list[str | tuple[str, ...]] = [EVAL_SEEN[(t * 4 + j) % len(EVAL_SEEN)] for j in range(4)]
        unseen: list[str | tuple[str, ...]] = [
            HELD_OUT_KINDS[(t * 2 + j) % len(HELD_OUT_KINDS)] for j in range(2)
        ]
        pairs: list[str | tuple[str, ...]] = [EVAL_PAIRS[(t * 2 + j) % len(EVAL_PAIRS)] for j in range(2)]
        for cs in _specs([*seen, *unseen, *pairs], EVAL_WORDS[t]):
            records.append(
                _record(question, "eval", cs, "instructions", held_out_kind=any(c.kind in held for c in cs))
            )
    return records


def build_writing() -> list[dict[str, object]]:
    """Every prompt record of ``embedded:writing`` (no references: the policy's own drafts are ranked)."""
    records: list[dict[str, object]] = []
    for split, tasks, sets in (
        ("train", WRITING_TRAIN, WRITING_TRAIN_SETS),
        ("eval", WRITING_EVAL, WRITING_EVAL_SETS),
    ):
        for task in tasks:
            for cs in _specs(list(sets)):
                records.append(_record(task, split, cs, "writing"))
    return records


SUITE_FILE = Path(__file__).resolve().parents[1] / "data" / "instructions.jsonl"
WRITING_FILE = SUITE_FILE.with_name("writing.jsonl")


def render(records: list[dict[str, object]] | None = None) -> str:
    return "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in (build_suite() if records is None else records)
    )


if __name__ == "__main__":
    SUITE_FILE.write_text(render(), encoding="utf-8")
    WRITING_FILE.write_text(render(build_writing()), encoding="utf-8")
    print(f"wrote {SUITE_FILE} and {WRITING_FILE}")
