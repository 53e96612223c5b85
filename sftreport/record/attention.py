"""Attention probe: per multi-head attention module (nn.MultiheadAttention: torchvision's ViT,
nn.TransformerEncoder; Hugging Face's `*SelfAttention` modules loaded with eager attention, which return
their weights) and per head, over the probe set, the entropy of the attention distributions and
how far they moved from the pretrained model's.

The modules are asked for their per-head weights during the probe pass (a pre-hook sets
`need_weights=True, average_attn_weights=False`, and PyTorch's fused fast path, which never computes
them, is switched off for the pass); the output is unchanged. Entropy is −Σ p log p over the keys, in
nats, averaged over samples and queries (uniform attention over S keys has log S); the change is the
total variation distance ½ Σ |p − p₀| to the pretrained model's attention on the same query, averaged
over the queries of the first `CHANGE_SAMPLES` probe samples (0: the same distributions; 1: disjoint).
Entropies are summed per chunk inside the hook, so memory does not grow with the probe set; only those
few samples' maps are kept (a ViT-B/16 keeps 4 × 12 heads × 197² per layer).

Padded text: when the model exposes the batch's padding mask (`padding_mask`, (N, S), true for real tokens,
as sftreport's TextClassifier does), only real tokens' queries count, and a query's uniform entropy is the
log of its number of real keys.
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
    return [
        n
        for n, m in model.named_modules()
        if issubclass(plain_class(m), nn.MultiheadAttention) or type(m).__name__.endswith("SelfAttention")
    ]


class AttentionProbe:
    def __init__(self, modules: list[str]):
        self.modules = modules
        self.reference: dict[str, torch.Tensor] = {}  # the pretrained model's maps (CHANGE_SAMPLES, heads, L, S)
        self._entropy: dict[str, torch.Tensor] = {}  # per head: entropies summed over samples and queries
        self._rows: dict[str, float] = {}  # (sample, query) rows summed
        self._maps: dict[str, list[torch.Tensor]] = {}
        self._max: dict[str, float] = {}  # Σ over counted queries of log(the query's real keys)

    @contextmanager
    def hooks(self, model: nn.Module):
        self._entropy, self._rows, self._maps, self._max = {}, {}, {n: [] for n in self.modules}, {}
        handles = []

        def ask(module, args, kwargs):
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

        def query_weights(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(N, 1, L) weight of each query (1, or 0 for padding) and (N, 1, L) log of its real keys."""
            mask = getattr(model, "padding_mask", None)
            n, _, length, keys = p.shape
            if isinstance(mask, torch.Tensor) and mask.shape == (n, keys) and length == keys:
                real = mask.to(p.device, torch.float32)
                return real[:, None, :], real.sum(-1).clamp_min(1).log()[:, None, None].expand(n, 1, length)
            return p.new_ones(n, 1, length), p.new_full((n, 1, length), math.log(keys))

        def make(name: str):
            def keep(module, args, kwargs, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if not (isinstance(weights, torch.Tensor) and weights.dim() == 4):
                    return
                p = weights.detach().float()  # (N, heads, L, S)
                counted, log_keys = query_weights(p)
                entropy = (-(p * p.clamp_min(1e-30).log()).sum(-1) * counted).sum(dim=(0, 2))
                self._entropy[name] = self._entropy.get(name, 0) + entropy
                self._rows[name] = self._rows.get(name, 0) + float(counted.sum())
                self._max[name] = self._max.get(name, 0.0) + float((log_keys * counted).sum())
                kept = sum(len(m) for m in self._maps[name])
                if kept < CHANGE_SAMPLES:
                    self._maps[name].append(
                        torch.cat([p, counted[..., None].expand(-1, p.shape[1], -1, 1)], dim=-1)[
                            : CHANGE_SAMPLES - kept
                        ].clone()
                    )

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
            rows_counted = max(self._rows[name], 1.0)
            entropy = total / rows_counted  # (heads,)
            kept = torch.cat(self._maps[name])  # the maps, with each query's weight as a last column
            p, counted = kept[..., :-1], kept[..., -1]
            if first:
                self.reference[name] = p
            ref = self.reference.get(name)
            change = None
            if ref is not None and ref.shape == p.shape:
                tv = 0.5 * (p - ref).abs().sum(-1)  # (n, heads, L)
                change = (tv * counted).sum(dim=(0, 2)) / counted.sum(dim=(0, 2)).clamp_min(1)
            max_entropy = self._max[name] / rows_counted
            rows = entropy.tolist()
            changes = change.clamp(0, 1).tolist() if change is not None else [None] * len(rows)
            for head, (e, c) in enumerate(zip(rows, changes)):
                out.append(
                    AttentionStat(module=name, head=head, entropy=max(0.0, e), max_entropy=max_entropy, change=c)
                )
        self._entropy, self._rows, self._maps, self._max = {}, {}, {}, {}
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.reference.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.reference = dict(state)
