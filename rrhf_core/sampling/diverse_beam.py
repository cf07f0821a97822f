"""Diverse beam search (Vijayakumar et al., 2016): the paper's DP sampling setting.

transformers 5 moved group beam search out of the library (to a hub repository, unreachable offline), so this is
a compact implementation over any HF causal LM with a KV cache. The beams are split into ``groups``; at every step
the groups choose in turn, and a token already chosen by earlier groups at this step costs ``diversity_penalty``
per use (Hamming diversity), so the groups explore different continuations. Hypotheses end at EOS (their score is
the summed log-probability, penalties included, divided by their length) or at ``max_new_tokens``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache


@torch.no_grad()
def diverse_beam_search(
    model: Any,
    prompt_ids: list[int],
    *,
    num_return: int,
    groups: int,
    diversity_penalty: float,
    max_new_tokens: int,
    eos_id: int,
    bf16: bool = False,
) -> list[tuple[list[int], bool]]:
    """``num_return`` continuations of one prompt, best first: ``(token ids, ended with EOS)``.

    ``num_return`` beams in all, ``num_return // groups`` per group (``num_return`` must be a multiple of ``groups``).
    """
    if num_return % groups:
        raise ValueError(f"k ({num_return}) must be a multiple of num_beam_groups ({groups})")
    per_group = num_return // groups
    n = num_return
    device = next(model.parameters()).device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    cache = DynamicCache()
    with autocast:
        out = model(
            input_ids=torch.tensor([prompt_ids], device=device), past_key_values=cache, use_cache=True
        )
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].float().expand(n, -1)
    # only the first beam of each group is live at the start, so a group's beams do not all pick the same token
    beam_scores = torch.full((n,), float("-inf"), device=device)
    beam_scores[::per_group] = 0.0
    seqs: list[list[int]] = [[] for _ in range(n)]
    finished: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(groups)]
    done = [False] * groups
    for _ in range(max_new_tokens):
        logprobs = torch.log_softmax(logits, dim=-1)  # (n, V)
        used = torch.zeros(logprobs.shape[-1], device=device)
        # slots a group cannot fill (too many EOS candidates) stay dead: score -inf, fed EOS
        next_tokens = torch.full((n,), eos_id, dtype=torch.long, device=device)
        next_rows = torch.arange(n, device=device)
        new_scores = torch.full((n,), float("-inf"), device=device)
        for g in range(groups):
            rows = slice(g * per_group, (g + 1) * per_group)
            cand = beam_scores[rows, None] + logprobs[rows] - diversity_penalty * used[None, :]  # (B, V)
            top_scores, top_idx = cand.view(-1).topk(2 * per_group)
            picked = 0
            for score, idx in zip(top_scores.tolist(), top_idx.tolist(), strict=True):
                beam, token = divmod(idx, cand.shape[-1])
                row = g * per_group + beam
                if token == eos_id:
                    if not done[g] and score > float("-inf"):
                        ids = [*seqs[row], token]
                        finished[g].append((score / len(ids), ids, True))
                    continue
                slot = g * per_group + picked
                next_tokens[slot], next_rows[slot], new_scores[slot] = token, row, score
                used[token] += 1
                picked += 1
                if picked == per_group:
                    break
            if len(finished[g]) >= per_group:
                done[g] = True
        if all(done):
            break
        seqs = [[*seqs[r], t] for r, t in zip(next_rows.tolist(), next_tokens.tolist(), strict=True)]
        beam_scores = new_scores
        cache.reorder_cache(next_rows)
        with autocast:
            out = model(input_ids=next_tokens[:, None], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1].float()
    for g in range(groups):  # groups that did not finish keep their live beams, cut at the length limit
        if not done[g]:
            for row in range(g * per_group, (g + 1) * per_group):
                if beam_scores[row] > float("-inf"):
                    finished[g].append((beam_scores[row].item() / max(len(seqs[row]), 1), seqs[row], False))
    best = [h for g in range(groups) for h in sorted(finished[g], key=lambda h: -h[0])[:per_group]]
    best.sort(key=lambda h: -h[0])
    return [(ids, ended) for _, ids, ended in best[:num_return]]
