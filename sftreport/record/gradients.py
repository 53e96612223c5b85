"""Gradients probe: per parameter, the mean and maximum gradient norm over the epoch's sampled steps
and the number of sampled steps whose gradient was not finite.

No hook is installed: the recorder calls `maybe_sample()` after the optimizer step (the gradients are
still there until the next zero_grad); it samples every k-th step and the first step of every epoch. A
sample costs two kernels (the norms, stacked); the norms stay on the device and are reduced in batches of
`FOLD` samples and at the epoch end, when the host sees them once.

A sample keeps each gradient's sum of squares; the square root is taken when samples are folded. With
sharded parameters (FSDP2) each process holds the sums of its own shards, and a fold first sums them
over the processes (one all-reduce per `FOLD` samples): the norms are those of the whole gradients, and
every process must call `maybe_sample` and `collect` at the same steps (they do: sampling depends on the
step count only).
"""

from __future__ import annotations

import torch
from torch import nn

from sftreport.record.sharded import is_sharded, local, sum_across
from sftreport.record.stats import RowSums, dense_flat
from sftreport.schema import GradStat

FOLD = 64  # samples kept as rows before they are folded into the epoch's sums (bounded memory)


class GradientProbe:
    def __init__(self, model: nn.Module, every: int, steps_done: int = 0):
        """`steps_done`: optimizer steps taken before this probe (a resumed run's), so that the same steps
        are sampled as in a run never interrupted."""
        self._target(model)
        self.every = every
        self.sharded = is_sharded(model)
        self._steps_seen = steps_done
        self._reset()

    def _target(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._row_sums: RowSums | None = None  # CPU only: how to sum the gradients' squares row by row

    def retarget(self, model: nn.Module) -> None:
        """Sample the parameters that train now (which ones changed: lp-ft's second phase). Between epochs:
        the epoch's samples must all be of one set."""
        if self._rows or self._acc is not None:
            raise RuntimeError("the trainable parameters can change only between epoch_end() and the next step")
        self._target(model)

    def _reset(self) -> None:
        self._sampled = False  # whether this epoch has had a sample yet
        self._rows: list[torch.Tensor] = []  # (T,) float64 sums of squares of each sample not yet folded
        self._valid: list[torch.Tensor | None] = []  # per sample: false for a step the optimizer skipped
        self._acc: torch.Tensor | None = None  # (T, 4): norm sum, norm max, non-finite count, samples

    def maybe_sample(self, valid: torch.Tensor | None = None) -> None:
        """Sample every k-th step, and always an epoch's first step (so no epoch is left without one).
        `valid` (a boolean tensor, kept on the device): false for a step the optimizer skipped (fp16
        overflow), which then counts nowhere."""
        self._steps_seen += 1
        if (self._steps_seen - 1) % self.every and self._sampled:
            return
        if not any(p.grad is not None for p in self.params):
            return
        with torch.no_grad():
            self._rows.append(self._squares())
        self._valid.append(valid)
        self._sampled = True
        if len(self._rows) >= FOLD:
            self._fold()

    def _squares(self) -> torch.Tensor:
        """(T,) float64 Σ g² per gradient (0 for a parameter without one; this process's shard when
        sharded). CUDA's `_foreach_norm` sums in a tree (accurate); on the CPU it accumulates sequentially
        (2.4e-3 off at 25 M elements), so there each gradient is reduced row by row (`RowSums`), read
        where it lies."""
        grads = [local(p.grad) if p.grad is not None else torch.zeros_like(local(p)) for p in self.params]
        if grads[0].is_cuda:
            return torch.stack(torch._foreach_norm(grads)).double().square()
        if self._row_sums is None:
            self._row_sums = RowSums([g.numel() for g in grads], grads[0].device)
        flats = [dense_flat(g) for g in grads]
        return self._row_sums.square_sums(self._row_sums.blocks(flats), self._row_sums.rest(flats))

    @torch.no_grad()
    def _fold(self) -> None:
        """Reduce the pending samples into the (T, 4) accumulator: a few kernels for up to FOLD samples."""
        if not self._rows:
            return
        squares = torch.stack(self._rows)  # (S, T)
        norms = (sum_across(squares) if self.sharded else squares).sqrt()
        weight = torch.stack(
            [torch.ones((), device=norms.device) if v is None else v.to(norms.device).float() for v in self._valid]
        )[:, None].expand_as(norms)  # 1: counts, 0: a skipped step
        finite = torch.isfinite(norms)
        clean = torch.where(finite, norms, torch.zeros_like(norms)) * weight
        part = torch.stack([clean.sum(0), clean.amax(0), ((~finite).float() * weight).sum(0), weight.sum(0)], dim=1)
        if self._acc is None:
            self._acc = part
        else:
            self._acc = torch.stack(
                [
                    self._acc[:, 0] + part[:, 0],
                    torch.maximum(self._acc[:, 1], part[:, 1]),
                    self._acc[:, 2] + part[:, 2],
                    self._acc[:, 3] + part[:, 3],
                ],
                dim=1,
            )
        self._rows, self._valid = [], []

    def collect(self) -> list[GradStat]:
        """The epoch's statistics (one host transfer); starts a new epoch."""
        self._fold()
        if self._acc is None:
            self._reset()
            return []
        rows = self._acc.tolist()
        self._reset()
        return [
            GradStat(
                name=n,
                module=n.rpartition(".")[0],
                samples=int(r[3]),
                norm_sum=r[0],
                norm_max=r[1],
                nonfinite=int(r[2]),
            )
            for n, r in zip(self.names, rows)
        ]


def skipped_by_scaler(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """A device-side flag: did the fp16 GradScaler find inf/NaN gradients (so the step is skipped)? None
    without a scaler. GradScaler has no public accessor for it; older or newer versions fall back to None."""
    if not scaler.is_enabled():
        return None
    try:
        found = scaler._found_inf_per_device(optimizer)
    except (AttributeError, KeyError, RuntimeError):
        return None
    return torch.stack([f.reshape(()) for f in found.values()]).sum() > 0 if found else None
