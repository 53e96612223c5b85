"""Object detection's evaluation: COCO mAP with a well-kept implementation (torchmetrics'
MeanAveragePrecision on pycocotools), never by hand. Needs the `detection` extra
(`pip install sftreport[detection]`).

Predictions and targets are torchvision's: per image {"boxes": (M, 4) x0 y0 x1 y1, "labels": (M,),
"scores": (M,)} for predictions; labels 1..K, 0 the background.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sftreport.errors import UserError
from sftreport.schema import DetectionEvaluation


def _metric():
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError:
        raise UserError("detection needs torchmetrics and pycocotools: pip install 'sftreport[detection]'") from None
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")
    # COCO's protocol scores each image's 100 best detections; SSD returns 200 to 300 by design
    metric.warn_on_many_detections = False
    return metric


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


def largest_box_labels(targets: list[dict]) -> torch.Tensor:
    """(N,) the label of each image's largest box (0 when it has none)."""
    out = []
    for t in targets:
        b = t["boxes"]
        if len(b):
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            out.append(int(t["labels"][int(area.argmax())]))
        else:
            out.append(0)
    return torch.tensor(out, dtype=torch.long, device=targets[0]["boxes"].device if targets else "cpu")


def object_level(maps: list[torch.Tensor], width: int) -> torch.Tensor:
    """Of a backbone's feature maps, finest first (an FPN's levels, SSD's maps), the finest at stride 8 or
    coarser: the finer levels of an FPN (stride 4) see little of an object, and the coarsest (RetinaNet's P7,
    an FPN's pool) are 1×1 on a small image, the same for every box. All finer: the coarsest."""
    return next((m for m in maps if width / m.shape[-1] >= 7.5), maps[-1])  # 7.5: SSD300's 300 / 38


class DetectionTask:
    """The Recorder's strategy for torchvision's detectors: targets are lists of {"boxes", "labels"}; the
    model in eval mode returns detections; the feature probe sees, per probe image, the backbone's features
    (one map: `object_level`'s) pooled (RoIAlign) over the image's largest ground-truth box, labelled with
    that box's class, and the model's own call on it is its top-scoring detection's label."""

    name = "detect"

    def __init__(self, num_classes: int, class_names: list[str] | None = None, score_threshold: float = 0.5):
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.score_threshold = score_threshold
        self._pred: list[dict] = []

    def targets_to(self, targets: list[dict], device: torch.device) -> list[dict]:
        return [{"boxes": t["boxes"].to(device).float(), "labels": t["labels"].to(device).long()} for t in targets]

    def check_targets(self, targets: list[dict]) -> str | None:
        for i, t in enumerate(targets):
            labels = t["labels"]
            if len(labels) and (int(labels.min()) < 1 or int(labels.max()) >= self.num_classes):
                return f"image {i}: box labels must be 1..{self.num_classes - 1} (0 is the background)"
        return None

    def probe_labels(self, targets: list[dict]) -> torch.Tensor:
        return largest_box_labels(targets)

    def check_forward(self, model: nn.Module, x: torch.Tensor) -> int:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(x)
        except (RuntimeError, ValueError, AssertionError, IndexError) as e:
            raise UserError(f"{type(model).__name__} cannot run on inputs of shape {list(x.shape[1:])}: {e}") from None
        finally:
            model.train(was_training)
        if not (isinstance(out, list) and all(isinstance(o, dict) and "boxes" in o for o in out)):
            raise UserError(
                f"{type(model).__name__} must return detections: a list of dicts with boxes, labels, scores"
            )
        return self.num_classes

    def evaluate(self, model, data, device, autocast=None) -> DetectionEvaluation:
        return evaluate_detection(model, data, self.num_classes, device)

    def correct(self, logits, targets) -> None:
        return None

    @torch.no_grad()
    def probe_view(
        self, model: nn.Module, x: torch.Tensor, feats: list[torch.Tensor], outs: list, targets: list[dict],
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        from torchvision.ops import roi_align

        self._pred = [p for out in outs for p in out]
        detector: Any = model  # torchvision's detectors (R-CNN, RetinaNet, FCOS, SSD): transform, backbone
        images, resized = detector.transform(list(x), [{k: v.clone() for k, v in t.items()} for t in targets])
        fmap = detector.backbone(images.tensors)  # one map, or a dict of them
        if isinstance(fmap, dict):
            fmap = object_level(list(fmap.values()), images.tensors.shape[-1])
        boxes = []
        for t in resized:
            b = t["boxes"]
            if len(b):
                area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
                boxes.append(b[int(area.argmax())].reshape(1, 4))
            else:  # no object: the whole image
                h, w = images.tensors.shape[-2:]
                boxes.append(torch.tensor([[0.0, 0.0, float(w), float(h)]], device=x.device))
        scale = fmap.shape[-1] / images.tensors.shape[-1]
        pooled = roi_align(fmap.float(), boxes, output_size=2, spatial_scale=scale, aligned=True).flatten(1)
        top = torch.zeros(len(x), self.num_classes, device=x.device)
        for i, p in enumerate(self._pred):
            if len(p["scores"]):
                top[i, int(p["labels"][int(p["scores"].argmax())])] = 1.0
        return pooled, top

    def pictures(self, x: torch.Tensor, targets: list[dict], n: int) -> list[tuple[int, bytes]]:
        from sftreport.record.images import box_panel

        keep = [{k: v[p["scores"] >= self.score_threshold] for k, v in p.items()} for p in self._pred[: min(n, len(x))]]
        return [(i, box_panel(x[i], targets[i], keep[i], self.class_names)) for i in range(len(keep))]
