"""Parity of the project's constraint checkers with lm-eval's IFEval checkers (the reference implementation), on
generated answers that pass and fail, for every kind that maps to an IFEval type. Where the two are meant to agree
they must agree on every answer; where they differ by design (rrhf_core.instructions.ifeval's table), every
disagreement must be the documented one and go the documented way."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rrhf_core.instructions.constraints import Constraint
from rrhf_core.instructions.ifeval import (
    MAPPED_KINDS,
    constraint_follows,
    ifeval_follows,
    ifeval_instructions,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORDS = [
    "tea",
    "Tea",
    "steam",
    "don't",
    "well-known",
    "café",
    "x_y",
    "42",
    "3.5",
    "e",
    "THE",
    "bye",
    "Bye.",
    "?",
]
SEPS = [" ", "  ", "\n", ", ", ". ", "! ", "\n\n", "\t"]


def _ours(c: Constraint, text: str) -> bool:
    return c.check(text)


def _theirs(c: Constraint, text: str) -> bool:
    return all(ifeval_follows("", text, ifeval_instructions(c)))


@st.composite
def prose(draw, vocab=WORDS, max_words=20):
    ws = draw(st.lists(st.sampled_from(vocab), max_size=max_words))
    out = ""
    for w in ws:
        out += w + draw(st.sampled_from(SEPS))
    return draw(st.sampled_from(["", " ", "\n"])) + out


@SETTINGS
@given(prose(), st.integers(1, 12))
def test_word_counts_agree(text, n):
    for kind in ("max_words", "min_words"):
        c = Constraint(kind, str(n))
        assert _ours(c, text) == _theirs(c, text), (kind, n, text)


LINES = [
    "- a",
    "* b",
    "** c",
    "-x",
    "  - y",
    "plain",
    "",
    "*",
    "---",
    "1. z",
    "\t* t",
    "*-",
    " ",
    "text - no",
]


@SETTINGS
@given(st.lists(st.sampled_from(LINES), max_size=8), st.integers(1, 5))
def test_bullet_counts_agree(lines, n):
    text = "\n".join(lines)
    c = Constraint("bullets", str(n))
    assert _ours(c, text) == _theirs(c, text), (n, text)


def test_a_count_of_zero_is_left_to_the_projects_checker():
    # lm-eval drops a falsy kwarg and draws a random count instead: bullets:0 cannot be asked of IFEval
    assert ifeval_instructions(Constraint("bullets", "0")) == []
    assert Constraint("bullets", "0").check("no bullets here")


@SETTINGS
@given(prose(vocab=[*WORDS, "a,b", "，", ","]))
def test_no_comma_agrees(text):
    c = Constraint("no_comma")
    assert _ours(c, text) == _theirs(c, text), text


@SETTINGS
@given(
    prose(),
    st.sampled_from(["Hope this helps!", "bye", "Bye.", "tea"]),
    st.sampled_from(["", '"', " ", "\n"]),
)
def test_end_phrase_agrees(text, phrase, tail):
    c = Constraint("end_phrase", phrase)
    for t in (text, text + phrase + tail, text + phrase.upper() + tail, tail + text + phrase[:-1]):
        assert _ours(c, t) == _theirs(c, t), (phrase, t)


@SETTINGS
@given(prose(vocab=[*WORDS, "É", "ÉTÉ", "İ"]), st.sampled_from(list("eatxi")))
def test_no_letter_agrees(text, letter):
    c = Constraint("no_letter", letter)
    assert _ours(c, text) == _theirs(c, text), (letter, text)


@SETTINGS
@given(prose(vocab=["the", "cat", "sat", "on", "mat", "Hello", "ÉTÉ", "bonjour", "le", "chat", "42", "你好"]))
def test_lowercase_differs_only_by_ifevals_language_check(text):
    import langdetect

    c = Constraint("lowercase")
    ours, theirs = _ours(c, text), _theirs(c, text)
    assert ours == (text.strip() != "" and text.islower())
    if ours != theirs:
        # documented: IFEval also wants langdetect to say English; the project checks the case only
        assert ours and not theirs and langdetect.detect(text) != "en", text


@SETTINGS
@given(prose(vocab=[*WORDS, "teapot", "STEAM", "Teas"]), st.sampled_from(["tea", "steam", "bye"]))
def test_include_word_differs_only_where_the_word_is_inside_a_longer_one(text, word):
    c = Constraint("include_word", word)
    ours, theirs = _ours(c, text), _theirs(c, text)
    if ours != theirs:
        # documented: IFEval's keywords:existence matches the word inside longer words too; ours whole words only
        assert theirs and not ours and word.lower() in text.lower(), (word, text)


TITLE_LINES = [
    "<<A title>>",
    "<< >>",
    "<<<a>>>",
    "text <<T>> more",
    "<<a",
    "b>>",
    "plain",
    "",
    "<<x>> <<y>>",
    " <<s>>",
]


@SETTINGS
@given(st.lists(st.sampled_from(TITLE_LINES), max_size=5))
def test_title_differs_only_where_the_title_is_not_first(lines):
    text = "\n".join(lines)
    c = Constraint("title")
    ours, theirs = _ours(c, text), _theirs(c, text)
    if ours != theirs:
        # documented: ours says "start with a title"; IFEval's detectable_format:title accepts one anywhere
        assert theirs and not ours, text


JSONS = ['{"a": 1}', '{"a": 1, "b": 2}', "[1, 2]", '"s"', "3", "{bad", '{"b": 1}', "null"]


@SETTINGS
@given(
    st.sampled_from(JSONS), st.sampled_from(["", "```json\n", "```JSON\n", "```\n", "text "]), st.booleans()
)
def test_json_differs_only_where_the_json_is_not_an_object_with_the_keys(body, fence, close):
    text = fence + body + ("\n```" if close and fence.startswith("```") else "")
    c = Constraint("json_keys", "a")
    ours, theirs = _ours(c, text), _theirs(c, text)
    if ours != theirs:
        # documented: IFEval's json_format accepts any JSON value; ours wants an object with the named keys
        assert theirs and not ours, text
        stripped = text.strip().removeprefix(fence.strip()).removesuffix("```").strip()
        value = json.loads(stripped)
        assert not (isinstance(value, dict) and "a" in value), text


@SETTINGS
@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from(["tea", "cats", "sleep", "bread", "Warm"]), min_size=1, max_size=4),
                  st.sampled_from([".", "!", "?"])),
        max_size=6,
    ),
    st.integers(1, 5),
)  # fmt: skip
def test_sentence_counts_agree_on_plain_sentences(sentences, n):
    text = " ".join(" ".join(ws).capitalize() + end for ws, end in sentences)
    c = Constraint("sentences", str(n))
    assert _ours(c, text) == _theirs(c, text), (n, text)


def test_the_documented_sentence_difference_is_abbreviations():
    # ours splits at every ". " ; NLTK's punkt (IFEval) knows "Mr." does not end a sentence
    text = "Mr. Smith came home. He sat down."
    assert _ours(Constraint("sentences", "3"), text) and _theirs(Constraint("sentences", "2"), text)


@SETTINGS
@given(prose(vocab=["THE", "CAT", "SAT", "ON", "MAT", "Hello", "ÉTÉ", "BONJOUR", "LE", "CHAT", "42", "OK!"]))
def test_uppercase_differs_only_by_ifevals_language_check(text):
    import langdetect

    c = Constraint("uppercase")
    ours, theirs = _ours(c, text), _theirs(c, text)
    assert ours == (text.strip() != "" and text.isupper())
    if ours != theirs:
        # documented: IFEval also wants langdetect to say English (and passes text it cannot classify)
        assert ours and not theirs and langdetect.detect(text) != "en", text


@SETTINGS
@given(prose(), st.sampled_from(['"', "", " ", '""', "'"]), st.sampled_from(['"', "", " \n", "'"]))
def test_quotation_agrees(text, head, tail):
    c = Constraint("quotation")
    t = head + text + tail
    assert _ours(c, t) == _theirs(c, t), t


PS_LINES = [
    "P.S. bye",
    "p.s. x",
    "P. S. no",
    "P.S",
    "text P.S. inside",
    "  P.S. indented",
    "plain",
    "",
    "PS: x",
]


@SETTINGS
@given(st.lists(st.sampled_from(PS_LINES), max_size=5))
def test_postscript_differs_only_where_ps_is_not_at_the_start_of_a_line(lines):
    text = "\n".join(lines)
    c = Constraint("postscript")
    ours, theirs = _ours(c, text), _theirs(c, text)
    if ours != theirs:
        # documented: IFEval finds "p.s." anywhere in a line; ours wants a line that starts with it
        assert theirs and not ours, text


@SETTINGS
@given(
    st.lists(st.sampled_from(["[name]", "[]", "[ ]", "[a\nb]", "[x] [y]", "text", "[[z]]", "]", "[", "\n"]),
             max_size=6),
    st.integers(1, 4),
)  # fmt: skip
def test_placeholders_differ_only_by_empty_brackets(parts, n):
    text = " ".join(parts)
    c = Constraint("placeholders", str(n))
    ours, theirs = _ours(c, text), _theirs(c, text)
    if ours != theirs:
        # documented: IFEval's \\[.*?\\] also counts "[]" and "[ ]"; ours wants something inside
        assert theirs and not ours and ("[]" in text or "[ ]" in text), text


@SETTINGS
@given(
    st.lists(st.sampled_from(["*a*", "**b**", "* *", "**", "*c", "d*", "***e***", "plain", "\n", "*f\ng*"]),
             max_size=6),
    st.integers(1, 4),
)  # fmt: skip
def test_highlight_counts_agree(parts, n):
    text = " ".join(parts)
    c = Constraint("highlights", str(n))
    assert _ours(c, text) == _theirs(c, text), (n, text)


@SETTINGS
@given(
    st.lists(st.sampled_from(["Section 1", "Section 2", "Section3", "section 4", "text", "\n", "SECTION 5"]),
             max_size=6),
    st.integers(1, 4),
)  # fmt: skip
def test_sections_differ_only_where_there_are_more_than_asked(parts, n):
    text = " ".join(parts)
    c = Constraint("sections", str(n))
    ours, theirs = _ours(c, text), _theirs(c, text)
    if ours != theirs:
        # documented: ours wants exactly N sections, IFEval at least N
        assert theirs and not ours and text.count("Section") > n, (n, text)


@SETTINGS
@given(st.lists(st.sampled_from(["para one", "***", " *** ", "\n***\n", "two", "", "\n", "****"]), max_size=7),
       st.integers(1, 4))  # fmt: skip
def test_paragraph_counts_agree(parts, n):
    text = "".join(parts)
    c = Constraint("paragraphs", str(n))
    assert _ours(c, text) == _theirs(c, text), (n, text)


@SETTINGS
@given(prose(vocab=[*WORDS, "teapot", "TEA", "steamy"]), st.sampled_from(["tea", "steam", "bye"]))
def test_word_twice_differs_only_where_the_word_is_inside_a_longer_one(text, word):
    c = Constraint("word_twice", word)
    ours, theirs = _ours(c, text), _theirs(c, text)
    if ours != theirs:
        # documented: IFEval's keywords:frequency counts the word inside longer words too; ours whole words only
        assert theirs and not ours, (word, text)


@SETTINGS
@given(
    prose(vocab=[*WORDS, "teapot", "TEA", "tea_pot", "tea-time"]), st.sampled_from(["tea", "steam", "bye"])
)
def test_forbidden_word_agrees(text, word):
    c = Constraint("forbidden_word", word)
    assert _ours(c, text) == _theirs(c, text), (word, text)


@SETTINGS
@given(prose(), st.sampled_from(["Dear friend", "Sure thing", "tea"]), st.sampled_from(["", " ", "\n", '"']))
def test_start_phrase_agrees(text, phrase, head):
    c = Constraint("start_phrase", phrase)
    for t in (
        text,
        head + phrase + " " + text,
        head + phrase.upper() + text,
        head + phrase[:-1] + " " + text,
    ):
        assert _ours(c, t) == _theirs(c, t), (phrase, t)


@SETTINGS
@given(st.lists(st.sampled_from(["one", "two", "******", "\n******\n", "*****", " ", "one "]), max_size=6))
def test_two_answers_agree(parts):
    text = "".join(parts)
    c = Constraint("two_answers")
    assert _ours(c, text) == _theirs(c, text), text


@SETTINGS
@given(
    prose(
        vocab=[*WORDS, "My answer is yes.", "My answer is no", "my answer is maybe.", "My answer is maybe."]
    )
)
def test_options_agree(text):
    c = Constraint("options")
    assert _ours(c, text) == _theirs(c, text), text


def test_every_mapped_kind_has_a_parity_test():
    tested = {"max_words", "min_words", "bullets", "no_comma", "end_phrase", "no_letter", "lowercase",
              "include_word", "title", "json_keys", "sentences", "uppercase", "quotation", "postscript",
              "placeholders", "highlights", "sections", "paragraphs", "word_twice", "forbidden_word",
              "start_phrase", "two_answers", "options"}  # fmt: skip
    assert tested == set(MAPPED_KINDS)


def test_the_judge_checks_mapped_kinds_with_lm_eval_and_the_rest_with_the_project():
    prompt = "How do I pack? Start your answer with the word Yes or No. Answer in fewer than 12 words."
    follows = constraint_follows(prompt, "Yes. Roll your clothes tightly.")
    assert [(c.kind, ok, who) for c, ok, who in follows] == [
        ("start_yes_no", True, "rrhf"),
        ("max_words", True, "ifeval"),
    ]


@pytest.mark.integration
def test_the_judge_is_a_rule_scoring_every_constraint():
    from rrhf_core.scoring.reward import make_reward, reward_fingerprint

    judge = make_reward("lm-eval:ifeval")
    assert judge.rule and reward_fingerprint("lm-eval:ifeval") == judge.reward_id
    msgs = [
        [{"role": "user", "content": "How do I pack? Write your whole answer in lowercase letters only."}]
    ] * 2
    assert judge.score(
        msgs, ["roll your clothes and pack the heavy things first.", "Roll your clothes."]
    ) == [
        1.0,
        0.0,
    ]
