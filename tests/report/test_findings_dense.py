"""The findings of segmentation and detection runs: expected numbers worked out by hand from small confusion
matrices and AP lists, and each threshold tried just either side."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from sftreport.record.segmentation_eval import segmentation_from_sums
from sftreport.report.findings import derive_findings
from sftreport.report.findings_dense import confused_classes_rule, loose_boxes_rule, weak_class_rule
from sftreport.report.frames import EvalPoint
from sftreport.schema import DetectionEvaluation

NAMES = ["background", "5", "6"]


def frames(before, after, epochs=(0, 3)):
    return SimpleNamespace(
        first_eval=EvalPoint(epochs[0], before) if before is not None else None,
        last_eval=EvalPoint(epochs[1], after),
        class_name=lambda i: NAMES[i] if i < len(NAMES) else str(i),
    )


def seg(confusion):
    return segmentation_from_sums(0.0, confusion, images=2)


def det(ap, map_=0.5, map_50=0.7):
    return DetectionEvaluation(images=2, objects=5, map=map_, map_50=map_50, map_75=0.4, ap_per_class=ap)


# after fine-tuning: 6 is mostly taken for background. By hand: IoU_bg = 900 / (1000 + 930 − 900) = 0.873786,
# IoU_5 = 90 / (100 + 110 − 90) = 0.75, IoU_6 = 30 / (50 + 110 − 30) = 0.230769; mean 0.618185
AFTER = [[900, 20, 80], [10, 90, 0], [20, 0, 30]]
PERFECT = [[1000, 0, 0], [0, 100, 0], [0, 0, 50]]


def test_a_lagging_class_is_named_with_its_iou_and_the_mean():
    found = weak_class_rule(frames(None, seg(AFTER)))
    assert [f.severity for f in found] == ["warning"]
    assert found[0].title == "Class 6 lags behind: IoU 0.231 against a mean of 0.618"
    assert "lowest 6 (0.231), 5 (0.750), background (0.874)" in found[0].evidence


def test_classes_that_lost_ground_are_listed_worst_first():
    lost, lagging = weak_class_rule(frames(seg(PERFECT), seg(AFTER)))
    assert lost.severity == lagging.severity == "warning"
    assert lost.title == (
        "3 classes lost IoU since epoch 0: 6 (1.000 → 0.231), 5 (1.000 → 0.750), background (1.000 → 0.874)"
    )


@pytest.mark.parametrize("after, fires", [(0.4499, True), (0.4501, False)])
def test_a_fall_just_over_the_threshold_is_news(after, fires):
    found = weak_class_rule(frames(det([None, 0.5, 0.6]), det([None, after, 0.6])))
    assert any("lost AP" in f.title for f in found) is fires


@pytest.mark.parametrize("weak, severity", [(0.25, "info"), (0.2499, "warning")])
def test_lagging_means_strictly_below_half_the_mean(weak, severity):
    # 0.625 + 0.625 + 0.25 = 1.5 over 3 classes: the mean is exactly 0.5, half of it exactly 0.25
    (f,) = weak_class_rule(frames(None, det([None, 0.625, 0.625, weak])))
    assert f.severity == severity
    if severity == "info":
        assert f.title == "Weakest class: 3 (AP 0.250); strongest: 6 (0.625)"  # ties: the lower index first


def test_absent_and_undefined_classes_are_left_out():
    assert weak_class_rule(frames(None, det([None, 0.5, None]))) == []  # one class present: nothing to rank
    (f,) = weak_class_rule(frames(None, det([None, 0.5, math.nan, 0.4])))
    assert "mean over the 2 classes present 0.450" in f.evidence


def test_the_most_confused_pair_and_ties():
    (f,) = confused_classes_rule(frames(None, seg(AFTER)))
    # 6 → background is 20 / 50 = 40 %; then bg → 6 80 / 1000 = 8 %, 5 → bg 10 / 100 = 10 %
    assert f.title == "Pixels of 6 are taken for background: 40.0% of them"
    assert "20 of the 50 pixels labelled 6" in f.evidence
    assert "; 5 as background 10.0%; background as 6 8.0%" in f.evidence
    assert "background as 5" not in f.evidence  # 2 %: below the 5 % threshold


@pytest.mark.parametrize("off, listed", [(5, True), (4, False)])
def test_confusion_threshold_is_inclusive(off, listed):
    found = confused_classes_rule(frames(None, seg([[100 - off, off], [0, 100]])))
    assert bool(found) is listed


@pytest.mark.parametrize(
    "map_, map_50, loose",
    [
        (0.2999, 0.6, True),
        (0.3, 0.6, False),
        (0.0, 0.0, False),
        (math.nan, 0.6, False),
        (0.1, math.nan, False),
        (0.1, 0.3, True),
        (0.1, 0.2999, False),
    ],
)
def test_loose_boxes(map_, map_50, loose):
    found = loose_boxes_rule(frames(None, det([None, 0.2], map_=map_, map_50=map_50)))
    assert bool(found) is loose
    if loose and map_50 == 0.6:
        assert found[0].title == "Objects are found but their boxes are loose: mAP@.5 0.600, mAP@[.5:.95] 0.300"


def test_a_classifier_gets_none_of_these(runs):
    from synthetic_run import build_run

    from sftreport.report.frames import RunFrames
    from sftreport.store import read_run

    found = derive_findings(RunFrames(read_run(build_run(runs / "dense_rules_plain", epochs=2))))
    assert not {f.rule for f in found} & {"weak_class", "confused_classes", "loose_boxes"}


def test_a_tie_names_the_lower_class_index_first():
    (f,) = confused_classes_rule(frames(None, seg([[100, 0, 0], [0, 90, 10], [0, 10, 90]])))
    assert f.title.startswith("Pixels of 5 are taken for 6: 10.0%") and "; 6 as 5 10.0%" in f.evidence


@pytest.mark.parametrize("scale, lags", [(0.1001, True), (0.0999, False)])
def test_no_class_lags_behind_a_model_that_has_learned_nothing(scale, lags):
    # AP 2.5, 0.25 and 0.25 times `scale`: the mean is `scale`, two classes at half of that
    found = weak_class_rule(frames(None, det([None, 2.5 * scale, 0.25 * scale, 0.25 * scale])))
    assert [f.severity for f in found] == ["warning" if lags else "info"]


def test_the_highest_list_does_not_repeat_the_count():
    (f,) = weak_class_rule(frames(None, det([None, 0.9, 0.8, 0.7, 0.6, 0.5])))
    assert "highest 5 (0.900), 6 (0.800), 3 (0.700);" in f.evidence
    assert "lowest 5 (0.500), 4 (0.600), 3 (0.700) and 2 more;" in f.evidence
