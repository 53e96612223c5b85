"""The spectrum of a weight change: how many directions fine-tuning moved a layer in, and how much of the
change lies in the top ones.

For each weight tensor of two or more dimensions, ΔW = W₁ − W₀ is reshaped to a matrix (out, in·k·k) (a
convolution's output channels by everything that feeds one of them) and summarised by

- its largest singular values σ₁ ≥ σ₂ ≥ … (`TOP` of them);
- the share of its energy ‖ΔW‖²_F = Σ σᵢ² in the top k directions, Σᵢ≤ₖ σᵢ² / ‖ΔW‖²_F, with the
  denominator summed exactly from the entries (not from the singular values);
- its **effective rank** in the sense of Roy & Vetterli (2007, "The effective rank: a measure of effective
  dimensionality"): exp(H(p)) with pᵢ = σᵢ / Σⱼ σⱼ and H the Shannon entropy, which is 1 for a rank-1
  change and r for r equal singular values. Singular values below σ₁ · max(out, in·k·k) · ε (ε of
  float32, numpy's `matrix_rank` tolerance) are rounding noise of a rank-deficient matrix and count as 0.

A matrix small enough (`EXACT_FLOPS`: the default model's every matrix, resnet50's up to layer2) gets its full spectrum (`torch.linalg.svdvals`). A larger one gets
its top `TOP + OVERSAMPLE` values by randomized SVD (`torch.svd_lowrank`, `NITER` power iterations, a fixed
seed); its effective rank is then estimated with the rest of the energy, ‖ΔW‖²_F − Σ computed σᵢ², spread
evenly over the remaining directions. That estimate is exact when the change has at most that many
directions or a flat tail, and the report marks it (`exact=False`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from sftreport.schema import LayerSpectrum, Spectrum

TOP = 8  # singular values kept per layer
EXACT_FLOPS = 3e7  # full spectrum when out · in·k·k · min(out, in·k·k) is at most this (a 128×128×3×3 conv)
OVERSAMPLE = 8  # extra directions the randomized SVD computes beyond TOP
NITER = 4  # its power iterations (accurate top values for the decaying spectra of real changes)
EPS32 = float(torch.finfo(torch.float32).eps)


def effective_rank(values: list[float], rest_energy: float = 0.0, rest_count: int = 0) -> float | None:
    """Roy & Vetterli's effective rank of singular values (any order), with `rest_energy` (a sum of squares)
    spread evenly over `rest_count` further values; None when there is nothing."""
    sigma = [v for v in values if v > 0]
    if rest_count > 0 and rest_energy > 0:
        sigma += [math.sqrt(rest_energy / rest_count)] * rest_count
    total = math.fsum(sigma)
    if not sigma or not math.isfinite(total) or total <= 0:
        return None
    h = -math.fsum((s / total) * math.log(s / total) for s in sigma)
    return min(math.exp(h), float(len(sigma)))


@torch.no_grad()
def layer_spectrum(
    name: str,
    w0: torch.Tensor,
    w1: torch.Tensor,
    *,
    new: bool = False,
    top: int = TOP,
    exact_flops: float = EXACT_FLOPS,
) -> LayerSpectrum:
    """The spectrum of `w1 − w0` (same shape, two or more dimensions), reshaped to (out, in·k·k)."""
    shape = list(w1.shape)
    rows = shape[0]
    cols = w1.numel() // rows if rows else 0
    rank = min(rows, cols)
    exact_delta = w1.detach().double() - w0.detach().double().to(w1.device)  # exact for float32 weights
    diff_sq = float(exact_delta.square().sum())
    delta = exact_delta.float().reshape(rows, cols)
    del exact_delta
    ref_sq = float(w0.detach().double().square().sum())
    out = LayerSpectrum(
        name=name,
        module=name.rpartition(".")[0],
        shape=shape,
        new=new,
        rank=rank,
        diff_sq=diff_sq,
        ref_sq=ref_sq,
    )
    if not math.isfinite(diff_sq) or diff_sq == 0 or rank == 0:
        return out  # nothing changed, or the weights hold NaN or infinities: no spectrum to speak of
    exact = rows * cols * rank <= exact_flops
    try:
        if exact:
            sigma = torch.linalg.svdvals(delta).double().tolist()
        else:
            q = min(top + OVERSAMPLE, rank)
            with torch.random.fork_rng(devices=[delta.device] if delta.device.type == "cuda" else []):
                torch.manual_seed(0)  # the same values every time, and the caller's random state untouched
                _, s, _ = torch.svd_lowrank(delta, q=q, niter=NITER)
            sigma = s.double().tolist()
    except RuntimeError:  # LinAlgError (no convergence) is one: the layer keeps its norms, without a spectrum
        return out
    sigma = sorted((max(0.0, v) for v in sigma), reverse=True)
    tol = sigma[0] * max(rows, cols) * EPS32 if sigma else 0.0
    kept = [v if v > tol else 0.0 for v in sigma]
    if exact:
        er = effective_rank(kept)
    else:
        rest = max(0.0, diff_sq - math.fsum(v * v for v in kept))
        er = effective_rank(kept, rest_energy=rest if rest > diff_sq * 1e-6 else 0.0, rest_count=rank - len(kept))
    out.singular_values = kept[:top]
    out.effective_rank = er
    out.exact = exact
    return out


def spectrum(
    epoch: int,
    tensors: Iterable[tuple[str, torch.Tensor, torch.Tensor, bool]],
    top: int = TOP,
    exact_flops: float = EXACT_FLOPS,
) -> Spectrum:
    """The spectrum of every (name, W₀, W₁, new) tensor of two or more dimensions (vectors — biases,
    normalisation weights — have none), in the order given."""
    layers = [
        layer_spectrum(name, w0, w1, new=new, top=top, exact_flops=exact_flops)
        for name, w0, w1, new in tensors
        if w1.dim() >= 2 and w1.numel() > 0
    ]
    return Spectrum(epoch=epoch, top=top, layers=layers)
