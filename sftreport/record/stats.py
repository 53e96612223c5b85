"""Batched statistics of many tensors at once: exact moments and exact fixed-bin histograms in a few
large ops.

The probes never loop over tensors calling `.item()`: they pack the tensors into one flat buffer with a
view per tensor, run a handful of whole-buffer (or `torch._foreach_*`) ops on the device, and move the
results to the host in one transfer.

Exact where models are hard:
- a tensor whose mean is far larger than its spread (a LayerNorm weight of mean 1 and std 1e-6) has its
  moments taken around a shift close to its mean (its float32 mean, clamped into its range), so the
  centred sum of squares M2 keeps its variance; the others, whose Σx² − (Σx)²/n cancels little, skip
  that pass (see `moments`). The host receives count, mean and M2, and merges them across chunks or
  shards with Chan's formula (`merge`);
- histogram bins have a width m·2^e (m in 8..15, or fewer cells for bins a few float32 steps wide)
  and start at a multiple of 2^e, so every edge is a float32 number and a value's fine cell of width 2^e
  is found with operations that do not round: x·2^-e (a power of two), floor, integer subtraction. The
  fine cells are counted and added into bins (m cells each) afterwards. A value exactly on an edge lands
  in the bin that starts there, for any number of tensors (the tensor's offset is added to integers);
- sums of squares are reduced row by row (`RowSums`), never by one float32 accumulator running over a
  whole tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
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
        self._row_sums: dict[tuple[int, ...], RowSums] = {}
        self._blocks: list[torch.Tensor] | None = None

    def load(self, tensors: Sequence[torch.Tensor]) -> FlatBuffer:
        # copy_ into a shaped view converts any memory format (channels_last) without a temporary copy
        torch._foreach_copy_([v.view(t.shape) for v, t in zip(self.views, tensors)], [t.detach() for t in tensors])
        return self

    def row_sums(self, which: Sequence[int]) -> RowSums:
        """How to sum the views `which` (or the same views of a buffer of the same layout); kept, since
        the same views are asked for at every epoch."""
        key = tuple(which)
        if key not in self._row_sums:
            if len(self._row_sums) > 2:  # all views, and the latest few choices of some: enough
                self._row_sums.clear()
            starts = [v.storage_offset() - self.buf.storage_offset() for v in self.views]
            self._row_sums[key] = RowSums([self.numels[i] for i in key], self.buf.device, [starts[i] for i in key])
        return self._row_sums[key]

    def row_sums_of_all(self) -> RowSums:
        return self.row_sums(range(len(self.views)))

    def blocks(self) -> list[torch.Tensor]:
        """The views' row blocks (see RowSums.blocks): views of the buffer, made once."""
        if self._blocks is None:
            self._blocks = self.row_sums_of_all().blocks(self.views)
        return self._blocks

    def sums(self) -> torch.Tensor:
        """(T,) float64 Σx per view."""
        plan = self.row_sums_of_all()
        return plan.sums(self.blocks(), plan.rest(self.views, self.buf))

    def square_sums(self, minus: FlatBuffer | None = None) -> torch.Tensor:
        """(T,) float64 Σx² per view, or Σ(x − y)² with y the same place in `minus` (same layout)."""
        plan = self.row_sums_of_all()
        rest = plan.rest(self.views, self.buf)
        if minus is None:
            return plan.square_sums(self.blocks(), rest)
        return plan.square_sums(self.blocks(), rest, minus.blocks(), plan.rest(minus.views, minus.buf))


ROW = 256  # values per row of a row-wise reduction (see RowSums)
ROWS_FROM = 64 * ROW  # a tensor this large is reduced row by row; a smaller one value by value in float64


class RowSums:
    """Per-tensor Σx, Σx² or Σ(x − y)² of a fixed list of 1-D tensors, in float64, in a few ops and with no
    full-size temporary.

    Each large tensor's whole rows of ROW values (its block) are reduced row by row in float32 (`sum`;
    `vector_norm` and `cdist`, whose vector lanes add 16 values each), and the row results and the values
    left over (the tails, and the tensors below ROWS_FROM values, whose few rows would not average their
    rounding out) are added per tensor in float64. A float32 accumulator never runs over more than a row:
    relative error near 1e-9 on random values and at most about 4e-7 on a constant tensor (every row
    rounds alike), as good as a float32 cascade over the whole tensor, where the CPU's whole-tensor norm
    kernels were 2.4e-3 off at 25 M values. Squares and differences need no pass that writes: one read of
    each buffer, where squaring in place and reading again took three."""

    def __init__(self, numels: Sequence[int], device: torch.device, starts: Sequence[int] | None = None):
        """`starts`: where each tensor begins in a buffer they are all views of (a FlatBuffer's), so that the
        values left over are gathered from it in one op."""
        self.whole = [n - n % ROW if n >= ROWS_FROM else 0 for n in numels]
        self.count = len(numels)
        index = torch.arange(self.count)
        rows = torch.tensor([w // ROW for w in self.whole], dtype=torch.long)
        rest = torch.tensor([n - w for n, w in zip(numels, self.whole)], dtype=torch.long)
        # the tensor each reduced value adds to: every row first, then every value left over
        self.owner = torch.cat([index.repeat_interleave(rows), index.repeat_interleave(rest)]).to(device)
        self.device = device
        self.rest_at: torch.Tensor | None = None
        if starts is not None:
            spans = [torch.arange(s + w, s + n) for s, n, w in zip(starts, numels, self.whole)]
            self.rest_at = torch.cat([torch.zeros(0, dtype=torch.long), *spans]).to(device)

    def blocks(self, flats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """(rows, 1, ROW) views of the whole rows of each of `flats` that has any: 1-D tensors of the sizes
        given, whose slices `view` can reshape (any floating dtype: taken as float32, as a FlatBuffer
        holds them)."""
        return [f[:w].view(-1, 1, ROW) for f, w in zip(_float32(flats), self.whole) if w]

    def rest(self, flats: Sequence[torch.Tensor], base: torch.Tensor | None = None) -> torch.Tensor:
        """The values left over, in order: gathered in one op from `base`, the float32 buffer `flats` are
        views of, when the plan knows where."""
        if base is not None and self.rest_at is not None:
            return base.index_select(0, self.rest_at)
        return torch.cat([f[w:] for f, w in zip(_float32(flats), self.whole)])

    def sums(self, blocks: list[torch.Tensor], rest: torch.Tensor) -> torch.Tensor:
        """(T,) Σx of each tensor, from its blocks and the values left over."""
        return self._add([b.sum(-1) for b in blocks], rest)

    def square_sums(
        self,
        blocks: list[torch.Tensor],
        rest: torch.Tensor,
        minus_blocks: list[torch.Tensor] | None = None,
        minus_rest: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(T,) Σx² of each tensor, or Σ(x − y)² with y the same place in the `minus` blocks and values."""
        if minus_blocks is None or minus_rest is None:
            norms = [torch.linalg.vector_norm(b, dim=-1) for b in blocks]
        else:
            # batches of 1×1 distances between rows: (x − y)² summed as it is read, nothing written
            norms = [
                torch.cdist(b, m, compute_mode="donot_use_mm_for_euclid_dist").view(-1, 1)
                for b, m in zip(blocks, minus_blocks)
            ]
            rest = rest - minus_rest
        # a row's norm squared is its Σx²; the values left over are squared in float32, as a row's are,
        # so that both overflow alike
        rows = torch.cat(norms).double().square_() if norms else None
        return self._add([rows] if rows is not None else [], rest.square())

    def _add(self, rows: list[torch.Tensor], rest: torch.Tensor) -> torch.Tensor:
        values = torch.cat([*(r.view(-1) for r in rows), rest]).double()
        return torch.zeros(self.count, dtype=torch.float64, device=self.device).index_add_(0, self.owner, values)


def _float32(flats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """float32 tensors as they are; others (a bf16 or fp64 gradient) converted, as a FlatBuffer would."""
    return [f if f.dtype == torch.float32 else f.float() for f in flats]


# --------------------------------------------------------------------------- moments


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


CENTRE_ALL: bool | None = None  # None: on CUDA (see moments); tests set True or False to take one route anywhere


def moments(flat: FlatBuffer, scratch: FlatBuffer, zeros: bool = True) -> torch.Tensor:
    """(T, 6) float64 on the device, one row per view: count, mean, M2, min, max, zeros (see MOMENTS).
    `scratch` (same layout) may be overwritten with centred values. `zeros=False` leaves the zeros column
    0, for a caller that counts them with the histogram (`histogram_and_zeros`).

    M2 = Σx² − (Σx)²/n loses nothing while a tensor's mean is small next to its spread (|mean| ≤ std/4:
    the subtraction cancels less than 1/16 of Σx²), which holds for most weights and gradients; a constant
    tensor's mean is its value and its M2 exactly 0. The other tensors (a LayerNorm weight of mean 1, NaN,
    inf) are centred on a shift near their mean first. Choosing them needs the sums on the host: on the
    CPU that is free, on CUDA it would be a sync, so there every tensor is centred (a pass the GPU hardly
    notices)."""
    views = flat.views
    # Per-view reductions are one small kernel each and never sync with the host; measured on resnet50
    # (161 tensors) they beat segment_reduce and the 0-norm for min/max and zero counts.
    mins, maxs = (torch.stack(t) for t in zip(*(aminmax_or_empty(v) for v in views)))
    count = flat.lengths.double()
    sums = flat.sums()
    if flat.buf.is_cuda if CENTRE_ALL is None else CENTRE_ALL:
        centre = list(range(len(views)))
        mean, m2 = torch.zeros_like(count), torch.zeros_like(count)
    else:
        constant = mins == maxs
        mean = torch.where(constant, mins.double(), sums / count)
        m2 = (flat.square_sums() - sums * sums / count).clamp_min(0).masked_fill(constant, 0.0)
        # centre where n·mean² > M2/16, and where a sum is not finite (the comparison is false for NaN)
        uncentred = (sums * sums / count <= m2 / 16) | constant
        centre = (~uncentred).nonzero().flatten().tolist()
    if centre:
        index = torch.tensor(centre, device=count.device)
        shift = _shift(sums[index].float(), count[index].float(), mins[index], maxs[index])
        for i, k in zip(centre, shift):
            torch.sub(views[i], k, out=scratch.views[i])
        centred = [scratch.views[i] for i in centre]
        plan = flat.row_sums(centre)  # the same views of `scratch`: the same places in its buffer
        blocks, rest = plan.blocks(centred), plan.rest(centred, scratch.buf)
        dsum, dsq = plan.sums(blocks, rest), plan.square_sums(blocks, rest)
        mean[index], m2[index] = _centred(shift, count[index], dsum, dsq)
    if 0 in flat.numels:  # an empty shard (FSDP): count 0, mean and M2 0, so that merging it changes nothing
        empty = count == 0
        mean, m2 = mean.masked_fill(empty, 0.0), m2.masked_fill(empty, 0.0)
    zero_counts = count - torch.stack([torch.count_nonzero(v) for v in views]) if zeros else torch.zeros_like(count)
    return torch.stack([count, mean, m2, mins.double(), maxs.double(), zero_counts], dim=1)


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
    cell_groups: list[_CellGroup] | None = field(default=None, repr=False, compare=False)  # see histogram_counts

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


GROUP_SLOTS = 1 << 22  # fine-cell slots counted in one pass: every position stays an exact float32 integer
FLOAT_2_23_BITS = 0x4B000000  # the bits of the float32 2^23


@dataclass
class _CellGroup:
    """Tensors first..last-1 of a BinSpec, counted in one pass over their fine cells. Tensor i owns the
    slots offsets[i]..offsets[i] + bins·cells + 1: below, its fine cells in order, above; `columns` maps
    every slot to the histogram cell it adds to, (i − first)·(bins + 2) + column."""

    first: int
    last: int
    offsets: list[int]
    slots: int
    columns: torch.Tensor


def _cell_groups(spec: BinSpec, device: torch.device) -> list[_CellGroup]:
    width = spec.bins + 2
    groups: list[_CellGroup] = []
    first, slots = 0, 0
    offsets: list[int] = []
    columns: list[torch.Tensor] = []
    for i, g in enumerate(spec.grids):
        fine = g.bins * g.cells + 2
        if offsets and slots + fine > GROUP_SLOTS:
            groups.append(_CellGroup(first, i, offsets, slots, torch.cat(columns).to(device)))
            first, slots, offsets, columns = i, 0, [], []
        # below, then each fine cell's bin (`cells` of them per bin), then above
        bin_of_cell = torch.arange(g.bins * g.cells) // g.cells + 1
        column = torch.cat([torch.tensor([0]), bin_of_cell, torch.tensor([g.bins + 1])])
        columns.append(column + (i - first) * width)
        offsets.append(slots)
        slots += fine
    groups.append(_CellGroup(first, len(spec.grids), offsets, slots, torch.cat(columns).to(device)))
    return groups


def histogram_counts(
    source: FlatBuffer,
    scratch: FlatBuffer,
    spec: BinSpec,
    mins: list[float] | None = None,
    maxs: list[float] | None = None,
) -> torch.Tensor:
    """(T, bins+2) int64 counts of `source`'s views; column 0 counts values below lo, column bins+1 values at
    or above hi. `scratch` (same layout) is overwritten; `source` is not. NaNs fall in no bin.

    Each value's fine cell is numbered from its tensor's offset, one count over the buffer counts the
    cells of every tensor, and the cells are added into bins. When the caller knows each tensor's min and
    max (it computed the moments already), only the tensors that leave their range are clamped and the
    NaN pass runs only if something is not finite."""
    return _counts(source, scratch, spec, mins, maxs, zeros=False)[0]


def histogram_and_zeros(
    source: FlatBuffer, scratch: FlatBuffer, spec: BinSpec, mins: list[float], maxs: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`histogram_counts`, and (T,) int64 the number of values of each view equal to zero (+0.0 or −0.0),
    counted on the way: half the time of `count_nonzero` over the source, which compares floats."""
    counts, zeros = _counts(source, scratch, spec, mins, maxs, zeros=True)
    assert zeros is not None
    return counts, zeros


def _counts(
    source: FlatBuffer,
    scratch: FlatBuffer,
    spec: BinSpec,
    mins: list[float] | None,
    maxs: list[float] | None,
    zeros: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = source.buf.device
    if spec.cell_groups is None or spec.cell_groups[0].columns.device != device:
        spec.cell_groups = _cell_groups(spec, device)
    counts, nonzero = [], []
    for group in spec.cell_groups:
        sub = slice(group.first, group.last)
        sources, outs, grids = source.views[sub], scratch.views[sub], spec.grids[sub]
        zero = torch.zeros((), device=device)
        for src, dst, grid in zip(sources, outs, grids):
            # 0 + x·2^-e: exact (a power of two), and −0.0 comes out +0.0, so that a zero's bits are all 0
            torch.add(zero, src, alpha=grid.scale, out=dst)
        if zeros:
            # x·2^-e is 0 only where x is, unless 2^-e < 1 flushes a subnormal x to 0: those compare x itself
            nonzero.append(
                torch.stack(
                    [
                        torch.count_nonzero(dst.view(torch.int32) if grid.exp <= 0 else src)
                        for src, dst, grid in zip(sources, outs, grids)
                    ]
                )
            )
        counts.append(
            _group_counts(
                group,
                outs,
                scratch,
                grids,
                spec.bins,
                mins[sub] if mins is not None else None,
                maxs[sub] if maxs is not None else None,
            )
        )
    hist = torch.cat(counts) if len(counts) > 1 else counts[0]
    return hist, (source.lengths - torch.cat(nonzero)) if zeros else None


def _group_counts(
    group: _CellGroup,
    outs: list[torch.Tensor],
    scratch: FlatBuffer,
    grids: list[BinGrid],
    bins: int,
    mins: list[float] | None,
    maxs: list[float] | None,
) -> torch.Tensor:
    """The histograms of one group from x·2^-e in `outs`."""
    first, last = outs[0], outs[-1]
    base = scratch.buf.storage_offset()
    flat = scratch.buf[first.storage_offset() - base : last.storage_offset() - base + last.numel()]
    flat.floor_()  # the fine cell: exact
    # a tensor whose known min and max lie inside its grid needs no clamping; without them, every one does
    finite, inside = False, [False] * len(grids)
    if mins is not None and maxs is not None and all(math.isfinite(v) for v in (*mins, *maxs)):
        finite, inside = True, [lo >= grid.lo and hi < grid.hi for lo, hi, grid in zip(mins, maxs, grids)]
    histc = flat.is_cuda if USE_HISTC is None else USE_HISTC
    # For the CPU's integer count every slot is raised by 2^23: a float32 2^23 + k (k < 2^23) is stored as
    # the bits of 2^23 plus the integer k, so one integer subtraction in place turns slots into indices.
    # (A float-to-int copy costs twice as much, and a second buffer of the model's size.)
    raised = 0.0 if histc else 2.0**23
    for dst, grid, offset, ok in zip(outs, grids, group.offsets, inside):
        # cells from the grid's start, numbered from the tensor's offset + 1 (+ 2^23): exact, as long as the
        # constant itself is a float32 integer, below 2^24; a start far below 0 takes two steps
        number_from = grid.start - 1 - offset - raised
        if abs(number_from) <= 2**24:
            dst.sub_(float(number_from))
        else:
            dst.sub_(float(grid.start)).add_(1 + offset + raised)
        if not ok:
            dst.clamp_(offset + raised, offset + grid.bins * grid.cells + 1 + raised)
    if histc:
        cells = count_positions(flat, group.slots, histc=True)
    else:
        if not finite:
            flat.nan_to_num_(nan=group.slots + raised)  # NaN -> one spare slot past the end, dropped below
        idx = flat.view(torch.int32).sub_(FLOAT_2_23_BITS)
        cells = count_on_threads(idx, group.slots + 1)[: group.slots]
    hist = torch.zeros(len(grids) * (bins + 2), dtype=torch.int64, device=cells.device)
    return hist.index_add_(0, group.columns, cells).view(len(grids), bins + 2)


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


THREAD_MIN = 1 << 20  # values per thread below which counting on several threads gains nothing


def count_on_threads(idx: torch.Tensor, n: int) -> torch.Tensor:
    """int64 counts of the values 0..n-1 of a CPU int32 or int64 tensor whose values all lie there.

    torch counts on one thread (bincount's and index_add_'s loops are serial, and bincount reads the input
    twice more for its min and max), so the input is split into one part per intra-op thread, each part
    counted by index_add_ on a thread of its own (torch releases the GIL), and the parts' counts added."""
    idx = idx.reshape(-1)
    parts = idx.tensor_split(max(1, min(torch.get_num_threads(), idx.numel() // THREAD_MIN)))
    # numpy's zeros (calloc) and sum run on this thread: torch's would start its pool of threads for
    # arrays of this size, a delay each time on a machine whose cores are busy with other work; and a
    # worker thread then runs nothing that would start a pool of its own
    counts = np.zeros((len(parts), n), dtype=np.int64)
    one = torch.ones((), dtype=torch.int64)

    def count(k: int) -> None:
        torch.from_numpy(counts[k]).index_add_(0, parts[k], one.expand(parts[k].numel()))

    if len(parts) == 1:
        count(0)
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            list(pool.map(count, range(len(parts))))
    return torch.from_numpy(counts.sum(0))
