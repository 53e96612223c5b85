"""What a segmentation run's report shows differently (the report is built as for a classifier, then
adapted here): mIoU as the headline metric, pixel accuracy named as such, per-class IoU before vs after,
predicted masks next to the ground truth at the first and last recorded epochs, the pixel confusion
matrix, and features described as what they are (the head's input pooled over each probe image's
dominant class)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from sftreport.palette import legend
from sftreport.report import charts_segmentation, fmt
from sftreport.report.model import ChartBlock, Finding, Image, ImageGrid, KeyValues, Note, Report, Section
from sftreport.schema import SegmentationEvaluation
from sftreport.store import Run


def is_segmentation(run: Run) -> bool:
    return any(isinstance(e.val, SegmentationEvaluation) for e in run.epochs)


def _evals(run: Run) -> list[tuple[int, SegmentationEvaluation]]:
    return [(e.epoch, e.val) for e in run.epochs if isinstance(e.val, SegmentationEvaluation)]


def adapt(report: Report, builder: Any) -> None:
    """Rewrite `report` (built by sections._Builder `builder`) for a segmentation run, in place."""
    run = builder.run
    evals = _evals(run)
    first, last = evals[0], evals[-1]
    after = last if last[0] != first[0] else None
    h = report.headline
    h.metric, h.metric_long = "mIoU", "Validation mIoU"
    h.acc_before, h.acc_after = first[1].miou, after[1].miou if after else None
    best = max(evals, key=lambda p: (p[1].miou, -p[0]))  # highest mIoU, earliest on ties
    h.best_epoch, h.best_acc = best[0], best[1].miou
    miou = f"{fmt.num(first[1].miou, 3)} before (epoch {first[0]})"
    if after:
        miou = f"{fmt.num(first[1].miou, 3)} before → {fmt.num(after[1].miou, 3)} after ({after[1].miou - first[1].miou:+.3f})"
    _adapt_summary(report.summary, miou, f"{best[0]} (mIoU {fmt.num(best[1].miou, 3)})")
    _adapt_findings(report.findings, first, after)
    for sec in report.sections:
        if sec.id == "training":
            _adapt_training(sec, builder, first, after)
        elif sec.id == "features":
            _adapt_features(sec)


def _adapt_summary(kv: KeyValues, miou: str, best: str) -> None:
    items = []
    for key, value in kv.items:
        if key == "Validation accuracy":
            items.append(("Validation mIoU", miou))
            key = "Pixel accuracy"
        elif key == "Best epoch":
            value = best
        items.append((key, value))
    kv.items = items


def _adapt_findings(findings: list[Finding], first, after) -> None:
    for f in findings:
        if f.rule == "accuracy":
            f.title = f.title.replace("validation accuracy", "pixel accuracy").replace(
                "Validation accuracy", "Pixel accuracy"
            )
            f.evidence = f.evidence.replace("Validation accuracy", "Pixel accuracy").replace(
                " images.", " labelled pixels."
            ) + (f" mIoU: {first[1].miou:.3f} → {after[1].miou:.3f}." if after else f" mIoU: {first[1].miou:.3f}.")


def _iou_frame(builder: Any, first, after) -> pd.DataFrame:
    classes = builder.frames.classes
    start = "initial" if builder.frames.from_scratch else "pretrained"
    rows = []
    for (_, ev), which in [(first, start)] + ([(after, builder.trained)] if after else []):
        for i, v in enumerate(ev.iou):
            rows.append({"class": classes[i] if i < len(classes) else str(i), "which": which, "iou": v})
    return pd.DataFrame(rows)


def _masks(builder: Any) -> ImageGrid | Note:
    shots = [(e.epoch, e.images.masks) for e in builder.frames.image_epochs() if e.images and e.images.masks]
    if not shots:
        return Note("No predicted masks were recorded.")
    cols = [shots[0]] if len(shots) == 1 else [shots[0], shots[-1]]
    samples = sorted({m.sample for _, masks in cols for m in masks})
    rows: list[tuple[str, list[Image | None]]] = []
    for s in samples:
        imgs = []
        for epoch, masks in cols:
            m = next((m for m in masks if m.sample == s), None)
            imgs.append(
                builder.image(m.path, f"probe image {s + 1}, ground truth and prediction, epoch {epoch}") if m else None
            )
        rows.append((f"probe image {s + 1}: image · ground truth · prediction", imgs))
    classes = builder.frames.classes
    return ImageGrid(
        "masks",
        "Predicted masks, before and after",
        "Each strip: the probe image, its ground-truth mask, and the model's predicted mask over it "
        f"(background uncoloured, void grey; {legend(classes)}).",
        [builder.epoch_label(epoch) for epoch, _ in cols],
        rows,
    )


def _adapt_training(sec: Section, builder: Any, first, after) -> None:
    profile = builder.profile
    blocks = []
    for b in sec.blocks:
        if isinstance(b, ChartBlock) and b.id == "accuracy":
            b.title = "Pixel accuracy"
            b.caption = b.caption.replace("accuracy", "pixel accuracy", 2)
        elif isinstance(b, ChartBlock) and b.id == "confusion":
            frames = builder.frames
            pairs = [(f"epoch {first[0]} ({builder.start.split()[0]})", frames.confusion(first[0]))]
            if after:
                pairs.append((f"epoch {after[0]} ({builder.trained})", frames.confusion(after[0])))
            b = builder.chart(
                "confusion",
                "Pixel confusion matrix, before and after",
                "Rows are the true class of each labelled pixel of the validation set (void left out), columns the "
                "predicted class; colour and numbers are the share of the row (the tooltip gives pixel counts). "
                "A strong diagonal is good.",
                charts_segmentation.pixel_confusion_pair(pairs, frames.classes, profile.panel),
            )
        elif isinstance(b, ChartBlock) and b.id == "per-class":
            b = builder.chart(
                "per-class-iou",
                "Per-class IoU, before vs after",
                "Intersection over union of each class's pixels (TP / (TP + FP + FN)) on the validation set, for the "
                f"{builder.start} with its new head (grey) and after {'training' if builder.frames.from_scratch else 'fine-tuning'} "
                "(blue); mIoU is their mean.",
                charts_segmentation.per_class_iou(
                    _iou_frame(builder, first, after), builder.frames.classes, profile.full - 120
                ),
            )
            blocks.append(b)
            blocks.append(_masks(builder))
            continue
        blocks.append(b)
    sec.blocks = blocks


FEATURES_NOTE = (
    "For segmentation, each probe image's feature vector is the head's input averaged over the pixels of the "
    "image's dominant class (its most frequent digit), and that class is the image's label; "
)


def _adapt_features(sec: Section) -> None:
    for b in sec.blocks:
        if isinstance(b, ChartBlock) and b.id in ("projection", "separability", "tsne"):
            b.caption = FEATURES_NOTE + b.caption[0].lower() + b.caption[1:]
