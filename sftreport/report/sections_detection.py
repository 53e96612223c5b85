"""What a detection run's report shows differently (built as for a classifier, then adapted here, as
sections_segmentation does for segmentation): mAP@[.5:.95] as the headline metric, mAP@.5 beside it, AP per
class before vs after, the probe images' predicted boxes next to the ground truth at the first and last
recorded epochs, and features described as what they are (backbone features pooled over each probe image's
largest ground-truth box)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from sftreport.report import charts_segmentation, fmt
from sftreport.report.model import ChartBlock, Finding, Image, ImageGrid, Note, Report, Section
from sftreport.schema import DetectionEvaluation
from sftreport.store import Run


def is_detection(run: Run) -> bool:
    return any(isinstance(e.val, DetectionEvaluation) for e in run.epochs)


def adapt(report: Report, builder: Any) -> None:
    evals = [(e.epoch, e.val) for e in builder.run.epochs if isinstance(e.val, DetectionEvaluation)]
    first, last = evals[0], evals[-1]
    after = last if last[0] != first[0] else None
    h = report.headline
    h.metric, h.metric_long = "mAP", "Validation mAP"
    h.acc_before, h.acc_after = first[1].map, after[1].map if after else None
    best = max(evals, key=lambda p: (p[1].map if p[1].map == p[1].map else -1.0, -p[0]))
    h.best_epoch, h.best_acc = best[0], best[1].map
    h.loss_before = h.loss_after = None

    def span(get) -> str:
        text = f"{fmt.num(get(first[1]), 3)} before (epoch {first[0]})"
        if after:
            text = f"{fmt.num(get(first[1]), 3)} before → {fmt.num(get(after[1]), 3)} after"
        return text

    items = []
    for key, value in report.summary.items:
        if key == "Validation accuracy":
            items += [
                ("Validation mAP", span(lambda e: e.map)),
                ("Validation mAP@.5", span(lambda e: e.map_50)),
            ]
            continue
        if key == "Best epoch":
            value = f"{best[0]} (mAP {fmt.num(best[1].map, 3)})"
        items.append((key, value))
    report.summary.items = items
    _findings(report.findings, first, after)
    for sec in report.sections:
        if sec.id == "training":
            _training(sec, builder, first, after)
        elif sec.id == "features":
            for b in sec.blocks:
                if isinstance(b, ChartBlock) and b.id in ("projection", "separability", "tsne"):
                    b.caption = (
                        "For detection, each probe image's feature vector is the backbone's output pooled (RoIAlign) "
                        "over the image's largest ground-truth box, labelled with that box's class, and the model's "
                        "own call is its top-scoring detection; " + b.caption[0].lower() + b.caption[1:]
                    )


def _findings(findings: list[Finding], first, after) -> None:
    for f in findings:
        if f.rule == "accuracy":
            for old, new in (("validation accuracy", "mAP@[.5:.95]"), ("Validation accuracy", "mAP@[.5:.95]")):
                f.title, f.evidence = f.title.replace(old, new), f.evidence.replace(old, new)
            f.evidence += f" mAP@.5: {first[1].map_50:.3f}" + (f" → {after[1].map_50:.3f}." if after else ".")


def _ap_frame(builder: Any, first, after) -> pd.DataFrame:
    classes = builder.frames.classes
    start = "initial" if builder.frames.from_scratch else "pretrained"
    rows = []
    for (_, ev), which in [(first, start)] + ([(after, builder.trained)] if after else []):
        for i, v in enumerate(ev.ap_per_class):
            if i > 0:
                rows.append({"class": classes[i] if i < len(classes) else str(i), "which": which, "iou": v})
    return pd.DataFrame(rows)


def _boxes(builder: Any) -> ImageGrid | Note:
    shots = [(e.epoch, e.images.detections) for e in builder.frames.image_epochs() if e.images and e.images.detections]
    if not shots:
        return Note("No predicted boxes were recorded.")
    cols = [shots[0]] if len(shots) == 1 else [shots[0], shots[-1]]
    rows: list[tuple[str, list[Image | None]]] = []
    for s in sorted({m.sample for _, shown in cols for m in shown}):
        imgs = []
        for epoch, shown in cols:
            m = next((m for m in shown if m.sample == s), None)
            imgs.append(builder.image(m.path, f"probe image {s + 1}, boxes, epoch {epoch}") if m else None)
        rows.append((f"probe image {s + 1}: ground truth · prediction", imgs))
    return ImageGrid(
        "detections",
        "Predicted boxes, before and after",
        "Each pair: the probe image with its ground-truth boxes, and with the model's detections scoring at least "
        "0.5 (class and score); colours follow the class.",
        [builder.epoch_label(epoch) for epoch, _ in cols],
        rows,
    )


def _training(sec: Section, builder: Any, first, after) -> None:
    blocks: list = []
    for b in sec.blocks:
        if isinstance(b, ChartBlock) and b.id == "accuracy":
            rows = [
                {"epoch": e.epoch, "metric": name, "value": get(e.val)}
                for e in builder.run.epochs
                if isinstance(e.val, DetectionEvaluation)
                for name, get in (("mAP@[.5:.95]", lambda v: v.map), ("mAP@.5", lambda v: v.map_50))
            ]
            b = builder.chart(
                "map",
                "Validation mAP",
                "COCO mAP@[.5:.95] (the mean over IoU thresholds .50 to .95) and mAP@.5 on the validation set per "
                "epoch (pycocotools); epoch 0 is the pretrained backbone with its new detection heads. A detector's "
                "training has no accuracy: its losses are in the chart above.",
                charts_segmentation.metric_curves(
                    pd.DataFrame(rows), builder.profile.full, builder.profile.line_h, "mAP on the validation set"
                ),
            )
        if isinstance(b, ChartBlock) and b.id == "loss":
            b.caption = (
                "Training loss (the sum of the detector's RPN and box losses) per optimizer step (light) and per "
                "epoch. A torchvision detector gives no loss in evaluation mode: there is no validation loss."
            )
        blocks.append(b)
        if isinstance(b, ChartBlock) and b.id == "map":
            blocks.append(
                builder.chart(
                    "per-class-ap",
                    "AP per class, before vs after",
                    "COCO AP@[.5:.95] of each class on the validation set, for the pretrained backbone with its new "
                    "heads (grey) and after fine-tuning (blue); mAP is their mean.",
                    charts_segmentation.per_class_iou(
                        _ap_frame(builder, first, after),
                        builder.frames.classes[1:],
                        builder.profile.full - 120,
                        title="AP@[.5:.95]",
                    ),
                )
            )
            blocks.append(_boxes(builder))
    sec.blocks = blocks
