"""Activations probe: forward hooks on chosen modules during the probe pass.

For every call of every chosen module it records what the module really output at that moment
(statistics are computed inside the hook, before any later in-place op can change the tensor):
moments, zeros, channels that are zero for every probe sample and position (dead units), a fixed-bin
histogram, and a spatially pooled copy of the output for CKA. A module that runs more than once per
forward pass (torchvision's Bottleneck reuses one ReLU three times) gets one entry per call, named
`module#k`. Hooks are removed in a `finally`. The histogram bins, fixed from the pretrained model's
activations, are the probe's state (`state_dict`), which a resumed run restores.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sftreport.errors import UserError
from sftreport.record.sharded import plain_class, type_name
from sftreport.record.stats import (
    BinGrid,
    BinSpec,
    bin_positions,
    count_positions,
    merge,
    stats_from_rows,
    tensor_moments,
)
from sftreport.schema import ActivationStat, Histogram

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_SKIP = (nn.Dropout, nn.Flatten, nn.Identity)
CKA_POSITIONS = 16  # spatial positions (or token groups) kept per channel for CKA


def default_modules(model: nn.Module, head: str) -> list[str]:
    """The stem, every block, and the head, in network order.

    A block is a module held in a plain container (Sequential / ModuleList) that is not itself a plain
    container: ResNet's layerN.M, ViT's encoder layers (inside its Encoder module), MobileNet's and
    EfficientNet's features.N(.M). A model with no containers (GoogLeNet, Inception) uses its top-level
    modules that own parameters. The stem is the last top-level module with parameters, or ResNet's
    pooling, before the first block (ResNet's maxpool, ViT's conv_proj).
    """
    # a wrapper around the whole network (a LightningModule's `self.net`, DDP's `module`): look inside it
    with_params = [(n, m) for n, m in model.named_children() if any(True for _ in m.parameters())]
    if (
        len(with_params) == 1
        and not any(True for _ in model.parameters(recurse=False))
        and head.startswith(with_params[0][0] + ".")
        and plain_class(with_params[0][1]) not in _CONTAINERS
    ):
        name, inner = with_params[0]
        return [f"{name}.{n}" for n in default_modules(inner, head[len(name) + 1 :])]
    blocks: list[str] = []

    def holds_block_list(m: nn.Module, depth: int = 3) -> bool:
        """A container of three or more modules of one type among its children (ViT's Encoder.layers), or
        a few modules further down (Hugging Face's BertModel.encoder.layer); not the two-module branches of
        an Inception block."""
        for c in m.children():
            kids = list(c.children())
            if plain_class(c) in _CONTAINERS:
                if len(kids) >= 3 and len({plain_class(k) for k in kids}) == 1:
                    return True
            elif depth > 1 and holds_block_list(c, depth - 1):
                return True
        return False

    def walk(prefix: str, module: nn.Module, in_container: bool) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if full == head or isinstance(child, _SKIP):
                continue
            if plain_class(child) in _CONTAINERS:
                walk(full, child, True)
            elif in_container:
                blocks.append(full)
            elif holds_block_list(child):  # e.g. ViT's Encoder holding its layers
                walk(full, child, False)

    walk("", model, False)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    if not blocks:  # no containers anywhere: every top-level module that owns parameters
        blocks = [
            n
            for n, m in model.named_children()
            if n != head and any(True for _ in m.parameters()) and not isinstance(m, _SKIP)
        ]
    stem = None
    if blocks:
        first = order[blocks[0]]
        tops = [
            n
            for n, m in model.named_children()
            if order[n] < first
            and not blocks[0].startswith(n + ".")
            and plain_class(m) not in _CONTAINERS
            and not isinstance(m, _SKIP)
        ]
        stem = tops[-1] if tops else None
    chosen = ([stem] if stem else []) + blocks + [head]
    return sorted(dict.fromkeys(chosen), key=order.__getitem__)


def check_modules(model: nn.Module, names: list[str]) -> None:
    known = dict(model.named_modules())
    missing = [m for m in names if m not in known]
    if missing:
        raise UserError(
            f"no module named {missing[0]!r} to record activations of "
            f"(top-level modules: {', '.join(n for n, _ in model.named_children())})"
        )


def channel_dim(x: torch.Tensor) -> int:
    """Channels are dim 1 of an image tensor (N, C, H, W) and the last dim of (N, F) or (N, T, D)."""
    return 1 if x.dim() == 4 else x.dim() - 1


def pooled(x: torch.Tensor) -> torch.Tensor:
    """(N, features) for CKA: image maps average-pooled to at most 4×4, token sequences to 16 groups."""
    if x.dim() == 4:
        h, w = x.shape[-2:]
        x = F.adaptive_avg_pool2d(x, (min(h, 4), min(w, 4)))
    elif x.dim() == 3:
        x = F.adaptive_avg_pool1d(x.transpose(1, 2), min(x.shape[1], CKA_POSITIONS))
    return x.reshape(x.shape[0], -1).float()


@dataclass
class _CallAcc:
    """Accumulated over the probe set for one call index of one module."""

    type: str
    shape: list[int]
    moments: torch.Tensor  # (6,) moments row
    alive: torch.Tensor  # per channel: any non-zero value seen
    hist: torch.Tensor | None = None
    reps: list[torch.Tensor] = field(default_factory=list)
    samples: list[torch.Tensor] = field(default_factory=list)  # maps of the image samples


class ActivationProbe:
    def __init__(self, modules: list[str], bins: int, image_modules: list[str], image_samples: int):
        self.modules = modules
        self.bins = bins
        self.grids: dict[str, BinGrid] = {}  # key -> histogram bins, fixed on the first pass
        self.image_modules = set(image_modules)
        self.image_samples = image_samples
        self._acc: dict[tuple[str, int], _CallAcc] = {}

    @contextmanager
    def hooks(self, model: nn.Module, want_hist: bool, want_reps: bool):
        """Register the hooks for one pass over the probe set (several chunks)."""
        self._acc = {}
        calls: dict[str, int] = {}
        handles = []
        first_chunk = [True]

        def make(name: str):
            def hook(module, args, output):
                out = output[0] if isinstance(output, (tuple, list)) else output
                if not isinstance(out, torch.Tensor):
                    return
                k = calls.get(name, 0)
                calls[name] = k + 1
                self._observe(name, k, module, out.detach(), want_hist, want_reps, first_chunk[0])

            return hook

        try:
            for name in self.modules:
                handles.append(model.get_submodule(name).register_forward_hook(make(name)))

            def next_chunk() -> None:
                calls.clear()
                first_chunk[0] = False

            yield next_chunk
        finally:
            for h in handles:
                h.remove()

    def _observe(
        self,
        name: str,
        k: int,
        module: nn.Module,
        out: torch.Tensor,
        want_hist: bool,
        want_reps: bool,
        first_chunk: bool,
    ) -> None:
        x = out if out.dtype == torch.float32 else out.float()  # any memory layout: no flattening copy
        # one full-size temporary, reused: the centred copy for the moments, then the histogram's bin positions
        scratch = torch.empty_like(x)
        moments = tensor_moments(x, scratch)
        cd = channel_dim(x)
        other = tuple(d for d in range(x.dim()) if d != cd)
        # dead: exactly 0 at every position; a channel holding NaN (a diverged run) is not dead, it is broken
        alive = ~((x.amax(dim=other) == 0) & (x.amin(dim=other) == 0))
        acc = self._acc.get((name, k))
        if acc is None:
            acc = self._acc[(name, k)] = _CallAcc(type_name(module), list(out.shape[1:]), moments, alive)
        else:
            acc.moments = merge(acc.moments, moments)
            acc.alive = acc.alive | alive
        key = f"{name}#{k}"
        if want_hist and key in self.grids:
            # 1 + bin, exactly; 0 and bins + 1 collect what falls outside, NaN counts nowhere
            h = count_positions(bin_positions(x, scratch, self.grids[key]).clamp_(0, self.bins + 1), self.bins + 2)
            acc.hist = h if acc.hist is None else acc.hist + h
        if want_reps:
            acc.reps.append(pooled(x))
        if first_chunk and name in self.image_modules and x.dim() == 4:
            acc.samples.append(x[: self.image_samples].clone())

    def fix_bins(self) -> None:
        """Fix each output's histogram range from the pass just made (the pretrained model's)."""
        keys = list(self._acc)
        mom = torch.stack([self._acc[k].moments for k in keys]).tolist()
        spec = BinSpec.around([r[3] for r in mom], [r[4] for r in mom], self.bins)
        self.grids = {f"{n}#{k}": grid for (n, k), grid in zip(keys, spec.grids)}

    def state_dict(self) -> dict[str, list[int]]:
        """The fixed histogram bins of each output, as plain integers."""
        return {key: [g.exp, g.cells, g.start, g.bins] for key, g in self.grids.items()}

    def load_state_dict(self, grids: dict[str, list[int]]) -> None:
        self.grids = {key: BinGrid(*values) for key, values in grids.items()}

    def labels(self) -> dict[tuple[str, int], str]:
        """`module` for a module called once, `module#1`, `module#2`, ... for one called several times."""
        per: dict[str, int] = {}
        for name, k in self._acc:
            per[name] = max(per.get(name, 0), k + 1)
        return {(n, k): (n if per[n] == 1 else f"{n}#{k + 1}") for n, k in self._acc}

    def collect(self) -> tuple[list[ActivationStat], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Statistics (one host transfer), pooled representations and image-sample maps, by label."""
        keys = list(self._acc)
        if not keys:
            return [], {}, {}
        labels = self.labels()
        accs = [self._acc[k] for k in keys]
        mom = torch.stack([a.moments for a in accs])
        alive_counts = torch.stack([a.alive.sum() for a in accs])
        chans = [a.alive.numel() for a in accs]
        empty = torch.zeros(self.bins + 2, dtype=torch.int64, device=mom.device)
        hist = torch.stack([a.hist if a.hist is not None else empty for a in accs])
        mom_rows, alive_rows, hist_rows = mom.tolist(), alive_counts.tolist(), hist.tolist()
        stats = stats_from_rows(mom_rows)
        out = []
        for (n, k), a, st, alive, ch, h in zip(keys, accs, stats, alive_rows, chans, hist_rows):
            # a call first seen after the bins were fixed has no histogram: its counts are all zero
            grid = self.grids.get(f"{n}#{k}") or BinSpec.around([st.min], [st.max], self.bins).grids[0]
            lo, hi = grid.lo, grid.hi
            out.append(
                ActivationStat(
                    module=labels[(n, k)],
                    type=a.type,
                    shape=a.shape,
                    stats=st,
                    channels=ch,
                    dead_channels=ch - int(alive),
                    nonnegative=st.min >= 0,
                    hist=Histogram.from_counts(lo, hi, h),
                )
            )
        reps = {labels[k]: torch.cat(a.reps) for k, a in zip(keys, accs) if a.reps}
        maps = {labels[k]: torch.cat(a.samples) for k, a in zip(keys, accs) if a.samples}
        return out, reps, maps
