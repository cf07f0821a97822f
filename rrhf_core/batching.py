"""Length-grouped batches: one helper for every stage that runs items of mixed length in padded batches."""

from __future__ import annotations

from collections.abc import Sequence


def length_batches(lengths: Sequence[int], batch_size: int, by_length: bool = True) -> list[list[int]]:
    """Item indices in batches of ``batch_size``: sorted by length when ``by_length`` (stable: equal lengths keep
    their order), so a batch pads to little more than its own items; else in order. Callers put each result back at
    its index, so their output keeps the input's order."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__) if by_length else list(range(len(lengths)))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
