"""The segmenters and their training loss: sftreport's digit segmenter and torchvision's fcn_*, deeplabv3_*,
lraspp_*, built for a dataset's classes with their class-producing heads new.

torchvision's segmenters are built with the dataset's class count, so every head that produces the classes
is fresh: the classifier's last convolution (LR-ASPP: its low and high classifiers) and, when the pretrained
weights hold one (fcn/deeplabv3 DEFAULT), the auxiliary classifier's last convolution. Every other weight
must load from the state dict, or the build stops with one line naming what did not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sftreport.errors import UserError
from sftreport.record.segmentation_eval import IGNORE
from sftreport.train.digits_resnet import DigitsResNet
from sftreport.train.models import DIGITS_MODEL, _load_backbone, _pretrained_state, load_all_but_heads

# per torchvision family: the convolutions that produce the classes, the recorder's head (the main output's)
# first; the aux classifier's is replaced only when the model has one
TORCHVISION_HEADS = {
    "fcn_": ("classifier.4", "aux_classifier.4"),
    "deeplabv3_": ("classifier.4", "aux_classifier.4"),
    "lraspp_": ("classifier.high_classifier", "classifier.low_classifier"),  # LRASPPHead itself takes a dict
}
AUX_LOSS_WEIGHT = 0.5  # torchvision's reference recipe (references/segmentation/train.py)


class SegHead(nn.Module):
    """New: 1×1 classifiers on layer4, layer2 and layer1, summed coarse to fine (FCN-style skips)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.classifier = nn.Conv2d(widths[3], num_classes, 1)
        self.skip2 = nn.Conv2d(widths[1], num_classes, 1)
        self.skip1 = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, l4: torch.Tensor, l2: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.classifier(l4), size=l2.shape[-2:], mode="bilinear", align_corners=False)
        x = F.interpolate(x + self.skip2(l2), size=l1.shape[-2:], mode="bilinear", align_corners=False)
        return x + self.skip1(l1)


class DigitsSegmenter(nn.Module):
    """digits_resnet's stem and stages (the same module names and weights) and a new SegHead; returns
    {"out": logits (N, K, H, W)} as torchvision's segmentation models do."""

    def __init__(self, num_classes: int):
        super().__init__()
        r = DigitsResNet()
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.head = SegHead(num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        l1 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        l2 = self.layer2(l1)
        l4 = self.layer4(self.layer3(l2))
        return {"out": F.interpolate(self.head(l4, l2, l1), size=size, mode="bilinear", align_corners=False)}


@dataclass
class SegModel:
    model: nn.Module
    head: str  # the recorder's head: the module producing the main output's classes
    new_params: set[str]  # not loaded from pretrained weights (all of them with --weights none)
    head_params: set[str]  # the heads built for the dataset's classes: what linear-probe trains
    weights: str  # what was loaded, in words


def build_segmenter(name: str, weights: str, num_classes: int) -> SegModel:
    if name == DIGITS_MODEL:
        return _digits_segmenter(weights, num_classes)
    family = next((prefix for prefix in TORCHVISION_HEADS if name.startswith(prefix)), None)
    if family is None:
        raise UserError(
            f"--task segment: {name!r} is not a segmentation model: digits_resnet (its backbone with a new "
            f"segmentation head) or torchvision's fcn_*, deeplabv3_*, lraspp_*"
        )
    return _torchvision_segmenter(name, family, weights, num_classes)


def _digits_segmenter(weights: str, num_classes: int) -> SegModel:
    model = DigitsSegmenter(num_classes)
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    state, described, _ = _pretrained_state(DIGITS_MODEL, weights)
    if state is None:
        return SegModel(model, "head", {n for n, _ in model.named_parameters()}, head, described)
    _load_backbone(model, {k: v for k, v in state.items() if not k.startswith("fc.")}, "head", described)
    return SegModel(model, "head", head, head, described)


def _torchvision_segmenter(name: str, family: str, weights: str, num_classes: int) -> SegModel:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models.segmentation):
        raise UserError(f"unknown segmentation model {name!r}: one of torchvision's fcn_*, deeplabv3_*, lraspp_*")
    state, described, _ = _pretrained_state(name, weights)
    # build the aux classifier only to receive pretrained weights (LR-ASPP has none: its keys, if any, are
    # then reported as unexpected)
    aux = state is not None and family != "lraspp_" and any(k.startswith("aux_classifier.") for k in state)
    model = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=num_classes, **({"aux_loss": True} if aux else {})
    )
    modules = dict(model.named_modules())
    heads = [h for h in TORCHVISION_HEADS[family] if h in modules]
    owned = [n for n, _ in model.named_parameters()]
    head_params = {n for n in owned if n.startswith(tuple(h + "." for h in heads))}
    if state is None:
        return SegModel(model, heads[0], set(owned), head_params, described)
    load_all_but_heads(model, state, heads, f"weights {described} do not fit {name}")
    return SegModel(model, heads[0], head_params, head_params, described)


def segmentation_loss(output: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """The training loss: the per-pixel cross-entropy of `output["out"]`, plus AUX_LOSS_WEIGHT times that of
    `output["aux"]` when the model has an aux classifier. Void pixels (255) count nowhere; each term is the
    mean over the batch's labelled pixels, and 0 (not NaN: 0/0) when the whole batch is void, so such a
    batch moves nothing through the loss."""
    labelled = (target != IGNORE).sum().clamp(min=1)

    def ce(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / labelled

    loss = ce(output["out"])
    if output.get("aux") is not None:
        loss = loss + AUX_LOSS_WEIGHT * ce(output["aux"])
    return loss
