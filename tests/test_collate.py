"""Tokenisation, label masks and the length policy, on the tiny byte-level tokenizer (1 byte = 1 token)."""

from __future__ import annotations

import pytest
import torch

from rrhf_core.data.contracts import ListwiseExample
from rrhf_core.encoding import Dropped, EncodedExample, Encoder, render_hh
from rrhf_core.training.collate import collate
from rrhf_core.training.loss import IGNORE_INDEX


def ex(messages, responses=("good answer", "bad"), rewards=(1.0, 0.0), pid="p1"):
    return ListwiseExample(pid, list(messages), list(responses), list(rewards), ["a"] * len(responses))


USER = [{"role": "user", "content": "hello"}]


def test_label_mask_covers_response_and_eos_only(tiny_tokenizer):
    enc = Encoder(tiny_tokenizer, max_length=128, max_response_tokens=32)
    e = enc.encode(ex(USER))
    assert isinstance(e, EncodedExample)
    prompt_text = tiny_tokenizer.decode(e.prompt_ids)
    assert prompt_text.endswith("<|im_start|>assistant\n") and "hello" in prompt_text
    assert e.response_ids[0][-1] == tiny_tokenizer.eos_token_id  # EOS is a response token
    assert len(e.response_ids[0]) == len("good answer") + 1
    batch = collate([e], tiny_tokenizer.pad_token_id)
    p = len(e.prompt_ids)
    for row, resp in enumerate(e.response_ids):
        mask = batch.response_mask[row]
        assert mask.sum().item() == len(resp)
        # targets at positions p-1 .. p-1+len(resp)-1 are exactly the response ids
        assert batch.targets[row, p - 1 : p - 1 + len(resp)].tolist() == resp
        assert not mask[: p - 1].any() and not mask[p - 1 + len(resp) :].any()
        # targets really are the next input token
        idx = mask.nonzero().squeeze(-1)
        assert torch.equal(batch.targets[row, idx], batch.input_ids[row, idx + 1])
    assert batch.rewards.tolist() == [1.0, 0.0] and batch.group.tolist() == [0, 0]
    assert batch.attention_mask[1].sum().item() == p + len(e.response_ids[1])  # padding not attended


def test_many_prompts_different_k_in_one_batch(tiny_tokenizer):
    enc = Encoder(tiny_tokenizer, max_length=128, max_response_tokens=32)
    a = enc.encode(ex(USER, ("x", "yy"), (0.0, 1.0), "a"))
    b = enc.encode(
        ex([{"role": "user", "content": "longer prompt"}], ("1", "22", "333"), (0.0, 1.0, 2.0), "b")
    )
    batch = collate([a, b], tiny_tokenizer.pad_token_id)
    assert batch.num_groups == 2 and batch.group.tolist() == [0, 0, 1, 1, 1]
    assert batch.input_ids.shape[0] == 5


def test_long_response_is_cut_without_eos(tiny_tokenizer):
    enc = Encoder(tiny_tokenizer, max_length=64, max_response_tokens=8)
    e = enc.encode(ex(USER, ("x" * 50, "ok")))
    assert len(e.response_ids[0]) == 8 and tiny_tokenizer.eos_token_id not in e.response_ids[0]
    assert e.response_ids[1][-1] == tiny_tokenizer.eos_token_id
    assert e.truncated_responses == 1


def test_long_prompt_is_left_truncated_at_a_turn_boundary(tiny_tokenizer):
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "old question " * 10},
        {"role": "assistant", "content": "old answer " * 10},
        {"role": "user", "content": "new question"},
    ]
    enc = Encoder(tiny_tokenizer, max_length=100, max_response_tokens=16)
    e = enc.encode(ex(msgs))
    assert isinstance(e, EncodedExample)
    text = tiny_tokenizer.decode(e.prompt_ids)
    assert "old" not in text and "new question" in text and "sys" in text  # system kept, oldest turns gone
    assert text.index("<|im_start|>user") < text.index("new question")  # starts at a user turn
    assert e.dropped_turns == 2
    for resp in e.response_ids:
        assert len(e.prompt_ids) + len(resp) <= 100


def test_prompt_that_cannot_fit_is_dropped_with_a_reason(tiny_tokenizer):
    enc = Encoder(tiny_tokenizer, max_length=40, max_response_tokens=16)
    out = enc.encode(ex([{"role": "user", "content": "q" * 200}]))
    assert isinstance(out, Dropped) and "does not fit" in out.reason


@pytest.mark.parametrize("max_length", [40, 64, 100])
def test_rows_never_exceed_max_length(tiny_tokenizer, max_length):
    enc = Encoder(tiny_tokenizer, max_length=max_length, max_response_tokens=20)
    msgs = [
        {"role": "user", "content": "a " * 5},
        {"role": "assistant", "content": "b " * 30},
        {"role": "user", "content": "c"},
    ]
    out = enc.encode(ex(msgs, ("r" * 100, "s" * 3)))
    if isinstance(out, EncodedExample):
        batch = collate([out], tiny_tokenizer.pad_token_id)
        assert batch.input_ids.shape[1] <= max_length


def test_hh_format(tiny_tokenizer):
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How?"},
    ]
    assert render_hh(msgs) == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: How?\n\nAssistant:"
    enc = Encoder(tiny_tokenizer, max_length=128, max_response_tokens=32, prompt_format="hh")
    e = enc.encode(ex(msgs, ("Like this.", "no")))
    assert tiny_tokenizer.decode(e.response_ids[0]) == " Like this.<|im_end|>"


def test_encoder_rejects_inconsistent_settings(tiny_tokenizer):
    with pytest.raises(ValueError, match="must be below"):
        Encoder(tiny_tokenizer, max_length=16, max_response_tokens=16)


def test_no_ignore_index_leaks_into_inputs(tiny_tokenizer):
    enc = Encoder(tiny_tokenizer, max_length=128, max_response_tokens=32)
    batch = collate([enc.encode(ex(USER))], tiny_tokenizer.pad_token_id)
    assert (batch.input_ids != IGNORE_INDEX).all()


def test_empty_negative_is_eos_alone_ranked_last(tiny_tokenizer):
    from rrhf_core.training.collate import EMPTY_REWARD, collate_shared, with_empty_negative

    enc = Encoder(tiny_tokenizer, max_length=128, max_response_tokens=32)
    e = enc.encode(ex(USER))
    assert isinstance(e, EncodedExample)
    n = with_empty_negative(e, enc.eos_id)
    assert n.response_ids[:2] == e.response_ids and n.response_ids[2] == [tiny_tokenizer.eos_token_id]
    assert n.rewards == [1.0, 0.0, EMPTY_REWARD] and len(e.rewards) == 2  # the original is not changed
    # one scored token: EOS right after the prompt, in both layouts
    p = len(e.prompt_ids)
    batch = collate([n], tiny_tokenizer.pad_token_id)
    assert batch.response_mask[2].sum().item() == 1 and batch.targets[2, p - 1].item() == enc.eos_id
    shared = collate_shared([n], tiny_tokenizer.pad_token_id)
    rows = shared.resp == 2
    assert shared.tgt[rows].tolist() == [enc.eos_id] and shared.src_pos[rows].tolist() == [p - 1]


def test_reward_ranks_keep_order_and_ties_that_float32_would_lose():
    from rrhf_core.training.collate import reward_ranks

    # by hand: distinct levels -inf < 0.5 < 1e8 < 1e8 + 1, so ranks 0, 1, 2, 3; the two 0.5 share rank 1
    assert reward_ranks([0.5, 1e8 + 1, 1e8, 0.5, float("-inf")]) == [1.0, 3.0, 2.0, 1.0, 0.0]
    assert reward_ranks([1e308, 1e300]) == [1.0, 0.0]  # both are inf in float32
    assert torch.tensor([1e8 + 1, 1e8], dtype=torch.float32).unique().numel() == 1  # what the ranks avoid
    assert reward_ranks([2.0, 2.0]) == [0.0, 0.0]
