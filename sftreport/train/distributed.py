"""torchrun support: detect the launch, start and stop the process group, pick the device.

`torchrun --nproc-per-node N -m sftreport run ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
the run is a single process and nothing here starts a process group.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from sftreport.errors import UserError

# A failed rank is reported by torchrun, which stops the others; the timeout is only the last resort
# against a collective that never completes (a rank stuck outside torchrun's view).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def pick_device(requested: str, ctx: DistContext) -> torch.device:
    """auto prefers CUDA, then MPS, then the CPU; under torchrun each process takes its LOCAL_RANK's GPU."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
    if requested == "cuda":
        raise UserError("--device cuda: no CUDA device is available")
    mps = getattr(torch.backends, "mps", None)
    if requested in ("auto", "mps") and mps is not None and mps.is_available() and not ctx.enabled:
        return torch.device("mps")
    if requested == "mps":
        raise UserError("--device mps: MPS is not available (or not usable under torchrun)")
    return torch.device("cpu")


def setup(requested_device: str) -> tuple[DistContext, torch.device]:
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        ctx = DistContext()
        return ctx, pick_device(requested_device, ctx)
    ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    device = pick_device(requested_device, ctx)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, timeout=COLLECTIVE_TIMEOUT, device_id=device if device.type == "cuda" else None
    )
    return ctx, device


def teardown(finished: bool = False) -> None:
    """End the process group. After a run every rank completed (`finished`; never after a failure, which
    may be one rank's alone), the ranks first wait for each other, so that none tears gloo down while rank 0 still renders its reports: a rank that exited early was
    seen to abort ("terminate called without an active exception") in about 1 of 10 test runs here."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            with contextlib.suppress(RuntimeError):  # a peer already gone: nothing left to wait for
                dist.barrier()
        dist.destroy_process_group()


def fully_shard_blocks(model: torch.nn.Module, blocks: list[str]) -> None:
    """Shard the model in place with FSDP2: one unit per block (each all-gathered just before it runs and
    freed after), then the rest at the root. Blocks without parameters are left alone."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6 keeps it under _composable
        from torch.distributed._composable.fsdp import fully_shard
    for name in blocks:
        module = model.get_submodule(name)
        if any(True for _ in module.parameters()):
            fully_shard(module)
    fully_shard(model)


def any_flags(device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Each flag true on every rank if it is true on any rank (a stop decided by one process: a NaN loss,
    Ctrl-C). One all-reduce for all of them; without a process group, the flags as given."""
    if not (dist.is_available() and dist.is_initialized()):
        return tuple(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())
