"""The project's constraint kinds in IFEval's terms, and a judge that checks them with lm-eval's IFEval checkers.

IFEval (Zhou et al. 2023) ships programmatic checkers for 25 instruction types; lm-eval's ``ifeval`` task carries
them. A kind of ours *maps* when an IFEval instruction (or two) states the same constraint:

=============  ====================================================  ===============================================
ours           IFEval instruction id (kwargs)                        known differences (tests/test_ifeval_parity.py)
=============  ====================================================  ===============================================
max_words:N    length_constraints:number_words (less than N)         none (both count ``\\w+`` tokens)
min_words:N    length_constraints:number_words (at least N)          none
lowercase      change_case:english_lowercase                         IFEval also asks langdetect for English
bullets:N      detectable_format:number_bullet_lists (N)             none (the same two expressions)
include_word   keywords:existence ([w])                              IFEval finds the word inside longer words too
no_comma       punctuation:no_comma                                  none
title          detectable_format:title                               ours wants the title first, IFEval anywhere
end_phrase     startend:end_checker                                  none (both ignore case and closing quotes)
no_letter:x    keywords:letter_frequency (x, less than 1)            none
json_keys      detectable_format:json_format                         IFEval takes any JSON; ours an object with keys
sentences:N    length_constraints:number_sentences (at least N,      ours splits at ``.!?`` + space, IFEval uses
               and less than N + 1)                                  NLTK's punkt (abbreviations such as "Mr.")
uppercase      change_case:english_capital                           IFEval also asks langdetect for English
quotation      startend:quotation                                    none
postscript     detectable_content:postscript (P.S.)                  ours wants a line starting with P.S., IFEval
                                                                     ``p.s.`` anywhere in a line
placeholders:N detectable_content:number_placeholders (N)            IFEval counts an empty ``[]`` too
highlights:N   detectable_format:number_highlighted_sections (N)     none (the same two expressions)
sections:N     detectable_format:multiple_sections (Section, N)      ours wants exactly N, IFEval at least N
paragraphs:N   length_constraints:number_paragraphs (N)              none (the same split)
word_twice:w   keywords:frequency (w, at least 2)                    IFEval counts the word inside longer words too
forbidden_word keywords:forbidden_words ([w])                        none (``\\b`` and ``\\w+`` agree)
start_phrase   combination:repeat_prompt (the phrase)                none (IFEval's check is the same prefix test)
two_answers    combination:two_responses                             none
options        detectable_format:constrained_response                none
=============  ====================================================  ===============================================

``start_yes_no``, ``end_question`` and ``numbered`` have no IFEval type: only the project's checkers judge them.

- :func:`ifeval_record` / :func:`write_ifeval_file`: held-out prompts as an IFEval-format JSONL file (``key``,
  ``prompt``, ``instruction_id_list``, ``kwargs``), the mapped constraints only, for lm-eval's ``ifeval`` task.
- :class:`IFEvalJudge` (reward spec ``lm-eval:ifeval``): 1 when the answer follows every constraint of its prompt,
  checked by lm-eval's strict IFEval checker where the kind maps and by the project's checker only where it does not;
  a rule, so it needs no held-out pair accuracy. The training reward never uses lm-eval's checkers, so a judge that
  counts them is one that the policy was not optimised against, as far as the two implementations differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from rrhf_core.errors import ConfigError
from rrhf_core.instructions.constraints import Constraint, parse_constraints

IFEVAL_JUDGE = "lm-eval:ifeval"
Messages = list[dict[str, str]]


def ifeval_instructions(c: Constraint) -> list[tuple[str, dict[str, Any]]]:
    """The IFEval instructions (id, kwargs) that state ``c``; empty when its kind has no IFEval type, or when an
    argument is 0: lm-eval drops falsy kwargs and draws a random count in their place (``bullets:0`` would be checked
    against a random number of bullets), so such a constraint is left to the project's checker."""
    found = _instructions(c)
    return [] if any(v == 0 for _, kw in found for v in kw.values()) else found


def _instructions(c: Constraint) -> list[tuple[str, dict[str, Any]]]:
    a = c.arg
    match c.kind:
        case "max_words":
            return [("length_constraints:number_words", {"relation": "less than", "num_words": int(a)})]
        case "min_words":
            return [("length_constraints:number_words", {"relation": "at least", "num_words": int(a)})]
        case "lowercase":
            return [("change_case:english_lowercase", {})]
        case "bullets":
            return [("detectable_format:number_bullet_lists", {"num_bullets": int(a)})]
        case "include_word":
            return [("keywords:existence", {"keywords": [a]})]
        case "no_comma":
            return [("punctuation:no_comma", {})]
        case "title":
            return [("detectable_format:title", {})]
        case "end_phrase":
            return [("startend:end_checker", {"end_phrase": a})]
        case "no_letter":
            return [
                ("keywords:letter_frequency", {"letter": a, "let_frequency": 1, "let_relation": "less than"})
            ]
        case "json_keys":
            return [("detectable_format:json_format", {})]
        case "sentences":
            n = int(a)
            return [
                ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": n}),
                ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": n + 1}),
            ]
        case "uppercase":
            return [("change_case:english_capital", {})]
        case "quotation":
            return [("startend:quotation", {})]
        case "postscript":
            return [("detectable_content:postscript", {"postscript_marker": "P.S."})]
        case "placeholders":
            return [("detectable_content:number_placeholders", {"num_placeholders": int(a)})]
        case "highlights":
            return [("detectable_format:number_highlighted_sections", {"num_highlights": int(a)})]
        case "sections":
            return [
                (
                    "detectable_format:multiple_sections",
                    {"section_spliter": "Section", "num_sections": int(a)},
                )
            ]
        case "paragraphs":
            return [("length_constraints:number_paragraphs", {"num_paragraphs": int(a)})]
        case "word_twice":
            return [("keywords:frequency", {"keyword": a, "frequency": 2, "relation": "at least"})]
        case "forbidden_word":
            return [("keywords:forbidden_words", {"forbidden_words": [a]})]
        case "start_phrase":
            # IFEval's repeat_prompt check is a prefix check: the answer starts with the given text, ignoring case
            return [("combination:repeat_prompt", {"prompt_to_repeat": a})]
        case "two_answers":
            return [("combination:two_responses", {})]
        case "options":
            return [("detectable_format:constrained_response", {})]
    return []


MAPPED_KINDS = frozenset(
    k
    for k, example in {
        "max_words": "12",
        "min_words": "3",
        "lowercase": "",
        "bullets": "3",
        "include_word": "tea",
        "no_comma": "",
        "title": "",
        "end_phrase": "Bye.",
        "no_letter": "e",
        "json_keys": "a",
        "sentences": "2",
        "start_yes_no": "",
        "end_question": "",
        "numbered": "3",
        "uppercase": "",
        "quotation": "",
        "postscript": "",
        "placeholders": "2",
        "highlights": "2",
        "sections": "2",
        "paragraphs": "2",
        "word_twice": "tea",
        "forbidden_word": "tea",
        "start_phrase": "Dear friend",
        "two_answers": "",
        "options": "",
    }.items()
    if ifeval_instructions(Constraint(k, example))
)


def ifeval_record(key: int, prompt: str, constraints: Iterable[Constraint]) -> dict[str, Any] | None:
    """One IFEval-format record for ``prompt`` (its mapped constraints), or None when none of them maps."""
    ids: list[str] = []
    kwargs: list[dict[str, Any]] = []
    for c in constraints:
        for iid, kw in ifeval_instructions(c):
            ids.append(iid)
            kwargs.append(kw)
    if not ids:
        return None
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def write_ifeval_file(prompts: Sequence[str], path: str | Path) -> int:
    """The prompts whose constraints map, as an IFEval-format JSONL file at ``path``; returns the record count."""
    records = [
        r for i, p in enumerate(prompts) if (r := ifeval_record(i, p, parse_constraints(p))) is not None
    ]
    if not records:
        raise ConfigError(
            "none of the held-out prompts carries a constraint that IFEval checks (mapped kinds: "
            f"{', '.join(sorted(MAPPED_KINDS))}); an IFEval file cannot be written from them"
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return len(records)


@cache
def lm_eval_ifeval() -> Any:
    """lm-eval's IFEval module, imported once punkt_tab is known to be there (it would download it otherwise);
    langdetect seeded, since its language guesses are random otherwise."""
    from rrhf_core.evaluation import nltk_data

    nltk_data.require()
    try:
        import langdetect
        from lm_eval.tasks.ifeval import utils
    except ImportError as e:
        raise ConfigError(
            f"lm-eval's IFEval checkers need lm-eval, langdetect, immutabledict and nltk ({e}): "
            "pip install the project again (`make setup`)"
        ) from None
    langdetect.DetectorFactory.seed = 0
    return utils


def ifeval_follows(prompt: str, answer: str, instructions: list[tuple[str, dict[str, Any]]]) -> list[bool]:
    """lm-eval's strict IFEval check of ``answer`` against each instruction (its own code path)."""
    if not instructions:
        return []
    utils = lm_eval_ifeval()
    inp = utils.InputExample(
        key=0,
        instruction_id_list=[i for i, _ in instructions],
        prompt=prompt,
        kwargs=[kw for _, kw in instructions],
    )
    return list(utils.test_instruction_following_strict(inp, answer).follow_instruction_list)


def constraint_follows(prompt: str, answer: str) -> list[tuple[Constraint, bool, str]]:
    """Each constraint of ``prompt``: whether ``answer`` follows it and who checked (``"ifeval"`` or ``"rrhf"``)."""
    out = []
    for c in parse_constraints(prompt):
        mapped = ifeval_instructions(c)
        if mapped:
            out.append((c, all(ifeval_follows(prompt, answer, mapped)), "ifeval"))
        else:
            out.append((c, c.check(answer), "rrhf"))
    return out


class IFEvalJudge:
    """``lm-eval:ifeval``: 1 when the answer follows every constraint of its prompt (lm-eval's IFEval checkers
    where the kind maps, the project's elsewhere), else 0."""

    rule = True

    def __init__(self) -> None:
        from importlib.metadata import version

        lm_eval_ifeval()
        self.reward_id = f"{IFEVAL_JUDGE}@lm-eval-{version('lm_eval')}"

    def score(self, prompts: Sequence[Messages], responses: Sequence[str]) -> list[float]:
        from rrhf_core.scoring.embedded import last_user_turn

        return [
            float(all(ok for _, ok, _ in constraint_follows(last_user_turn(p), r)))
            for p, r in zip(prompts, responses, strict=True)
        ]
