"""Batching of encoded listwise examples (:mod:`rrhf_core.encoding` turns examples into token ids): padded rows
per response (:func:`collate`), or prefix-shared blocks (:func:`collate_shared`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from rrhf_core.encoding import EncodedExample
from rrhf_core.training.attention import BlockLayout, build_layout
from rrhf_core.training.loss import IGNORE_INDEX


@dataclass
class Batch:
    """Flattened responses of ``num_groups`` prompts.

    input_ids: ``(N, T)``; attention_mask: ``(N, T)``; targets: ``(N, T)`` where ``targets[n, t]`` is
    the token that position ``t`` predicts (``input_ids[n, t+1]``) on response tokens and
    ``IGNORE_INDEX`` elsewhere; rewards: ``(N,)``; group: ``(N,)`` prompt index.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    rewards: torch.Tensor
    group: torch.Tensor
    num_groups: int
    prompt_ids: list[str]

    @property
    def response_mask(self) -> torch.Tensor:
        return self.targets != IGNORE_INDEX

    def num_tokens(self) -> int:
        return int(self.attention_mask.sum().item())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.targets.to(device),
            self.rewards.to(device),
            self.group.to(device),
            self.num_groups,
            self.prompt_ids,
        )


EMPTY_REWARD = float("-inf")
"""Reward of the empty-answer negative: below every real candidate, by construction."""


def with_empty_negative(example: EncodedExample, eos_id: int) -> EncodedExample:
    """The example plus an empty answer (EOS alone, reward ``-inf``) ranked below all its candidates.

    Its Eq. 1 score is ``log P(EOS | prompt)``; the ranking loss (Eq. 2) then adds ``max(0, log P(EOS | x) - p_i)``
    for every candidate ``i``: zero while an immediate EOS is less likely than the candidates' mean token, a push
    against it once the policy starts to end its answers before they begin. It is never an SFT target.
    """
    return replace(
        example,
        response_ids=[*example.response_ids, [eos_id]],
        rewards=[*example.rewards, EMPTY_REWARD],
    )


def reward_ranks(rewards: Sequence[float]) -> list[float]:
    """Each reward's dense rank among one prompt's ``rewards``, ``(k,) -> (k,)``: 0 for the lowest, equal rewards
    sharing a rank. The losses read rewards only through their order within a prompt (Eq. 2's ``r_i < r_j``, Eq. 3's
    best response), and float32 would merge rewards that differ beyond its 24-bit mantissa (1e8 and 1e8 + 1) or its
    range (1e300 and 1e308 both become inf): the ranks, compared here in float64, keep every order and tie exactly.
    Example: ``[0.5, 1e8 + 1, 1e8, 0.5, -inf] -> [1, 3, 2, 1, 0]``."""
    levels = {r: float(i) for i, r in enumerate(sorted(set(rewards)))}
    return [levels[r] for r in rewards]


def collate(examples: Sequence[EncodedExample], pad_id: int) -> Batch:
    """Right-padded rows for every response of every example (unshared prompt per row)."""
    rows: list[list[int]] = []
    starts: list[int] = []
    rewards: list[float] = []
    group: list[int] = []
    for g, ex in enumerate(examples):
        for resp, reward in zip(ex.response_ids, reward_ranks(ex.rewards), strict=True):
            rows.append(ex.prompt_ids + resp)
            starts.append(len(ex.prompt_ids))
            rewards.append(reward)
            group.append(g)
    n, t = len(rows), max(len(r) for r in rows)
    input_ids = torch.full((n, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, t), dtype=torch.long)
    targets = torch.full((n, t), IGNORE_INDEX, dtype=torch.long)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids = torch.tensor(row, dtype=torch.long)
        input_ids[i, : len(row)] = ids
        attention_mask[i, : len(row)] = 1
        # position p predicts token p+1; response tokens sit at [start, len(row)).
        targets[i, start - 1 : len(row) - 1] = ids[start:]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        targets=targets,
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group=torch.tensor(group, dtype=torch.long),
        num_groups=len(examples),
        prompt_ids=[ex.prompt_id for ex in examples],
    )


@dataclass
class SharedBatch:
    """Prompt-shared packing: each prompt and its k responses in one block ``prompt + r_1 + ... + r_k``.

    Each response attends to the prompt and to its own earlier tokens only, with positions continuing from the
    prompt's end, so it sees exactly what it would see alone; the prompt is encoded once for all k responses
    (``P + kR`` tokens instead of ``k(P + R)``). Blocks sit one per row (rows padded to the longest), or, packed, all
    in one row with no padding at all (positions restart at each prompt).

    input_ids, position_ids: ``(B, L)``; block: ``(B, L)`` the block (prompt index) of each position, -1 for padding;
    part: ``(B, L)`` 0 on a prompt, ``i + 1`` on its response ``i``. ``attention_mask`` builds the ``(B, 1, L, L)``
    bool block mask from them (True = may attend); ``layout`` is the same structure for block attention.
    Scored tokens, flattened over the batch (``M`` of them): ``src_row``, ``src_pos`` (the position whose output
    predicts the token), ``tgt`` (the token) and ``resp`` (its response, ``0..N-1``); rewards, group: ``(N,)``.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    block: torch.Tensor
    part: torch.Tensor
    src_row: torch.Tensor
    src_pos: torch.Tensor
    tgt: torch.Tensor
    resp: torch.Tensor
    rewards: torch.Tensor
    group: torch.Tensor
    num_groups: int
    prompt_ids: list[str]
    real_tokens: int
    layout: BlockLayout

    @property
    def attention_mask(self) -> torch.Tensor:
        """``(B, 1, L, L)`` bool: causal, within a block, a response never seeing another; padding queries attend
        to themselves (no empty softmax rows)."""
        length = self.block.shape[1]
        qb, kb = self.block[:, :, None], self.block[:, None, :]
        qp, kp = self.part[:, :, None], self.part[:, None, :]
        causal = torch.ones(length, length, dtype=torch.bool, device=self.block.device).tril()
        mask = causal & (qb == kb) & (qb >= 0) & ((kp == 0) | (kp == qp))
        mask |= torch.eye(length, dtype=torch.bool, device=self.block.device)
        return mask[:, None]

    def num_tokens(self) -> int:
        return self.real_tokens

    def to(self, device: torch.device | str) -> SharedBatch:
        import dataclasses

        moved: dict[str, Any] = {
            k: (v.to(device) if isinstance(v, (torch.Tensor, BlockLayout)) else v)
            for k, v in self.__dict__.items()
        }
        return dataclasses.replace(self, **moved)


def collate_shared(examples: Sequence[EncodedExample], pad_id: int, pack: bool = False) -> SharedBatch:
    """Each example's prompt and responses as one block (see SharedBatch): one row per block, or all blocks in one
    row (``pack``: no padding; for block attention, where attention cost does not grow with the row)."""
    rows: list[list[int]] = []
    positions: list[list[int]] = []
    blocks: list[list[int]] = []
    parts: list[list[int]] = []
    src_row, src_pos, tgt, resp, rewards, group = [], [], [], [], [], []
    prompt_spans: list[tuple[int, int, int]] = []
    response_spans: list[tuple[int, int, int, int]] = []
    n = 0
    for g, ex in enumerate(examples):
        if not pack or not rows:
            for lists in (rows, positions, blocks, parts):
                lists.append([])
        row = len(rows) - 1
        ids, pos, blk, part = rows[row], positions[row], blocks[row], parts[row]
        p, base = len(ex.prompt_ids), len(ids)
        ids += ex.prompt_ids
        pos += range(p)
        blk += [g] * p
        part += [0] * p
        prompt_spans.append((row, base, p))
        for i, (r, reward) in enumerate(zip(ex.response_ids, reward_ranks(ex.rewards), strict=True)):
            start = len(ids)
            response_spans.append((g, row, start, len(r)))
            ids += r
            pos += range(p, p + len(r))
            blk += [g] * len(r)
            part += [i + 1] * len(r)
            # token j of the response is predicted by the previous position: the prompt's last token for j = 0
            src_row += [row] * len(r)
            src_pos += [base + p - 1, *range(start, start + len(r) - 1)]
            tgt += r
            resp += [n] * len(r)
            rewards.append(reward)
            group.append(g)
            n += 1
    length = max(len(r) for r in rows)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    block_t = torch.full(shape, -1, dtype=torch.long)
    part_t = torch.zeros(shape, dtype=torch.long)
    for i, (ids, pos, blk, part) in enumerate(zip(rows, positions, blocks, parts, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        position_ids[i, : len(pos)] = torch.tensor(pos)
        block_t[i, : len(blk)] = torch.tensor(blk)
        part_t[i, : len(part)] = torch.tensor(part)
    return SharedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        block=block_t,
        part=part_t,
        src_row=torch.tensor(src_row),
        src_pos=torch.tensor(src_pos),
        tgt=torch.tensor(tgt),
        resp=torch.tensor(resp),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group=torch.tensor(group, dtype=torch.long),
        num_groups=len(examples),
        prompt_ids=[ex.prompt_id for ex in examples],
        real_tokens=int((block_t >= 0).sum()),
        layout=build_layout(len(rows), length, prompt_spans, response_spans),
    )
