"""Architecture probe: every module with its type, output shape (one forward pass of a probe batch),
call count, own parameters, trainable and new (not pretrained) counts and FrozenBatchNorm values, plus
per-block and per-component totals (the components: record/components.py).

Parameters are counted where they are owned (`recurse=False`), so module rows sum to the model total.
Hooks are removed and the model's train/eval mode restored in a `finally`.
"""

from __future__ import annotations

import torch
from torch import nn

from sftreport.errors import UserError
from sftreport.record.components import components, frozen_norm_values
from sftreport.record.sharded import type_name
from sftreport.schema import Architecture, BlockSummary, ComponentSummary, ModuleInfo, component_of


def classifier_head(model: nn.Module) -> str:
    """The name of the module that produces the logits: the last Linear, or the last 1×1-style Conv2d
    (SqueezeNet's classifier), in definition order."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not names:
        raise UserError(f"{type(model).__name__}: no classifier head (Linear or Conv2d) found: pass head='module name'")
    return names[-1]


def _shape(out) -> list[int] | None:
    if isinstance(out, torch.Tensor):
        return list(out.shape[1:])
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return list(out[0].shape[1:])
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return list(out.logits.shape[1:])
    return None


def _dense(out) -> bool:
    """torchvision's segmentation output: {"out": per-pixel logits (N, K, H, W)}."""
    return isinstance(out, dict) and isinstance(out.get("out"), torch.Tensor) and out["out"].dim() == 4


@torch.no_grad()
def describe(model: nn.Module, sample: torch.Tensor, new_params: set[str]) -> Architecture:
    shapes: dict[str, list[int] | None] = {}
    calls: dict[str, int] = {}
    dense = [False]
    handles = []
    was_training = model.training

    def make(name: str):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            shapes.setdefault(name, _shape(output))
            if not name:
                dense[0] = _dense(output)

        return hook

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_hook(make(name)))
        model.eval()
        model(sample)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    rows = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        full = [f"{name}.{p}" if name else p for p, _ in own]
        rows.append(
            ModuleInfo(
                name=name,
                type=type_name(module),
                depth=0 if not name else name.count(".") + 1,
                output_shape=shapes.get(name),
                calls=calls.get(name, 0),
                params=sum(t.numel() for _, t in own),
                trainable=sum(t.numel() for _, t in own if t.requires_grad),
                new=sum(t.numel() for f, (_, t) in zip(full, own) if f in new_params),
                frozen_norm=frozen_norm_values(module),
            )
        )
    blocks = []
    root_own = rows[0]
    if root_own.params:  # parameters held directly by the model (ViT's class token, positions)
        blocks.append(
            BlockSummary(
                name="(model)",
                type=root_own.type,
                params=root_own.params,
                trainable=root_own.trainable,
                new=root_own.new,
            )
        )
    for child_name, child in model.named_children():
        members = [r for r in rows if r.name == child_name or r.name.startswith(child_name + ".")]
        blocks.append(
            BlockSummary(
                name=child_name,
                type=type_name(child),
                params=sum(r.params for r in members),
                trainable=sum(r.trainable for r in members),
                new=sum(r.new for r in members),
            )
        )
    return Architecture(
        model_type=type_name(model),
        modules=rows,
        blocks=blocks,
        components=_summaries(components(model, dense[0]), rows),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        new_params=sum(p.numel() for n, p in model.named_parameters() if n in new_params),
        input_shape=list(sample.shape[1:]),
    )


def _summaries(parts: list[tuple[str, list[str]]], rows: list[ModuleInfo]) -> list[ComponentSummary]:
    """Each component's counts: the sums of its modules' own counts."""
    index = {p: name for name, prefixes in parts for p in prefixes}
    sums = {name: [0, 0, 0, 0] for name, _ in parts}
    for r in rows:
        owner = component_of(index, r.name)
        if owner is not None:
            for k, v in enumerate((r.params, r.trainable, r.new, r.frozen_norm)):
                sums[owner][k] += v
    return [
        ComponentSummary(
            name=name,
            modules=prefixes,
            params=sums[name][0],
            trainable=sums[name][1],
            new=sums[name][2],
            frozen_norm=sums[name][3],
        )
        for name, prefixes in parts
    ]
