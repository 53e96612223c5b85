"""The spectrum of a weight change (sftreport.record.spectrum) against answers known by construction: a rank-1
change u vᵀ, a change built from orthonormal bases with chosen singular values, a flat spectrum, no change,
a NaN; both the full spectrum and the randomized one; and the Recorder writing it at the end of a run, checked
against numpy's SVD of the saved weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from sftreport.record.recorder import Recorder
from sftreport.record.spectrum import EPS32, effective_rank, geometric_tail, layer_spectrum, spectrum
from sftreport.schema import LayerSpectrum
from sftreport.store import read_run

BOTH = pytest.mark.parametrize("full_flops", [math.inf, 0.0], ids=["full", "randomized"])


def roy_vetterli(sigma) -> float:
    """exp(entropy) of the singular values normalised by their sum (Roy & Vetterli 2007), in numpy float64."""
    s = np.asarray([v for v in sigma if v > 0], dtype=np.float64)
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def built(sigma: list[float], rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """U diag(sigma) Vᵀ with random orthonormal U (rows × k) and V (cols × k), in float64."""
    g = np.random.default_rng(seed)
    k = len(sigma)
    u, _ = np.linalg.qr(g.standard_normal((rows, k)))
    v, _ = np.linalg.qr(g.standard_normal((cols, k)))
    return torch.from_numpy((u * np.asarray(sigma)) @ v.T)


@BOTH
def test_a_rank_one_change_has_effective_rank_one_and_all_energy_in_one_direction(full_flops):
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(24, 8, 3, 3, generator=g)
    u, v = torch.randn(24, generator=g, dtype=torch.float64), torch.randn(72, generator=g, dtype=torch.float64)
    w1 = w0 + torch.outer(u, v).reshape(24, 8, 3, 3).float()  # rank 1 as (out, in·k·k), not as a 4-D tensor
    s = layer_spectrum("block.conv.weight", w0, w1, full_flops=full_flops)
    assert s.exact == (full_flops > 0)
    assert s.effective_rank == pytest.approx(1.0, abs=1e-9)
    assert s.energy_top(1) == pytest.approx(1.0, abs=1e-5)
    assert s.singular_values[0] == pytest.approx(float(u.norm() * v.norm()), rel=1e-5)
    assert all(x == 0 for x in s.singular_values[1:]) and len(s.singular_values) == 8
    assert s.rank == 24 and s.module == "block.conv" and s.shape == [24, 8, 3, 3]
    delta = (w1.double() - w0.double()).numpy()
    assert s.diff_sq == pytest.approx(float((delta**2).sum()), rel=1e-12)
    assert s.ref_sq == pytest.approx(float((w0.double().numpy() ** 2).sum()), rel=1e-12)


@BOTH
def test_a_change_with_known_singular_values_gives_those_values(full_flops):
    sigma = [9.0, 4.5, 3.0, 1.25, 0.5, 0.125]
    delta = built(sigma, 40, 90).float()
    s = layer_spectrum("fc.weight", torch.zeros(40, 90), delta, full_flops=full_flops)
    assert s.singular_values[: len(sigma)] == pytest.approx(sigma, rel=2e-5)
    assert s.singular_values[len(sigma) :] == [0.0, 0.0]
    assert s.effective_rank == pytest.approx(roy_vetterli(sigma), rel=1e-5)
    energy = np.square(sigma)
    assert s.energy_top(1) == pytest.approx(energy[0] / energy.sum(), rel=1e-5)
    assert s.energy_top(3) == pytest.approx(energy[:3].sum() / energy.sum(), rel=1e-5)
    assert s.energy_top(8) == pytest.approx(1.0, rel=1e-5)


def test_effective_rank_of_equal_values_is_their_count_and_the_tail_is_exact_when_flat():
    assert effective_rank([2.0] * 7) == pytest.approx(7.0, rel=1e-12)
    assert effective_rank([3.0, 0.0, 0.0]) == 1.0
    assert effective_rank([]) is None and effective_rank([0.0]) is None
    assert geometric_tail(1.0, 4.0, 4) == [1.0] * 4  # only a flat tail holds that much
    tail = geometric_tail(2.0, 4 * (0.5 + 0.25 + 0.125), 3)  # σ² = 4·ρʲ with ρ = ½
    assert tail == pytest.approx([math.sqrt(2), 1.0, math.sqrt(0.5)], rel=1e-12)
    assert geometric_tail(2.0, 0.0, 3) == [] and geometric_tail(2.0, 1.0, 0) == []
    # a scaled orthogonal matrix: every singular value 3; the randomized route computes 16 of 64 and continues them
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((64, 64)))
    delta = torch.from_numpy(3 * q).float()
    full = layer_spectrum("w", torch.zeros(64, 64), delta)
    rand = layer_spectrum("w", torch.zeros(64, 64), delta, full_flops=0)
    assert full.exact and not rand.exact
    assert full.effective_rank == pytest.approx(64.0, rel=1e-5)
    assert rand.effective_rank == pytest.approx(64.0, rel=1e-4)
    assert full.energy_top(8) == pytest.approx(8 / 64, rel=1e-5)
    # a geometric spectrum σᵢ² = 0.8ⁱ: the randomized route's top 32 continued geometrically are the exact tail
    geo = [0.8 ** (i / 2) for i in range(64)]
    rand_geo = layer_spectrum("w", torch.zeros(64, 100), built(geo, 64, 100).float(), full_flops=0)
    assert rand_geo.effective_rank == pytest.approx(roy_vetterli(geo), rel=1e-4)
    # a tall matrix (rows > columns) has as many directions as columns
    tall = layer_spectrum("w", torch.zeros(96, 48), built([3.0] * 48, 96, 48).float(), full_flops=0)
    assert tall.rank == 48 and tall.effective_rank == pytest.approx(48.0, rel=1e-4)


def test_rounding_noise_below_the_rank_tolerance_counts_as_zero():
    rows, cols = 30, 50
    sigma_1 = 2.0
    below = sigma_1 * max(rows, cols) * EPS32 / 4  # a quarter of the tolerance: noise of a rank-1 matrix
    above = sigma_1 * max(rows, cols) * EPS32 * 64  # far above it: a real second direction
    quiet = layer_spectrum("w", torch.zeros(rows, cols), built([sigma_1, below], rows, cols).float())
    loud = layer_spectrum("w", torch.zeros(rows, cols), built([sigma_1, above], rows, cols).float())
    assert quiet.effective_rank == 1.0
    assert loud.effective_rank > 1.0 + 1e-6
    assert loud.effective_rank == pytest.approx(roy_vetterli([sigma_1, above]), rel=1e-4)


def test_no_change_a_nan_and_vectors():
    w = torch.randn(6, 4)
    same = layer_spectrum("w", w, w.clone())
    assert same.singular_values == [] and same.effective_rank is None and same.diff_sq == 0.0
    assert same.rel_change == 0.0 and math.isnan(same.energy_top(1))
    bad = w.clone()
    bad[1, 2] = math.nan
    broken = layer_spectrum("w", w, bad)
    assert broken.singular_values == [] and broken.effective_rank is None and math.isnan(broken.diff_sq)
    s = spectrum(3, [("a.weight", w, w + 1, False), ("a.bias", torch.zeros(6), torch.ones(6), False)])
    assert s.epoch == 3 and [x.name for x in s.layers] == ["a.weight"]
    assert s.layers[0].effective_rank == pytest.approx(1.0)  # a matrix of ones is rank 1


def test_the_randomized_route_leaves_the_callers_random_numbers_alone_and_repeats():
    delta = torch.randn(80, 70)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    one = layer_spectrum("w", torch.zeros(80, 70), delta, full_flops=0)
    assert torch.equal(torch.rand(3), expected)
    two = layer_spectrum("w", torch.zeros(80, 70), delta, full_flops=0)
    assert one.singular_values == two.singular_values and one.effective_rank == two.effective_rank


def test_the_schema_refuses_a_spectrum_that_contradicts_itself():
    good = dict(name="w", module="", shape=[4, 4], rank=4, diff_sq=25.0, ref_sq=1.0)
    LayerSpectrum(**good, singular_values=[4.0, 3.0], effective_rank=1.98)
    with pytest.raises(ValidationError, match="descending"):
        LayerSpectrum(**good, singular_values=[3.0, 4.0])
    with pytest.raises(ValidationError, match="more energy"):
        LayerSpectrum(**good, singular_values=[5.0, 1.0])
    with pytest.raises(ValidationError, match="outside"):
        LayerSpectrum(**good, singular_values=[5.0], effective_rank=4.5)
    with pytest.raises(ValidationError, match="rank of at most"):
        LayerSpectrum(**good, singular_values=[1.0] * 5)


def _loop(tmp_path, stop_mid_epoch: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    x, y = torch.randn(12, 1, 5, 5), torch.arange(12) % 3
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rec = Recorder(model, probe=(x[:6], y[:6]), val_data=[(x, y)], run_dir=tmp_path / "run")
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    for _ in range(2):
        for i in range(0, 12, 4):
            loss = nn.functional.cross_entropy(model(x[i : i + 4]), y[i : i + 4])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss)
        rec.epoch_end()
    if stop_mid_epoch:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        rec.step(loss)
    rec.finish("interrupted" if stop_mid_epoch else "completed")
    return model, w0, read_run(tmp_path / "run")


def test_the_recorder_writes_the_last_epochs_spectrum_as_numpy_finds_it(tmp_path):
    model, w0, run = _loop(tmp_path)
    spec = run.info.spectrum
    assert spec is not None and spec.epoch == 2
    assert [m.name for m in spec.layers] == ["0.weight", "4.weight"]
    for m in spec.layers:
        w1 = dict(model.named_parameters())[m.name].detach().double().numpy()
        delta = (w1 - w0[m.name].double().numpy()).reshape(w1.shape[0], -1)
        sigma = np.linalg.svd(delta, compute_uv=False)
        assert m.singular_values[: len(sigma)] == pytest.approx(sigma, rel=1e-4, abs=1e-7)
        assert m.effective_rank == pytest.approx(roy_vetterli(sigma), rel=1e-4)
        assert m.new is False and m.diff_sq == pytest.approx(float((delta**2).sum()), rel=1e-6)


def test_a_run_stopped_mid_epoch_has_no_spectrum(tmp_path):
    _, _, run = _loop(tmp_path, stop_mid_epoch=True)
    assert run.info.status == "interrupted" and run.info.spectrum is None
