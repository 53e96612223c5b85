"""Attention probe: per multi-head attention module (nn.MultiheadAttention: torchvision's ViT,
nn.TransformerEncoder) and per head, over the probe set, the entropy of the attention distributions and
how far they moved from the pretrained model's.

The modules are asked for their per-head weights during the probe pass (a pre-hook sets
`need_weights=True, average_attn_weights=False`, and PyTorch's fused fast path, which never computes
them, is switched off for the pass); the output is unchanged. Entropy is −Σ p log p over the keys, in
nats, averaged over samples and queries (uniform attention over S keys has log S); the change is the
total variation distance ½ Σ |p − p₀| to the pretrained model's attention on the same query, averaged
over the queries of the first `CHANGE_SAMPLES` probe samples (0: the same distributions; 1: disjoint).
Entropies are summed per chunk inside the hook, so memory does not grow with the probe set; only those
few samples' maps are kept (a ViT-B/16 keeps 4 × 12 heads × 197² per layer).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from sftreport.record.sharded import plain_class
from sftreport.schema import AttentionStat

CHANGE_SAMPLES = 4  # probe samples whose attention maps are compared with the pretrained model's


def attention_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if issubclass(plain_class(m), nn.MultiheadAttention)]


class AttentionProbe:
    def __init__(self, modules: list[str]):
        self.modules = modules
        self.reference: dict[str, torch.Tensor] = {}  # the pretrained model's maps (CHANGE_SAMPLES, heads, L, S)
        self._entropy: dict[str, torch.Tensor] = {}  # per head: entropies summed over samples and queries
        self._rows: dict[str, int] = {}  # (sample, query) rows summed
        self._maps: dict[str, list[torch.Tensor]] = {}
        self._keys: dict[str, int] = {}

    @contextmanager
    def hooks(self, model: nn.Module):
        self._entropy, self._rows, self._maps, self._keys = {}, {}, {n: [] for n in self.modules}, {}
        handles = []

        def ask(module, args, kwargs):
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

        def make(name: str):
            def keep(module, args, kwargs, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if not (isinstance(weights, torch.Tensor) and weights.dim() == 4):
                    return
                p = weights.detach().float()  # (N, heads, L, S)
                entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).sum(dim=(0, 2))
                self._entropy[name] = self._entropy.get(name, 0) + entropy
                self._rows[name] = self._rows.get(name, 0) + p.shape[0] * p.shape[2]
                self._keys[name] = p.shape[-1]
                kept = sum(len(m) for m in self._maps[name])
                if kept < CHANGE_SAMPLES:
                    self._maps[name].append(p[: CHANGE_SAMPLES - kept].clone())

            return keep

        mha = getattr(torch.backends, "mha", None)
        fast = mha.get_fastpath_enabled() if mha is not None else None
        try:
            if mha is not None:
                mha.set_fastpath_enabled(False)  # the fused path computes no weights and skips the hooks
            for name in self.modules:
                module = model.get_submodule(name)
                handles.append(module.register_forward_pre_hook(ask, with_kwargs=True))
                handles.append(module.register_forward_hook(make(name), with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()
            if mha is not None and fast is not None:
                mha.set_fastpath_enabled(fast)

    @torch.no_grad()
    def collect(self, first: bool) -> list[AttentionStat]:
        """The pass's statistics; the first pass (the pretrained model) becomes the reference."""
        out = []
        for name, total in self._entropy.items():
            entropy = total / self._rows[name]  # (heads,)
            p = torch.cat(self._maps[name])
            if first:
                self.reference[name] = p
            ref = self.reference.get(name)
            change = (
                0.5 * (p - ref).abs().sum(-1).mean(dim=(0, 2)) if ref is not None and ref.shape == p.shape else None
            )
            max_entropy = math.log(self._keys[name])
            rows = entropy.tolist()
            changes = change.clamp(0, 1).tolist() if change is not None else [None] * len(rows)
            for head, (e, c) in enumerate(zip(rows, changes)):
                out.append(
                    AttentionStat(module=name, head=head, entropy=max(0.0, e), max_entropy=max_entropy, change=c)
                )
        self._entropy, self._rows, self._maps = {}, {}, {}
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.reference.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.reference = dict(state)
