"""Prefix sharing: the packed, block-masked computation gives the unshared loss and gradients (fp32)."""

from __future__ import annotations

import pytest
from torch.testing import assert_close

from conftest import learnable_records
from rrhf_core.data.contracts import ListwiseExample, examples_from_records
from rrhf_core.encoding import Encoder
from rrhf_core.models import load_causal_lm, load_tokenizer
from rrhf_core.training.collate import collate, collate_shared
from rrhf_core.training.config import TrainConfig
from rrhf_core.training.listwise import encode_examples, forward_loss
from rrhf_core.training.prefix import PrefixSharedLM


def _examples() -> list[ListwiseExample]:
    recs = learnable_records(n=3, response_len=10)
    recs[1]["responses"] = recs[1]["responses"][:2]  # a different k per prompt
    recs[1]["rewards"] = recs[1]["rewards"][:2]
    recs[1]["sources"] = recs[1]["sources"][:2]
    recs[2]["messages"] = [{"role": "user", "content": "a much longer prompt " * 6}]
    return examples_from_records(recs)


def _compare(model_dir: str, examples, cache_dir=None, atol=1e-5, blocked=True, pack=True, expect_calls=True):
    tok = load_tokenizer(model_dir, cache_dir)
    cfg = TrainConfig(data="-", output_dir="-", max_length=256, max_response_tokens=64, dtype="fp32")
    encoded, dropped, _ = encode_examples(Encoder(tok, cfg.max_length, cfg.max_response_tokens), examples)
    assert not dropped
    model = load_causal_lm(model_dir, cache_dir)
    model.eval()  # no dropout: both paths must see the same function
    results = []
    for shared in (False, True):
        model.zero_grad()
        batch = (
            collate_shared(encoded, tok.pad_token_id, pack) if shared else collate(encoded, tok.pad_token_id)
        )
        scorer = PrefixSharedLM(model, blocked=blocked) if shared else model
        out, scores = forward_loss(scorer, batch, cfg, bf16=False)
        if (
            shared and expect_calls
        ):  # block attention ran in every layer, or the block mask did (blocked=False)
            assert batch.layout.calls == (model.config.num_hidden_layers if blocked else 0)
        out.loss.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, scores, grads, batch))
    (o1, s1, g1, b1), (o2, s2, g2, b2) = results
    assert_close(s2, s1, atol=atol, rtol=1e-4)
    assert_close(o2.loss, o1.loss, atol=atol, rtol=1e-4)
    assert set(g1) == set(g2)
    for name in g1:
        assert_close(g2[name], g1[name], atol=atol, rtol=1e-3, msg=name)
    return b1, b2


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "row-per-prompt"])
@pytest.mark.parametrize("blocked", [True, False], ids=["block-attention", "block-mask"])
def test_shared_equals_unshared_on_a_tiny_model(tiny_model_dir, blocked, pack):
    unshared, shared = _compare(str(tiny_model_dir), _examples(), blocked=blocked, pack=pack)
    # tokens processed: P + kR per prompt instead of k(P + R); packed: all in one row, no padding
    assert shared.num_tokens() < unshared.num_tokens()
    assert shared.input_ids.shape[0] == (1 if pack else 3) and unshared.input_ids.shape[0] == 3 + 2 + 3
    if pack:
        assert shared.input_ids.numel() == shared.num_tokens()


def test_a_model_whose_layers_drop_the_layout_falls_back_to_the_block_mask(
    tiny_model_dir, monkeypatch, caplog
):
    """An architecture that does not pass attention keyword arguments on: the result is still exact (the forward
    is redone with the block mask) and block attention is switched off, with a warning."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from rrhf_core.training import attention

    monkeypatch.setattr(attention, "attention_forward", sdpa_attention_forward)  # what register() installs
    try:
        with caplog.at_level("WARNING"):
            _compare(str(tiny_model_dir), _examples(), blocked=True, pack=True, expect_calls=False)
    finally:
        monkeypatch.undo()
        attention.register()
    assert "does not pass attention keyword arguments" in caplog.text


def test_the_batch_follows_the_scorer(tiny_model_dir):
    """Block attention gets one packed row; the block mask (eager attention) one row per prompt, as its mask is
    square in the row's length; a causal LM padded (prompt + response) rows. DDP's wrapper is looked through."""
    import torch
    from transformers import AutoModelForCausalLM

    from rrhf_core.training.collate import Batch, SharedBatch
    from rrhf_core.training.listwise import make_batch

    tok = load_tokenizer(str(tiny_model_dir))
    encoded, _, _ = encode_examples(Encoder(tok, 256, 64), _examples())
    pad = tok.pad_token_id
    sdpa = load_causal_lm(str(tiny_model_dir))
    eager = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager")

    class Wrapped(torch.nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    blocked = make_batch(encoded, pad, Wrapped(PrefixSharedLM(sdpa)))
    masked = make_batch(encoded, pad, PrefixSharedLM(eager))
    plain = make_batch(encoded, pad, eager)
    assert isinstance(blocked, SharedBatch) and blocked.input_ids.shape[0] == 1
    assert isinstance(masked, SharedBatch) and masked.input_ids.shape[0] == len(encoded)
    assert type(plain) is Batch and plain.input_ids.shape[0] == sum(len(e.response_ids) for e in encoded)


def test_block_mask_keeps_responses_apart():
    from rrhf_core.encoding import EncodedExample

    ex = EncodedExample("p", [1, 2], [[3, 4], [5]], [1.0, 0.0])
    b = collate_shared([ex], pad_id=0)
    m = b.attention_mask[0, 0]
    assert b.layout.prompt_max == 2 and b.layout.response_max == 2
    # rows: prompt 0,1 | response A at 2,3 | response B at 4
    assert m[3, :4].tolist() == [True, True, True, True]  # A's 2nd token sees the prompt and A
    assert m[4].tolist() == [True, True, False, False, True]  # B sees the prompt and itself, never A
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 2]  # B's positions continue from the prompt
    assert b.src_pos.tolist() == [1, 2, 1] and b.tgt.tolist() == [3, 4, 5] and b.resp.tolist() == [0, 0, 1]


@pytest.mark.integration
def test_shared_equals_unshared_on_smollm2(smollm2_cache):
    from rrhf_core.models import EMBEDDED_POLICY

    examples = [
        ListwiseExample(
            "a",
            [{"role": "user", "content": "How do I boil an egg?"}],
            ["Put it in boiling water for nine minutes.", "No idea.", "Eggs are round."],
            [1.0, 0.0, 0.5],
            ["x"] * 3,
        ),
        ListwiseExample(
            "b",
            [{"role": "user", "content": "What is gravity?"}],
            ["A force that pulls masses together.", "I can't help with that."],
            [1.0, 0.0],
            ["x"] * 2,
        ),
    ]
    _compare(EMBEDDED_POLICY, examples, cache_dir=smollm2_cache, atol=2e-4)


def test_the_trainer_uses_sharing_by_default_and_can_turn_it_off():
    assert TrainConfig(data="-", output_dir="-").prefix_sharing is True
    assert TrainConfig(data="-", output_dir="-", prefix_sharing=False).prefix_sharing is False


def test_the_benchmark_needs_only_torch_and_transformers():
    """The training-step benchmark and the GPU check run where only torch and transformers are: the library modules
    they use must not pull in pyarrow, pydantic, prefect or mlflow."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, rrhf_core.training.reference, rrhf_core.training.prefix, rrhf_core.training.collate, rrhf_core.models; "
        "print(sorted(m for m in ('pyarrow', 'pydantic', 'yaml', 'pandas', 'prefect', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"
