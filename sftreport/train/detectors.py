"""The detectors `sftreport run --task detect` fine-tunes, built for the dataset's classes.

- `digits_resnet`: torchvision's Faster R-CNN on the shipped digits_resnet's stem and stages 1–3 (stride 8,
  pretrained on digits 0–4; its layer4 and classifier are not used), with a new RPN and box head.
- torchvision's detectors (its detection registry): Faster R-CNN, Mask R-CNN (boxes only: the mask branch is
  removed), RetinaNet, FCOS, SSD and SSDlite. With pretrained weights the model is built by torchvision's own
  builder, so FrozenBatchNorm2d and `trainable_backbone_layers` apply exactly as there; then the module that
  predicts the classes is replaced by one for the dataset's K classes (background included), built the way
  torchvision builds it. Keypoint R-CNN is refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from sftreport.errors import UserError, one_line
from sftreport.train.data import IMAGENET_MEAN, IMAGENET_STD
from sftreport.train.digits_resnet import DigitsResNet
from sftreport.train.models import (
    DIGITS_MODEL,
    _load_backbone,
    _pretrained_state,
    cached_weights,
    names_a_file,
    torchvision_weights,
)


class DigitsBody(nn.Module):
    """digits_resnet's stem and stages 1–3 (the same module names and weights): features at stride 8."""

    out_channels = 64

    def __init__(self):
        super().__init__()
        r = DigitsResNet()
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3 = r.layer1, r.layer2, r.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))))


@dataclass
class DetModel:
    model: nn.Module
    head: str  # the module that predicts the classes (the Recorder's head)
    new_params: set[str]  # not loaded from pretrained weights
    weights: str  # what was loaded, in words
    activations: list[str]  # the modules the activation probe reads
    head_params: set[str]  # the heads built for the dataset's classes: linear-probe trains exactly these
    builder_frozen: frozenset[str] = field(default_factory=frozenset)  # torchvision's trainable_backbone_layers


def build_detector(name: str, weights: str, num_classes: int, size: int) -> DetModel:
    """`name` for `num_classes` classes (background included) on size×size images; `weights`: none, DEFAULT,
    a torchvision weights enum member's name (e.g. COCO_V1) or a state_dict file."""
    if name == DIGITS_MODEL:
        return _digit_detector(weights, num_classes, size)
    import torchvision

    detectors = torchvision.models.list_models(module=torchvision.models.detection)
    if name.startswith("keypointrcnn_"):
        raise UserError(f"{name} predicts human keypoints, which sftreport does not fine-tune: use a box detector")
    if name not in detectors:
        known = ", ".join(d for d in detectors if not d.startswith("keypointrcnn_"))
        raise UserError(
            f"--task detect: {name!r} is not a detector: {DIGITS_MODEL} (its backbone under a Faster R-CNN) "
            f"or one of torchvision's {known}"
        )
    # SSD and SSDlite resize every image to their fixed 300 or 320 px; the others to the dataset's size
    sized = {} if name.startswith("ssd") else {"min_size": size, "max_size": size}
    state = None
    if weights.lower() == "none" or names_a_file(weights):
        state, described, _ = _pretrained_state(name, weights)
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **sized)
    else:
        w = torchvision_weights(name, weights)
        file = cached_weights(w)
        try:  # torchvision's builder, reading the cached file: its frozen layers and FrozenBatchNorm2d
            model = torchvision.models.get_model(name, weights=w, **sized)
        except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
            raise UserError(f"cannot load {file} into {name} ({one_line(e)}): delete it to download it again") from None
        described = f"torchvision {type(w).__name__}.{w.name}"
    pretrained = weights.lower() != "none"
    head = replace_class_head(model, num_classes)
    notes = [f"new {head} for {num_classes - 1} classes"] if pretrained else []
    if _drop_mask_branch(model):
        notes.append("boxes only: the mask branch removed")
    owned = {n for n, _ in model.named_parameters()}
    head_params = {n for n in owned if n.startswith(head + ".")}
    builder_frozen = frozenset(n for n, p in model.named_parameters() if not p.requires_grad)
    if state is not None:  # a file: every tensor but the replaced head's (and a Mask R-CNN's mask branch)
        own = model.state_dict()
        state = {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_")}
        # torchvision's pretrained detectors hold FrozenBatchNorm2d, which keeps no batch count
        state.update({k: v for k, v in own.items() if k.endswith(".num_batches_tracked") and k not in state})
        _load_backbone(model, state, head, described)
    return DetModel(
        model,
        class_logits_module(model, head),
        head_params if pretrained else owned,
        "; ".join([described, *notes]),
        backbone_modules(model),
        head_params,
        builder_frozen,
    )


def replace_class_head(model: nn.Module, num_classes: int) -> str:
    """Swap the module of a torchvision detector that predicts the classes for a new one predicting
    `num_classes`, built as torchvision builds it (same channels, anchors, convolutions and norm layers);
    return its name. The box regression is kept."""
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.fcos import FCOSClassificationHead
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead
    from torchvision.models.detection.ssd import SSD, SSDClassificationHead
    from torchvision.models.detection.ssdlite import SSDLiteClassificationHead

    if isinstance(model, FasterRCNN):  # Mask R-CNN and Keypoint R-CNN are Faster R-CNNs too
        features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(features, num_classes)
        return "roi_heads.box_predictor"
    head: Any = getattr(model, "head", None)
    old: Any = getattr(head, "classification_head", None)
    new: nn.Module
    if isinstance(model, RetinaNet):
        new = RetinaNetClassificationHead(
            old.cls_logits.in_channels, old.num_anchors, num_classes, norm_layer=_group_norm(old.conv)
        )  # v1: no norm layer; v2: GroupNorm(32)
    elif isinstance(model, FCOS):
        n_convs = sum(isinstance(m, nn.Conv2d) for m in old.conv)
        new = FCOSClassificationHead(old.cls_logits.in_channels, old.num_anchors, num_classes, num_convs=n_convs)
    elif isinstance(model, SSD) and isinstance(old, SSDLiteClassificationHead):
        # each feature map's block: a 3×3 depthwise Conv2dNormActivation, then a 1×1 Conv2d to anchors × classes
        blocks = list(old.module_list)
        norm: nn.BatchNorm2d = blocks[0][0][1]
        new = SSDLiteClassificationHead(
            [b[0][0].in_channels for b in blocks],
            [b[1].out_channels // old.num_columns for b in blocks],
            num_classes,
            partial(type(norm), eps=norm.eps, momentum=norm.momentum),
        )
    elif isinstance(model, SSD) and isinstance(old, SSDClassificationHead):
        convs = list(old.module_list)  # one 3×3 Conv2d per feature map
        new = SSDClassificationHead(
            [c.in_channels for c in convs], [c.out_channels // old.num_columns for c in convs], num_classes
        )
    else:
        raise UserError(f"{type(model).__name__}: sftreport does not know which of its modules predicts the classes")
    head.classification_head = new
    return "head.classification_head"


def _group_norm(convs: nn.Module):
    """The norm layer of a RetinaNet head's convolutions, to build its new one alike (None: plain convs)."""
    g = next((m for m in convs.modules() if isinstance(m, nn.GroupNorm)), None)
    return partial(nn.GroupNorm, g.num_groups) if g is not None else None


def _drop_mask_branch(model: nn.Module) -> bool:
    """Mask R-CNN fine-tuned for boxes only: without its mask branch its RoIHeads neither predicts nor
    trains masks (its has_mask() is false). True if there was one."""
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is None or getattr(roi_heads, "mask_predictor", None) is None:
        return False
    for part in ("mask_roi_pool", "mask_head", "mask_predictor"):
        setattr(roi_heads, part, None)
    return True


def class_logits_module(model: nn.Module, head: str) -> str:
    """The module inside the replaced head that outputs the class scores: Faster R-CNN's cls_score (not
    bbox_pred), otherwise the head's last convolution (RetinaNet's and FCOS' cls_logits, SSD's last map's)."""
    if head == "roi_heads.box_predictor":
        return f"{head}.cls_score"
    convs = [n for n, m in model.get_submodule(head).named_modules() if isinstance(m, nn.Conv2d)]
    return f"{head}.{convs[-1]}"


def backbone_modules(model: nn.Module) -> list[str]:
    """The probed modules of a torchvision detector: the children of its backbone's body (the body itself
    returns a dict of feature maps, which the activation probe does not read), or, without a body (SSD), of
    its backbone. A ModuleList is never called itself, so its items stand for it, and so do those of a
    Sequential of Sequentials (SSDlite's two stages)."""
    body = "backbone.body" if hasattr(model.get_submodule("backbone"), "body") else "backbone"
    found: list[str] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for n, m in module.named_children():
            if not any(True for _ in m.parameters()):
                continue
            kids = list(m.children())
            if type(m) is nn.ModuleList or (type(m) is nn.Sequential and all(type(k) is nn.Sequential for k in kids)):
                walk(f"{prefix}.{n}", m)
            else:
                found.append(f"{prefix}.{n}")

    walk(body, model.get_submodule(body))
    return found


def _digit_detector(weights: str, num_classes: int, size: int) -> DetModel:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    body = DigitsBody()
    model = FasterRCNN(
        body,
        min_size=size,
        max_size=size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=AnchorGenerator(((12, 20, 28),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(body.out_channels * 49, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
        box_detections_per_img=20,
    )
    head = "roi_heads.box_predictor.cls_score"
    acts = ["backbone.maxpool", "backbone.layer1.0", "backbone.layer2.0", "backbone.layer3.0"]
    owned = {n for n, _ in model.named_parameters()}
    heads = {n for n in owned if not n.startswith("backbone.")}  # the new RPN and box head
    state, described, _ = _pretrained_state(DIGITS_MODEL, weights)
    if state is None:
        return DetModel(model, head, owned, described, acts, heads)
    own = model.state_dict()
    state = {f"backbone.{k}": v for k, v in state.items() if f"backbone.{k}" in own}
    missing = [k for k in own if k.startswith("backbone.") and k not in state]
    wrong = [k for k in state if state[k].shape != own[k].shape]
    if missing or wrong:
        raise UserError(f"weights {described} do not fit the digit detector's backbone: {(missing + wrong)[0]}")
    model.load_state_dict(state, strict=False)  # the new parts: rpn.*, roi_heads.*
    return DetModel(model, head, heads, described, acts, heads)
