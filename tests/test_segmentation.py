"""Semantic segmentation: pixel accuracy, IoU and mIoU checked against hand-computed values (255 ignored),
the schema's evaluation union (old runs still read), the digit canvases, the Recorder on a tiny per-pixel
model in a user's loop (numbers recomputed here with numpy), the Pascal VOC loader and its refusals, and one
end-to-end `sftreport run --task segment` with its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError
from torch import nn

from sftreport.errors import UserError
from sftreport.record.recorder import Recorder, RunDescription
from sftreport.record.segmentation_eval import (
    SegmentationTask,
    dominant_class,
    pixel_confusion,
    segmentation_from_sums,
)
from sftreport.schema import EpochSnapshot, Evaluation, SegmentationEvaluation
from sftreport.store import read_run
from sftreport.train.segmentation import digit_canvases, load_voc

ROOT = Path(__file__).resolve().parents[1]
T = torch.tensor


def _evaluation(pred: torch.Tensor, target: torch.Tensor, k: int) -> SegmentationEvaluation:
    cells = pixel_confusion(pred, target, k).tolist()
    return segmentation_from_sums(0.0, [cells[i * k : (i + 1) * k] for i in range(k)], 1)


TARGET = T([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]])
PRED = T([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 0, 0], [2, 2, 2, 2]])


def test_perfect_prediction_has_miou_one():
    e = _evaluation(TARGET.clamp(max=2), TARGET, 3)
    assert e.miou == 1.0 and e.accuracy == 1.0 and e.iou == [1.0, 1.0, 1.0]
    assert e.count == 14  # the two void pixels are not counted


def test_iou_by_hand_on_4x4():
    # class 0: TP 3, 4 true, 4 predicted -> 3/5; class 1: TP 4, 4 true, 5 predicted -> 4/5;
    # class 2: TP 5, 6 true, 5 predicted -> 5/6; the void pixels' predictions (0) count nowhere
    e = _evaluation(PRED, TARGET, 3)
    assert e.iou == pytest.approx([3 / 5, 4 / 5, 5 / 6])
    assert e.miou == pytest.approx((3 / 5 + 4 / 5 + 5 / 6) / 3)
    assert e.accuracy == pytest.approx(12 / 14)
    assert e.confusion == [[3, 1, 0], [0, 4, 0], [1, 0, 5]]


def test_void_pixels_are_ignored_whatever_is_predicted_there():
    other = PRED.clone()
    other[TARGET == 255] = 1
    assert _evaluation(other, TARGET, 3) == _evaluation(PRED, TARGET, 3)


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_miou():
    e = _evaluation(TARGET.clamp(max=2), TARGET, 4)
    assert e.iou[3] is None and e.miou == 1.0


def test_schema_refuses_an_iou_that_contradicts_the_confusion_matrix():
    good = _evaluation(PRED, TARGET, 3).model_dump()
    bad = {**good, "iou": [0.9, 0.8, 5 / 6]}
    with pytest.raises(ValidationError, match="IoU of class 0"):
        SegmentationEvaluation.model_validate(bad)
    with pytest.raises(ValidationError, match="mIoU"):
        SegmentationEvaluation.model_validate({**good, "miou": 0.5})


def test_evaluation_union_reads_old_and_new_lines():
    old = {"loss": 0.5, "accuracy": 0.5, "count": 2, "confusion": [[1, 0], [1, 0]], "per_class_accuracy": [1.0, 0.0]}
    snap = EpochSnapshot.model_validate({"epoch": 0, "step": 0, "val": old})  # no `task`: a classifier's
    assert type(snap.val) is Evaluation and snap.val.task == "classify"
    seg = _evaluation(PRED, TARGET, 3)
    again = EpochSnapshot.model_validate_json(EpochSnapshot(epoch=1, step=1, val=seg).model_dump_json())
    assert isinstance(again.val, SegmentationEvaluation) and again.val.miou == seg.miou


def test_the_schema_1_run_still_reads():
    run = read_run(ROOT / "tests" / "data" / "run_v1")
    assert run.epochs and all(type(e.val) is Evaluation for e in run.epochs if e.val is not None)


def test_digit_canvases_are_deterministic_with_masks_on_the_strokes():
    digits = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    digits[0, 0, 2:6, 2:6] = 255
    digits[1, 0, :, 3:5] = 255
    x1, y1 = digit_canvases(digits, T([0, 4]), 6, seed=3)
    x2, y2 = digit_canvases(digits, T([0, 4]), 6, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (6, 3, 64, 64) and y1.shape == (6, 64, 64)
    assert set(y1.unique().tolist()) <= {0, 1, 5, 255} and {1, 5} & set(y1.unique().tolist())
    bright = x1[:, 0] >= 0.3 * 255
    assert bool((y1[bright] > 0).all())  # every bright pixel is a digit's (or void near 30 %)
    assert bool((x1[:, 0][y1 == 0] <= 0.05 * 255 + 1).all())  # background is dark
    assert all(((y == 1) | (y == 5)).any() for y in y1)  # at least one digit on every canvas


def test_dominant_class_ignores_background_and_void():
    masks = T([[[0, 0, 2], [2, 1, 255]], [[0, 0, 0], [0, 255, 255]]])
    assert dominant_class(masks, 3).tolist() == [2, 0]


class TinySeg(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return {"out": self.head(self.relu(self.conv1(x))), "aux": x}


def _seg_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0] > -0.3).long() + (x[:, 0] > 0.6).long()
    y[:, 0, :] = 255  # a void row
    return x, y


def test_recorder_records_a_segmentation_run_that_numpy_confirms(tmp_path):
    torch.manual_seed(0)
    model = TinySeg()
    x, y = _seg_data(24, 0)
    vx, vy = _seg_data(12, 1)
    val = [(vx[:6], vy[:6]), (vx[6:], vy[6:])]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(
        model, probe=(vx, vy), val_data=val, run_dir=tmp_path / "run", head="head",
        new_params={"head.weight", "head.bias"}, task=SegmentationTask(3), run=RunDescription(planned_epochs=2),
    )  # fmt: skip
    correct = labelled = 0
    for _ in range(2):
        for s in range(0, 24, 8):
            out = model(x[s : s + 8])["out"]
            loss = F.cross_entropy(out, y[s : s + 8], ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            keep = y[s : s + 8] != 255
            correct += int(((out.argmax(1) == y[s : s + 8]) & keep).sum())
            labelled += int(keep.sum())
            rec.step(loss, out, y[s : s + 8])
        last = rec.epoch_end()
        assert last.train_accuracy == pytest.approx(correct / labelled)  # pixels, not images
        correct = labelled = 0
    rec.finish(out=[tmp_path / "r.html", tmp_path / "r.md"])
    run = read_run(tmp_path / "run")
    assert [e.epoch for e in run.epochs] == [0, 1, 2]
    assert all(isinstance(e.val, SegmentationEvaluation) for e in run.epochs)
    # the last epoch's evaluation, recomputed with numpy from the model as it is now
    with torch.no_grad():
        pred = model(vx)["out"].argmax(1).numpy()
    t = vy.numpy()
    keep = t != 255
    conf = np.zeros((3, 3), int)
    np.add.at(conf, (t[keep], pred[keep]), 1)
    iou = [conf[c, c] / (conf[c].sum() + conf[:, c].sum() - conf[c, c]) for c in range(3)]
    v = run.epochs[-1].val
    assert v.confusion == conf.tolist() and v.iou == pytest.approx(iou) and v.miou == pytest.approx(np.mean(iou))
    assert v.images == 12 and v.count == int(keep.sum())
    assert run.info.probe.labels == dominant_class(vy, 3).tolist()
    assert run.epochs[0].features is not None and run.epochs[0].features.dim == 4  # pooled head input
    assert run.epochs[0].images.masks[0].path != run.epochs[-1].images.masks[0].path  # before and after
    masks = run.epochs[-1].images.masks
    assert [m.sample for m in masks] == [0, 1] and all((tmp_path / "run" / m.path).is_file() for m in masks)
    with Image.open(tmp_path / "run" / masks[0].path) as im:
        assert im.height == 128 and im.width > 3 * 128
    html, md = (tmp_path / "r.html").read_text(), (tmp_path / "r.md").read_text()
    for text in (
        "mIoU before",
        "Per-class IoU, before vs after",
        "Predicted masks, before and after",
        "Pixel confusion",
    ):
        assert text in html, text
    assert "val. accuracy before" not in html and "numbers are image counts" not in html
    assert "| Validation mIoU |" in md and "| Validation accuracy |" not in md


def test_recorder_refuses_probe_masks_with_labels_beyond_the_classes(tmp_path):
    vx, vy = _seg_data(4, 1)
    vy[0, 3, 3] = 7
    with pytest.raises(UserError, match=r"probe targets: mask labels must be 0\.\.2 or 255"):
        Recorder(TinySeg(), probe=(vx, vy), run_dir=tmp_path / "r", head="head", task=SegmentationTask(3))


# --------------------------------------------------------------------------- Pascal VOC


def _voc_palette() -> list[int]:
    """Pascal VOC's colour map (bit-interleaved), as torchvision and the devkit write it."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def make_voc(root: Path, sizes=((40, 30), (36, 36), (30, 40), (40, 40))) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = []
    for i, (w, h) in enumerate(sizes):
        name = f"2007_00000{i}"
        rgb = np.full((h, w, 3), 30 * i, np.uint8)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 4 : w // 2] = 15  # person
        mask[h // 4 - 1, :] = 255  # void outline
        m = Image.fromarray(mask, mode="P")
        m.putpalette(_voc_palette())
        m.save(root / "SegmentationClass" / f"{name}.png")
        names.append(name)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names[2:]) + "\n")
    return root


def test_voc_loader_reads_the_palette_masks(tmp_path):
    data = load_voc(make_voc(tmp_path / "voc"), 32)
    assert data.train_x.shape == (2, 3, 32, 32) and data.val_y.shape == (2, 32, 32)
    assert len(data.classes) == 21 and data.classes[15] == "person"
    assert set(data.train_y.unique().tolist()) == {0, 15, 255}


def test_voc_refusals_name_the_file(tmp_path):
    root = make_voc(tmp_path / "a")
    m = Image.open(root / "SegmentationClass" / "2007_000001.png")
    m.resize((10, 10)).save(root / "SegmentationClass" / "2007_000001.png")
    with pytest.raises(UserError, match=r"2007_000001\.png: mask is 10×10 but its image 2007_000001\.jpg is 36×36"):
        load_voc(root, 32)

    root = make_voc(tmp_path / "b")
    mask = np.array(Image.open(root / "SegmentationClass" / "2007_000000.png"))
    mask[0, 0] = 21
    Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / "2007_000000.png")
    with pytest.raises(UserError, match=r"2007_000000\.png: label 21 is above the 21 classes"):
        load_voc(root, 32)

    root = make_voc(tmp_path / "c")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n2007_000009\n")
    with pytest.raises(UserError, match=r"val\.txt, line 2: '2007_000009' has no JPEGImages/2007_000009\.jpg"):
        load_voc(root, 32)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "sftreport", "run", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_cli_bad_voc_is_one_line_and_exit_2(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("missing_one\n")
    r = _cli("--dataset", "voc-seg", "--data-root", str(root), "--epochs", "1", "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "train.txt, line 1: 'missing_one'" in r.stderr


def test_cli_runs_the_embedded_segmentation_default(segment_cli_run):
    tmp_path = segment_cli_run  # `sftreport run --task segment` for 2 steps (conftest.py)
    run = read_run(tmp_path / "run")
    assert run.info.dataset.classes == ["background", "5", "6", "7", "8", "9"]
    e0, e1 = run.epochs
    assert isinstance(e0.val, SegmentationEvaluation) and e0.val.images == 120
    assert e1.val.miou != e0.val.miou
    assert "mIoU" in (tmp_path / "r.html").read_text()
    lines = (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["val"]["task"] == "segment"


def test_cli_fine_tunes_on_a_voc_tree(tmp_path):
    root = make_voc(tmp_path / "voc")
    r = _cli(
        "--dataset", "voc-seg", "--data-root", str(root), "--image-size", "32", "--epochs", "1",
        "--run-dir", "run", "--out", "r.md", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "run")
    assert run.info.dataset.name == "voc-seg" and len(run.info.dataset.classes) == 21
    v = run.epochs[0].val
    assert isinstance(v, SegmentationEvaluation) and v.images == 2
    # the void outline row is not counted: 2 images of 32×32 less their void pixels
    assert 0 < v.count < 2 * 32 * 32
    assert "| Validation mIoU |" in (tmp_path / "r.md").read_text()


def test_torchvision_segmenters_get_a_tensor_fed_head_and_record(tmp_path):
    from sftreport.train.segmenters import build_segmenter

    seg = build_segmenter("lraspp_mobilenet_v3_large", "none", 6)
    assert seg.head == "classifier.high_classifier"  # LRASPPHead itself takes a dict of features
    x = torch.randn(4, 3, 64, 64)
    y = torch.zeros(4, 64, 64, dtype=torch.long)
    y[:, 10:30, 10:30] = 3
    rec = Recorder(
        seg.model, probe=(x, y), val_data=[(x, y)], run_dir=tmp_path / "run", head=seg.head,
        new_params=seg.new_params, task=SegmentationTask(6),
    )  # fmt: skip
    assert rec.last is not None and rec.last.val.images == 4 and rec.last.features is not None
    with pytest.raises(UserError, match="'resnet18' is not a segmentation model"):
        build_segmenter("resnet18", "none", 6)


def test_torchvision_segmenter_weights_file_gets_new_heads_for_the_classes(tmp_path):
    import torchvision

    from sftreport.train.segmenters import build_segmenter

    voc = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=21)
    torch.save(voc.state_dict(), tmp_path / "voc.pt")
    seg = build_segmenter("lraspp_mobilenet_v3_large", str(tmp_path / "voc.pt"), 6)
    assert seg.new_params == {f"classifier.{c}_classifier.{p}" for c in ("low", "high") for p in ("weight", "bias")}
    mine, theirs = seg.model.state_dict(), voc.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.startswith(("classifier.low", "classifier.high")))
    assert mine["classifier.high_classifier.weight"].shape[0] == 6
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"do not fit lraspp_mobilenet_v3_large: missing \d+ \(e\.g\. backbone"):
        build_segmenter("lraspp_mobilenet_v3_large", str(tmp_path / "other.pt"), 6)


def test_digit_segmenter_loads_the_shipped_backbone_and_linear_probe_trains_only_the_new_head():
    from sftreport.train.models import _pretrained_state, apply_strategy
    from sftreport.train.segmenters import build_segmenter

    seg = build_segmenter("digits_resnet", "DEFAULT", 6)
    state, _, _ = _pretrained_state("digits_resnet", "DEFAULT")
    mine = seg.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert seg.new_params == {n for n, _ in seg.model.named_parameters() if n.startswith("head.")}
    assert seg.head_params == seg.new_params
    apply_strategy(seg.model, "linear-probe", seg.head)
    assert {n for n, p in seg.model.named_parameters() if p.requires_grad} == seg.new_params
    apply_strategy(seg.model, "freeze-until:layer3", seg.head)
    trained = {n.split(".")[0] for n, p in seg.model.named_parameters() if p.requires_grad}
    assert trained == {"layer4", "head"}
