"""Constraints on an answer that a program can check (the idea behind IFEval-style verifiable instructions).

Each constraint kind has an instruction sentence (appended to a question to make a prompt), a pattern that finds
that sentence again in a prompt, and a checker. Checkers never raise, whatever the string, and an empty answer
fails every constraint. :func:`parse_constraints` recovers a prompt's constraints from its text, so a reward needs
only the prompt and the answer (the scoring interface), never a side table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from rrhf_core.errors import ConfigError

# words as IFEval counts them (nltk's RegexpTokenizer(r"\w+"): "don't" is two words), so that the word-count kinds
# agree with lm-eval's checkers (tests/test_ifeval_parity.py)
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _first_word(text: str) -> str:
    w = words(text)
    return w[0].lower() if w else ""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if words(p)]


def _json_object(text: str) -> dict | None:
    # markdown fences stripped as IFEval's json_format checker strips them
    body = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(prefix)
    body = body.removesuffix("```").strip()
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _bullet_count(text: str) -> int:
    """Bullet lines as IFEval's number_bullet_lists checker counts them: lines starting with ``*`` (not ``**``) or
    ``-``, leading white space allowed (the same two expressions, so the counts agree exactly)."""
    stars = re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    return len(stars) + len(dashes)


def _ends_with(text: str, phrase: str) -> bool:
    """IFEval's end_checker: the answer, stripped of white space and double quotes, ends with the phrase, ignoring
    case."""
    return text.strip().strip('"').lower().endswith(phrase.strip().lower())


def _starts_with_title(text: str) -> bool:
    """A title in double angular brackets (IFEval's rule: ``<<...>>`` on one line, not blank inside) that opens the
    answer (IFEval accepts one anywhere: ours is the stricter "start with a title")."""
    m = re.match(r"<<[^\n]+>>", text.strip())
    return m is not None and bool(m.group(0).lstrip("<").rstrip(">").strip())


def _has_keys(obj: dict | None, keys: list[str]) -> bool:
    return obj is not None and set(keys) <= set(obj)


def _postscript(text: str) -> bool:
    """A line that starts with ``P.S.`` (IFEval's postscript checker finds ``p.s.`` anywhere in a line, any case:
    ours is the stricter "a postscript line")."""
    return any(re.match(r"p\.\s?s\.", line, flags=re.IGNORECASE) for line in _lines(text))


def _placeholders(text: str) -> int:
    """Placeholders in square brackets on one line, not blank inside (IFEval's ``\\[.*?\\]`` counts ``[]`` too)."""
    return sum(1 for m in re.findall(r"\[([^\]\n]*)\]", text) if m.strip())


def _highlights(text: str) -> int:
    """Highlighted parts as IFEval's number_highlighted_sections counts them (the same two expressions): ``*x*``
    and ``**x**`` not blank inside, on one line."""
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [
        h for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip()
    ]
    return len(single) + len(double)


def _sections(text: str) -> int:
    """Sections opened by ``Section N``, split as IFEval's multiple_sections splits them."""
    return len(re.split(r"\s?Section\s?\d+\s?", text)) - 1


def _paragraphs(text: str) -> int:
    """Paragraphs separated by the markdown divider ``***``, counted as IFEval's number_paragraphs counts them; -1
    when an inner paragraph is empty (IFEval fails such an answer whatever the number asked)."""
    parts = re.split(r"\s?\*\*\*\s?", text)
    n = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                n -= 1
            else:
                return -1
    return n


def _two_answers(text: str) -> bool:
    """Two different answers separated by ``******`` (IFEval's two_responses rule: no empty answer between
    separators)."""
    parts = text.split("******")
    found = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            found.append(part.strip())
    return len(found) == 2 and found[0] != found[1]


OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _word_count(text: str, word: str) -> int:
    return sum(w.lower() == word.lower() for w in words(text))


@dataclass(frozen=True)
class Kind:
    """A constraint kind: its instruction template (``{arg}`` is the argument), argument pattern and checker."""

    name: str
    template: str
    check: Callable[[str, str], bool]
    arg_pattern: str = ""

    def instruction(self, arg: str = "") -> str:
        return self.template.format(arg=arg)

    def regex(self) -> re.Pattern[str]:
        escaped = re.escape(self.template).replace(re.escape("{arg}"), f"({self.arg_pattern})")
        return re.compile(escaped)


def _nonempty(check: Callable[[str, str], bool]) -> Callable[[str, str], bool]:
    def guarded(text: str, arg: str) -> bool:
        if not isinstance(text, str) or not text.strip():
            return False
        try:
            return bool(check(text, arg))
        except (ValueError, TypeError, IndexError, RecursionError):
            return False

    return guarded


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("max_words", "Answer in fewer than {arg} words.", lambda t, a: len(words(t)) < int(a), r"\d+"),
        Kind("min_words", "Answer in at least {arg} words.", lambda t, a: len(words(t)) >= int(a), r"\d+"),
        Kind(
            "start_yes_no",
            "Start your answer with the word Yes or No.",
            lambda t, a: _first_word(t) in ("yes", "no"),
        ),
        Kind(
            "lowercase",
            "Write your whole answer in lowercase letters only.",
            lambda t, a: t.islower(),
        ),
        Kind("end_question", "End your answer with a question.", lambda t, a: t.rstrip().endswith("?")),
        Kind(
            "bullets",
            "Answer with exactly {arg} bullet points, each on its own line starting with '- '.",
            lambda t, a: _bullet_count(t) == int(a),
            r"\d+",
        ),
        Kind(
            "numbered",
            "Answer with a numbered list of exactly {arg} items (1., 2., ...).",
            lambda t, a: sum(bool(re.match(r"\d+[.)]\s", line)) for line in _lines(t)) == int(a),
            r"\d+",
        ),
        Kind(
            "no_letter",
            "Do not use the letter '{arg}' anywhere in your answer.",
            lambda t, a: a.lower() not in t.lower(),
            r"[a-z]",
        ),
        Kind(
            "include_word",
            "Use the word '{arg}' in your answer.",
            lambda t, a: a.lower() in (w.lower() for w in words(t)),
            r"[A-Za-z]+",
        ),
        Kind("no_comma", "Do not use any commas in your answer.", lambda t, a: "," not in t),
        Kind(
            "sentences",
            "Answer in exactly {arg} sentences.",
            lambda t, a: len(_sentences(t)) == int(a),
            r"\d+",
        ),
        Kind(
            "title",
            "Start with a title wrapped in double angular brackets, like <<a title>>.",
            lambda t, a: _starts_with_title(t),
        ),
        Kind(
            "end_phrase",
            "Finish your answer with the exact phrase '{arg}'.",
            lambda t, a: _ends_with(t, a),
            r"[^']+",
        ),
        Kind(
            "json_keys",
            "Answer only with a JSON object that has the keys {arg}.",
            lambda t, a: _has_keys(_json_object(t), a.split(" and ")),
            r"[a-z_]+(?: and [a-z_]+)*",
        ),
        Kind(
            "uppercase",
            "Write your whole answer in capital letters only.",
            lambda t, a: t.isupper(),
        ),
        Kind(
            "quotation",
            "Wrap your whole answer in double quotation marks.",
            lambda t, a: len(t.strip()) > 1 and t.strip()[0] == '"' and t.strip()[-1] == '"',
        ),
        Kind(
            "postscript",
            "At the end of your answer, add a postscript that starts with P.S.",
            lambda t, a: _postscript(t),
        ),
        Kind(
            "placeholders",
            "Include at least {arg} placeholders in square brackets, such as [name].",
            lambda t, a: _placeholders(t) >= int(a),
            r"\d+",
        ),
        Kind(
            "highlights",
            "Highlight at least {arg} parts of your answer with markdown, such as *a highlighted part*.",
            lambda t, a: _highlights(t) >= int(a),
            r"\d+",
        ),
        Kind(
            "sections",
            "Divide your answer into {arg} sections, each starting with Section and its number (Section 1, ...).",
            lambda t, a: _sections(t) == int(a),
            r"\d+",
        ),
        Kind(
            "paragraphs",
            "Write exactly {arg} paragraphs, separated from each other by the markdown divider ***.",
            lambda t, a: _paragraphs(t) == int(a),
            r"\d+",
        ),
        Kind(
            "word_twice",
            "Use the word '{arg}' at least twice.",
            lambda t, a: _word_count(t, a) >= 2,
            r"[A-Za-z]+",
        ),
        Kind(
            "forbidden_word",
            "Do not use the word '{arg}'.",
            lambda t, a: _word_count(t, a) == 0,
            r"[A-Za-z]+",
        ),
        Kind(
            "start_phrase",
            "Start your answer with the exact phrase '{arg}'.",
            lambda t, a: t.strip().lower().startswith(a.strip().lower()),
            r"[^']+",
        ),
        Kind(
            "two_answers",
            "Give two different answers, separated by a line of six asterisks: ******.",
            lambda t, a: _two_answers(t),
        ),
        Kind(
            "options",
            "Answer with one of these phrases: " + " / ".join(OPTIONS),
            lambda t, a: any(o in t for o in OPTIONS),
        ),
    )
}


@dataclass(frozen=True)
class Constraint:
    kind: str
    arg: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"unknown constraint kind {self.kind!r}; known kinds: {', '.join(sorted(KINDS))}"
            )

    def instruction(self) -> str:
        return KINDS[self.kind].instruction(self.arg)

    def check(self, text: str) -> bool:
        """True when ``text`` satisfies the constraint (never raises; an empty text never satisfies it)."""
        return _nonempty(KINDS[self.kind].check)(text, self.arg)

    @classmethod
    def parse(cls, spec: str) -> Constraint:
        """``kind`` or ``kind:arg`` (e.g. ``max_words:12``), as the suite's specs are written."""
        kind, _, arg = spec.partition(":")
        return cls(kind.strip(), arg.strip())

    def spec(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def parse_constraints(prompt: str) -> list[Constraint]:
    """The constraints whose instruction sentences occur in ``prompt``, in order of appearance."""
    found: list[tuple[int, Constraint]] = []
    for kind in KINDS.values():
        for m in kind.regex().finditer(prompt):
            found.append((m.start(), Constraint(kind.name, m.group(1) if m.groups() else "")))
    return [c for _, c in sorted(found, key=lambda x: x[0])]


def strip_instructions(prompt: str) -> str:
    """The prompt without its constraint sentences: the question the answer should be relevant to."""
    for kind in KINDS.values():
        prompt = kind.regex().sub("", prompt)
    return " ".join(prompt.split())
