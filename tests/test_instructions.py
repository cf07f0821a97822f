"""The verifiable-instruction suite: every checker on passing and failing answers, checkers that never raise, the
suite file in sync with its builder, constraints recovered from prompt text, and the rewards built on them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rrhf_core.errors import ConfigError
from rrhf_core.instructions.constraints import KINDS, Constraint, parse_constraints, strip_instructions
from rrhf_core.instructions.suite import EVAL_TOPICS, SUITE_FILE, TRAIN_TOPICS, build_suite, render

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
