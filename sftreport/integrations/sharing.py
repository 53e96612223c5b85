"""Validation batches split between the processes of a framework's distributed run.

The recorder's evaluation sums its counts over the processes, so each batch of the user's validation data
must be evaluated by exactly one of them: process `rank` takes every `world`-th batch from the `rank`-th.
Each process still reads every batch and skips the others' (the user's DataLoader is used as given).

A sharded model (FSDP) needs more: its forward is a collective that every process must join, so with
`equal=True` a process that got fewer batches than another ends with empty ones (each tensor of the batch
cut to 0 rows), until all have run the same number of forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch


def empty_like_batch(batch: Any) -> Any:
    """The batch with every tensor in it cut to 0 rows (same structure, shapes and dtypes otherwise)."""
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, dict):
        return {k: empty_like_batch(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(empty_like_batch(v) for v in batch)
    return batch


class RankShare:
    def __init__(self, data: Iterable, rank: int, world: int, equal: bool = False):
        self.data, self.rank, self.world, self.equal = data, rank, world, equal
        self.dataset = getattr(data, "dataset", None)  # its size, for run.json

    def __iter__(self) -> Iterator[Any]:
        taken, last = 0, None
        for i, batch in enumerate(self.data):
            if i % self.world == self.rank:
                taken, last = taken + 1, batch
                yield batch
        if not self.equal:
            return
        most = math.ceil(len(self.data) / self.world)  # type: ignore[arg-type]
        if taken < most and last is None:  # none of this process's own: any batch tells the structure
            last = next(iter(self.data))
        for _ in range(most - taken):
            yield empty_like_batch(last)
