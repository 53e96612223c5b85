"""Gradients probe: per parameter, the mean and maximum gradient norm over the epoch's sampled steps
and the number of sampled steps whose gradient was not finite.

No hook is installed: the recorder calls `maybe_sample()` after the optimizer step (the gradients are
still there until the next zero_grad); it samples every k-th step and the first step of every epoch. The accumulators stay on the device; the host sees
them once per epoch.
"""
from __future__ import annotations

import torch
from torch import nn

from sftreport.record.stats import FlatBuffer, sum_of_squares_
from sftreport.schema import GradStat


class GradientProbe:
    def __init__(self, model: nn.Module, every: int):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.every = every
        self._steps_seen = 0
        self._flat: FlatBuffer | None = None  # CPU only: the gradients copied for an accurate sum of squares
        self._reset()

    def _reset(self) -> None:
        self._sampled = False  # whether this epoch has had a sample yet
        self._acc: torch.Tensor | None = None  # (T, 4): norm sum, norm max, non-finite count, samples

    def maybe_sample(self, valid: torch.Tensor | None = None) -> None:
        """Sample every k-th step, and always an epoch's first step (so no epoch is left without one).
        `valid` (a boolean tensor, kept on the device): false for a step the optimizer skipped (fp16
        overflow), which then counts nowhere."""
        self._steps_seen += 1
        if (self._steps_seen - 1) % self.every and self._sampled:
            return
        present = [p.grad is not None for p in self.params]
        if not any(present):
            return
        with torch.no_grad():
            norms = self._norms()
            finite = torch.isfinite(norms)
            clean = torch.where(finite, norms, torch.zeros_like(norms))
            weight = torch.ones_like(norms) if valid is None else valid.to(norms.device).float().expand_as(norms)
            row = torch.stack([clean * weight, clean * weight, (~finite).float() * weight, weight], dim=1)
            if self._acc is None:
                self._acc = row
            else:
                self._acc[:, 0] += row[:, 0]
                torch.maximum(self._acc[:, 1], row[:, 1], out=self._acc[:, 1])
                self._acc[:, 2:] += row[:, 2:]
        self._sampled = True

    def _norms(self) -> torch.Tensor:
        """(T,) float32 gradient norms (0 for a parameter without a gradient). CUDA's `_foreach_norm` sums
        in a tree (accurate); on the CPU it accumulates sequentially (2.4e-3 off at 25 M elements), so there
        the gradients are copied into one buffer, squared and summed by the cascade-summing `sum`."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if grads[0].is_cuda:
            return torch.stack(torch._foreach_norm(grads)).float()
        if self._flat is None:
            self._flat = FlatBuffer([p.numel() for p in self.params], self.params[0].device)
        return sum_of_squares_(self._flat.load(grads)).sqrt().float()

    def collect(self) -> list[GradStat]:
        """The epoch's statistics (one host transfer); starts a new epoch."""
        if self._acc is None:
            self._reset()
            return []
        rows = self._acc.tolist()
        self._reset()
        return [GradStat(name=n, module=n.rpartition(".")[0], samples=int(r[3]), norm_sum=r[0], norm_max=r[1],
                         nonfinite=int(r[2])) for n, r in zip(self.names, rows)]
