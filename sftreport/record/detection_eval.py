"""Object detection's evaluation: COCO mAP with a well-kept implementation (torchmetrics'
MeanAveragePrecision on pycocotools), never by hand. Needs the `detection` extra
(`pip install sftreport[detection]`).

Predictions and targets are torchvision's: per image {"boxes": (M, 4) x0 y0 x1 y1, "labels": (M,),
"scores": (M,)} for predictions; labels 1..K, 0 the background.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from sftreport.errors import UserError
from sftreport.schema import DetectionEvaluation


def _metric():
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError:
        raise UserError("detection needs torchmetrics and pycocotools: pip install 'sftreport[detection]'") from None
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")


def _value(t: torch.Tensor) -> float:
    v = float(t)
    return math.nan if v < 0 else v  # COCO's -1: undefined (no ground truth)


def detection_from_results(results: dict, num_classes: int, images: int, objects: int) -> DetectionEvaluation:
    per_class: list[float | None] = [None] * num_classes
    classes = results.get("classes", torch.zeros(0)).reshape(-1).tolist()
    values = results.get("map_per_class", torch.zeros(0)).reshape(-1).tolist()
    for c, v in zip(classes, values):
        if 0 <= int(c) < num_classes and v >= 0:
            per_class[int(c)] = float(v)
    return DetectionEvaluation(
        images=images,
        objects=objects,
        map=_value(results["map"]),
        map_50=_value(results["map_50"]),
        map_75=_value(results["map_75"]),
        ap_per_class=per_class,
    )


def score_detections(preds: list[dict], targets: list[dict], num_classes: int) -> DetectionEvaluation:
    metric = _metric()
    metric.update(preds, targets)
    return detection_from_results(metric.compute(), num_classes, len(targets), sum(len(t["labels"]) for t in targets))


@torch.no_grad()
def evaluate_detection(model: nn.Module, data: Iterable, num_classes: int, device: torch.device) -> DetectionEvaluation:
    """`data` yields (images, targets); the model in eval mode returns torchvision's detections."""
    was_training = model.training
    model.eval()
    metric = _metric()
    images = objects = 0
    try:
        for x, targets in data:
            preds = model(x.to(device))
            metric.update(
                [{k: v.detach().cpu() for k, v in p.items()} for p in preds],
                [{k: v.cpu() for k, v in t.items()} for t in targets],
            )
            images += len(targets)
            objects += sum(len(t["labels"]) for t in targets)
    finally:
        model.train(was_training)
    return detection_from_results(metric.compute(), num_classes, images, objects)
