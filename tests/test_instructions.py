"""The verifiable-instruction suite: every checker on passing and failing answers, checkers that never raise, the
suite file in sync with its builder, constraints recovered from prompt text, and the rewards built on them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rrhf_core.errors import ConfigError
from rrhf_core.instructions.constraints import KINDS, Constraint, parse_constraints, strip_instructions
from rrhf_core.instructions.suite import (
    EVAL_TOPICS,
    SUITE_FILE,
    TRAIN_TOPICS,
    WRITING_FILE,
    build_suite,
    build_writing,
    render,
)

# kind spec -> (answers that pass, answers that fail)
EXAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "max_words:5": (["Boil it for nine minutes."[:17], "Yes."], ["Boil the egg for nine whole minutes.", ""]),
    "min_words:4": (["one two three four"], ["one two three"]),
    "start_yes_no": (["Yes, boil it.", "no. never", "  Yes"], ["Maybe yes.", "Yesterday I ate."]),
    "lowercase": (["boil it, then cool it."], ["Boil it.", "123 !"]),
    "end_question": (["Boil it. Want more?", "Why? "], ["Boil it.", "Is it? No."]),
    # bullets as IFEval counts them: '-' or '*' (not '**') lines
    "bullets:2": (["- one\n- two", "Intro:\n  - one\n  - two", "* a\n* b"], ["- one", "- one\n- two\n- three",
                                                                       "** a\n** b"]),
    "numbered:2": (["1. one\n2. two", "1) a\n2) b"], ["1. one", "one\ntwo"]),
    "no_letter:e": (["Boil this a bit, now cool it.", "A B C"], ["Boil the egg.", "E"]),
    "include_word:water": (["Use cold water.", "WATER it"], ["Use waterproof gloves.", "watering"]),
    "no_comma": (["Boil it then cool it."], ["Boil it, then cool it."]),
    "sentences:2": (["Boil it. Cool it.", "Is it hot? Yes!"], ["Boil it.", "One. Two. Three."]),
    "title": (["<<Eggs>>\nBoil them.", "<<How to boil>> text"], ["Eggs\nBoil them.", "<<>> text", "x <<Eggs>>"]),
    # as IFEval's end_checker: case and closing double quotes ignored
    "end_phrase:Hope this helps!": (["Boil it. Hope this helps!", "hope this helps!", '"Hope this helps!"'],
                                    ["Hope this helps! Boil it.", "Hope this helps"]),
    "json_keys:name and steps": (['{"name": "egg", "steps": []}', '```json\n{"name":1,"steps":2}\n```'],
                                 ['{"name": "egg"}', "[1, 2]", "name: egg, steps: 2"]),
    "uppercase": (["BOIL IT, THEN COOL IT.", "OK 42"], ["Boil it.", "123 !"]),
    "quotation": (['"Boil it."', '  "a b"  '], ['Boil it."', '"', "'Boil it.'"]),
    "postscript": (["Boil it.\nP.S. Use salt.", "Boil it.\n  p.s. salt"], ["Boil it. P.S. salt", "PS: salt"]),
    "placeholders:2": (["Send [name] to [address].", "[a][b][c]"], ["Send [name].", "[] and [ ]", "[a\nb] [c]"]),
    "highlights:2": (["*Boil* it and *cool* it.", "**Boil** it *now*"], ["*Boil* it.", "* * and ** **"]),
    "sections:2": (["Section 1\nBoil.\nSection 2\nCool.", "Section1 a Section2 b"],
                   ["Section 1\nBoil.", "Section 1 a Section 2 b Section 3 c", "section 1 a section 2 b"]),
    "paragraphs:2": (["Boil it.\n***\nCool it.", "a *** b ***"], ["Boil it.", "a\n***\n***\nb", "a *** b *** c"]),
    "word_twice:water": (["Water first, then more water.", "water water"], ["Use water.", "waterproof water"]),
    "forbidden_word:water": (["Boil it.", "Use waterproof gloves."], ["Use water.", "WATER it"]),
    "start_phrase:Here is my advice": (["Here is my advice: boil it.", '  here is my advice'],
                                       ["Boil it. Here is my advice", "Here is advice"]),
    "two_answers": (["Boil it.\n******\nSteam it.", "******\na\n******\nb\n******"],
                    ["Boil it.", "a\n******\na", "a\n******\n******\nb"]),
    "options": (["My answer is yes.", "Well. My answer is maybe. Because"], ["My answer is yes", "my answer is no."]),
}  # fmt: skip


def test_every_kind_has_examples():
    assert {Constraint.parse(s).kind for s in EXAMPLES} == set(KINDS)


@pytest.mark.parametrize("spec", list(EXAMPLES))
def test_checker_on_passing_and_failing_answers(spec):
    c = Constraint.parse(spec)
    good, bad = EXAMPLES[spec]
    assert all(c.check(t) for t in good), [t for t in good if not c.check(t)]
    assert not any(c.check(t) for t in bad), [t for t in bad if c.check(t)]
    assert not c.check("") and not c.check("   \n")  # an empty answer fails every constraint


@settings(max_examples=300, deadline=None)
@given(text=st.text(), spec=st.sampled_from(list(EXAMPLES)))
def test_checkers_never_raise(text, spec):
    assert Constraint.parse(spec).check(text) in (True, False)


def test_an_unknown_constraint_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown constraint kind 'max_wrds'; known kinds: .*max_words"):
        Constraint.parse("max_wrds:5")


def test_constraints_are_recovered_from_the_prompt_text():
    cs = [
        Constraint.parse("start_yes_no"),
        Constraint.parse("max_words:12"),
        Constraint.parse("json_keys:a and b"),
    ]
    prompt = "How do I boil an egg? " + " ".join(c.instruction() for c in cs)
    assert parse_constraints(prompt) == cs
    assert strip_instructions(prompt) == "How do I boil an egg?"
    assert parse_constraints("How do I boil an egg?") == []


def test_the_committed_suite_is_what_the_builder_makes():
    assert SUITE_FILE.read_text(encoding="utf-8") == render(), "run: python -m rrhf_core.instructions.suite"


def test_the_suite_holds_out_topics_and_constraint_pairs():
    records = build_suite()
    train = [r for r in records if r["split"] == "train"]
    held = [r for r in records if r["split"] == "eval"]
    assert len(train) == 160 and len(held) == 64
    assert {r["meta"]["topic"] for r in held} == set(EVAL_TOPICS)
    # at least 25 kinds; four occur only in held-out prompts (two per held-out topic), every other one in training
    kinds = lambda rs: {Constraint.parse(c).kind for r in rs for c in r["meta"]["constraints"]}  # noqa: E731
    assert len(KINDS) >= 25 and kinds(train) | kinds(held) == set(KINDS)
    assert kinds(held) - kinds(train) == {"uppercase", "quotation", "forbidden_word", "placeholders"}
    assert sum(r["meta"]["held_out_kind"] for r in held) == 2 * len(EVAL_TOPICS)
    assert not {r["meta"]["topic"] for r in held} & {q for q, _ in TRAIN_TOPICS}
    train_pairs = {
        tuple(sorted(r["meta"]["constraints"])) for r in train if len(r["meta"]["constraints"]) == 2
    }
    held_pairs = {tuple(sorted(r["meta"]["constraints"])) for r in held if len(r["meta"]["constraints"]) == 2}
    assert held_pairs and not held_pairs & train_pairs
    for (
        r
    ) in records:  # the constraints in the text are the ones in the record, and every reference passes them
        cs = parse_constraints(str(r["prompt"]))
        assert [c.spec() for c in cs] == r["meta"]["constraints"]
        if "reference" in r:
            assert all(c.check(str(r["reference"])) for c in cs), r
    assert sum("reference" in r for r in train) >= 128


def test_the_writing_tasks_ask_for_long_answers_and_hold_out_their_tasks():
    records = build_writing()
    assert WRITING_FILE.read_text(encoding="utf-8") == render(records), (
        "run: python -m rrhf_core.instructions.suite"
    )
    train = {r["meta"]["topic"] for r in records if r["split"] == "train"}
    held = {r["meta"]["topic"] for r in records if r["split"] == "eval"}
    assert len(train) == 8 and len(held) == 4 and not train & held
    for r in records:
        cs = parse_constraints(str(r["prompt"]))
        assert [c.spec() for c in cs] == r["meta"]["constraints"] and "reference" not in r
        lengths = [int(c.arg) for c in cs if c.kind == "min_words"] or [0]
        assert 100 <= max(lengths) <= 300 or any(c.kind == "paragraphs" for c in cs), r


def test_the_pass_judge_and_the_training_reward():
    from rrhf_core.scoring.reward import make_reward, reward_fingerprint

    msgs = [
        [{"role": "user", "content": "How do I boil an egg? Start your answer with the word Yes or No."}]
    ] * 3
    answers = ["Yes. Put the egg in boiling water for nine minutes.", "Put the egg in boiling water.", "Yes."]
    judge = make_reward("embedded:constraint-pass")
    assert judge.score(msgs, answers) == [1.0, 0.0, 1.0]
    reward = make_reward("embedded:constraint-reward").score(msgs, answers)
    # the on-topic answer that follows the instruction beats the one that does not, and the bare "Yes." that
    # satisfies the constraint but says nothing (under three words, off-topic) beats neither
    assert reward[0] > reward[1] and reward[0] > reward[2]
    assert reward_fingerprint("embedded:constraint-reward").startswith("embedded:constraint-reward@")
    rel = make_reward("embedded:relevance").score(msgs, answers)
    assert rel[0] > rel[2]


def test_the_embedded_instruction_set_ingests_with_its_splits_and_references(tmp_path):
    from rrhf_core.data.contracts import read_prompts
    from rrhf_core.data.ingest import ingest

    report = ingest(["embedded:instructions"], tmp_path, eval_share=0.5)  # the records' own splits win
    assert report.splits == {"train": 160, "eval": 64}
    rows = read_prompts(tmp_path / "prompts.parquet", "train")
    assert sum(len(r["references"]) for r in rows) >= 128
    assert json.loads(rows[0]["meta"])["constraints"] == ["max_words:12"]
