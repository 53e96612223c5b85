"""Recurrent layers (nn.LSTM, nn.GRU): which rows of their weights belong to which gate, and what their
gates do on the probe sequences.

PyTorch stacks the gates' rows in one tensor per layer and direction: `weight_ih_l{k}` (and `weight_hh`,
`bias_ih`, `bias_hh`) hold the input, forget, cell and output gates of an LSTM, the reset, update and new
gates of a GRU, in that order. The weights probe splits its sums of squares by these blocks (`gate_rows`).

The fused kernels do not expose the gates' values, so `RecurrentProbe` recomputes each layer step by step
from the module's own input and weights (the equations of the nn.LSTM / nn.GRU documentation), checks
that the recomputed output is the module's, and measures how often each gate is saturated (a sigmoid
below 0.03 or above 0.97, a tanh beyond ±0.97: gradients through it vanish) and the top layer's hidden
state over time for a few probe sequences.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sftreport.record.sharded import plain_class
from sftreport.schema import GateSaturation, HiddenStates

LSTM_GATES = ("input", "forget", "cell", "output")
GRU_GATES = ("reset", "update", "new")
SATURATED = 0.97  # |tanh| above this, a sigmoid above it or below 1 − it
HIDDEN_SAMPLES = 2  # probe sequences whose hidden state over time is kept
MATCH_TOLERANCE = 1e-4  # the recomputation must reproduce the module's output to this (else: not measured)


def _gates_of(module: nn.Module) -> tuple[str, ...] | None:
    cls = plain_class(module)
    return LSTM_GATES if issubclass(cls, nn.LSTM) else GRU_GATES if issubclass(cls, nn.GRU) else None


def gate_rows(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Parameter name → the gates stacked along its rows, for every LSTM and GRU weight and bias."""
    out = {}
    for module_name, module in model.named_modules():
        gates = _gates_of(module)
        if gates is None:
            continue
        for name, _ in module.named_parameters(recurse=False):
            if name.startswith(("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")):
                out[f"{module_name}.{name}" if module_name else name] = gates
    return out


def recurrent_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _gates_of(m) is not None]


@dataclass
class _Layer:
    """One layer and direction's gate values over the probe set, accumulated: per gate, the values
    saturated and the sum of the values, over `count` values each (samples × time steps × units)."""

    saturated: torch.Tensor
    total: torch.Tensor
    count: int = 0


class RecurrentProbe:
    def __init__(self, modules: list[str]):
        self.modules = modules
        self._inputs: dict[str, list[tuple[torch.Tensor, object]]] = {}

    @contextmanager
    def hooks(self, model: nn.Module):
        """Keep each recurrent module's input (and initial state) during one probe pass."""
        self._inputs = {n: [] for n in self.modules}
        handles = []

        def make(name: str):
            def hook(module, args):
                if args and isinstance(args[0], torch.Tensor):  # a PackedSequence is not recomputed
                    self._inputs[name].append((args[0].detach(), args[1] if len(args) > 1 else None))

            return hook

        try:
            for name in self.modules:
                handles.append(model.get_submodule(name).register_forward_pre_hook(make(name)))
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def collect(self, model: nn.Module, want_hidden: bool) -> tuple[list[GateSaturation], list[HiddenStates]]:
        saturation: list[GateSaturation] = []
        hidden: list[HiddenStates] = []
        for name, calls in self._inputs.items():
            module = model.get_submodule(name)
            gates = _gates_of(module)
            if not calls or gates is None or not isinstance(module, nn.RNNBase) or module.proj_size:
                continue
            layers: dict[tuple[int, int], _Layer] = {}
            tops: list[torch.Tensor] = []
            for x, hx in calls:
                if hx is not None:  # a given initial state: not recomputed (the probe sets start from zeros)
                    layers = {}
                    break
                out, top = _recompute(module, x, gates, layers)
                real = module(x)[0]
                if not torch.allclose(out, real.float(), atol=MATCH_TOLERANCE, rtol=MATCH_TOLERANCE):
                    layers = {}  # an unsupported variant: say nothing rather than something wrong
                    break
                tops.append(top)
            names = (*gates, "cell state") if gates is LSTM_GATES else gates
            for (layer, direction), acc in sorted(layers.items()):
                values = (acc.saturated.double() / acc.count).tolist(), (acc.total / acc.count).tolist()
                for gate, sat, mean in zip(names, *values):
                    saturation.append(
                        GateSaturation(
                            module=name,
                            layer=layer,
                            direction="reverse" if direction else "forward",
                            gate=gate,
                            saturated=min(1.0, max(0.0, sat)),
                            mean=mean,
                        )
                    )
            if want_hidden and layers and tops:
                top = torch.cat(tops)
                for i in range(min(HIDDEN_SAMPLES, len(top))):
                    hidden.append(HiddenStates(module=name, sample=i, values=top[i].tolist()))
        self._inputs = {}
        return saturation, hidden


def _recompute(
    module: nn.RNNBase, x: torch.Tensor, gates: tuple[str, ...], layers: dict[tuple[int, int], _Layer]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's output recomputed step by step (batch first), accumulating each layer's gate counts;
    also the top layer's forward hidden states (N, T, H)."""
    batch_first = module.batch_first
    seq = (x if batch_first else x.transpose(0, 1)).float()  # (N, T, F)
    if seq.dim() == 2:  # an unbatched sequence
        seq = seq.unsqueeze(0)
    directions = 2 if module.bidirectional else 1
    top_forward = seq
    for layer in range(module.num_layers):
        outs = []
        for d in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(module, "weight_ih" + suffix).float(), getattr(module, "weight_hh" + suffix).float()
            b_ih = getattr(module, "bias_ih" + suffix).float() if module.bias else None
            b_hh = getattr(module, "bias_hh" + suffix).float() if module.bias else None
            steps = range(seq.shape[1] - 1, -1, -1) if d else range(seq.shape[1])
            n_values = len(gates) + (1 if gates is LSTM_GATES else 0)  # an LSTM's cell state tanh(c) too
            acc = layers.setdefault(
                (layer, d), _Layer(torch.zeros(n_values, dtype=torch.int64), torch.zeros(n_values, dtype=torch.float64))
            )
            h = seq.new_zeros(seq.shape[0], module.hidden_size)
            c = seq.new_zeros(seq.shape[0], module.hidden_size)
            hs = [h] * seq.shape[1]
            values: tuple[torch.Tensor, ...]
            kinds: tuple[str, ...]
            for t in steps:
                gi = seq[:, t] @ w_ih.T + (b_ih if b_ih is not None else 0)
                gh = h @ w_hh.T + (b_hh if b_hh is not None else 0)
                if gates is LSTM_GATES:
                    i, f, g, o = (gi + gh).chunk(4, dim=1)
                    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                    c = f * c + i * g
                    tc = c.tanh()
                    h = o * tc
                    values = (i, f, g, o, tc)
                    kinds = ("sigmoid", "sigmoid", "tanh", "sigmoid", "tanh")
                else:
                    ri, zi, ni = gi.chunk(3, dim=1)
                    rh, zh, nh = gh.chunk(3, dim=1)
                    r, z = (ri + rh).sigmoid(), (zi + zh).sigmoid()
                    n = (ni + r * nh).tanh()
                    h = (1 - z) * n + z * h
                    values, kinds = (r, z, n), ("sigmoid", "sigmoid", "tanh")
                acc.saturated += torch.stack([_saturated(v, k).sum() for v, k in zip(values, kinds)]).cpu()
                acc.total += torch.stack([v.double().sum() for v in values]).cpu()
                acc.count += h.numel()
                hs[t] = h
            outs.append(torch.stack(hs, dim=1))
        if layer == module.num_layers - 1:
            top_forward = outs[0]
        seq = torch.cat(outs, dim=2)
    out = seq if batch_first else seq.transpose(0, 1)
    return (out.squeeze(0) if x.dim() == 2 else out), top_forward


def _saturated(v: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "sigmoid":
        return (v < 1 - SATURATED) | (v > SATURATED)
    return v.abs() > SATURATED
