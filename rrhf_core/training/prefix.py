"""The prefix-sharing scorer: a causal LM wrapped to score packed, block-masked rows (see collate.SharedBatch).

Imports only torch and the package's light modules, so the training-step benchmark runs where only torch and
transformers are installed (a GPU box).
"""

from __future__ import annotations

from typing import Any

import torch

from rrhf_core.errors import ConfigError
from rrhf_core.training.collate import SharedBatch
from rrhf_core.training.loss import hidden_logprobs


class PrefixSharedLM(torch.nn.Module):
    """A causal LM scoring :class:`SharedBatch` rows: block-masked packed sequences, label log-probabilities from
    the hidden states of the scored positions only (chunked, never ``B x T x V`` logits). Wrap this, not the LM, in
    DDP so the gradient hooks see its forward."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm
        inner = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # peft wraps the HF model
        self.decoder = inner.base_model
        self.head = inner.get_output_embeddings()
        impl = getattr(inner.config, "_attn_implementation", "eager")
        if impl not in ("sdpa", "eager"):
            raise ConfigError(
                f"prefix_sharing needs 'sdpa' or 'eager' attention (the model uses {impl!r}); "
                "set prefix_sharing=false"
            )
        self.bool_mask = impl == "sdpa"

    def forward(self, batch: SharedBatch) -> torch.Tensor:
        mask = batch.attention_mask
        if not self.bool_mask:  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=self.head.weight.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(self.head.weight.dtype).min
            )
        hidden = self.decoder(
            input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask, use_cache=False
        ).last_hidden_state  # (G, L, H)
        return hidden_logprobs(hidden[batch.src_row, batch.src_pos], self.head, batch.tgt)  # (M,)
