"""Block attention for prefix-shared rows: the prompt's keys and values computed once, the k responses attending to
them without the score matrix of the whole packed row.

A packed row ``prompt + r_1 + ... + r_k`` (see :class:`rrhf_core.training.collate.SharedBatch`) under a block mask
lets sdpa compute every query against every key, ``(P + kR)^2`` scores, most of them masked. Here each layer's
queries, keys and values are regrouped into slots instead:

- the prompts, ``(G, H, P_max, D)``: causal self-attention (``P^2 / 2`` scores, sdpa's causal kernel);
- the responses, ``(N, H, R_max, D)``: each response's queries against its prompt's keys followed by its own keys,
  ``(N, H, R_max, P_max + R_max)`` scores under a small mask (prompt keys up to the prompt's length; own keys causal).

Work per head: ``P^2/2 + kR(P + R)`` scores instead of ``(P + kR)^2``; the outputs are the same (the same keys and
values, the same softmax; the regrouping only changes the order of the sums). Slots past a prompt's or response's
length are zero rows, never attended by a real query, and dropped on the way back.

The regrouping is a gather whose backward is also a gather (each packed position has at most one slot), so neither
direction accumulates with scatter-add. ``register()`` installs the attention under the name ``"rrhf_blocked"`` in
transformers' attention registry; without a layout in its keyword arguments it is plain sdpa, so a model switched
to it behaves as before everywhere else (generation, evaluation), and ``save_pretrained`` does not record it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

ATTENTION_NAME = "rrhf_blocked"
LAYOUT_KWARG = "rrhf_layout"


@dataclass
class BlockLayout:
    """Where each packed position goes among the attention slots, for ``B`` rows of length ``T``.

    slot_src: ``(S,)`` with ``S = G * P_max + N * R_max``: the flat packed position (``row * T + t``) of each slot
    (0 for an empty slot); slot_pad: the empty slots (zero rows). pos_src: ``(B * T,)``: the slot of each packed
    position (0 for a position without one); pos_pad: the positions without a slot (row padding).
    resp_prompt: ``(N,)``: the prompt (``0..G-1``) of each response. resp_mask: ``(N, 1, R_max, P_max + R_max)``
    bool, True = may attend. ``calls`` counts the attention layers that used the layout (a model whose layers drop
    attention keyword arguments would leave it at 0).
    """

    slot_src: torch.Tensor
    slot_pad: torch.Tensor
    pos_src: torch.Tensor
    pos_pad: torch.Tensor
    resp_prompt: torch.Tensor
    resp_mask: torch.Tensor
    prompts: int
    prompt_max: int
    responses: int
    response_max: int
    calls: int = 0

    def to(self, device: torch.device | str) -> BlockLayout:
        moved: dict[str, Any] = {
            k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)
        }
        return replace(self, **moved)


def build_layout(
    rows: int, length: int, prompts: list[tuple[int, int, int]], responses: list[tuple[int, int, int, int]]
) -> BlockLayout:
    """The layout of ``rows`` packed rows of ``length`` positions.

    prompts: ``(row, start, length)`` per prompt; responses: ``(prompt index, row, start, length)`` per response.
    """
    g, n = len(prompts), len(responses)
    p_max = max(p[2] for p in prompts)
    r_max = max(r[3] for r in responses)
    s = g * p_max + n * r_max
    flat = rows * length
    slot_src = torch.full((s,), -1, dtype=torch.long)
    pos_src = torch.full((flat,), -1, dtype=torch.long)
    for i, (row, start, p_len) in enumerate(prompts):
        slots = torch.arange(i * p_max, i * p_max + p_len)
        pos = torch.arange(row * length + start, row * length + start + p_len)
        slot_src[slots], pos_src[pos] = pos, slots
    resp_mask = torch.zeros((n, 1, r_max, p_max + r_max), dtype=torch.bool)
    causal = torch.ones(r_max, r_max, dtype=torch.bool).tril()
    for j, (prompt, row, start, r_len) in enumerate(responses):
        base = g * p_max + j * r_max
        slots = torch.arange(base, base + r_len)
        pos = torch.arange(row * length + start, row * length + start + r_len)
        slot_src[slots], pos_src[pos] = pos, slots
        # every query row sees its prompt (no empty softmax row); its own keys causally
        resp_mask[j, 0, :, : prompts[prompt][2]] = True
        resp_mask[j, 0, :r_len, p_max : p_max + r_len] = causal[:r_len, :r_len]
    slot_pad, pos_pad = (slot_src < 0).nonzero().flatten(), (pos_src < 0).nonzero().flatten()
    return BlockLayout(
        slot_src=slot_src.clamp(min=0),
        slot_pad=slot_pad,
        pos_src=pos_src.clamp(min=0),
        pos_pad=pos_pad,
        resp_prompt=torch.tensor([r[0] for r in responses], dtype=torch.long),
        resp_mask=resp_mask,
        prompts=g,
        prompt_max=p_max,
        responses=n,
        response_max=r_max,
    )


class _Regather(torch.autograd.Function):
    """``y = x[fwd]`` with rows ``fwd_zero`` of ``y`` set to 0, and backward ``gx = gy[bwd]`` with rows ``bwd_zero``
    of ``gx`` set to 0: exact when ``fwd`` and ``bwd`` are inverse maps on the rows that have a partner and the
    rows without one are the zeroed ones."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        fwd: torch.Tensor,
        fwd_zero: torch.Tensor,
        bwd: torch.Tensor,
        bwd_zero: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(bwd, bwd_zero)
        return _take(x, fwd, fwd_zero)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        bwd, bwd_zero = ctx.saved_tensors
        return _take(grad, bwd, bwd_zero), None, None, None, None


def _take(x: torch.Tensor, index: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``x``, rows ``zero`` of the result set to 0 (``(M, ...) -> (len(index), ...)``)."""
    y = x.index_select(0, index)
    return y.index_fill_(0, zero, 0) if zero.numel() else y


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    # grouped-query attention (fewer key/value heads): sdpa repeats them itself
    gqa = query.shape[1] != key.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, enable_gqa=gqa, **kwargs)


def blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: BlockLayout,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> torch.Tensor:
    """Attention of packed rows under ``layout``.

    query: ``(B, Hq, T, D)``; key, value: ``(B, Hkv, T, D)`` (``Hq`` a multiple of ``Hkv``).
    Returns ``(B, T, Hq, D)`` (transformers' attention output layout); zeros at positions without a slot.
    """
    b, hq, t, d = query.shape
    g, p_max, n, r_max = layout.prompts, layout.prompt_max, layout.responses, layout.response_max

    def slots(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.shape[1]
        flat = x.transpose(1, 2).reshape(b * t, h, d)
        s = _Regather.apply(flat, layout.slot_src, layout.slot_pad, layout.pos_src, layout.pos_pad)
        prompt = s[: g * p_max].view(g, p_max, h, d).transpose(1, 2)  # (G, H, P_max, D)
        resp = s[g * p_max :].view(n, r_max, h, d).transpose(1, 2)  # (N, H, R_max, D)
        return prompt, resp

    (qp, qr), (kp, kr), (vp, vr) = slots(query), slots(key), slots(value)
    opts: dict[str, Any] = {"dropout_p": dropout, "scale": scaling}
    out_p = _sdpa(qp, kp, vp, is_causal=True, **opts)  # (G, Hq, P_max, D)
    k_all = torch.cat([kp.index_select(0, layout.resp_prompt), kr], dim=2)  # (N, Hkv, P_max + R_max, D)
    v_all = torch.cat([vp.index_select(0, layout.resp_prompt), vr], dim=2)
    out_r = _sdpa(qr, k_all, v_all, attn_mask=layout.resp_mask, **opts)  # (N, Hq, R_max, D)
    out = torch.cat(
        [out_p.transpose(1, 2).reshape(g * p_max, hq, d), out_r.transpose(1, 2).reshape(n * r_max, hq, d)]
    )
    return _Regather.apply(out, layout.pos_src, layout.pos_pad, layout.slot_src, layout.slot_pad).view(
        b, t, hq, d
    )


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: block attention when the forward call carries a layout
    (``rrhf_layout=...``), transformers' own sdpa otherwise."""
    layout = kwargs.get(LAYOUT_KWARG)
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    layout.calls += 1
    return blocked_attention(query, key, value, layout, dropout=dropout, scaling=scaling), None


def register() -> str:
    """Install the attention (and sdpa's mask construction) under ``ATTENTION_NAME``; idempotent."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME
