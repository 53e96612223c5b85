"""Strategies beyond freezing a prefix of the model (models.apply_strategy does that): linear probing then
fine-tuning (lp-ft), layer-wise learning-rate decay, and LoRA through the `peft` library.

- **lp-ft** (Kumar et al., 2022): epochs 1..lp_epochs train the new head alone (the linear probe, the
  backbone frozen with its BatchNorm statistics); from epoch lp_epochs + 1 every parameter trains. The
  optimizer is rebuilt over all parameters at the switch (the head's momentum starts afresh) and the
  learning-rate schedule restarts over the remaining epochs: each phase has its own cosine (or constant) run.
- **Layer-wise learning-rate decay** (`--lr-decay F`): the head gets the learning rate, the block below it
  lr·F, the next lr·F², down to the stem. The blocks are the recorder's (record/activations.py
  `default_modules`: ResNet's layerN.M, ViT's encoder layers, ...); a parameter outside every block goes
  with the next block up (ResNet's conv1 and bn1 with its stem, a final norm with the head).
- **LoRA** (`--strategy lora:RANK`, Hu et al., 2021): peft injects trainable low-rank factors A and B
  next to every adapted layer, whose weight W₀ stays frozen; the layer computes with W₀ + (α/r)·B·A. The
  new head trains in full. Only the adapters and the head are new parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from sftreport.errors import UserError, one_line
from sftreport.record.activations import default_modules
from sftreport.schema import LoRAInfo, ParamGroupInfo

LORA_TYPES = (nn.Linear, nn.Conv2d)  # what `--strategy lora:RANK` adapts


@dataclass
class ParamGroup:
    info: ParamGroupInfo
    params: list[nn.Parameter]


def param_groups(model: nn.Module, head: str, lr: float, decay: float | None) -> list[ParamGroup]:
    """The optimizer's parameter groups, head first (so that the first group's learning rate is the one the
    run reports per step). Without `decay`: one group of every trainable parameter. With it: one group per
    block that holds trainable parameters, block k below the head at lr·decay^k, counting every block that
    holds parameters (a frozen block keeps its place, so freezing does not change the others' rates)."""
    named = list(model.named_parameters())
    if decay is None:
        trainable = [p for _, p in named if p.requires_grad]
        info = ParamGroupInfo(name="all", depth=0, lr=lr, params=sum(p.numel() for p in trainable))
        return [ParamGroup(info, trainable)]
    blocks = [m for m in default_modules(model, head) if m != head]
    owner: list[str | None] = []
    for name, _ in named:
        if name.startswith(head + "."):
            owner.append(head)
        else:
            owner.append(next((b for b in blocks if name.startswith(b + ".")), None))
    # a parameter outside every block goes with the next block up (the head after the last block); those
    # before the first block that owns parameters go with the lowest block, the stem
    group_of: list[str] = [""] * len(named)
    following = head
    for i in range(len(named) - 1, -1, -1):
        following = owner[i] or following
        group_of[i] = following
    lowest = next((b for b in blocks), head)
    for i in range(len(named)):
        if owner[i] is not None:
            break
        group_of[i] = lowest
    order = [b for b in blocks if b in group_of] + [head]
    depth = {g: k for k, g in enumerate(reversed(order))}
    groups = []
    for g in reversed(order):  # head first
        members = [(n, p) for (n, p), gi in zip(named, group_of) if gi == g]
        trainable = [p for _, p in members if p.requires_grad]
        if not trainable:
            continue
        owners = list(
            dict.fromkeys(g if n.startswith(g + ".") else n.rpartition(".")[0] or "(model)" for n, _ in members)
        )
        label = (
            ", ".join(owners[:4]) + (" …" if len(owners) > 4 else "") + (" (stem)" if g == lowest and g != head else "")
        )
        info = ParamGroupInfo(
            name=label, depth=depth[g], lr=lr * decay ** depth[g], params=sum(p.numel() for p in trainable)
        )
        groups.append(ParamGroup(info, trainable))
    return groups


def optimizer_groups(groups: list[ParamGroup]) -> list[dict]:
    return [{"params": g.params, "lr": g.info.lr} for g in groups]


def unfreeze_all(model: nn.Module) -> list[str]:
    """lp-ft's second phase: every parameter trains. Returns the frozen modules (none)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return []


# --------------------------------------------------------------------------- LoRA


def lora_targets(model: nn.Module, head: str, names: list[str] | None) -> list[str]:
    """The modules LoRA adapts: `names` as given (each a Linear or an ungrouped Conv2d of the model, not the
    new head), or by default every such module outside the head."""
    modules = dict(model.named_modules())

    def in_head(n: str) -> bool:
        return n == head or n.startswith(head + ".")

    if names is None:
        chosen = [
            n
            for n, m in modules.items()
            if isinstance(m, LORA_TYPES) and not in_head(n) and getattr(m, "groups", 1) == 1
        ]
        if not chosen:
            raise UserError(f"--strategy lora: {type(model).__name__} has no Linear or Conv2d layer to adapt")
        return chosen
    for n in names:
        m = modules.get(n)
        if m is None or not n:
            tops = ", ".join(c for c, _ in model.named_children())
            raise UserError(f"--lora-targets: the model has no module {n!r} (top-level modules: {tops})")
        if in_head(n):
            raise UserError(f"--lora-targets: {n!r} is the new head, which trains in full: adapt the layers below it")
        if not isinstance(m, LORA_TYPES):
            raise UserError(f"--lora-targets: {n!r} is a {type(m).__name__}; LoRA adapts Linear and Conv2d layers")
        if getattr(m, "groups", 1) != 1:
            raise UserError(f"--lora-targets: {n!r} is a grouped convolution, which LoRA does not adapt here")
    return list(dict.fromkeys(names))


def import_peft():
    try:
        import peft
    except ImportError:
        raise UserError(
            "--strategy lora:RANK needs the peft library: pip install 'sftreport[lora]' (or pip install peft)"
        ) from None
    return peft


def apply_lora(
    model: nn.Module, rank: int, alpha: float | None, head: str, targets: list[str] | None
) -> tuple[LoRAInfo, set[str]]:
    """Inject LoRA adapters with peft (in place: module and parameter names stay the model's own, the adapted
    layer `layer1.0.conv1` gaining `base_layer`, `lora_A.default` and `lora_B.default`); only the adapters
    and the head train. Returns what was done and the adapters' parameter names (new parameters)."""
    chosen = lora_targets(model, head, targets)  # before importing peft: bad input fails fast
    peft = import_peft()
    before = {n for n, _ in model.named_parameters()}
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=0.0,
        # one anchored pattern: a list would match by suffix ("conv1" would also adapt layer1.0.conv1)
        target_modules="^(" + "|".join(re.escape(n) for n in chosen) + ")$",
    )
    try:
        peft.inject_adapter_in_model(config, model)
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"--strategy lora:{rank}: peft cannot adapt this model: {one_line(e)}") from None
    for name, p in model.named_parameters():  # peft froze everything but the adapters: the head trains too
        if name.startswith(head + "."):
            p.requires_grad_(True)
    adapters = {n for n, _ in model.named_parameters() if ".lora_" in n}
    renamed = {n for n, _ in model.named_parameters()} - adapters
    assert len(renamed) == len(before), "peft keeps every base parameter (renamed into base_layer)"
    info = LoRAInfo(
        rank=rank,
        alpha=float(config.lora_alpha),
        dropout=0.0,
        targets=chosen,
        params=sum(p.numel() for n, p in model.named_parameters() if n in adapters),
    )
    return info, adapters


def frozen_modules(model: nn.Module) -> list[str]:
    """Modules whose parameters are all frozen (their BatchNorm layers keep their running statistics)."""
    return [
        n
        for n, m in model.named_modules()
        if n and any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())
    ]
