"""The segmenters: sftreport's digit segmenter and torchvision's fcn_*, deeplabv3_*, lraspp_*, built for a
dataset's classes with their class-producing heads new."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sftreport.errors import UserError
from sftreport.train.digits_resnet import DigitsResNet
from sftreport.train.models import _load_backbone, _pretrained_state

TORCHVISION_PREFIXES = ("fcn_", "deeplabv3_", "lraspp_")


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
    head: str
    new_params: set[str]
    weights: str


def build_segmenter(name: str, weights: str, num_classes: int) -> SegModel:
    if name == "digits_resnet":
        model: nn.Module = DigitsSegmenter(num_classes)
        new = {n for n, _ in model.named_parameters() if n.startswith("head.")}
        state, described, _ = _pretrained_state(name, weights)
        if state is None:
            return SegModel(model, "head", {n for n, _ in model.named_parameters()}, described)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        _load_backbone(model, state, "head", described)
        return SegModel(model, "head", new, described)
    if not name.startswith(TORCHVISION_PREFIXES):
        raise UserError(
            f"--task segment: {name!r} is not a segmentation model: digits_resnet (its backbone with a new "
            f"segmentation head) or torchvision's fcn_*, deeplabv3_*, lraspp_*"
        )
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models.segmentation):
        raise UserError(f"unknown segmentation model {name!r}: one of torchvision's fcn_*, deeplabv3_*, lraspp_*")
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
    # the new heads: the classifier's convolutions that produce the classes (LRASPP has two, low and high);
    # the last one is the recorder's head (LRASPP's head module itself takes a dict of features)
    heads = [
        n
        for n, m in model.named_modules()
        if n.startswith("classifier.") and isinstance(m, nn.Conv2d) and m.out_channels == num_classes
    ]
    owned = [n for n, _ in model.named_parameters()]
    new = {n for n in owned if any(n.startswith(h + ".") for h in heads)}
    if weights.lower() == "none":
        return SegModel(model, heads[-1], set(owned), "none (random initialisation)")
    state, described, _ = _pretrained_state(name, weights)
    assert state is not None
    # the pretrained classes' heads and the auxiliary classifier (not built here) are left out
    body = {
        k: v
        for k, v in state.items()
        if not k.startswith("aux_classifier.") and not any(k.startswith(h + ".") for h in heads)
    }
    own = model.state_dict()
    missing = [k for k in own if k not in body and not any(k.startswith(h + ".") for h in heads)]
    unexpected = [k for k in body if k not in own]
    wrong = [k for k in body if k in own and body[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what} {len(keys)} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise UserError(f"weights {described} do not fit {name}: {detail}")
    model.load_state_dict(body, strict=False)
    return SegModel(model, heads[-1], new, described)
