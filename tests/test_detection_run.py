"""`sftreport run --task detect` end to end on a few steps (the embedded digit scenes): every epoch carries
COCO mAP, the probe images' boxes are drawn at epoch 0 and the last, and the report speaks of mAP, AP per
class and boxes (no confusion matrix, no 'NaN loss' alarm for the validation loss a detector does not have);
a COCO file with a box outside its image stops the run in one line (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_detection_data import _tree

from sftreport.schema import DetectionEvaluation
from sftreport.store import read_run

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "sftreport", "run", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_recorder_records_the_digit_detector_and_renders_its_report(tmp_path):
    from sftreport.record.detection_eval import DetectionTask
    from sftreport.record.recorder import Recorder, RunDescription
    from sftreport.train.detection import load_digit_scenes
    from sftreport.train.detectors import build_detector

    data = load_digit_scenes(train=8, val=6)
    det = build_detector("digits_resnet", "DEFAULT", 6, 64)
    heads = {n for n, _ in det.model.named_parameters() if n.startswith(("rpn.", "roi_heads."))}
    assert det.new_params == det.head_params == heads and not det.builder_frozen  # linear-probe trains both heads
    x = data.val_x.float().div(255)
    rec = Recorder(
        det.model, probe=(x, data.val_y), val_data=[(x, data.val_y)], run_dir=tmp_path / "run", head=det.head,
        new_params=det.new_params, task=DetectionTask(6, data.classes), class_names=data.classes,
        run=RunDescription(planned_epochs=1),
    )  # fmt: skip
    assert rec.last is not None and isinstance(rec.last.val, DetectionEvaluation) and rec.last.val.images == 6
    opt = torch.optim.SGD([p for p in det.model.parameters() if p.requires_grad], lr=0.01)
    det.model.train()
    loss = sum(det.model(list(data.train_x.float().div(255)), data.train_y).values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    rec.step(loss)
    rec.epoch_end()
    rec.finish(out=tmp_path / "r.md")
    run = read_run(tmp_path / "run")
    assert [len(e.images.detections) for e in run.epochs] == [2, 2]
    assert {w.name.split(".")[0] for w in run.epochs[1].weights if w.new} == {"rpn", "roi_heads"}
    md = (tmp_path / "r.md").read_text()
    assert "| Validation mAP" in md and "NaN or infinite" not in md


@pytest.mark.slow
def test_cli_fine_tunes_the_embedded_detector(detect_cli_run):
    tmp_path = detect_cli_run  # `sftreport run --task detect` for 2 steps (conftest.py)
    run = read_run(tmp_path / "run")
    assert run.info.dataset.classes == ["background", "5", "6", "7", "8", "9"]
    e0, e1 = run.epochs
    assert isinstance(e0.val, DetectionEvaluation) and e0.val.images == 120 and e0.val.objects > 240
    assert len(e0.val.ap_per_class) == 6 and e0.val.ap_per_class[0] is None
    assert e1.train_loss is not None and e1.train_accuracy is None
    for e in (e0, e1):
        assert [d.sample for d in e.images.detections] == [0, 1]
        assert all((tmp_path / "run" / d.path).is_file() for d in e.images.detections)
    assert e0.features is not None and e0.features.dim == 64 * 4  # layer3's 64 channels, RoIAlign 2×2
    html, md = (tmp_path / "r.html").read_text(), (tmp_path / "r.md").read_text()
    for text in ("mAP before", "AP per class, before vs after", "Predicted boxes, before and after"):
        assert text in html, text
    assert "Confusion matrix" not in html and "NaN or infinite" not in md
    assert "the new heads (RPN, box head, box predictor) for the 6 classes" in html
    assert "| Validation mAP" in md


def test_cli_bad_coco_box_is_one_line_and_exit_2(tmp_path):
    bad = {"id": 10, "image_id": 1, "category_id": 3, "bbox": [200, 10, 5, 5], "iscrowd": 0}
    root = _tree(tmp_path / "coco", [bad])
    r = _cli("--dataset", "coco", "--data-root", str(root), "--epochs", "1", "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "instances_train2017.json: annotation 10 (image 1)" in line


def test_torchvision_detector_records_with_its_backbone_body_probed(tmp_path):
    from sftreport.config import RecordOptions
    from sftreport.record.detection_eval import DetectionTask
    from sftreport.record.recorder import Recorder
    from sftreport.train.detectors import build_detector

    det = build_detector("fasterrcnn_mobilenet_v3_large_fpn", "none", 3, 128)
    assert det.activations[0].startswith("backbone.body.") and len(det.activations) > 3
    x = torch.rand(2, 3, 128, 128)
    y = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([c])} for c in (1, 2)]
    rec = Recorder(
        det.model, probe=(x, y), val_data=[(x, y)], run_dir=tmp_path / "run", head=det.head,
        new_params=det.new_params, task=DetectionTask(3), options=RecordOptions(activations=det.activations),
    )  # fmt: skip
    assert rec.last is not None and rec.last.activations and rec.last.val.objects == 2


def test_epoch_line_speaks_of_each_task():
    """The progress line after each epoch gives the task's own metric: mAP for a detector (which has no
    validation loss), mIoU beside pixel accuracy for a segmenter."""
    from sftreport.schema import DetectionEvaluation, EpochSnapshot, SegmentationEvaluation
    from sftreport.train.runner import _epoch_line

    det = DetectionEvaluation.model_construct(task="detect", map=0.5914, map_50=0.9171)
    line = _epoch_line(3, 10, EpochSnapshot.model_construct(train_loss=0.5, val=det, source=None))
    assert "| val mAP 0.591  mAP@.5 0.917" in line and "loss nan" not in line
    seg = SegmentationEvaluation.model_construct(task="segment", loss=0.25, accuracy=0.972, miou=0.8141)
    line = _epoch_line(3, 10, EpochSnapshot.model_construct(train_loss=0.5, val=seg, source=None))
    assert "| val loss 0.2500 acc 97.2%  mIoU 0.814" in line


def test_dense_tasks_refuse_torchrun_before_reading_data(tmp_path):
    from types import SimpleNamespace

    from sftreport.config import RunConfig
    from sftreport.errors import UserError
    from sftreport.train.dense_loop import dense_run_dir

    for task in ("segment", "detect"):
        cfg = RunConfig(task=task, run_dir=tmp_path / task)
        with pytest.raises(UserError, match=f"--task {task} runs in one process"):
            dense_run_dir(cfg, SimpleNamespace(enabled=True))
        assert dense_run_dir(cfg, SimpleNamespace(enabled=False)) == tmp_path / task
