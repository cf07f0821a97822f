"""Block attention (rrhf_core/training/attention.py): the slot layout by hand, and the same outputs and gradients as
sdpa under the whole row's block mask."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from rrhf_core.encoding import EncodedExample
from rrhf_core.training.attention import ATTENTION_NAME, blocked_attention, build_layout
from rrhf_core.training.collate import collate_shared


def test_the_layout_by_hand():
    # one row of 7: prompt [0, 2), response A at [2, 4), response B at [4, 5), then 2 padding positions
    lay = build_layout(1, 7, [(0, 0, 2)], [(0, 0, 2, 2), (0, 0, 4, 1)])
    assert (lay.prompts, lay.prompt_max, lay.responses, lay.response_max) == (1, 2, 2, 2)
    # slots: prompt 0, 1 | A 2, 3 | B 4, (empty)
    assert lay.slot_src.tolist() == [0, 1, 2, 3, 4, 0] and lay.slot_pad.tolist() == [5]
    assert lay.pos_src.tolist() == [0, 1, 2, 3, 4, 0, 0] and lay.pos_pad.tolist() == [5, 6]
    assert lay.resp_prompt.tolist() == [0, 0]
    # keys of a response: the prompt's 2 slots, then its own 2; B's second query row is padding (sees the prompt)
    assert lay.resp_mask[0, 0].int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert lay.resp_mask[1, 0].int().tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]


def _rows(lengths: list[tuple[int, list[int]]]) -> list[EncodedExample]:
    g = torch.Generator().manual_seed(0)
    return [
        EncodedExample(
            f"p{i}",
            torch.randint(3, 50, (p,), generator=g).tolist(),
            [torch.randint(3, 50, (r,), generator=g).tolist() for r in rs],
            [0.0] * len(rs),
        )
        for i, (p, rs) in enumerate(lengths)
    ]


@pytest.mark.parametrize("pack", [False, True], ids=["row-per-prompt", "packed"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_block_attention_equals_sdpa_under_the_block_mask(kv_heads, pack):
    # three prompts of different lengths and k (row padding, empty prompt and response slots)
    batch = collate_shared(_rows([(5, [3, 1, 4]), (2, [6]), (7, [2, 2])]), pad_id=0, pack=pack)
    assert batch.input_ids.shape[0] == (1 if pack else 3)
    rows, length = batch.input_ids.shape
    heads, dim = 4, 8
    g = torch.Generator().manual_seed(1)
    q = torch.randn(rows, heads, length, dim, generator=g, requires_grad=True)
    k = torch.randn(rows, kv_heads, length, dim, generator=g, requires_grad=True)
    v = torch.randn(rows, kv_heads, length, dim, generator=g, requires_grad=True)
    real = torch.ones(rows * length, dtype=torch.bool)
    real[batch.layout.pos_pad] = False
    real = real.view(rows, length)
    upstream = torch.randn(rows, length, heads, dim, generator=g) * real[:, :, None, None]

    def masked(q, k, v):
        rep = heads // kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=batch.attention_mask
        ).transpose(1, 2)

    results = []
    for fn in (masked, lambda q, k, v: blocked_attention(q, k, v, batch.layout)):
        out = fn(q, k, v)
        (out * upstream).sum().backward()
        results.append((out[real], q.grad, k.grad, v.grad))
        q.grad = k.grad = v.grad = None
    (o1, *g1), (o2, *g2) = results
    assert_close(o2, o1, atol=1e-6, rtol=1e-5)
    for a, b in zip(g2, g1, strict=True):
        assert_close(a, b, atol=1e-6, rtol=1e-5)
    out = blocked_attention(q, k, v, batch.layout)
    assert out.shape == (rows, length, heads, dim)
    assert (out[~real] == 0).all()  # padding positions get no attention output
    assert real.all() == pack


def test_the_switch_to_block_attention_is_not_saved(tiny_model_dir, tmp_path):
    from rrhf_core.models import load_causal_lm
    from rrhf_core.training.prefix import PrefixSharedLM

    model = load_causal_lm(str(tiny_model_dir))
    assert model.config._attn_implementation == "sdpa"
    assert PrefixSharedLM(model).blocked
    assert model.config._attn_implementation == ATTENTION_NAME
    model.save_pretrained(tmp_path)
    assert ATTENTION_NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    assert load_causal_lm(str(tmp_path)).config._attn_implementation == "sdpa"


def test_eager_models_keep_the_block_mask(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rrhf_core.training.prefix import PrefixSharedLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager")
    scorer = PrefixSharedLM(model)
    assert not scorer.blocked and model.config._attn_implementation == "eager"
