"""The prefix-sharing scorer: a causal LM wrapped to score packed, block-masked rows (see collate.SharedBatch).

With sdpa attention the model is switched to block attention (``attention.py``: the prompt's keys and values
computed once, each response attending to them and to itself, never the whole row's score matrix); with eager
attention the block mask is added to the scores.

Imports only torch and the package's light modules, so the training-step benchmark runs where only torch and
transformers are installed (a GPU box).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from rrhf_core.errors import ConfigError
from rrhf_core.training import attention
from rrhf_core.training.collate import SharedBatch
from rrhf_core.training.loss import hidden_logprobs

logger = logging.getLogger(__name__)


class PrefixSharedLM(torch.nn.Module):
    """A causal LM scoring :class:`SharedBatch` rows: block-masked packed sequences, label log-probabilities from
    the hidden states of the scored positions only (chunked, never ``B x T x V`` logits). Wrap this, not the LM, in
    DDP so the gradient hooks see its forward."""

    def __init__(self, lm: Any, blocked: bool = True) -> None:
        super().__init__()
        self.lm = lm
        inner = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # peft wraps the HF model
        self.decoder = inner.base_model
        self.head = inner.get_output_embeddings()
        impl = getattr(inner.config, "_attn_implementation", "eager")
        if impl not in ("sdpa", "eager", attention.ATTENTION_NAME):
            raise ConfigError(
                f"prefix_sharing needs 'sdpa' or 'eager' attention (the model uses {impl!r}); "
                "set prefix_sharing=false"
            )
        self.blocked = impl != "eager" and blocked
        if self.blocked and impl == "sdpa":  # sdpa everywhere else: the layout only reaches it from forward()
            inner.set_attn_implementation(attention.register())
        self.bool_mask = impl != "eager"

    def forward(self, batch: SharedBatch) -> torch.Tensor:
        if self.blocked:
            calls = batch.layout.calls
            # block attention ignores the mask; a packed row's would be (L, L) over all its blocks
            mask = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=batch.input_ids.device)
            hidden = self._decode(batch, mask, **{attention.LAYOUT_KWARG: batch.layout})
            if batch.layout.calls > calls:
                return self._logprobs(batch, hidden)
            # the layers dropped the layout: sdpa ran without the block mask; redo with it
            self.blocked = False
            logger.warning(
                "%s does not pass attention keyword arguments to its attention layers: prefix sharing runs with "
                "the block mask over whole rows (correct, without block attention's saving)",
                type(self.decoder).__name__,
            )
        mask = batch.attention_mask
        if not self.bool_mask:  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=self.head.weight.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(self.head.weight.dtype).min
            )
        return self._logprobs(batch, self._decode(batch, mask))

    def _decode(self, batch: SharedBatch, mask: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.decoder(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=mask,
            use_cache=False,
            **extra,
        ).last_hidden_state  # (B, L, H)

    def _logprobs(self, batch: SharedBatch, hidden: torch.Tensor) -> torch.Tensor:
        return hidden_logprobs(hidden[batch.src_row, batch.src_pos], self.head, batch.tgt)  # (M,)
