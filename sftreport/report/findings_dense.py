"""Findings that speak of a segmentation or detection run: the classes the model still gets wrong (IoU or
AP per class), which class a segmenter takes for which (its pixel confusion matrix), and whether a detector
finds objects but places its boxes loosely (mAP@.5 against mAP@[.5:.95]). Each rule returns nothing for a
run of another task, like the rules in findings.py, whose RULES list runs them."""

from __future__ import annotations

import math

from sftreport.report import fmt
from sftreport.report.frames import RunFrames
from sftreport.report.model import Finding
from sftreport.report.thresholds import CLASS_FELL, CONFUSED_SHARE, LOOSE_BOXES, LOOSE_FROM, RANKED_FROM, WEAK_CLASS
from sftreport.schema import DetectionEvaluation, SegmentationEvaluation


def _per_class(ev) -> tuple[str, list[float | None]] | None:
    """The task's per-class measure and its values by class index (None: the class was absent)."""
    if isinstance(ev, SegmentationEvaluation):
        return "IoU", list(ev.iou)
    if isinstance(ev, DetectionEvaluation):
        return "AP", list(ev.ap_per_class)
    return None


def _defined(values: list[float | None]) -> dict[int, float]:
    return {i: v for i, v in enumerate(values) if v is not None and math.isfinite(v)}


def _listed(frames: RunFrames, pairs: list[tuple[int, float]], limit: int = 3, more: bool = True) -> str:
    shown = ", ".join(f"{frames.class_name(i)} ({v:.3f})" for i, v in pairs[:limit])
    return shown + (f" and {len(pairs) - limit} more" if more and len(pairs) > limit else "")


def weak_class_rule(frames: RunFrames) -> list[Finding]:
    last, first = frames.last_eval, frames.first_eval
    got = _per_class(last.eval) if last else None
    if last is None or got is None:
        return []
    metric, values = got
    after = _defined(values)
    if len(after) < 2:
        return []
    mean = sum(after.values()) / len(after)
    ranked = sorted(after.items(), key=lambda p: (p[1], p[0]))
    lagging = [(i, v) for i, v in ranked if v < WEAK_CLASS * mean] if mean >= RANKED_FROM else []
    fell: list[tuple[int, float, float]] = []
    since = ""
    if first is not None and first.epoch != last.epoch and (earlier := _per_class(first.eval)) is not None:
        before = _defined(earlier[1])
        fell = sorted(
            ((i, before[i], v) for i, v in after.items() if i in before and v < before[i] - CLASS_FELL),
            key=lambda t: (t[2] - t[1], t[0]),
        )
        since = f" since epoch {first.epoch}"
    evidence = (
        f"{metric} per class after epoch {last.epoch}: lowest {_listed(frames, ranked)}; highest "
        f"{_listed(frames, ranked[::-1], more=False)}; mean over the {len(after)} classes present {mean:.3f}. "
        f"A class below {WEAK_CLASS:.0%} of the mean lags behind (once the mean is at least {RANKED_FROM}); one whose {metric} fell by more than {CLASS_FELL}{since} lost "
        "ground."
    )
    out = []
    if fell:
        names = ", ".join(f"{frames.class_name(i)} ({b:.3f} → {a:.3f})" for i, b, a in fell[:3])
        title = (
            f"Class {frames.class_name(fell[0][0])} lost {metric}: {fell[0][1]:.3f} → {fell[0][2]:.3f}"
            if len(fell) == 1
            else f"{len(fell)} classes lost {metric}{since}: {names}"
        )
        out.append(Finding("weak_class", "warning", title, evidence, "training"))
    if lagging:
        title = (
            f"Class {frames.class_name(lagging[0][0])} lags behind: {metric} {lagging[0][1]:.3f} against a mean of "
            f"{mean:.3f}"
            if len(lagging) == 1
            else f"{len(lagging)} classes lag behind the mean {metric} of {mean:.3f}: {_listed(frames, lagging)}"
        )
        out.append(Finding("weak_class", "warning", title, evidence, "training"))
    if not out:
        lo, hi = ranked[0], ranked[-1]
        title = (
            f"Weakest class: {frames.class_name(lo[0])} ({metric} {lo[1]:.3f}); strongest: "
            f"{frames.class_name(hi[0])} ({hi[1]:.3f})"
        )
        out.append(Finding("weak_class", "info", title, evidence, "training"))
    return out


def confused_classes_rule(frames: RunFrames) -> list[Finding]:
    last = frames.last_eval
    if last is None or not isinstance(last.eval, SegmentationEvaluation):
        return []
    pairs = []  # (share of the true class's pixels, true, predicted, pixels)
    for t, row in enumerate(last.eval.confusion):
        total = sum(row)
        pairs += [(n / total, t, p, n) for p, n in enumerate(row) if p != t and total and n]
    pairs = sorted((q for q in pairs if q[0] >= CONFUSED_SHARE), key=lambda q: (-q[0], q[1], q[2]))
    if not pairs:
        return []
    share, t, p, n = pairs[0]
    more = "".join(
        f"; {frames.class_name(t2)} as {frames.class_name(p2)} {fmt.pct(s2)}" for s2, t2, p2, _ in pairs[1:4]
    )
    return [
        Finding(
            "confused_classes",
            "info",
            f"Pixels of {frames.class_name(t)} are taken for {frames.class_name(p)}: {fmt.pct(share)} of them",
            f"Pixel confusion after epoch {last.epoch}: {fmt.integer(n)} of the {fmt.integer(sum(last.eval.confusion[t]))} "
            f"pixels labelled {frames.class_name(t)} were predicted {frames.class_name(p)}{more}. Pairs at or above "
            f"{fmt.pct(CONFUSED_SHARE, 0)} of a class's pixels are listed (void pixels are not counted).",
            "training",
        )
    ]


def loose_boxes_rule(frames: RunFrames) -> list[Finding]:
    last = frames.last_eval
    if last is None or not isinstance(last.eval, DetectionEvaluation):
        return []
    ev = last.eval
    if not (math.isfinite(ev.map) and math.isfinite(ev.map_50)) or ev.map_50 < LOOSE_FROM:
        return []
    if ev.map >= LOOSE_BOXES * ev.map_50:
        return []
    return [
        Finding(
            "loose_boxes",
            "info",
            f"Objects are found but their boxes are loose: mAP@.5 {ev.map_50:.3f}, mAP@[.5:.95] {ev.map:.3f}",
            f"After epoch {last.epoch}, mAP@[.5:.95] is {ev.map / ev.map_50:.0%} of mAP@.5 (below "
            f"{LOOSE_BOXES:.0%}, judged once mAP@.5 reaches {LOOSE_FROM}): detections overlap their objects by half but rarely tightly (mAP@.75 "
            f"{fmt.num(ev.map_75, 3)}). Box regression is the weak point, not recognition.",
            "training",
        )
    ]
