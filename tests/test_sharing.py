"""Validation batches split between processes (integrations/sharing.py): each batch evaluated once, and for
a sharded model every process running the same number of forward passes."""

from __future__ import annotations

import pytest
import torch

from sftreport.integrations.sharing import RankShare, empty_like_batch


def _batches(n: int, as_dict: bool) -> list:
    out = []
    for i in range(n):
        x, y = torch.full((3, 2, 4), float(i)), torch.full((3,), i)
        out.append({"pixel_values": x, "labels": y} if as_dict else (x, y))
    return out


def _label(batch) -> int | None:
    y = batch["labels"] if isinstance(batch, dict) else batch[1]
    return int(y[0]) if len(y) else None


@pytest.mark.parametrize("as_dict", [False, True])
@pytest.mark.parametrize(("n", "world"), [(5, 2), (1, 2), (6, 3), (2, 4)])
def test_every_batch_once_and_equal_counts_when_sharded(n: int, world: int, as_dict: bool):
    data = _batches(n, as_dict)
    seen = []
    for rank in range(world):
        plain = list(RankShare(data, rank, world))
        equal = list(RankShare(data, rank, world, equal=True))
        assert all(a is b for a, b in zip(equal, plain))  # the same batches first
        assert len(equal) == -(-n // world)  # as many as the process with the most
        for pad in equal[len(plain) :]:  # then empty ones of the same structure
            assert type(pad) is type(data[0]) and _label(pad) is None
            x = pad["pixel_values"] if as_dict else pad[0]
            assert x.shape == (0, 2, 4) and x.dtype == torch.float32
        seen += [_label(b) for b in plain]
    assert sorted(seen) == list(range(n))


def test_empty_like_batch_keeps_what_is_not_a_tensor():
    batch = {"x": torch.ones(2, 3), "meta": "text", "pair": (torch.zeros(2), 7)}
    empty = empty_like_batch(batch)
    assert empty["x"].shape == (0, 3) and empty["meta"] == "text"
    assert empty["pair"][0].shape == (0,) and empty["pair"][1] == 7
