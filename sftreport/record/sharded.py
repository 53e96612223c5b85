"""Sharded parameters (FSDP2's `fully_shard`, whose parameters are DTensors): every process measures its
own shards, and the mergeable pieces are combined across processes, so that the statistics are those of
the whole tensors.

- moments (count, mean, M2, min, max, zeros) are gathered and merged with Chan's formula, which is exact
  for any split; a process whose shard of a tensor is empty contributes a row of count 0;
- sums of squares (‖W‖², ‖Wₜ−W₀‖², a step's update, a gradient's) and histogram counts are summed, the
  square root taken only after the sum;
- histogram bins are agreed once, from the global min and max of the pretrained weights.

Without a process group, or when no parameter is a DTensor, every function here is the identity.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from sftreport.record.stats import merge


def _dtensor() -> type | None:
    """torch's DTensor class if anything has imported it (whatever made a DTensor did), else None: importing
    torch.distributed.tensor costs 0.6 s at every start (measured), for runs that are almost never sharded."""
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):  # the latter before torch 2.5
        cls = getattr(sys.modules.get(name), "DTensor", None)
        if isinstance(cls, type):
            return cls
    return None


def _is_dtensor(t: object) -> bool:
    cls = _dtensor()
    return cls is not None and isinstance(t, cls)


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter is sharded (a DTensor under FSDP2)."""
    cls = _dtensor()
    return cls is not None and any(isinstance(p, cls) for p in model.parameters())


def plain_class(module: object) -> type:
    """The class a user wrote: `fully_shard` swaps a module's class for a subclass named FSDP<Name>."""
    cls = type(module)
    if cls.__name__.startswith("FSDP") and any(b.__name__ == "FSDPModule" for b in cls.__mro__):
        cls = next(b for b in cls.__mro__[1:] if b.__name__ != "FSDPModule" and not b.__name__.startswith("FSDP"))
    return cls


def type_name(module: object) -> str:
    return plain_class(module).__name__


def reshard(model: nn.Module) -> None:
    """Put every FSDP unit back into its sharded state. FSDP2 keeps the root's parameters gathered after a
    forward (for the backward it expects next), registered as plain tensors meanwhile: the probes must
    take their references to the parameters while they are the sharded DTensors, which persist."""
    for m in model.modules():
        method = getattr(m, "reshard", None) if type(m).__name__.startswith("FSDP") else None
        if callable(method):
            method()


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (the tensor itself when it is not sharded)."""
    return t.to_local() if _is_dtensor(t) else t  # type: ignore[attr-defined]


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor; for a sharded one a collective that every process must call."""
    return t.full_tensor() if _is_dtensor(t) else t  # type: ignore[attr-defined]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the processes, in place."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def range_across(mins: torch.Tensor, maxs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global min and max of each tensor from every process's own (an empty shard holds +inf, −inf).
    One reduction: the max of −min is −(the min)."""
    if not _active():
        return mins, maxs
    packed = torch.cat([-mins, maxs])
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    n = len(mins)
    return -packed[:n], packed[n:]


def merge_across(rows: torch.Tensor) -> torch.Tensor:
    """(T, 6) moment rows (see stats.MOMENTS) of this process's shards merged with every other process's,
    in rank order: the same result on every process."""
    if not _active():
        return rows
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows.contiguous())
    merged = None
    for part in parts:
        merged = merge(merged, part)
    assert merged is not None
    return merged


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU. Sharded: a collective that every process must call; rank 0
    receives the tensors, the others an empty dict."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def locals_of(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [local(t) for t in tensors]
