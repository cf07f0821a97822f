"""The RRHF loss on tiny tensors; every expected value is derived by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rrhf_core.training.loss import (
    IGNORE_INDEX,
    best_response_weights,
    gather_logprobs,
    hidden_logprobs,
    length_normalised_scores,
    rank_loss,
    ranking_pairs,
    rrhf_loss,
    sequence_logprobs,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_scores_use_each_responses_own_length():
    # row 0: 3 tokens -1,-2,-3 -> sum -6, length 3 -> p = -2 ; row 1: 1 token -4 then padding -> p = -4
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -9.0, -9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    sums, lengths = sequence_logprobs(logps, mask)
    assert_close(sums, t(-6.0, -4.0))
    assert_close(lengths, t(3.0, 1.0))
    assert_close(length_normalised_scores(sums, lengths, 1.0), t(-2.0, -4.0))
    # length_penalty 2: -6 / 9 and -4 / 1
    assert_close(length_normalised_scores(sums, lengths, 2.0), t(-6.0 / 9.0, -4.0))


def test_fault_padded_length_normalisation():
    """Reference fault (#37): every response divided by the padded length, so length_penalty never reorders.

    A: 2 tokens of -1 (sum -2); B: 4 tokens of -0.8 (sum -3.2), padded to 4 columns.
    Own lengths: p_A = -1, p_B = -0.8, so B ranks above A. Padded length 4 would give -0.5 vs -0.8 (A above B).
    """
    logps = torch.tensor([[-1.0, -1.0, 0.0, 0.0], [-0.8, -0.8, -0.8, -0.8]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    sums, lengths = sequence_logprobs(logps, mask)
    p = length_normalised_scores(sums, lengths, 1.0)
    assert_close(p, t(-1.0, -0.8))
    assert p[1] > p[0]
    # extra padding columns change nothing
    logps_wide = torch.cat([logps, torch.full((2, 3), -5.0)], dim=1)
    mask_wide = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    assert_close(length_normalised_scores(*sequence_logprobs(logps_wide, mask_wide), 1.0), p)


def test_rank_loss_three_responses_hand_values():
    # p = (-1, -2, -3), r = (0.1, 0.5, 0.9): every pair misordered.
    # (0<1): max(0, -1 - -2) = 1 ; (0<2): max(0, -1 - -3) = 2 ; (1<2): max(0, -2 - -3) = 1 -> 4
    p, g = t(-1.0, -2.0, -3.0), torch.zeros(3, dtype=torch.long)
    assert_close(rank_loss(p, t(0.1, 0.5, 0.9), g, 1), t(4.0))
    # correctly ordered: all hinges are 0
    assert_close(rank_loss(p, t(0.9, 0.5, 0.1), g, 1), t(0.0))
    # tie between 0 and 1 contributes nothing: (0<2) 2 + (1<2) 1 = 3
    assert_close(rank_loss(p, t(0.5, 0.5, 0.9), g, 1), t(3.0))
    # all rewards equal: no pair, no signal
    assert_close(rank_loss(p, t(1.0, 1.0, 1.0), g, 1), t(0.0))


def test_fault_one_dimensional_rewards_do_not_give_zero_loss():
    """Reference fault (#29): rewards of shape (k,) silently gave a zero loss. Here (k,) is the normal shape."""
    logps = torch.tensor([[-1.0, -1.0], [-3.0, -3.0]])  # p = -1, -3
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = rrhf_loss(logps, mask, t(0.0, 1.0), torch.zeros(2, dtype=torch.long), 1)
    # rank: r_0 < r_1, max(0, -1 - -3) = 2 ; sft (mean): best is row 1, nll = 6 / 2 = 3 ; total 5
    assert_close(out.rank, t(2.0))
    assert_close(out.sft, t(3.0))
    assert_close(out.loss, t(5.0))


def test_rewards_of_the_wrong_shape_are_an_error():
    logps, mask = torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="rewards must have shape"):
        rrhf_loss(logps, mask, torch.zeros(1, 2), torch.zeros(2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="rewards must have shape"):
        rrhf_loss(logps, mask, torch.zeros(3), torch.zeros(3, dtype=torch.long), 1)


def test_fault_many_prompts_per_batch_with_different_k():
    """Reference faults (#29, #23): one query per device, equal k. Two prompts (k=2, k=3) in one batch."""
    logps = torch.tensor([[-1.0], [-3.0], [-1.0], [-2.0], [-3.0]])
    mask = torch.ones(5, 1, dtype=torch.bool)
    rewards = t(0.0, 1.0, 0.1, 0.5, 0.9)
    group = torch.tensor([0, 0, 1, 1, 1])
    out = rrhf_loss(logps, mask, rewards, group, 2)
    # prompt 0: rank 2 (as above), sft = 3 ; prompt 1: rank 4 (three-response example), sft = 3 (best row -3)
    assert_close(out.rank, t(2.0, 4.0))
    assert_close(out.sft, t(3.0, 3.0))
    # each prompt's loss equals its loss computed alone
    alone0 = rrhf_loss(logps[:2], mask[:2], rewards[:2], torch.zeros(2, dtype=torch.long), 1)
    alone1 = rrhf_loss(logps[2:], mask[2:], rewards[2:], torch.zeros(3, dtype=torch.long), 1)
    assert_close(out.loss, torch.cat([alone0.loss, alone1.loss]))


def test_fault_padding_inside_the_sft_mean():
    """Reference fault (#51): SFT was .mean() over the padded row. Best response: 2 tokens (-2, -4) + 3 padding."""
    logps = torch.tensor([[-2.0, -4.0, 0.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    g = torch.zeros(2, dtype=torch.long)
    out = rrhf_loss(logps, mask, t(1.0, 0.0), g, 1, sft_reduction="mean")
    assert_close(out.sft, t(3.0))  # (2 + 4) / 2, not 6 / 5
    out_sum = rrhf_loss(logps, mask, t(1.0, 0.0), g, 1, sft_reduction="sum")
    assert_close(out_sum.sft, t(6.0))  # Eq. 4: summed over the response's tokens


def test_tie_policy_for_the_best_response():
    # rows 0 and 1 share the best reward; nll (mean) = 2 and 4
    logps = torch.tensor([[-2.0], [-4.0], [-8.0]])
    mask = torch.ones(3, 1, dtype=torch.bool)
    rewards, g = t(1.0, 1.0, 0.0), torch.zeros(3, dtype=torch.long)
    assert_close(best_response_weights(rewards, g, 1, "mean"), t(0.5, 0.5, 0.0))
    assert_close(best_response_weights(rewards, g, 1, "first"), t(1.0, 0.0, 0.0))
    assert_close(rrhf_loss(logps, mask, rewards, g, 1, tie_policy="mean").sft, t(3.0))
    assert_close(rrhf_loss(logps, mask, rewards, g, 1, tie_policy="first").sft, t(2.0))
    # "mean" does not depend on row order
    perm = torch.tensor([1, 0, 2])
    assert_close(rrhf_loss(logps[perm], mask, rewards[perm], g, 1, tie_policy="mean").sft, t(3.0))


def test_weights_of_the_two_terms():
    logps = torch.tensor([[-1.0, -1.0], [-3.0, -3.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = rrhf_loss(
        logps, mask, t(0.0, 1.0), torch.zeros(2, dtype=torch.long), 1, rrhf_weight=10.0, sft_weight=0.5
    )
    assert_close(out.loss, t(10.0 * 2.0 + 0.5 * 3.0))


def test_gather_logprobs_matches_log_softmax_and_ignores_masked_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, IGNORE_INDEX, 4], [IGNORE_INDEX, 0, 2]])
    expected = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    expected = expected * (targets != IGNORE_INDEX)
    for chunk in (1, 2, 1024):
        assert_close(gather_logprobs(logits, targets, chunk_rows=chunk), expected)


def test_only_response_tokens_receive_gradient():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 7, requires_grad=True)
    # prompt occupies positions 0-1 (targets ignored), responses then padding
    targets = torch.full((3, 6), IGNORE_INDEX)
    targets[0, 2:5] = torch.tensor([1, 2, 3])
    targets[1, 2:3] = torch.tensor([4])
    targets[2, 2:6] = torch.tensor([5, 6, 0, 1])
    # all rewards tied: the SFT term (tie policy "mean") covers every response, so every response token matters
    out = rrhf_loss(
        gather_logprobs(logits, targets),
        targets != IGNORE_INDEX,
        t(0.5, 0.5, 0.5),
        torch.zeros(3, dtype=torch.long),
        1,
    )
    out.loss.sum().backward()
    grad_per_pos = logits.grad.abs().sum(-1)
    scored = targets != IGNORE_INDEX
    assert torch.all(grad_per_pos[~scored] == 0)
    assert torch.all(grad_per_pos[scored] > 0)


def test_ranking_pairs_counts_agreement():
    p, g = t(-1.0, -2.0, -3.0), torch.zeros(3, dtype=torch.long)
    assert ranking_pairs(p, t(0.1, 0.5, 0.9), g) == (0, 3)
    assert ranking_pairs(p, t(0.9, 0.5, 0.1), g) == (3, 3)
    assert ranking_pairs(p, t(0.9, 0.9, 0.1), g) == (2, 2)  # the tied pair is not counted
    # pairs never cross prompts
    assert ranking_pairs(t(-1.0, -2.0), t(0.0, 1.0), torch.tensor([0, 1])) == (0, 0)


def test_best_worst_rows_pick_first_on_ties_and_flag_equal_prompts():
    from rrhf_core.training.loss import best_worst_rows

    rewards = torch.tensor([0.5, 1.0, 1.0, 0.0, 2.0, 2.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    best, worst, has_pair = best_worst_rows(rewards, group, 2)
    assert best.tolist() == [1, 4] and worst.tolist() == [3, 4] and has_pair.tolist() == [True, False]


def test_simpo_against_hand_derived_values():
    from rrhf_core.training.loss import simpo_loss

    # prompt 0: best row 1 (p=-1.0), worst row 0 (p=-2.0): z = 2 * (1.0) - 1 = 1 -> -log sigmoid(1) = log(1 + e^-1)
    scores = torch.tensor([-2.0, -1.0, -3.0, -3.0])
    rewards = torch.tensor([0.0, 1.0, 5.0, 5.0])
    group = torch.tensor([0, 0, 1, 1])
    out = simpo_loss(scores, rewards, group, 2, beta=2.0, gamma=1.0)
    assert out[0].item() == pytest.approx(math.log(1 + math.exp(-1.0)))
    assert out[1].item() == 0.0  # all-equal rewards: no pair


def test_dpo_against_hand_derived_values():
    from rrhf_core.training.loss import dpo_loss

    # best row 0: policy -10, reference -12 (+2); worst row 1: policy -8, reference -9 (+1); margin 1, beta 0.5
    sums = torch.tensor([-10.0, -8.0])
    ref = torch.tensor([-12.0, -9.0])
    out = dpo_loss(sums, ref, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), 1, beta=0.5)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    # the policy equal to the reference: loss log 2, whatever the log-probabilities
    assert dpo_loss(sums, sums, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), 1).item() == pytest.approx(
        math.log(2)
    )


def test_empty_answer_negative_hand_values():
    """The empty-answer negative (reward -inf, score log P(EOS | x)) only acts once EOS nears a real answer.

    Candidates p = (-1, -2) with rewards (0.9, 0.1) are ordered right: their own pair adds 0.
    log P(EOS | x) = -5: below both, both hinges 0 -> rank 0.
    log P(EOS | x) = -1.5: above candidate 1 by 0.5 -> rank 0.5. At -0.5: 0.5 + 1.5 = 2.
    The SFT target stays the best real candidate (weight 1 on row 0, 0 on the empty row).
    """
    g = torch.zeros(3, dtype=torch.long)
    r = t(0.9, 0.1, float("-inf"))
    assert_close(rank_loss(t(-1.0, -2.0, -5.0), r, g, 1), t(0.0))
    assert_close(rank_loss(t(-1.0, -2.0, -1.5), r, g, 1), t(0.5))
    assert_close(rank_loss(t(-1.0, -2.0, -0.5), r, g, 1), t(2.0))
    assert_close(best_response_weights(r, g, 1), t(1.0, 0.0, 0.0))
    # two prompts: the negatives never pair across prompts or with each other
    g2 = torch.tensor([0, 0, 1, 1])
    r2 = t(1.0, float("-inf"), 0.0, float("-inf"))
    assert_close(rank_loss(t(-2.0, -1.0, -3.0, -4.0), r2, g2, 2), t(1.0, 0.0))


def test_hidden_logprobs_equal_whether_the_head_is_recomputed_or_kept() -> None:
    """Small logits are kept for backward, large ones recomputed: same values and gradients either way, and both
    equal a log-softmax over the full logits (3 rows x 5 tokens, chunks of 2 rows)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 5, bias=False)
    hidden = torch.randn(3, 4)
    targets = torch.tensor([0, 4, 2])
    expected = torch.log_softmax(hidden @ head.weight.T, dim=-1).gather(1, targets[:, None]).squeeze(1)
    grads = []
    for threshold in (0, 10**9):  # 15 logits: above 0 (recompute), below 10**9 (keep)
        h = hidden.clone().requires_grad_(True)
        head.zero_grad()
        out = hidden_logprobs(h, head, targets, chunk_rows=2, recompute_above=threshold)
        assert_close(out, expected)
        out.sum().backward()
        grads.append((h.grad.clone(), head.weight.grad.clone()))
    assert_close(grads[0][0], grads[1][0])
    assert_close(grads[0][1], grads[1][1])
