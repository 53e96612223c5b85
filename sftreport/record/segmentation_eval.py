"""Semantic segmentation's evaluation and probe view, the Recorder's task strategy for per-pixel logits.

The model returns logits (N, K, H, W), or torchvision's dict {"out": ..., "aux": ...}; targets are
masks (N, H, W) of class indices with 255 ("void") ignored. Evaluation sums a pixel confusion matrix on
the device (reduced across processes like the classifier's), from which pixel accuracy, per-class IoU
and mIoU follow. The feature probe sees one vector per probe image: the head's input averaged over the
pixels of the image's dominant object class (`probe_view`), with that class as the image's label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from sftreport.record.evaluation import all_reduce_sum, logits_of
from sftreport.record.stats import count_bins
from sftreport.schema import SegmentationEvaluation

IGNORE = 255


def pixel_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K·K,) int64 counts of (true, predicted) over the pixels whose target is not IGNORE."""
    keep = target != IGNORE
    t, p = target[keep].long(), pred[keep].long()
    return count_bins(t * num_classes + p, num_classes * num_classes)


def segmentation_from_sums(loss_sum: float, confusion: list[list[int]], images: int) -> SegmentationEvaluation:
    n = len(confusion)
    count = sum(map(sum, confusion))
    tp = [confusion[i][i] for i in range(n)]
    iou: list[float | None] = []
    for c in range(n):
        union = sum(confusion[c]) + sum(r[c] for r in confusion) - tp[c]
        iou.append(tp[c] / union if union else None)
    defined = [v for v in iou if v is not None]
    return SegmentationEvaluation(
        loss=loss_sum / count if count else float("nan"),
        accuracy=sum(tp) / count if count else 0.0,
        count=count,
        confusion=confusion,
        per_class_accuracy=[(row[i] / sum(row)) if sum(row) else None for i, row in enumerate(confusion)],
        images=images,
        iou=iou,
        miou=sum(defined) / len(defined) if defined else float("nan"),
    )


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    data: Iterable,
    num_classes: int,
    device: torch.device,
    loss_fn: Callable | None = None,
    autocast: Callable = nullcontext,
) -> SegmentationEvaluation:
    """`data` yields (images, masks). The loss is the mean per-pixel cross-entropy (void left out)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    images = 0
    try:
        for x, y in data:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()
            with autocast():
                logits = logits_of(model(x))
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum").double()
            confusion += pixel_confusion(logits.argmax(dim=1), y, num_classes)
            images += len(y)
    finally:
        model.train(was_training)
    packed = torch.cat([loss_sum.reshape(1), torch.tensor([float(images)], device=device, dtype=torch.float64)])
    sums = all_reduce_sum(torch.cat([packed, confusion.double()])).tolist()
    cells = [round(v) for v in sums[2:]]
    k = num_classes
    return segmentation_from_sums(sums[0], [cells[i * k : (i + 1) * k] for i in range(k)], round(sums[1]))


def dominant_class(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) the most frequent class other than 0 (background) in each mask; 0 when there is none."""
    n = masks.shape[0]
    flat = masks.reshape(n, -1).long()
    valid = (flat != IGNORE) & (flat > 0)
    counts = torch.zeros(n, num_classes, dtype=torch.long, device=masks.device)
    counts.scatter_add_(1, torch.where(valid, flat, 0), valid.long())
    best = counts.argmax(dim=1)
    return torch.where(counts.amax(dim=1) > 0, best, 0)


class SegmentationTask:
    """The Recorder's strategy for per-pixel logits (see the module's docstring)."""

    name = "segment"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._pred: torch.Tensor | None = None  # the probe pass's predicted masks, drawn by `pictures`

    def targets_to(self, targets: torch.Tensor, device: torch.device) -> torch.Tensor:
        return targets.to(device).long()

    def check_targets(self, targets: torch.Tensor) -> str | None:
        bad = (targets != IGNORE) & ((targets < 0) | (targets >= self.num_classes))
        if bool(bad.any()):
            return f"mask labels must be 0..{self.num_classes - 1} or {IGNORE} (void), found {int(targets[bad][0])}"
        return None

    def probe_labels(self, masks: torch.Tensor) -> torch.Tensor:
        return dominant_class(masks, self.num_classes)

    def check_forward(self, model: nn.Module, x: torch.Tensor) -> int:
        from sftreport.record.recorder import check_forward

        return check_forward(model, x, dims=4)

    def evaluate(self, model, data, device, autocast=nullcontext) -> SegmentationEvaluation:
        return evaluate_segmentation(model, data, self.num_classes, device, autocast=autocast)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Correct pixels and labelled pixels of a training batch (on the device)."""
        keep = targets != IGNORE
        return ((logits.detach().argmax(dim=1) == targets) & keep).sum(), keep.sum()

    def probe_view(
        self, model: nn.Module, x: torch.Tensor, feats: list[torch.Tensor], outs: list, masks: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Per image: the head's input (N, C, h, w) and the logits (N, K, H, W) averaged over the pixels of
        the image's dominant class (all pixels when it has none at the feature map's resolution)."""
        logits = torch.cat([logits_of(o).float() for o in outs])
        self._pred = logits.argmax(dim=1)
        return pooled_view(torch.cat(feats), logits, masks, labels)

    def pictures(self, x: torch.Tensor, masks: torch.Tensor, n: int) -> list[tuple[int, bytes]]:
        from sftreport.record.images import mask_panel

        if self._pred is None:
            return []
        return [(i, mask_panel(x[i], masks[i], self._pred[i], self.num_classes)) for i in range(min(n, len(x)))]


def pooled_view(
    feats: torch.Tensor, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    sel = (masks == labels.view(-1, 1, 1)).float().unsqueeze(1)  # (N, 1, H, W)
    pooled_logits = (logits * sel).sum(dim=(2, 3)) / sel.sum(dim=(2, 3)).clamp(min=1)
    if feats.dim() == 4:
        small = F.interpolate(sel, size=feats.shape[-2:], mode="area")
        small = torch.where(small.sum(dim=(2, 3), keepdim=True) > 0, small, torch.ones_like(small))
        feats = (feats * small).sum(dim=(2, 3)) / small.sum(dim=(2, 3))
    return feats, pooled_logits
