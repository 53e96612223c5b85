"""Detection data: the digit scenes' boxes enclose their strokes, and COCO files written here in exactly
COCO's layout (category ids that skip numbers, an image without annotations, a box partly outside) read with
boxes converted and scaled; bad files refused in one line naming the file and the annotation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sftreport.errors import UserError
from sftreport.train.detection import load_coco
from sftreport.train.segmentation import digit_scenes


def test_digit_scene_boxes_are_the_tight_boxes_of_their_strokes():
    digits = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    digits[0, 0, 2:6, 2:6] = 255
    digits[1, 0, :, 3:5] = 255
    _, masks, objects = digit_scenes(digits, torch.tensor([0, 4]), 5, seed=3)
    for m, (boxes, labels) in zip(masks, objects):
        assert len(boxes) == len(labels) >= 1
        inside = torch.zeros_like(m, dtype=torch.bool)
        for (x0, y0, x1, y1), c in zip(boxes.long().tolist(), labels.tolist()):
            sel = m[y0:y1, x0:x1] == c
            assert sel[0].any() and sel[-1].any() and sel[:, 0].any() and sel[:, -1].any()  # tight
            inside[y0:y1, x0:x1] = True
        assert not bool(((m > 0) & (m != 255) & ~inside).any())  # every stroke pixel is in a box


def _coco(root: Path, split: str, images: list[tuple[int, str, int, int]], anns: list[dict], cats: list[dict]):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    folder = root / f"{split}2017"
    folder.mkdir(exist_ok=True)
    for _, name, w, h in images:
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / name)
    doc = {
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": anns,
        "categories": cats,
    }
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))


CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]


def _tree(root: Path, train_anns: list[dict] | None = None) -> Path:
    anns = [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0, "area": 1200},
        {"id": 11, "image_id": 1, "category_id": 90, "bbox": [90, 70, 20, 20], "iscrowd": 0, "area": 400},  # clipped
    ]
    _coco(root, "train", [(1, "a.jpg", 100, 80), (2, "b.jpg", 50, 50)], train_anns or anns, CATS)  # b: no objects
    val = [{"id": 20, "image_id": 7, "category_id": 1, "bbox": [0, 0, 25, 25], "iscrowd": 0, "area": 625}]
    _coco(root, "val", [(7, "c.jpg", 50, 50)], val, CATS)
    return root


def test_coco_reads_boxes_scaled_with_ids_that_skip_numbers(tmp_path):
    data = load_coco(_tree(tmp_path / "coco"), 40)
    assert data.classes == ["background", "person", "car", "toothbrush"]
    assert data.train_x.shape == (2, 3, 40, 40)
    a, b = data.train_y
    # [10, 20, 30, 40] on 100×80 -> x0 y0 x1 y1 = 10 20 40 60 -> ×0.4 and ×0.5
    assert a["boxes"][0].tolist() == pytest.approx([4.0, 10.0, 16.0, 30.0])
    assert a["labels"].tolist() == [2, 3]  # car -> 2, toothbrush (id 90) -> 3
    assert a["boxes"][1].tolist() == pytest.approx([36.0, 35.0, 40.0, 40.0])  # clipped at 100 × 80
    assert b["boxes"].shape == (0, 4) and b["labels"].shape == (0,)
    assert data.clipped == 1 and data.notes == ["1 boxes partly outside their image were clipped to it"]
    assert data.val_y[0]["labels"].tolist() == [1]


@pytest.mark.parametrize(
    "ann, message",
    [
        (
            {"bbox": [200, 10, 5, 5]},
            r"annotation 10 \(image 1\): box \[200, 10, 5, 5\] lies entirely outside its 100×80",
        ),
        ({"bbox": [10, 10, 0, 5]}, r"annotation 10 \(image 1\): box \[10, 10, 0, 5\] has zero area"),
        ({"category_id": 2}, r"annotation 10 names category 2, which is not in categories"),
    ],
)
def test_coco_refusals_name_the_file_and_the_annotation(tmp_path, ann, message):
    bad = {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0, **ann}
    root = _tree(tmp_path / "coco", [bad])
    with pytest.raises(UserError, match=r"instances_train2017\.json: " + message):
        load_coco(root, 40)


@pytest.mark.parametrize(
    "model, dataset, said",
    [
        ("deeplabv3_mobilenet_v3_large", "coco", "segments images, but dataset coco holds boxes"),
        ("fasterrcnn_mobilenet_v3_large_fpn", "voc-seg", "detects images, but dataset voc-seg holds masks"),
    ],
)
def test_a_model_of_one_task_given_data_of_another_is_one_line(model, dataset, said):
    from sftreport.config import build_config

    with pytest.raises(UserError, match=said) as e:
        build_config(None, {"model": model, "dataset": dataset})
    assert "\n" not in str(e.value)


def test_the_task_follows_from_the_model_or_the_dataset():
    from sftreport.config import build_config

    assert build_config(None, {"model": "lraspp_mobilenet_v3_large"}).task == "segment"
    assert build_config(None, {"dataset": "coco"}).task == "detect"
    assert build_config(None, {"dataset": "coco"}).optimizer == "adamw"  # the detection defaults
    assert build_config(None, {}).task == "classify"
