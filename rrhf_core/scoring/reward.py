"""Reward backends: HF sequence classifiers and Python functions, and the registry that knows every reward
(:func:`make_reward`, :func:`reward_fingerprint`): the embedded CPU reward (:mod:`.embedded`) and the instruction
rewards (:mod:`rrhf_core.instructions.reward`) are built here by name.

Every backend has a ``reward_id`` (what the score cache is keyed by) and scores a batch of
(prompt messages, response) pairs.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from rrhf_core import pretrained
from rrhf_core.batching import length_batches
from rrhf_core.digest import file_digest, module_file
from rrhf_core.errors import ConfigError
from rrhf_core.instructions.ifeval import IFEVAL_JUDGE, IFEvalJudge
from rrhf_core.instructions.reward import InstructionReward, instruction_reward_id
from rrhf_core.models import model_load_error
from rrhf_core.scoring import EMBEDDED_REWARD, INSTRUCTION_REWARDS
from rrhf_core.scoring.embedded import EmbeddedReward, embedded_reward_id

Messages = list[dict[str, str]]


class RewardBackend(Protocol):
    """``reward_id``: what the score cache keys on. A backend may also set ``rule = True`` (a program decides: the
    instruction checkers, a user's function); any other, a model, must prove itself as a judge by its held-out pair
    accuracy (``gate.min_judge_accuracy``)."""

    reward_id: str

    def score(self, prompts: Sequence[Messages], responses: Sequence[str]) -> list[float]: ...


class FunctionReward:
    """A Python reward function given as ``module:function``; it takes ``(messages, response)`` and returns a number.

    Anything else it returns (text, even ``"1.5"``; None; a list) is refused with an error naming the function, the
    value and the response: a reward is never guessed from text.

    As a judge it counts as a rule its author vouches for (``rule``): the gate asks it for no held-out accuracy."""

    rule = True

    def __init__(self, spec: str) -> None:
        module_name, _, func_name = spec.partition(":")
        if not module_name or not func_name:
            raise ConfigError(f"reward function {spec!r} must look like 'package.module:function'")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"cannot import reward module {module_name!r}: {e}") from None
        fn = getattr(module, func_name, None)
        if not callable(fn):
            raise ConfigError(f"{module_name!r} has no function {func_name!r}")
        self.fn: Callable[[Messages, str], Any] = fn
        self.spec = spec
        self.reward_id = reward_fingerprint(spec)

    def score(self, prompts: Sequence[Messages], responses: Sequence[str]) -> list[float]:
        return [self._number(self.fn(p, r), r) for p, r in zip(prompts, responses, strict=True)]

    def _number(self, value: Any, response: str) -> float:
        """``value`` as a float when it is a number (int, float, a NumPy or 0-d tensor scalar); a ConfigError else."""
        if not isinstance(value, str | bytes) and value is not None:
            try:
                return float(value)
            except (TypeError, ValueError):
                pass
        raise ConfigError(
            f"reward function {self.spec} returned {value!r} ({type(value).__name__}) for the response "
            f"{response[:80]!r}; a reward function must return a number (int or float), not text or None"
        )


def render_for_reward(tokenizer: Any, messages: Messages, response: str) -> str:
    """One reward-model input: the dialogue and the response through the tokenizer's chat template where it has one,
    else as HH text (``\n\nHuman: ...\n\nAssistant: <response>``). Training (:mod:`rrhf_core.reward_model`) and
    scoring both render with this function, so a trained reward model sees in scoring what it saw in training."""
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            )
        )
    from rrhf_core.encoding import render_hh

    return render_hh(messages) + " " + response.strip()


def prepare_reward_tokenizer(tokenizer: Any, model: Any, max_length: int) -> int:
    """Set up padding and left truncation (long inputs keep the response and the latest turns); returns the input
    length in tokens: ``max_length`` capped by what the tokenizer was saved with (a trained reward model's own
    training length) and by the model's positions."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.truncation_side = "left"
    caps = [max_length]
    if 0 < int(getattr(tokenizer, "model_max_length", 0) or 0) < 1_000_000:
        caps.append(int(tokenizer.model_max_length))
    if getattr(model.config, "max_position_embeddings", None):
        caps.append(int(model.config.max_position_embeddings))
    return min(caps)


@torch.no_grad()
def score_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
    bucket: bool = True,
    bf16: bool = False,
) -> list[float]:
    """The single logit of a sequence classifier for each text, ``(len(texts),)``; batches are length-bucketed
    (sorted by length: little padding) unless ``bucket`` is off."""
    device = next(model.parameters()).device
    scores = [math.nan] * len(texts)
    for idx in length_batches([len(t) for t in texts], batch_size, bucket):
        enc = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**enc).logits.float()
        for i, v in zip(idx, logits[:, 0].tolist(), strict=True):
            scores[i] = v
    return scores


class HFClassifierReward:
    """An HF sequence-classification reward model with a single-logit head (local folder or hub id), such as the
    ones ``rrhf train-rm`` writes.

    Input: :func:`render_for_reward`. Truncation: inputs longer than ``max_length`` tokens (capped by the length the
    tokenizer was saved with, see :func:`prepare_reward_tokenizer`) keep their *end*: they are cut from the left.
    Batches are length-bucketed and run in bf16 where the hardware makes that faster. The score is the logit.
    """

    def __init__(self, model: str, batch_size: int = 16, max_length: int = 1024, bucket: bool = True) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from rrhf_core.hardware import bf16_available

        try:
            config = pretrained.load(AutoConfig, model, "reward model")
        except (OSError, ValueError) as e:
            raise model_load_error(model, e, "reward model") from None
        if config.num_labels != 1:
            raise ConfigError(
                f"reward model {model!r} has a {config.num_labels}-label head; a reward model needs a single-logit "
                "head (num_labels=1), as AutoModelForSequenceClassification.from_pretrained(..., num_labels=1) "
                "or `rrhf train-rm` makes"
            )
        try:
            self.tokenizer = pretrained.load(AutoTokenizer, model, "reward model")
            self.model = pretrained.load(AutoModelForSequenceClassification, model, "reward model").eval()
        except OSError as e:
            raise model_load_error(model, e, "reward model") from None
        self.max_length = prepare_reward_tokenizer(self.tokenizer, self.model, max_length)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.bf16 = bf16_available(self.device)
        self.batch_size, self.bucket = batch_size, bucket
        revision = getattr(self.model.config, "_commit_hash", None)
        self.reward_id = f"hf:{model}@{revision}" if revision else reward_fingerprint(model)

    def render(self, messages: Messages, response: str) -> str:
        return render_for_reward(self.tokenizer, messages, response)

    def score(self, prompts: Sequence[Messages], responses: Sequence[str]) -> list[float]:
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        return score_texts(
            self.model, self.tokenizer, texts, self.batch_size, self.max_length, self.bucket, self.bf16
        )


def _is_function_spec(spec: str) -> bool:
    return spec.startswith("fn:") or (
        ":" in spec and not Path(spec).exists() and "/" not in spec.split(":")[0]
    )


def is_hf_reward_spec(spec: str) -> bool:
    """Whether ``make_reward`` would load ``spec`` as an HF reward model (a folder or a hub id)."""
    return not (spec.startswith("embedded:") or _is_function_spec(spec))


def reward_fingerprint(spec: str) -> str:
    """What identifies a reward's behaviour, found without loading it: the embedded rewards' code (the source digest
    of the modules that compute them) and weights (the MiniLM package's version), lm-eval's version for its IFEval
    checkers, a function's
    module source (the whole file: helpers it calls change the reward too), a local reward model's weights
    (content digest); for a hub id, the id (the loaded model's revision is in its ``reward_id``)."""
    if spec == EMBEDDED_REWARD:
        return embedded_reward_id()
    if spec in INSTRUCTION_REWARDS:
        return instruction_reward_id(spec)
    if spec == IFEVAL_JUDGE:
        from importlib.metadata import version

        return f"{IFEVAL_JUDGE}@lm-eval-{version('lm_eval')}"
    if _is_function_spec(spec):
        fn_spec = spec.removeprefix("fn:")
        path = module_file(fn_spec.partition(":")[0])
        digest = file_digest(path)[:12] if path else "unknown"
        return f"fn:{fn_spec}@{digest}"
    if Path(spec).exists():
        return f"hf:{spec}@sha256:{file_digest(spec)[:12]}"
    return f"hf:{spec}"


def make_reward(spec: str, batch_size: int = 16, max_length: int = 1024, bucket: bool = True) -> Any:
    """``embedded:minilm-helpfulness``, the instruction rewards (``embedded:constraint-reward``,
    ``embedded:constraint-pass``, ``embedded:relevance``), ``fn:module:function`` or ``module:function``, or an HF
    model id/path."""
    if spec == EMBEDDED_REWARD:
        return EmbeddedReward(bucket=bucket)
    if spec in INSTRUCTION_REWARDS:
        return InstructionReward(spec)
    if spec == IFEVAL_JUDGE:
        return IFEvalJudge()
    if spec.startswith("embedded:"):
        known = ", ".join(repr(s) for s in (EMBEDDED_REWARD, *INSTRUCTION_REWARDS))
        raise ConfigError(f"unknown embedded reward {spec!r}; available: {known}")
    if _is_function_spec(spec):
        return FunctionReward(spec.removeprefix("fn:"))
    return HFClassifierReward(spec, batch_size, max_length, bucket)
