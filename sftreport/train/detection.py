"""Object detection data: the embedded digit scenes with their boxes, and COCO detection files.

Targets are torchvision's detection format: per image a dict of `boxes` (M, 4) float x0, y0, x1, y1 in
pixels of the (resized) image and `labels` (M,) int64, 1..K (0 is the background, as torchvision's
detectors count). Images without objects have empty boxes.

The embedded run (`sftreport run --task detect`) fine-tunes the digit detector (train/detectors.py) to find
digits 5–9 on the digit scenes; `run_detection` fine-tunes any detector detectors.py builds (the loop: dense_loop.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sftreport.config import RunConfig
from sftreport.errors import UserError, one_line
from sftreport.record.detection_eval import DetectionTask
from sftreport.schema import DatasetInfo
from sftreport.train.data import DIGITS_TARGET_CLASSES, load_digits_split
from sftreport.train.detectors import build_detector
from sftreport.train.models import apply_strategy
from sftreport.train.segmentation import digit_scenes

Target = dict[str, torch.Tensor]


@dataclass
class DetData:
    name: str
    classes: list[str]  # classes[0] is the background
    train_x: torch.Tensor  # (N, 3, S, S) uint8
    train_y: list[Target]
    val_x: torch.Tensor
    val_y: list[Target]
    source: str
    clipped: int = 0  # boxes partly outside their image, clipped to it
    notes: list[str] = field(default_factory=list)


def load_digit_scenes(train: int = 480, val: int = 120) -> DetData:
    tr, va = load_digits_split(DIGITS_TARGET_CLASSES)
    tx, _, tobj = digit_scenes(tr.images, tr.labels, train, seed=1)
    vx, _, vobj = digit_scenes(va.images, va.labels, val, seed=2)
    return DetData(
        name="digit scenes",
        classes=["background", *(str(c) for c in DIGITS_TARGET_CLASSES)],
        train_x=tx,
        train_y=[{"boxes": b, "labels": c} for b, c in tobj],
        val_x=vx,
        val_y=[{"boxes": b, "labels": c} for b, c in vobj],
        source="64×64 canvases of scikit-learn's handwritten digits 5–9 (2–4 per canvas) with their boxes",
    )


# --------------------------------------------------------------------------- COCO


def _split_file(root: Path, split: str) -> Path:
    """ROOT/annotations/instances_<split>*.json (instances_train2017.json, instances_val.json, ...)."""
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if not found:
        raise UserError(f"{root / 'annotations'}: no instances_{split}*.json (COCO detection annotations)")
    return found[0]


def read_coco(path: Path, size: int) -> tuple[torch.Tensor, list[Target], dict[int, str], int]:
    """One COCO instances file and its images (in ROOT/<split name>/ or ROOT/images/<split name>/, the
    file's name after `instances_`): images resized to size×size, boxes converted from [x, y, w, h] to
    x0, y0, x1, y1 and scaled; category ids (which may skip numbers, as COCO's do) kept as given for the
    caller to map. Returns images, targets with raw category ids, the categories and the boxes clipped."""
    from PIL import Image, UnidentifiedImageError

    try:
        coco = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({one_line(e)})") from None
    try:
        categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        images = coco["images"]
        annotations = coco["annotations"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a COCO instances file (categories, images, annotations): {one_line(e)}") from None
    split = path.stem.removeprefix("instances_")
    root = path.parent.parent
    folder = next((d for d in (root / split, root / "images" / split) if d.is_dir()), root / split)
    by_image: dict[int, list[dict]] = {int(im["id"]): [] for im in images}
    for a in annotations:
        if int(a["image_id"]) not in by_image:
            raise UserError(f"{path}: annotation {a.get('id')} names image {a['image_id']}, which is not in images")
        if int(a["category_id"]) not in categories:
            raise UserError(
                f"{path}: annotation {a.get('id')} names category {a['category_id']}, which is not in categories"
            )
        by_image[int(a["image_id"])].append(a)
    xs, targets, clipped = [], [], 0
    for im in images:
        file = folder / im["file_name"]
        try:
            with Image.open(file) as f:
                rgb = f.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(
                f"{file}: cannot read the image of {path.name}'s image {im['id']} ({one_line(e)})"
            ) from None
        w, h = rgb.width, rgb.height
        boxes, labels = [], []
        for a in by_image[int(im["id"])]:
            if a.get("iscrowd"):
                continue
            x, y, bw, bh = (float(v) for v in a["bbox"])
            x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
            if bw <= 0 or bh <= 0 or x1 <= x0 or y1 <= y0:
                what = "has zero area" if bw <= 0 or bh <= 0 else f"lies entirely outside its {w}×{h} image"
                raise UserError(f"{path}: annotation {a.get('id')} (image {im['id']}): box {a['bbox']} {what}")
            clipped += (x0, y0, x1, y1) != (x, y, x + bw, y + bh)
            boxes.append([x0 * size / w, y0 * size / h, x1 * size / w, y1 * size / h])
            labels.append(int(a["category_id"]))
        xs.append(np.array(rgb.resize((size, size), Image.Resampling.BILINEAR)))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.long),
            }
        )
    if not xs:
        raise UserError(f"{path}: lists no image")
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), targets, categories, clipped


def load_coco(root: Path | None, size: int | None) -> DetData:
    """COCO detection: ROOT/annotations/instances_train*.json and instances_val*.json, images in the folder
    named after each (ROOT/train2017/ or ROOT/images/train2017/); classes are the union of both files'
    categories in id order, mapped to 1..K."""
    if root is None:
        raise UserError("--dataset coco needs --data-root DIR (the folder holding annotations/)")
    size = size or 320
    tx, ty, tcat, tclip = read_coco(_split_file(root, "train"), size)
    vx, vy, vcat, vclip = read_coco(_split_file(root, "val"), size)
    ids = sorted({**tcat, **vcat})
    names = {**tcat, **vcat}
    index = {cid: i + 1 for i, cid in enumerate(ids)}
    for t in (*ty, *vy):
        t["labels"] = torch.tensor([index[int(c)] for c in t["labels"]], dtype=torch.long)
    clipped = tclip + vclip
    notes = [f"{clipped} boxes partly outside their image were clipped to it"] if clipped else []
    return DetData(
        "coco", ["background", *(names[c] for c in ids)], tx, ty, vx, vy, f"COCO detection in {root}", clipped, notes
    )


# --------------------------------------------------------------------------- the loop


class _Batches:
    """Re-iterable (images as floats in [0, 1], targets) batches on the device; the detector normalises."""

    def __init__(self, x: torch.Tensor, y: list[Target], batch: int, device: torch.device):
        self.x, self.y, self.batch, self.device = x, y, batch, device

    def __iter__(self):
        for s in range(0, len(self.x), self.batch):
            x = self.x[s : s + self.batch].to(self.device).float().div(255)
            yield x, [{k: v.to(self.device) for k, v in t.items()} for t in self.y[s : s + self.batch]]


def load_det_data(cfg: RunConfig) -> DetData:
    if cfg.dataset == "coco":
        return load_coco(cfg.data_root, cfg.image_size)
    if cfg.dataset == "digits":
        return load_digit_scenes()
    raise UserError(f"--task detect: dataset {cfg.dataset!r} has no boxes: use digits (scenes) or coco")


def run_detection(cfg: RunConfig, ctx, device: torch.device):
    """sftreport run --task detect: the data and the detector; dense_loop runs the rest."""
    from sftreport.train.dense_loop import DenseRun, dense_run_dir, run_dense

    run_dir = dense_run_dir(cfg, ctx)
    data = load_det_data(cfg)
    bundle = build_detector(cfg.model, cfg.weights, len(data.classes), data.train_x.shape[-1])
    frozen = apply_strategy(bundle.model, cfg.strategy, bundle.head, bundle.head_params, bundle.builder_frozen)
    model = bundle.model.to(device)
    n_probe = min(cfg.record.probe_size, len(data.val_x))
    probe = (data.val_x[:n_probe].to(device).float().div(255), data.val_y[:n_probe])

    def forward(idx: list[int]) -> tuple[torch.Tensor, None, None]:
        x = data.train_x[idx].to(device).float().div(255)  # the detector normalises
        y = [{k: v.to(device) for k, v in data.train_y[i].items()} for i in idx]
        losses = model(list(x), y)  # RPN and box losses, in training mode
        return torch.stack(list(losses.values())).sum(), None, None

    job = DenseRun(
        model=model,
        frozen=frozen,
        weights=bundle.weights,
        new_params=bundle.new_params,
        head=bundle.head,
        task=DetectionTask(len(data.classes), data.classes),
        dataset=DatasetInfo(
            name=data.name,
            classes=data.classes,
            train_size=len(data.train_x),
            val_size=len(data.val_x),
            image_size=int(data.train_x.shape[-1]),
            source=data.source + "".join(f"; {n}" for n in data.notes),
        ),
        probe=probe,
        val=_Batches(data.val_x, data.val_y, cfg.batch_size, device),
        forward=forward,
        doing=f"detecting in {data.name}",
        notes=data.notes,
        # the detector's backbone stages: its other modules return dicts and lists the activation probe skips
        options=cfg.record
        if cfg.record.activations
        else cfg.record.model_copy(update={"activations": bundle.activations}),
    )
    return run_dense(cfg, device, run_dir, job, ctx)
