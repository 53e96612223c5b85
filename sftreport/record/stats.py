"""Batched statistics of many tensors at once: exact moments and exact fixed-bin histograms in a few
large ops.

The probes never loop over tensors calling `.item()`: they pack the tensors into one flat buffer with a
view per tensor, run a handful of whole-buffer (or `torch._foreach_*`) ops on the device, and move the
results to the host in one transfer.

Exact where models are hard:
- moments are taken around a shift close to each tensor's mean (its float32 mean, clamped into its
  range), so the centred sum of squares M2 keeps the variance of a tensor whose mean is far larger than
  its spread (a LayerNorm weight of mean 1 and std 1e-6); the host receives count, mean and M2, and
  merges them across chunks or shards with Chan's formula (`merge`);
- histogram bins have a width m·2^e (m in 8..15, or fewer cells for bins a few float32 steps wide)
  and start at a multiple of 2^e, so every edge is a float32 number and a value's bin is found with operations that do not round: x·2^-e (a power of two),
  floor, integer subtraction, division of small integers by m, floor. A value exactly on an edge lands in
  the bin that starts there, for any number of tensors (the tensor's offset is added to integers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sftreport.schema import Histogram, TensorStats

MOMENTS = ("count", "mean", "m2", "min", "max", "zeros")  # the columns of a moments row
CELLS = range(8, 16)  # fine-grid cells per bin: bin widths step by at most 1/8 between candidates


class FlatBuffer:
    """A float32 buffer holding a copy of a fixed list of tensors, with one flat view per tensor."""

    def __init__(self, numels: list[int], device: torch.device):
        self.numels = numels
        self.buf = torch.empty(sum(numels), dtype=torch.float32, device=device)
        self.views = list(self.buf.split(numels))
        self.lengths = torch.tensor(numels, device=device)
        self._ints: torch.Tensor | None = None  # int32 twin for histogram bin indices, allocated once

    def ints(self) -> torch.Tensor:
        # Persistent: a fresh 100 MB allocation per epoch costs more in page faults than the conversion.
        if self._ints is None:
            self._ints = torch.empty_like(self.buf, dtype=torch.int32)
        return self._ints

    def load(self, tensors: Sequence[torch.Tensor]) -> FlatBuffer:
        # copy_ into a shaped view converts any memory format (channels_last) without a temporary copy
        torch._foreach_copy_([v.view(t.shape) for v, t in zip(self.views, tensors)], [t.detach() for t in tensors])
        return self


# --------------------------------------------------------------------------- moments


def sum_of_squares_(flat: FlatBuffer) -> torch.Tensor:
    """(T,) float64 Σx² per view, squaring the buffer in place. Summed by `sum`, which adds in a cascade on
    the CPU and in a tree on CUDA: float32 error near 1e-7 at any size. (The CPU's norm kernels accumulate
    sequentially: `_foreach_norm` and `vector_norm` were 2.4e-3 off on a 25 M-element tensor, measured.)"""
    flat.buf.square_()
    return torch.stack([v.sum() for v in flat.views]).double()


def _shift(sums: torch.Tensor, counts: torch.Tensor, mins: torch.Tensor, maxs: torch.Tensor) -> torch.Tensor:
    """A float32 value close to each mean to centre on: the float32 mean, clamped into [min, max], and a
    constant tensor's own value (so its M2 is exactly 0)."""
    shift = torch.minimum(torch.maximum(sums / counts, mins), maxs)
    return torch.where(mins == maxs, mins, shift)


def _centred(
    shift: torch.Tensor, counts: torch.Tensor, dsum: torch.Tensor, dsq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and M2 in float64 from the sums of d = x − shift and of d²."""
    n, dsum = counts.double(), dsum.double()
    return shift.double() + dsum / n, (dsq.double() - dsum * dsum / n).clamp_min(0)


def moments(flat: FlatBuffer, scratch: FlatBuffer) -> torch.Tensor:
    """(T, 6) float64 on the device, one row per view: count, mean, M2, min, max, zeros (see MOMENTS).
    `scratch` (same layout) is overwritten with the centred values."""
    views = flat.views
    # Per-view reductions are one small kernel each and never sync with the host; measured on resnet50
    # (161 tensors) they beat segment_reduce and the 0-norm for sums and zero counts.
    mins, maxs = (torch.stack(t) for t in zip(*(aminmax_or_empty(v) for v in views)))
    counts = flat.lengths.float()
    shift = _shift(torch.stack([v.sum() for v in views]), counts, mins, maxs)
    for v, d, k in zip(views, scratch.views, shift):
        torch.sub(v, k, out=d)
    dsum = torch.stack([d.sum() for d in scratch.views])
    mean, m2 = _centred(shift, flat.lengths, dsum, sum_of_squares_(scratch))
    nonzero = torch.stack([torch.count_nonzero(v) for v in views])
    count = flat.lengths.double()
    if 0 in flat.numels:  # an empty shard (FSDP): count 0, mean and M2 0, so that merging it changes nothing
        empty = count == 0
        mean, m2 = mean.masked_fill(empty, 0.0), m2.masked_fill(empty, 0.0)
    return torch.stack([count, mean, m2, mins.double(), maxs.double(), count - nonzero.double()], dim=1)


def aminmax_or_empty(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max of a tensor; +inf and −inf for an empty one (a process's empty shard of a small tensor)."""
    if v.numel():
        return torch.aminmax(v)
    return v.new_full((), float("inf")), v.new_full((), float("-inf"))


def tensor_moments(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """One moments row (6,) float64 of a whole tensor (any shape or memory layout), on its device.
    `scratch`, a float32 tensor of x's shape, holds the centred copy (allocated when not given)."""
    n = x.numel()
    lo, hi = torch.aminmax(x)
    count = x.new_full((), float(n), dtype=torch.float64)  # float64: exact for any realistic count
    shift = _shift(x.sum(), count.float(), lo, hi)
    d = torch.sub(x, shift, out=scratch) if scratch is not None else x - shift
    dsum = d.sum()
    mean, m2 = _centred(shift, count, dsum, d.square_().sum().double())
    zeros = count - torch.count_nonzero(x).double()
    return torch.stack([count, mean, m2, lo.double(), hi.double(), zeros])


def merge(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """Merge two (..., 6) moment rows exactly: counts and zeros add, min and max combine, mean and M2 by
    Chan's formula (the same as `TensorStats.merge`, on the device)."""
    if a is None:
        return b
    na, nb = a[..., 0], b[..., 0]
    n = na + nb
    delta = b[..., 1] - a[..., 1]
    w = torch.where(n > 0, nb / n, torch.zeros_like(n))
    out = torch.empty_like(a)
    out[..., 0] = n
    out[..., 1] = a[..., 1] + delta * w
    out[..., 2] = a[..., 2] + b[..., 2] + delta * delta * na * w
    out[..., 3] = torch.minimum(a[..., 3], b[..., 3])
    out[..., 4] = torch.maximum(a[..., 4], b[..., 4])
    out[..., 5] = a[..., 5] + b[..., 5]
    return out


def stats_from_rows(rows: list[list[float]]) -> list[TensorStats]:
    return [
        TensorStats(count=int(c), mean=mean, m2=m2, min=lo, max=hi, zeros=int(z)) for c, mean, m2, lo, hi, z in rows
    ]


# --------------------------------------------------------------------------- histograms


@dataclass(frozen=True)
class BinGrid:
    """One tensor's bins: `bins` bins of `cells` fine cells of width 2^`exp`, the first starting at
    `start`·2^`exp`. Every edge, (start + k·cells)·2^exp, is exactly representable in float32."""

    exp: int
    cells: int
    start: int
    bins: int

    @property
    def lo(self) -> float:
        return math.ldexp(self.start, self.exp)

    @property
    def hi(self) -> float:
        return math.ldexp(self.start + self.bins * self.cells, self.exp)

    @property
    def scale(self) -> float:
        return math.ldexp(1.0, -self.exp)

    @classmethod
    def covering(cls, a: float, b: float, bins: int) -> BinGrid:
        """The narrowest grid whose [lo, hi) holds [a, b]. Fine cells are no narrower than 2 float32 spacings
        at the range's magnitude (finer bins could not hold distinct values), which keeps |start| < 2^23 so
        that every index `bin_positions` computes is an exact float32 integer; at that floor a bin may hold
        fewer than 8 cells."""
        span = b - a
        biggest = max(abs(a), abs(b), 1e-30)
        min_exp = max(math.frexp(biggest)[1] - 23, -120)  # 2^min_exp = 2 float32 spacings at `biggest`
        exp = max(min_exp, math.frexp(span / (bins * CELLS[-1]))[1] - 2) if span > 0 else min_exp
        while True:
            unit = math.ldexp(1.0, exp)
            start = math.floor(a / unit)
            for cells in range(1, CELLS[-1] + 1) if exp == min_exp else CELLS:
                if math.ldexp(start + bins * cells, exp) > b:
                    return cls(exp, cells, start, bins)
            exp += 1


@dataclass
class BinSpec:
    """Fixed bins per tensor, exact (see BinGrid), plus a below and an above bin."""

    grids: list[BinGrid]
    bins: int

    @property
    def lo(self) -> list[float]:
        return [g.lo for g in self.grids]

    @property
    def hi(self) -> list[float]:
        return [g.hi for g in self.grids]

    @classmethod
    def around(cls, mins: list[float], maxs: list[float], bins: int, margin: float = 0.1) -> BinSpec:
        """Bins spanning each tensor's range widened by `margin` on both sides (values drift later)."""
        grids = []
        for a, b in zip(mins, maxs):
            if not (math.isfinite(a) and math.isfinite(b)):
                a, b = -1.0, 1.0  # a non-finite reference: any fixed range is as good as another
            pad = (b - a) * margin
            if pad <= 1e-12 * max(abs(a), abs(b), 1.0):
                pad = max(abs(a) * 0.5, 1e-3)
            grids.append(BinGrid.covering(a - pad, b + pad, bins))
        return cls(grids, bins)

    def histograms(self, counts: list[list[int]]) -> list[Histogram]:
        return [Histogram.from_counts(g.lo, g.hi, c) for g, c in zip(self.grids, counts)]


def bin_positions(x: torch.Tensor, out: torch.Tensor, grid: BinGrid, offset: int = 0) -> torch.Tensor:
    """`out` (float32, x's shape) = offset + 1 + the bin of each value of x, exactly, as an integer-valued
    float; not yet clamped (values outside the grid fall outside [offset + 1, offset + bins])."""
    torch.mul(x, grid.scale, out=out)  # a power of two: exact
    out.floor_()  # the fine cell: exact
    # cells from the grid's start, shifted so that the bin index comes out offset + 1 + bin; all integers
    # below 2^24, so the subtraction is exact, and floor(n / m) of small integers is exact too
    out.sub_(float(grid.start - grid.cells * (offset + 1))).div_(float(grid.cells))
    return out.floor_()


def histogram_counts(
    source: FlatBuffer,
    scratch: FlatBuffer,
    spec: BinSpec,
    mins: list[float] | None = None,
    maxs: list[float] | None = None,
) -> torch.Tensor:
    """(T, bins+2) int64 counts of `source`'s views; column 0 counts values below lo, column bins+1 values at
    or above hi. `scratch` (same layout) is overwritten; `source` is not. NaNs fall in no bin.

    Each view's bins are numbered from `tensor_index * (bins + 2)`, and one bincount over the whole buffer
    counts every histogram. When the caller knows each tensor's min and max (it computed the moments
    already), only the tensors that leave their range are clamped and the NaN pass runs only if
    something is not finite."""
    t, width = len(source.views), spec.bins + 2
    # bin_positions divides integers below 2^22 by `cells` and floors the quotient: exact while the quotient
    # (offset + bin) stays below 2^18, so very large models are counted in groups of tensors
    group = max(1, (1 << 18) // width)
    if t > group:
        parts = []
        for start in range(0, t, group):
            sub = slice(start, start + group)
            parts.append(
                _group_counts(
                    source.views[sub],
                    scratch.views[sub],
                    scratch,
                    spec.grids[sub],
                    spec.bins,
                    mins[sub] if mins is not None else None,
                    maxs[sub] if maxs is not None else None,
                )
            )
        return torch.cat(parts)
    return _group_counts(source.views, scratch.views, scratch, spec.grids, spec.bins, mins, maxs)


def _group_counts(
    sources: list[torch.Tensor],
    outs: list[torch.Tensor],
    scratch: FlatBuffer,
    grids: list[BinGrid],
    bins: int,
    mins: list[float] | None,
    maxs: list[float] | None,
) -> torch.Tensor:
    t, width = len(sources), bins + 2
    for i, (src, dst, grid) in enumerate(zip(sources, outs, grids)):
        bin_positions(src, dst, grid, offset=i * width)
    # a tensor whose known min and max lie inside its grid needs no clamping; without them, every one does
    finite, inside = False, [False] * len(grids)
    if mins is not None and maxs is not None and all(math.isfinite(v) for v in (*mins, *maxs)):
        finite, inside = True, [lo >= grid.lo and hi < grid.hi for lo, hi, grid in zip(mins, maxs, grids)]
    for i, (view, ok) in enumerate(zip(outs, inside)):
        if not ok:
            view.clamp_(float(i * width), float(i * width + width - 1))
    first, last = outs[0], outs[-1]
    flat = scratch.buf[
        first.storage_offset() - scratch.buf.storage_offset() : last.storage_offset()
        - scratch.buf.storage_offset()
        + last.numel()
    ]
    if flat.is_cuda if USE_HISTC is None else USE_HISTC:
        return count_positions(flat, t * width, histc=True).view(t, width)
    if not finite:
        flat.nan_to_num_(nan=float(t * width))  # NaN -> one spare bin past the end, dropped below
    idx = scratch.ints()[: flat.numel()]
    idx.copy_(flat)  # integer-valued floats: the conversion is exact
    return count_bins(idx, t * width + 1)[: t * width].view(t, width)


def dense_flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of every element of a dense tensor in any memory layout (channels_last too), in memory
    order: counting does not care about the order, and no copy is made."""
    strides = t.stride()
    order = sorted(range(t.dim()), key=lambda d: -strides[d])
    return t.permute(order).reshape(-1) if t.dim() else t.reshape(1)


USE_HISTC: bool | None = None  # None: histc on CUDA, bincount on the CPU (tests set True: the CUDA route on a CPU)
HISTC_CHUNK = 1 << 24  # float32 counts are exact up to 2^24 per bin: count at most this many values per call


def count_positions(pos: torch.Tensor, n: int, histc: bool | None = None, chunk: int = HISTC_CHUNK) -> torch.Tensor:
    """int64 counts of the values 0..n-1 of `pos`, integer-valued floats already clamped into [0, n-1] (NaN
    counts nowhere); `pos` may be overwritten.

    On CUDA: histc over chunks of 2^24 values, which counts in shared memory, skips NaN by itself, and
    needs neither an integer copy nor a host sync (bin edges at k ± 0.5: each integer lands in its own
    bin whatever the rounding). On the CPU: the integers and one bincount, NaN sent to a spare bin."""
    flat = dense_flat(pos)
    if flat.is_cuda if histc is None else histc:
        counts = torch.zeros(n, dtype=torch.int64, device=flat.device)
        for part in flat.split(chunk):
            counts += torch.histc(part, bins=n, min=-0.5, max=n - 0.5).long()
        return counts
    flat.nan_to_num_(nan=float(n))
    return count_bins(flat.to(torch.int32), n + 1)[:n]


INDEX_ADD_MAX = 1 << 16  # CUDA: inputs up to this size are counted with index_add_ (no host sync)


def count_bins(idx: torch.Tensor, n: int, index_add: bool | None = None) -> torch.Tensor:
    """int64 counts of the integer values 0..n-1 in `idx` (any shape, int32 or int64).

    bincount everywhere except for small inputs on CUDA: there bincount reads the input's maximum back to
    the host (a sync per call), so a batch's confusion cells are added with index_add_ instead. Large inputs
    go to bincount, which counts in per-block shared memory; index_add_'s atomics on a few dozen bins
    serialise (0.87 s for resnet50's probe pass on an H200, measured). Histogram positions on CUDA are
    counted by `count_positions` instead, with no sync at all."""
    idx = idx.reshape(-1)
    if index_add is None:
        index_add = idx.is_cuda and idx.numel() <= INDEX_ADD_MAX
    if not index_add:
        return (
            torch.bincount(idx, minlength=n)[:n]
            if idx.numel()
            else torch.zeros(n, dtype=torch.int64, device=idx.device)
        )
    counts = torch.zeros(n, dtype=torch.int64, device=idx.device)
    return counts.index_add_(0, idx, torch.ones((), dtype=torch.int64, device=idx.device).expand(idx.numel()))
