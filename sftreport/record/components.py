"""The components of a model, named from its structure: what a report groups parameters, activations and
CKA by, and what its "What actually trained" table lists.

Known layouts are recognised by their module names, not by their classes, so a model that follows one
(torchvision's or a copy of it) is named the same way:

- torchvision detection: `backbone.body` and `backbone.fpn` (or a plain `backbone`), `rpn`,
  `roi_heads.box_head`, `roi_heads.box_predictor`, the mask and keypoint heads; RetinaNet, FCOS and SSD's
  `head.classification_head` and `head.regression_head`; SSD's `backbone.features` and `backbone.extra`.
- torchvision segmentation: `backbone`, `classifier`, `aux_classifier`.
- a ResNet-style stem and stages at the top level (`conv1`, `bn1`, `layer1`, ...): one "backbone"; a top-level
  `head` beside it is a "segmentation head" when the model returns torchvision's `{"out": maps}`.

Every other parameter belongs to its top-level child (named as the child, like the report's blocks), and
the model's own parameters (a ViT's class token) to "(model)". A wrapper that holds the whole model in one
child (peft's PeftModel, DDP) is looked through: its model's children are the top-level ones. A parameter goes to the component with the
longest prefix that holds it (`sftreport.schema.component_of`), so each parameter is in exactly one.
"""

from __future__ import annotations

import re

from torch import nn

from sftreport.schema import component_of

# (module path, component name), most specific first where one path lies under another
KNOWN: list[tuple[str, str]] = [
    ("backbone.body", "backbone body"),
    ("backbone.fpn", "FPN"),
    ("backbone.features", "backbone body"),  # SSD and SSDlite: the truncated classifier's layers
    ("backbone.extra", "backbone extra layers"),  # SSD: the layers added for the coarser feature maps
    ("rpn", "RPN"),
    ("roi_heads.box_head", "box head"),
    ("roi_heads.box_predictor", "box predictor"),
    ("roi_heads.mask_head", "mask head"),
    ("roi_heads.mask_predictor", "mask head"),
    ("roi_heads.keypoint_head", "keypoint head"),
    ("roi_heads.keypoint_predictor", "keypoint head"),
    ("head.classification_head", "classification head"),
    ("head.regression_head", "regression head"),
    ("backbone", "backbone"),
    ("classifier", "classifier"),
    ("aux_classifier", "aux classifier"),
]

STEM_AND_STAGES = re.compile(r"conv1|bn1|relu|maxpool|layer\d+")
MODEL_ITSELF = "(model)"


def components(model: nn.Module, dense_output: bool = False) -> list[tuple[str, list[str]]]:
    """(name, module prefixes) of each component that holds parameters or FrozenBatchNorm values, in
    network order; a component's prefixes include its modules without parameters (a ResNet stem's max-pool),
    so that their activations are placed too. `dense_output`: the model returns per-pixel maps
    (a segmenter), which names a top-level `head` beside a ResNet stem a "segmentation head"."""
    inner, path = _unwrapped(model)
    prefixes = {_join(path, p): name for p, name in _named(inner, dense_output).items()}
    modules = dict(model.named_modules())
    itself = {p: p for p in prefixes}
    holding = {component_of(itself, n) for n, m in modules.items() if _holds_values(m)}
    order = {n: i for i, n in enumerate(modules)}
    listed: dict[str, list[str]] = {}  # component -> its prefixes, in network order
    for prefix in sorted(prefixes, key=order.__getitem__):
        listed.setdefault(prefixes[prefix], []).append(prefix)
    # a component none of whose modules holds anything (a detector's `transform`) is left out
    return [(name, ps) for name, ps in listed.items() if any(p in holding for p in ps)]


def _named(model: nn.Module, dense_output: bool) -> dict[str, str]:
    """Module path (relative to `model`; '' the model itself) -> component name, by the rules above."""
    modules = dict(model.named_modules())
    prefixes: dict[str, str] = {path: name for path, name in KNOWN if path in modules}
    top = [n for n, _ in model.named_children()]
    if "conv1" in top and "layer1" in top:
        for n in top:
            if STEM_AND_STAGES.fullmatch(n):
                prefixes[n] = "backbone"
        if "head" in top:
            prefixes["head"] = "segmentation head" if dense_output else "head"
    for n in top:  # the rest of each top-level child: a component named as the child, like the report's blocks
        prefixes.setdefault(n, n)
    prefixes[""] = MODEL_ITSELF
    return prefixes


def _unwrapped(model: nn.Module) -> tuple[nn.Module, str]:
    """The module that is the model proper, and its path: below wrappers that hold everything in one child
    and nothing of their own (peft's PeftModel.base_model.model, DistributedDataParallel's module)."""
    inner, path = model, ""
    while not _holds_values(inner):
        holders = [(n, c) for n, c in inner.named_children() if any(_holds_values(m) for m in c.modules())]
        if len(holders) != 1:
            break
        name, inner = holders[0]
        path = _join(path, name)
    return inner, path


def _join(path: str, name: str) -> str:
    """A module path below `path` ('' is the model itself)."""
    return f"{path}.{name}" if path and name else path or name


def _holds_values(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or frozen_norm_values(module) > 0


def frozen_norm_values(module: nn.Module) -> int:
    """The affine weight and bias values of a FrozenBatchNorm layer (torchvision's FrozenBatchNorm2d,
    timm's and detectron2's): buffers, so never trained and in no parameter count; 0 for any other module.
    Its running mean and variance are left out: every BatchNorm holds them as statistics, not parameters."""
    if "FrozenBatchNorm" not in type(module).__name__:
        return 0
    buffers = dict(module.named_buffers(recurse=False))
    return sum(buffers[k].numel() for k in ("weight", "bias") if k in buffers)
