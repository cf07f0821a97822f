"""The reference implementation's training step, and this project's, on synthetic HH-shaped batches.

:func:`reference_step` is the reference code's computation (every query + response row padded, the full-vocabulary
log-softmax), kept as the oracle: equivalence checks (:func:`prefix_sharing`, the tests) compare this project's step
(:func:`project_step`: each prompt once, block attention, scored positions only) with it, and the training-step
benchmark (``benchmarks/train_step.py``, ``rrhf bench train-step``) times both. ``random:<shape>`` models
(:data:`RANDOM_SHAPES`) need no weights, tokenizer or network.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rrhf_core.errors import ConfigError

Example = tuple[list[int], list[list[int]], list[float]]  # (prompt ids, k response ids, k rewards)


def hh_shaped(k: int, vocab: int, seed: int) -> Example:
    """One HH-shaped example: a 120-180 token prompt and k responses of 40-80 tokens, random ids and rewards."""
    g = torch.Generator().manual_seed(seed)
    p = int(torch.randint(120, 181, (1,), generator=g))
    prompt = torch.randint(3, vocab, (p,), generator=g).tolist()
    responses = [
        torch.randint(3, vocab, (int(torch.randint(40, 81, (1,), generator=g)),), generator=g).tolist()
        for _ in range(k)
    ]
    rewards = torch.randn(k, generator=g).tolist()
    return prompt, responses, rewards


def hh_batch(prompts: int, k: int, vocab: int, seed: int) -> list[Example]:
    """A micro-batch of ``prompts`` HH-shaped examples (seeds ``seed * 1000 + i``)."""
    return [hh_shaped(k, vocab, seed * 1000 + i) for i in range(prompts)]


def reference_step(
    model: Any,
    examples: list[Example],
    pad: int,
    device: torch.device,
    bf16: bool,
    record: list[Any] | None = None,
) -> int:
    """The reference code's computation: k padded (query + response) rows per prompt, full log_softmax. ``record``
    receives the loss output (scores included), for equivalence checks. Returns the token positions processed."""
    from rrhf_core.training.loss import rrhf_loss

    rows, starts, group, rewards = [], [], [], []
    for g, (prompt, responses, rs) in enumerate(examples):
        rows += [prompt + r for r in responses]
        starts += [len(prompt)] * len(responses)
        group += [g] * len(responses)
        rewards += rs
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, start : len(row)] = True
    ids, mask = ids.to(device), mask.to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=(ids != pad).long(), use_cache=False).logits
    logp = torch.log_softmax(logits.float(), dim=-1)  # (k, T, V): the memory the reference's users ran out of
    token_logps = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = rrhf_loss(
        token_logps,
        mask[:, 1:],
        torch.tensor(rewards, device=device),
        torch.tensor(group, dtype=torch.long, device=device),
        len(examples),
    )
    out.loss.sum().backward()
    if record is not None:
        record.append(out)
    return int(ids.numel())


def project_step(
    scorer: Any,
    examples: list[Example],
    pad: int,
    device: torch.device,
    bf16: bool,
    record: list[Any] | None = None,
) -> int:
    """This project's step: each prompt once for its k responses (block attention, the blocks packed into one row;
    with the block mask over one row per prompt where the scorer is not blocked), scored positions' log-probs
    only."""
    from rrhf_core.encoding import EncodedExample
    from rrhf_core.training.collate import collate_shared
    from rrhf_core.training.loss import rrhf_loss_from_sums, segment_logprobs

    batch = collate_shared(
        [EncodedExample(f"b{g}", p, r, rs) for g, (p, r, rs) in enumerate(examples)],
        pad,
        # one row, no padding, where attention follows the blocks (``module``: under DDP)
        pack=getattr(getattr(scorer, "module", scorer), "blocked", False),
    ).to(device)
    n = sum(len(r) for _, r, _ in examples)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        token_logps = scorer(batch)
    sums, lengths = segment_logprobs(token_logps, batch.resp, n)
    out = rrhf_loss_from_sums(sums, lengths, batch.rewards, batch.group, len(examples))
    out.loss.sum().backward()
    if record is not None:
        record.append(out)
    return int(batch.input_ids.numel())


def strategy_step(strategy: str, shape: str, k: int, bf16: bool, steps: int = 2) -> dict[str, Any]:
    """``steps`` optimizer steps of the prefix-shared RRHF step under DDP or FSDP in this process (a process group
    of one is made when none exists): the losses, the step time and the peak memory. The same seeded model and
    batch for both strategies, so their losses can be compared."""
    from torch.nn.parallel import DistributedDataParallel

    from rrhf_core.training.distributed import init_distributed
    from rrhf_core.training.prefix import PrefixSharedLM
    from rrhf_core.training.sharding import shard

    device = init_distributed(group_of_one=True).device
    model, vocab, pad = random_model(shape, device)
    scorer: Any = PrefixSharedLM(model.train())
    if strategy == "fsdp":
        scorer = shard(scorer, bf16, device)
    else:
        scorer = DistributedDataParallel(
            scorer, device_ids=[device.index or 0] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=1e-5)
    examples = [hh_shaped(k, vocab, seed=0)]
    losses: list[float] = []
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        record: list[Any] = []
        t0 = time.perf_counter()
        project_step(scorer, examples, pad, device, bf16, record=record)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(record[0].loss.detach().sum()))
    return {
        "strategy": strategy,
        "shape": shape,
        "k": k,
        "bf16": bf16,
        "losses": losses,
        "step_s": times[1:] or times,  # the first step includes one-time set-up
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


# Llama shapes for random-initialised benchmarks: SmolLM2-135M's and Llama-3.2-1B's (hidden, intermediate, layers,
# heads, kv heads, vocabulary; tied embeddings)
RANDOM_SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),
    "llama-1b": (2048, 8192, 16, 32, 8, 128256),
    "tiny": (64, 128, 2, 4, 2, 1024),  # for testing the benchmark code itself on a CPU
}


def random_config(shape: str) -> Any:
    """The ``LlamaConfig`` of ``random:<shape>``."""
    from transformers import LlamaConfig

    if shape not in RANDOM_SHAPES:
        raise ConfigError(
            f"unknown random shape {shape!r} (--model random:{shape}); known: "
            + ", ".join(f"random:{s}" for s in RANDOM_SHAPES)
        )
    hidden, inter, layers, heads, kv, vocab = RANDOM_SHAPES[shape]
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        pad_token_id=0,
    )


def random_model(shape: str, device: torch.device | None = None) -> tuple[Any, int, int]:
    """``(model, vocabulary size, pad id)`` for ``random:<shape>``: a Llama of that shape, seeded, fp32, built
    directly on ``device`` (a 1B model's random initialisation takes many seconds on a CPU, a fraction on a GPU)."""
    from transformers import LlamaForCausalLM

    config = random_config(shape)
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        model = LlamaForCausalLM(config)
    return model, config.vocab_size, 0


def prefix_sharing(k: int, attn: str, shape: str = "smollm2-135m") -> dict[str, Any]:
    """The two steps (``reference_step``: k padded rows, full log-softmax; ``project_step``: prompt
    once, block attention) on one HH-shaped batch in bf16 autocast, the model in eval mode (no dropout): their RRHF losses
    and gradients must agree to bf16 precision."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, vocab, pad = random_model(shape, device)
    model.config._attn_implementation = attn
    model = model.eval()
    examples = [hh_shaped(k, vocab, seed=0)]
    from rrhf_core.training.prefix import PrefixSharedLM

    results = {}
    for name, step, scorer in (
        ("plain", reference_step, model),
        ("shared", project_step, PrefixSharedLM(model)),
    ):
        model.zero_grad(set_to_none=True)
        losses: list[Any] = []
        step(scorer, examples, pad, device, True, record=losses)
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        results[name] = (losses[0], grads)
    (l1, g1), (l2, g2) = results["plain"], results["shared"]
    return {
        "attention": attn,
        "k": k,
        "max_abs_score_diff": float((l1.scores.detach().float() - l2.scores.detach().float()).abs().max()),
        "abs_loss_diff": float((l1.loss.detach().sum().float() - l2.loss.detach().sum().float()).abs()),
        "grad_rel_diff": float((g1 - g2).norm() / g1.norm().clamp_min(1e-12)),
    }
