"""Rewards over the verifiable constraints found in a prompt (:func:`parse_constraints`).

- ``embedded:constraint-reward`` (the demo's training reward): the share of the prompt's constraints the answer
  satisfies, plus ``0.5 x`` the relevance of the answer to the question (MiniLM cosine similarity between the question,
  its constraint sentences removed, and the answer), minus the embedded reward's echo and padding penalties. The
  relevance term and the penalties are there so that a bare "Hi." cannot win "avoid the letter e": it satisfies the
  constraint but is off-topic and under three words. It can still be gamed: a short on-topic answer that dodges the
  letter by its word choice, or a constraint met in form only (three bullet points of filler that stays on topic),
  scores well; the judge below shares the checkers, so form-only compliance passes it too.
- ``embedded:constraint-pass`` (the demo's judge): 1 when the answer satisfies every constraint of its prompt, else 0.
  Its mean over held-out prompts is the exact pass rate, not a proxy.
- ``embedded:relevance``: the relevance term alone, reported beside the pass rate so that a collapse to off-topic
  text shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from rrhf_core.instructions.constraints import parse_constraints, strip_instructions
from rrhf_core.scoring import INSTRUCTION_REWARDS
from rrhf_core.scoring.embedded import EmbeddedReward, last_user_turn, penalties

CONSTRAINT_REWARD, CONSTRAINT_PASS, RELEVANCE = INSTRUCTION_REWARDS

Messages = list[dict[str, str]]


def satisfied_share(prompt: str, answer: str) -> float:
    """Share of the prompt's constraints the answer satisfies (1.0 for a prompt without any)."""
    cs = parse_constraints(prompt)
    return sum(c.check(answer) for c in cs) / len(cs) if cs else 1.0


def passes(prompt: str, answer: str) -> bool:
    return all(c.check(answer) for c in parse_constraints(prompt))


@cache
def instruction_reward_id(spec: str) -> str:
    """The score cache's key for ``spec``: the digest of the code that computes it (this module, the constraint
    checkers and the embedded reward's penalties: every rrhf_core module it imports) and the MiniLM weights' version,
    so an edited checker is never answered with cached scores."""
    from rrhf_core.digest import code_digest, model_fingerprint

    return f"{spec}@{code_digest(__name__)[:12]}+{model_fingerprint('embedded:minilm-l6')}"


class InstructionReward:
    """One of the three rewards above; the MiniLM encoder is loaded only by those that need relevance."""

    # a program decides: as a judge it needs no held-out pair accuracy to be trusted (RewardBackend.rule)
    rule = True

    def __init__(self, spec: str, batch_size: int = 64) -> None:
        self.spec = spec
        self.reward_id = instruction_reward_id(spec)
        self._embedder: Any = None
        self.batch_size = batch_size

    def relevance(self, questions: Sequence[str], answers: Sequence[str]) -> list[float]:
        if self._embedder is None:
            self._embedder = EmbeddedReward(batch_size=self.batch_size)
        q = self._embedder.embed([strip_instructions(x) for x in questions])
        a = self._embedder.embed(list(answers))
        return [float(v) for v in (q * a).sum(-1).tolist()]

    def score(self, prompts: Sequence[Messages], responses: Sequence[str]) -> list[float]:
        questions = [last_user_turn(p) for p in prompts]
        if self.spec == CONSTRAINT_PASS:
            return [float(passes(q, r)) for q, r in zip(questions, responses, strict=True)]
        rel = self.relevance(questions, responses)
        if self.spec == RELEVANCE:
            return rel
        return [
            satisfied_share(q, r) + 0.5 * v - penalties(strip_instructions(q), r)
            for q, r, v in zip(questions, responses, rel, strict=True)
        ]
