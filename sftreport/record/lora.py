"""LoRA adapters (the `peft` library's): what an adapted layer really computes with, its effective weight
W = W_base + s·B·A (s = α/r, summed over the active adapters), measured against the effective weight at
epoch 0. The adapters' own parameters say little: B starts at zero (so its relative change is infinite) and
W_base stays frozen (so its change is zero), while the layer's effective weight moves.

Per adapted layer and epoch, in the mergeable form of the weights probe (record/weights.py):
‖W_t − W_0‖², ‖W_0‖², one optimizer step's ‖ΔW‖² against ‖W‖² (the epoch's first step, as for every
weight), and the spectrum of the change W_t − W_0: its largest singular values, ‖·‖²_F and its numerical
rank. While W_base is frozen the change is s·(B_t·A_t − B_0·A_0), of rank at most 2r (r once B_0 = 0, as
peft initialises it); its singular values come from two thin QR factorisations and an SVD of a small core
matrix, exactly, with no dense SVD of the layer. Everything is computed in float64.

Epoch 0's A, B and W_base, and the weights at the latest epoch end, are those the weights probe keeps (its
W₀, restored when a run resumes): nothing is copied twice. Layers peft merged into their base weight, DoRA
adapters, embedding adapters and grouped convolutions are not measured (they are left out, not guessed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sftreport.record.weights import WeightProbe
from sftreport.schema import SPECTRUM_TOP, AdapterSpectrum, AdapterStat, Architecture

EPS64 = torch.finfo(torch.float64).eps


def lora_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """The model's peft LoRA layers (none when peft was never imported: then there can be none)."""
    if "peft" not in sys.modules:
        return []
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


@dataclass
class _Adapter:
    a: str  # parameter names of A and B
    b: str
    scaling: float


@dataclass
class _Layer:
    module: str
    type: str
    base: str  # the base weight's parameter name
    shape: list[int]
    transposed: bool  # peft's fan_in_fan_out: the base weight is stored (in, out)
    adapters: list[_Adapter]
    rank: int
    alpha: float


def _measurable(name: str, layer: Any, names: dict[int, str]) -> _Layer | None:
    """The layer's parameters by name, or None for what is not measured (see the module's docstring)."""
    if getattr(layer, "merged", False):
        return None
    base = layer.get_base_layer()
    weight = getattr(base, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() < 2 or getattr(base, "groups", 1) != 1:
        return None
    adapters, rank, alpha = [], 0, None
    for key in layer.active_adapters:
        if key not in layer.lora_A or getattr(layer, "use_dora", {}).get(key):
            return None
        a, b = layer.lora_A[key].weight, layer.lora_B[key].weight
        if any(k != 1 for k in b.shape[2:]):  # peft's B is a 1×1(×1) convolution
            return None
        adapters.append(_Adapter(names[id(a)], names[id(b)], float(layer.scaling[key])))
        rank += int(layer.r[key])
        alpha = float(layer.lora_alpha[key]) if alpha is None else alpha
    if not adapters:
        return None
    return _Layer(
        module=name,
        type=type(base).__name__,
        base=names[id(weight)],
        shape=list(weight.shape),
        transposed=bool(getattr(layer, "fan_in_fan_out", False)),
        adapters=adapters,
        rank=rank,
        alpha=float(alpha or 0.0),
    )


def singular_values_of_product(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The singular values of U·V (U m×k, V k×n, k small) without forming it: U = Q₁R₁, Vᵀ = Q₂R₂, so
    U·V = Q₁(R₁R₂ᵀ)Q₂ᵀ and its singular values are the small core's."""
    _, r1 = torch.linalg.qr(u)
    _, r2 = torch.linalg.qr(v.T)
    return torch.linalg.svdvals(r1 @ r2.T)


def spectrum(sv: torch.Tensor, shape: tuple[int, int]) -> AdapterSpectrum:
    """An AdapterSpectrum from all of a matrix's singular values (any order)."""
    values = sorted(sv.double().tolist(), reverse=True)
    top = values[0] if values else 0.0
    tol = top * max(shape) * EPS64
    rank = sum(1 for x in values if x > tol) if top > 0 else 0
    return AdapterSpectrum(
        singular_values=values[: min(rank, SPECTRUM_TOP)], energy=sum(x * x for x in values), rank=rank
    )


class AdapterProbe:
    """Effective-weight statistics of a model's LoRA layers, fed by the weights probe's references."""

    def __init__(self, model: nn.Module, weights: WeightProbe):
        names = {id(p): n for n, p in model.named_parameters()}
        self.params = dict(model.named_parameters())
        self.weights = weights
        self.layers = [x for n, m in lora_layers(model) if (x := _measurable(n, m, names)) is not None]
        self._update: dict[str, tuple[float, float]] = {}
        self._awaiting = False

    def __bool__(self) -> bool:
        return bool(self.layers)

    # ------------------------------------------------------------------ the effective weight

    def _matrix(self, w: torch.Tensor, layer: _Layer) -> torch.Tensor:
        m = w.detach().double()
        return m.T if layer.transposed else m.reshape(m.shape[0], -1)

    def _factors(self, layer: _Layer, get) -> tuple[torch.Tensor, torch.Tensor]:
        """U (m × R) = [s·B ...] and V (R × n) = [A; ...] of the layer's adapters, the tensors read by `get`."""
        us, vs = [], []
        for ad in layer.adapters:
            a, b = get(ad.a).detach().double(), get(ad.b).detach().double()
            us.append(ad.scaling * b.reshape(b.shape[0], -1))
            vs.append(a.reshape(a.shape[0], -1))
        return torch.cat(us, dim=1), torch.cat(vs, dim=0)

    def _effective(self, layer: _Layer, get) -> torch.Tensor:
        u, v = self._factors(layer, get)
        return self._matrix(get(layer.base), layer) + u @ v

    def _now(self, name: str) -> torch.Tensor:
        return self.params[name]

    def effective_weight(self, module: str) -> torch.Tensor | None:
        """The layer's effective weight now, in its base weight's shape (None: not a measured layer)."""
        layer = next((x for x in self.layers if x.module == module), None)
        if layer is None:
            return None
        e = self._effective(layer, self._now)
        base = self.params[layer.base]
        return (e.T if layer.transposed else e.reshape(base.shape)).to(base.dtype)

    # ------------------------------------------------------------------ per step and per epoch

    @torch.no_grad()
    def after_step(self, skipped: torch.Tensor | None = None) -> None:
        """The epoch's first optimizer step: the change of every effective weight it made (against the
        weights at the epoch end, which the weights probe holds)."""
        if not self._awaiting or (skipped is not None and bool(skipped)):
            return
        self._awaiting = False
        for layer in self.layers:
            before = self._effective(layer, self.weights.at_epoch_end)
            after = self._effective(layer, self._now)
            self._update[layer.module] = (float((after - before).square().sum()), float(before.square().sum()))

    @torch.no_grad()
    def measure(self) -> list[AdapterStat]:
        """Every measured layer's statistics at this epoch end (after the weights probe's `measure`)."""
        out = []
        for layer in self.layers:
            now = self._effective(layer, self._now)
            ref = self._effective(layer, self.weights.reference)
            diff = now - ref
            base_now, base_ref = self.params[layer.base], self.weights.reference(layer.base)
            if torch.equal(base_now.detach(), base_ref.view(base_now.shape)):  # W_base frozen: a low-rank change
                u_t, v_t = self._factors(layer, self._now)
                u_0, v_0 = self._factors(layer, self.weights.reference)
                if u_0.any() and v_0.any():
                    u_t, v_t = torch.cat([u_t, -u_0], dim=1), torch.cat([v_t, v_0], dim=0)
                sv = singular_values_of_product(u_t, v_t)
            else:
                sv = torch.linalg.svdvals(diff)
            update = self._update.get(layer.module)
            out.append(
                AdapterStat(
                    module=layer.module,
                    type=layer.type,
                    shape=layer.shape,
                    rank=layer.rank,
                    alpha=layer.alpha,
                    scaling=layer.adapters[0].scaling,
                    diff_sq=float(diff.square().sum()),
                    ref_sq=float(ref.square().sum()),
                    update_sq=update[0] if update else None,
                    before_update_sq=update[1] if update else None,
                    spectrum=spectrum(sv, (diff.shape[0], diff.shape[1])),
                )
            )
        self._update, self._awaiting = {}, True
        return out


def mark_adapters(arch: Architecture, model: nn.Module) -> Architecture:
    """The architecture's rows of LoRA layers and of their factors say so (ModuleInfo.adapter)."""
    layers = lora_layers(model)
    if not layers:
        return arch
    marks: dict[str, str] = {}
    for name, layer in layers:
        keys = list(layer.active_adapters)
        r = sum(int(layer.r[k]) for k in keys)
        alpha = float(layer.lora_alpha[keys[0]]) if keys else 0.0
        marks[name] = f"LoRA r={r}, α={alpha:g}"
        for part, word in (("lora_A", "LoRA A"), ("lora_B", "LoRA B")):
            marks[f"{name}.{part}"] = word
            for key in keys:
                marks[f"{name}.{part}.{key}"] = word
    for row in arch.modules:
        if row.name in marks:
            row.adapter = marks[row.name]
    return arch
