"""Exactness of the batched statistics on hard inputs, against numpy in float64 (never against the code
under test): means far larger than the spread, constant tensors, values exactly on bin edges and one
float32 step either side of them, thousands of tensors, values outside the fixed range, NaN and infinities,
chunks merged in any order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import activation_pass
from torch import nn

from sftreport.record.gradients import GradientProbe
from sftreport.record.stats import (
    BinGrid,
    BinSpec,
    FlatBuffer,
    histogram_counts,
    merge,
    moments,
    stats_from_rows,
    tensor_moments,
)
from sftreport.record.weights import WeightProbe
from sftreport.schema import TensorStats

CPU = torch.device("cpu")


def _flat(tensors: list[torch.Tensor]) -> tuple[FlatBuffer, FlatBuffer]:
    flat = FlatBuffer([t.numel() for t in tensors], CPU).load(tensors)
    return flat, FlatBuffer(flat.numels, CPU)


def _hard_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "mean 1, std 1e-4": 1 + 1e-4 * torch.randn(200_000, generator=g),
        "mean 1, std 1e-6": 1 + 1e-6 * torch.randn(200_000, generator=g),
        "mean -3e4, std 1e-2": -3e4 + 1e-2 * torch.randn(50_000, generator=g),
        "equal values": torch.full((5_000,), 0.1),
        "negative only": -torch.rand(3, 7, 11, generator=g) - 0.5,
        "ordinary": torch.randn(64, 3, 3, 3, generator=g) * 0.05,
        "with zeros": torch.tensor([0.0, 1.0, -2.0, 0.0, 0.0]),
        "one value": torch.tensor([-7.25]),
    }


def _check_moments(row: list[float], t: torch.Tensor, what: str) -> None:
    a = t.double().numpy().ravel()
    count, mean, m2, lo, hi, zeros = row
    assert count == a.size and zeros == int((a == 0).sum()), what
    assert (lo, hi) == (a.min(), a.max()), what
    assert mean == pytest.approx(a.mean(), rel=1e-9, abs=1e-7 * a.std()), what
    std = math.sqrt(m2 / count)
    if a.std() == 0:
        assert m2 == 0.0, what  # a constant tensor has exactly no spread
    else:
        assert std == pytest.approx(a.std(), rel=1e-6), what


def test_moments_of_hard_tensors_match_numpy_float64():
    tensors = _hard_tensors()
    flat, scratch = _flat(list(tensors.values()))
    for (what, t), row in zip(tensors.items(), moments(flat, scratch).tolist()):
        _check_moments(row, t, what)
        _check_moments(tensor_moments(t).tolist(), t, what + " (one tensor)")
    # the stored form gives the same familiar numbers
    stats = stats_from_rows(moments(flat, scratch).tolist())
    a = tensors["mean 1, std 1e-6"].double().numpy()
    assert stats[1].std == pytest.approx(a.std(), rel=1e-6)
    assert stats[1].sum_sq == pytest.approx((a * a).sum(), rel=1e-12)


def test_sums_of_squares_stay_exact_on_a_large_tensor():
    """A 4 M-element tensor: the CPU norm kernels are 1e-4 off here; the relative change must not be."""
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(4_000_000, generator=g) * 0.02
    lin = nn.Linear(4_000, 1_000, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w0.view(1_000, 4_000))
    probe = WeightProbe(lin, set(), bins=16)
    probe.measure()
    step = torch.randn(4_000_000, generator=g) * 1e-4
    with torch.no_grad():
        lin.weight.add_(step.view(1_000, 4_000))
    (w,) = probe.measure()
    a0, a1 = w0.double().numpy(), lin.weight.detach().double().numpy().ravel()
    assert w.ref_sq == pytest.approx((a0 * a0).sum(), rel=1e-6)
    assert w.diff_sq == pytest.approx(((a1 - a0) ** 2).sum(), rel=1e-6)
    assert w.stats.std == pytest.approx(a1.std(), rel=1e-6)


def test_gradient_norm_of_a_large_tensor_is_exact():
    lin = nn.Linear(4_000, 1_000, bias=False)
    lin.weight.grad = torch.randn(1_000, 4_000, generator=torch.Generator().manual_seed(4)) + 0.5
    probe = GradientProbe(lin, every=1)
    probe.maybe_sample()
    (g,) = probe.collect()
    assert g.norm_sum == pytest.approx(np.linalg.norm(lin.weight.grad.double().numpy()), rel=1e-6)


@pytest.mark.parametrize("split", [1, 7, 100_000, 199_999])
def test_merging_two_chunks_equals_the_whole(split: int):
    t = _hard_tensors()["mean 1, std 1e-6"]
    t = torch.cat([t[:100_000], t[100_000:] - 3e-6])  # the second half holds the minimum: it comes later
    a, b = t[:split], t[split:]
    whole = tensor_moments(t).tolist()
    for merged in (
        merge(tensor_moments(a), tensor_moments(b)).tolist(),
        merge(tensor_moments(b), tensor_moments(a)).tolist(),
    ):
        assert merged[0] == whole[0] and merged[3:] == whole[3:]
        assert merged[1] == pytest.approx(whole[1], rel=1e-12)
        assert merged[2] == pytest.approx(whole[2], rel=1e-6)
    # the schema's merge (used for shards) agrees with the device's
    sa, sb = stats_from_rows([tensor_moments(a).tolist(), tensor_moments(b).tolist()])
    both = sa.merge(sb)
    assert both.count == whole[0] and both.min == whole[3]
    assert both.std == pytest.approx(t.double().numpy().std(), rel=1e-6)


def test_schema_v1_moments_are_read_as_the_same_numbers():
    old = {"count": 4, "sum": 10.0, "sum_sq": 30.0, "min": 1.0, "max": 4.0, "zeros": 0}  # values 1, 2, 3, 4
    s = TensorStats.model_validate(old)
    assert (s.mean, s.m2, s.std) == (2.5, 5.0, pytest.approx(math.sqrt(1.25)))


# ----------------------------------------------------------------------------- histograms


def _numpy_counts(x: np.ndarray, lo: float, hi: float, bins: int) -> list[int]:
    """[below, bins..., above] by numpy alone: bins [e_k, e_k+1) on numpy's own edges, NaN nowhere."""
    x = x[~np.isnan(x)]
    inside = x[(x >= lo) & (x < hi)]
    counts, _ = np.histogram(inside, bins=bins, range=(lo, hi))
    return [int((x < lo).sum()), *counts.tolist(), int((x >= hi).sum())]


def test_bin_grids_cover_their_range_tightly_with_float32_edges():
    rng = np.random.default_rng(0)
    cases = [
        (-1.0, 1.0),
        (0.9999, 1.0001),
        (1 - 4e-6, 1 + 4e-6),
        (-3e4 - 0.05, -3e4 + 0.05),
        (1e-30, 3e-30),
        (-5e6, 7e9),
        (0.0, 1e-3),
    ] + [tuple(sorted(rng.normal(0, 10 ** rng.uniform(-6, 6), 2))) for _ in range(200)]
    for bins in (4, 32, 33):
        for a, b in cases:
            g = BinGrid.covering(a, b, bins)
            edges = np.linspace(g.lo, g.hi, bins + 1)
            assert g.lo <= a and b < g.hi, (a, b, g)
            assert np.array_equal(edges.astype(np.float32).astype(np.float64), edges), (a, b, g)  # float32 edges
            # tight: candidate widths step by at most 9/8, down to bins 16 float32 spacings wide (then by cells)
            floor = 16 * np.spacing(np.float32(max(abs(a), abs(b))))
            width = (g.hi - g.lo) / bins
            assert width <= max((b - a) / (bins - 1) * 9 / 8 * (1 + 1e-12), floor), (a, b, g)


@pytest.fixture(params=[False, True], ids=["bincount", "histc (the CUDA route)"])
def counting(request, monkeypatch):
    import sftreport.record.stats as stats

    monkeypatch.setattr(stats, "USE_HISTC", request.param)


def test_values_on_every_edge_and_one_step_either_side_land_like_numpy_over_2000_tensors(counting):
    torch.manual_seed(0)
    bins = 32
    tensors, grids = [], []
    for i in range(2_000):
        centre, spread = (1.0, 1e-4) if i % 3 == 0 else (0.0, 10.0 ** (i % 7 - 4))
        t = centre + spread * torch.randn(20 + i % 13)
        grid = BinSpec.around([t.min().item()], [t.max().item()], bins).grids[0]
        edges = np.linspace(grid.lo, grid.hi, bins + 1).astype(np.float32)
        on = torch.from_numpy(edges[i % (bins + 1) :][:3])
        up, down = torch.nextafter(on, torch.tensor(np.inf)), torch.nextafter(on, torch.tensor(-np.inf))
        tensors.append(torch.cat([t, on, up, down]))
        grids.append(grid)
    spec = BinSpec(grids, bins)
    flat, scratch = _flat(tensors)
    counts = histogram_counts(flat, scratch, spec).tolist()
    for t, g, c in zip(tensors, grids, counts):
        assert c == _numpy_counts(t.double().numpy(), g.lo, g.hi, bins)


def test_histogram_counts_outside_values_infinities_and_skips_nan(counting):
    grid = BinGrid(exp=-5, cells=8, start=0, bins=4)  # [0, 1) in bins of 0.25
    assert (grid.lo, grid.hi) == (0.0, 1.0)
    t = torch.tensor([-5.0, 0.0, 0.25, 0.3, 0.99, 1.0, 7.0, float("inf"), float("-inf"), float("nan"), -1e-30])
    flat, scratch = _flat([t])
    lo, hi = torch.aminmax(t)
    for known in ((None, None), ([lo.item()], [hi.item()])):  # unknown, or as the moments found them (NaN)
        (h,) = BinSpec([grid], 4).histograms(histogram_counts(flat, scratch, BinSpec([grid], 4), *known).tolist())
        assert (h.below, h.counts, h.above) == (3, [1, 2, 0, 1], 3)
        assert h.total == t.numel() - 1  # the NaN is in no bin


def test_activation_histograms_are_exact_for_token_shaped_outputs_past_the_range():
    """(N, T, D) outputs; the second pass moves values beyond the range fixed on the first."""
    g = torch.Generator().manual_seed(5)
    first = 1 + 1e-3 * torch.randn(6, 5, 8, generator=g)
    later = torch.cat([first[:3], first[3:] * 1.01 + 1e-3])  # beyond the fixed range
    (s,), reps, _ = activation_pass(nn.Sequential(nn.Identity()), ["0"], first, later, bins=32, chunk=4)
    h = s.hist
    assert [h.below, *h.counts, h.above] == _numpy_counts(later.double().numpy().ravel(), h.lo, h.hi, 32)
    assert h.above > 0
    assert s.channels == 8 and s.shape == [5, 8]
    assert s.stats.std == pytest.approx(later.double().numpy().std(), rel=1e-6)
    assert reps["0"].shape == (6, 5 * 8)


def test_moments_of_an_empty_view_merge_into_nothing_even_beside_a_diverged_tensor():
    """FSDP gives a process an empty shard of a small tensor: its row must be count 0 and change nothing."""
    values = [torch.tensor([1.0, 2.0, 4.0]), torch.zeros(0), torch.tensor([float("inf"), 1.0])]
    flat = FlatBuffer([3, 0, 2], torch.device("cpu")).load(values)
    rows = moments(flat, FlatBuffer([3, 0, 2], torch.device("cpu")))
    assert rows[1].tolist() == [0.0, 0.0, 0.0, math.inf, -math.inf, 0.0]
    a = np.array([1.0, 2.0, 4.0])
    assert rows[0].tolist() == pytest.approx([3, a.mean(), ((a - a.mean()) ** 2).sum(), 1, 4, 0])
    empty = rows[1]
    for row in (rows[0], rows[2]):  # an empty side on either side leaves the row as it is, NaN too
        for merged in (merge(row, empty), merge(empty, row)):
            assert merged.tolist() == pytest.approx(row.tolist(), nan_ok=True)


def test_type_name_is_the_class_a_user_wrote_under_fully_shard():
    from sftreport.record.sharded import type_name

    class FSDPModule:  # the shape of torch's: FSDP<Name>(FSDPModule, Name)
        pass

    class Conv(nn.Conv2d):
        pass

    wrapped = type("FSDPConv", (FSDPModule, Conv), {})
    assert type_name(wrapped.__new__(wrapped)) == "Conv"
    assert type_name(nn.Linear(2, 2)) == "Linear"
    assert type_name(type("FSDPLike", (nn.Linear,), {}).__new__(type("FSDPLike", (nn.Linear,), {}))) == "FSDPLike"


# ----------------------------------------------------------------------------- a model of hard tensors


class _Params(nn.Module):
    def __init__(self, tensors: list[torch.Tensor]):
        super().__init__()
        self.p = nn.ParameterList([nn.Parameter(t) for t in tensors])


def _mixed_tensors() -> list[torch.Tensor]:
    """Hundreds of tiny tensors and a few large ones, of four dtypes, around every size a row-wise sum
    splits at (256), with the values that break statistics: a mean far larger than the spread, exact and
    negative zeros, a subnormal, NaN and infinities (an empty tensor is a shard's: see the test below)."""
    g = torch.Generator().manual_seed(11)
    tiny = []
    for i in range(300):
        t = torch.randn(1 + i % 7, generator=g) * 10.0 ** (i % 5 - 3)
        t[0] = 0.0 if i % 4 == 0 else (-0.0 if i % 4 == 1 else t[0])
        tiny.append(t)
    signed_zeros = torch.randn(4099, generator=g).half()
    signed_zeros[::5], signed_zeros[1::7] = 0.0, -0.0
    return tiny + [
        1e6 + 1e-3 * torch.randn(5_000, generator=g, dtype=torch.float64),  # float32 keeps a few distinct values
        1 + 1e-6 * torch.randn(300_000, generator=g),  # rows of one tensor, centred
        (0.02 * torch.randn(70_001, generator=g)).bfloat16(),
        signed_zeros,
        # around the sizes a row-wise sum splits at: rows of 256, from 64 rows on
        *(torch.randn(n, generator=g) * 0.1 + 0.05 for n in (255, 256, 257, 16_383, 16_384, 16_385, 16_639)),
        torch.full((1_000,), 0.1),  # constant: M2 exactly 0
        # the finest cells, numbered from near -2^23: the constant that numbers them is odd and above 2^24
        -1.99 + torch.linspace(-2e-6, 2e-6, 1_000),
        torch.tensor([-3e4, 5e4, 1e-45, 0.0, -0.0, 7.0]),  # a wide grid (fine cells of 2^e > 1), a subnormal
        torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, 0.0]),
        torch.tensor([-7.25]),
    ]


def _check_weight_stat(w, a: np.ndarray, a0: np.ndarray) -> None:
    """One parameter's statistics against numpy in float64 on the float32 values the probe saw."""
    s, what = w.stats, w.name
    assert s.count == a.size and s.zeros == int((a == 0).sum()), what
    if a.size == 0:
        return
    if not np.isfinite(a).all():
        assert math.isnan(s.mean) or math.isinf(s.mean), what  # a diverged tensor stays visibly diverged
        return
    assert (s.min, s.max) == (a.min(), a.max()), what
    assert s.mean == pytest.approx(a.mean(), rel=1e-9, abs=1e-7 * a.std()), what
    if a.std() == 0:
        assert s.m2 == 0.0, what
    else:
        assert s.std == pytest.approx(a.std(), rel=1e-6), what
    h = w.hist
    assert [h.below, *h.counts, h.above] == _numpy_counts(a, h.lo, h.hi, len(h.counts)), what
    assert w.ref_sq == pytest.approx((a0 * a0).sum(), rel=1e-6, abs=1e-300), what
    assert w.diff_sq == pytest.approx(((a - a0) ** 2).sum(), rel=1e-6, abs=1e-300), what


@pytest.mark.parametrize("centre_all", [False, True], ids=["centred where needed", "all centred (CUDA's route)"])
def test_weight_and_gradient_statistics_of_a_model_of_hard_tensors_match_numpy(centre_all, counting, monkeypatch):
    import sftreport.record.stats as stats

    monkeypatch.setattr(stats, "CENTRE_ALL", centre_all)
    tensors = _mixed_tensors()
    model = _Params([t.clone() for t in tensors])
    probe = WeightProbe(model, set(), bins=32)
    probe.measure()  # fixes the bins from W0

    def seen(p: torch.Tensor) -> np.ndarray:  # the float32 values a probe sees
        return p.detach().float().double().numpy().ravel()

    g = torch.Generator().manual_seed(12)

    def step() -> list[np.ndarray]:  # every finite tensor moves a little; zeros stay zeros of their sign
        with torch.no_grad():
            for p in model.parameters():
                if torch.isfinite(p).all():
                    p.mul_((1 + 1e-4 * torch.randn(p.shape, generator=g)).to(p.dtype))
        return [seen(p) for p in model.parameters()]

    w0 = [seen(p) for p in model.parameters()]
    w1 = step()
    probe.measure()  # an epoch end: the next step's update is measured against W1
    w2 = step()
    probe.after_step()
    w3 = step()
    with torch.no_grad():  # every edge of a large tensor's bins, and one float32 step either side of each
        grid = probe.spec.grids[301]
        edges = torch.from_numpy(np.linspace(grid.lo, grid.hi, grid.bins + 1).astype(np.float32))
        on_edges = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1)])
        model.p[301][: on_edges.numel()] = on_edges
        w3[301][: on_edges.numel()] = on_edges.double().numpy()
    for w, a, a0, before, after in zip(probe.measure(), w3, w0, w1, w2):
        _check_weight_stat(w, a, a0)
        if np.isfinite(a).all():
            assert w.update_sq == pytest.approx(((after - before) ** 2).sum(), rel=1e-6, abs=1e-300), w.name
            assert w.before_update_sq == pytest.approx((before * before).sum(), rel=1e-6, abs=1e-300), w.name
    # gradients: a norm per parameter, exact on the same tensors
    for p, t in zip(model.parameters(), tensors):
        p.grad = t.clone().to(p.dtype)
    grads = GradientProbe(model, every=1)
    grads.maybe_sample()
    for gs, t in zip(grads.collect(), tensors):
        a = t.float().double().numpy().ravel()
        if np.isfinite(a).all():
            assert gs.norm_sum == pytest.approx(np.sqrt((a * a).sum()), rel=1e-6) and gs.nonfinite == 0
        else:
            assert gs.nonfinite == 1 and gs.samples == 1


@pytest.mark.parametrize("centre_all", [False, True], ids=["centred where needed", "all centred"])
def test_empty_and_one_value_views_beside_others_on_both_routes(centre_all, monkeypatch):
    import sftreport.record.stats as stats

    monkeypatch.setattr(stats, "CENTRE_ALL", centre_all)
    values = [torch.tensor([2.0, -0.0, 0.0, 4.0]), torch.zeros(0), torch.tensor([-7.25]), torch.arange(300.0) - 100]
    flat, scratch = _flat(values)
    rows = moments(flat, scratch).tolist()
    for row, t in zip(rows, values):
        a = t.double().numpy()
        if a.size == 0:
            assert row == [0.0, 0.0, 0.0, math.inf, -math.inf, 0.0]
            continue
        assert row[0] == a.size and row[3:] == [a.min(), a.max(), int((a == 0).sum())]
        assert row[1] == pytest.approx(a.mean(), rel=1e-12) and row[2] == pytest.approx(((a - a.mean()) ** 2).sum())
    assert flat.sums().tolist() == [6.0, 0.0, -7.25, float(sum(range(300)) - 30_000)]
    # within a float32 rounding (a large tensor's rows come back through float32 norms)
    squares = [20.0, 0.0, 52.5625, float(sum((k - 100) ** 2 for k in range(300)))]
    assert flat.square_sums().tolist() == pytest.approx(squares, rel=2e-7)
    spec = BinSpec.around([-1.0] * 4, [1.0] * 4, 4)
    counts, zeros = stats.histogram_and_zeros(flat, scratch, spec, [r[3] for r in rows], [r[4] for r in rows])
    assert zeros.tolist() == [2, 0, 0, 1] and counts[1].tolist() == [0] * 6
    for c, t, g in zip(counts.tolist(), values, spec.grids):
        assert c == _numpy_counts(t.double().numpy(), g.lo, g.hi, 4)


def test_counting_on_threads_adds_every_part():
    import sftreport.record.stats as stats

    idx = torch.randint(0, 1000, (3_000_001,), dtype=torch.int32, generator=torch.Generator().manual_seed(13))
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # three parts of a million values each, whatever the machine has
    try:
        counts = stats.count_on_threads(idx, 1001)
    finally:
        torch.set_num_threads(threads)
    assert counts.tolist() == np.bincount(idx.numpy(), minlength=1001).tolist()
