"""Detection evaluation against values known by hand: perfect detections give mAP 1.0; one detection at IoU
0.62 counts at the thresholds .50, .55, .60 of the ten (mAP 0.3, mAP@.5 1, mAP@.75 0); a class without
ground truth has no AP; the schema reads the evaluation back."""

from __future__ import annotations

import math

import pytest
import torch

from sftreport.record.detection_eval import score_detections
from sftreport.schema import DetectionEvaluation

T = torch.tensor


def _target(boxes, labels):
    return {"boxes": T(boxes, dtype=torch.float32).reshape(-1, 4), "labels": T(labels, dtype=torch.long)}


def _pred(boxes, labels, scores):
    return {**_target(boxes, labels), "scores": T(scores, dtype=torch.float32)}


def test_perfect_detections_have_map_one():
    targets = [_target([[0, 0, 20, 20], [30, 30, 50, 60]], [1, 2]), _target([[5, 5, 15, 25]], [2])]
    preds = [_pred(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in targets]
    e = score_detections(preds, targets, 4)
    assert e.map == pytest.approx(1.0) and e.map_50 == pytest.approx(1.0) and e.map_75 == pytest.approx(1.0)
    assert e.ap_per_class[0] is None and e.ap_per_class[1:3] == pytest.approx([1.0, 1.0])
    assert e.ap_per_class[3] is None  # no ground truth, no prediction
    assert e.images == 2 and e.objects == 3


def test_one_detection_at_iou_0_62_counts_at_three_of_ten_thresholds():
    target = [_target([[0, 0, 100, 100]], [1])]
    pred = [_pred([[0, 0, 100, 62]], [1], [0.8])]  # IoU 6200 / 10000
    e = score_detections(pred, target, 2)
    assert e.map_50 == pytest.approx(1.0) and e.map_75 == pytest.approx(0.0)
    assert e.map == pytest.approx(0.3)


def test_no_ground_truth_is_nan_and_the_line_reads_back():
    e = score_detections([_pred([[0, 0, 5, 5]], [1], [0.5])], [_target([], [])], 2)
    assert math.isnan(e.map) and e.objects == 0
    again = DetectionEvaluation.model_validate_json(e.model_dump_json())
    assert again.task == "detect" and math.isnan(again.map)


def test_boxes_are_read_as_corners_not_as_width_and_height():
    # as x0 y0 x1 y1: IoU 80 / 120 = 0.667, matched at .50 .55 .60 .65 (0.4); as x y w h it would be 0.75 (0.6)
    e = score_detections([_pred([[12, 0, 22, 10]], [1], [0.9])], [_target([[10, 0, 20, 10]], [1])], 2)
    assert e.map == pytest.approx(0.4)
