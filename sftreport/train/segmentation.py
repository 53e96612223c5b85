"""Semantic segmentation: data (digit canvases, Pascal VOC) and the fine-tuning loop (models: segmenters.py).

The embedded default (`sftreport run --task segment`) composes 64×64 canvases deterministically from
scikit-learn's handwritten digits 5–9 (two to four digits each, at 20–28 px, one per quadrant) with
per-pixel masks (0 background, k−4 for digit k, 255 on the faint edge of each stroke), and fine-tunes a
segmenter built on the shipped `digits_resnet` backbone (pretrained on digits 0–4 as a classifier): its
stem and four stages, plus a new head that upsamples layer4's features to the input with skips from
layer1 and layer2. torchvision's segmentation models (fcn_*, deeplabv3_*, lraspp_*) run on the same data,
from scratch or pretrained (see segmenters.py).

Everything is measured through the public Recorder, with a SegmentationTask for the evaluation (pixel
accuracy, per-class IoU, mIoU) and the feature view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sftreport.config import RunConfig
from sftreport.errors import UserError, one_line
from sftreport.record.recorder import check_forward
from sftreport.record.segmentation_eval import IGNORE, SegmentationTask
from sftreport.schema import DatasetInfo
from sftreport.train.data import DIGITS_TARGET_CLASSES, IMAGENET_MEAN, IMAGENET_STD, load_digits_split
from sftreport.train.models import apply_strategy
from sftreport.train.segmenters import build_segmenter, segmentation_loss

CANVAS = 64
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


@dataclass
class SegData:
    name: str
    classes: list[str]
    train_x: torch.Tensor  # (N, 3, H, W) uint8
    train_y: torch.Tensor  # (N, H, W) uint8, 255 = void
    val_x: torch.Tensor
    val_y: torch.Tensor
    source: str

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


# --------------------------------------------------------------------------- the embedded canvases


def digit_canvases(digits: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` canvases (N, 3, 64, 64) uint8 and masks (N, 64, 64) uint8 from 8×8 digits (values 0..255) with
    labels 0..k−1: mask value label+1 where the upscaled stroke is at least 30 % bright, 255 (void) on its
    faint edge (5–30 %), 0 elsewhere. Deterministic in `seed`."""
    x, masks, _ = digit_scenes(digits, labels, n, seed)
    return x, masks


def digit_scenes(
    digits: torch.Tensor, labels: torch.Tensor, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """digit_canvases' canvases and masks, and each canvas's objects: boxes (M, 4) float x0, y0, x1, y1 in
    pixels (the tight box of the stroke's pixels at least 30 % bright, x1 and y1 exclusive) and labels (M,)
    label+1 (0 is the background)."""
    g = torch.Generator().manual_seed(seed)
    canvases = torch.zeros(n, CANVAS, CANVAS)
    masks = torch.zeros(n, CANVAS, CANVAS, dtype=torch.uint8)
    objects = []
    cell = CANVAS // 2
    for i in range(n):
        present = torch.rand(4, generator=g) < 0.6
        present[torch.randint(4, (1,), generator=g)] = True  # at least one digit
        boxes, classes = [], []
        for q in present.nonzero().flatten().tolist():
            j = int(torch.randint(len(digits), (1,), generator=g))
            size = int(torch.randint(20, 29, (1,), generator=g))
            y0 = (q // 2) * cell + int(torch.randint(cell - size + 1, (1,), generator=g))
            x0 = (q % 2) * cell + int(torch.randint(cell - size + 1, (1,), generator=g))
            img = digits[j].float().div(255).reshape(1, 1, 8, 8)
            up = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
            canvases[i, y0 : y0 + size, x0 : x0 + size] = up
            m = torch.zeros(size, size, dtype=torch.uint8)
            m[up > 0.05] = IGNORE
            m[up >= 0.3] = int(labels[j]) + 1
            masks[i, y0 : y0 + size, x0 : x0 + size] = m
            ys, xs = (up >= 0.3).nonzero(as_tuple=True)
            if len(ys):
                boxes.append([x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1])
                classes.append(int(labels[j]) + 1)
        objects.append(
            (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(classes, dtype=torch.long))
        )
    x = (canvases * 255).round().to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return x, masks, objects


def load_digit_canvases() -> SegData:
    train, val = load_digits_split(DIGITS_TARGET_CLASSES)
    tx, ty = digit_canvases(train.images, train.labels, 480, seed=1)
    vx, vy = digit_canvases(val.images, val.labels, 120, seed=2)
    return SegData(
        name="digit canvases",
        classes=["background", *(str(c) for c in DIGITS_TARGET_CLASSES)],
        train_x=tx,
        train_y=ty,
        val_x=vx,
        val_y=vy,
        source="64×64 canvases of scikit-learn's handwritten digits 5–9 (2–4 per canvas), per-pixel masks",
    )


# --------------------------------------------------------------------------- Pascal VOC


def _read_voc_split(root: Path, split: str, size: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    try:
        names = [line.strip() for line in listing.read_text().splitlines()]
    except OSError as e:
        raise UserError(f"{listing}: cannot read the {split} split ({e.strerror})") from None
    images, masks = [], []
    for lineno, name in enumerate(names, 1):
        if not name:
            continue
        jpg, png = root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"
        for path in (jpg, png):
            if not path.is_file():
                raise UserError(f"{listing}, line {lineno}: {name!r} has no {path.parent.name}/{path.name}")
        try:
            with Image.open(jpg) as im:
                img = im.convert("RGB")
            with Image.open(png) as mk:
                if mk.mode not in ("P", "L"):
                    raise UserError(
                        f"{png}: a VOC mask is a palette (P) or greyscale PNG of class indices, not {mk.mode}"
                    )
                mask = np.array(mk)
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"{jpg.name if 'jpg' in str(e) else png}: cannot read it ({one_line(e)})") from None
        if mask.shape != (img.height, img.width):
            raise UserError(
                f"{png}: mask is {mask.shape[1]}×{mask.shape[0]} but its image {jpg.name} is {img.width}×{img.height}"
            )
        bad = (mask != IGNORE) & (mask >= classes)
        if bad.any():
            raise UserError(
                f"{png}: label {int(mask[bad].max())} is above the {classes} classes (0..{classes - 1}, 255 void)"
            )
        images.append(np.array(img.resize((size, size), Image.Resampling.BILINEAR)))
        masks.append(np.array(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST)))
    if not images:
        raise UserError(f"{listing}: names no image")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.stack(masks))


def load_voc(root: Path | None, size: int | None) -> SegData:
    """Pascal VOC segmentation: ROOT/JPEGImages/*.jpg, ROOT/SegmentationClass/*.png (palette masks of class
    indices, 255 void), ROOT/ImageSets/Segmentation/{train,val}.txt; 21 classes; resized to `size` (default
    256) px squares."""
    if root is None:
        raise UserError("--dataset voc-seg needs --data-root DIR (the folder holding JPEGImages/)")
    size = size or 256
    tx, ty = _read_voc_split(root, "train", size, len(VOC_CLASSES))
    vx, vy = _read_voc_split(root, "val", size, len(VOC_CLASSES))
    return SegData("voc-seg", list(VOC_CLASSES), tx, ty, vx, vy, f"Pascal VOC segmentation in {root}")


# --------------------------------------------------------------------------- the loop


def _normalise(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x.to(device).float().div(255) - mean) / std


class _Batches:
    """Re-iterable (images, masks) batches of in-memory tensors, normalised on the device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device):
        self.x, self.y, self.batch, self.device = x, y, batch, device

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch)

    def __iter__(self):
        for s in range(0, len(self.x), self.batch):
            yield _normalise(self.x[s : s + self.batch], self.device), self.y[s : s + self.batch].to(self.device).long()


def load_seg_data(cfg: RunConfig) -> SegData:
    if cfg.dataset == "voc-seg":
        return load_voc(cfg.data_root, cfg.image_size)
    if cfg.dataset == "digits":
        return load_digit_canvases()
    raise UserError(f"--task segment: dataset {cfg.dataset!r} has no masks: use digits (canvases) or voc-seg")


def run_segmentation(cfg: RunConfig, ctx, device: torch.device):
    """sftreport run --task segment: the data and the segmenter; dense_loop runs the rest."""
    from sftreport.train.dense_loop import DenseRun, dense_run_dir, run_dense

    run_dir = dense_run_dir(cfg, ctx)
    data = load_seg_data(cfg)
    bundle = build_segmenter(cfg.model, cfg.weights, len(data.classes))
    frozen = apply_strategy(bundle.model, cfg.strategy, bundle.head, head_params=bundle.head_params)
    model = bundle.model.to(device)
    n_probe = min(cfg.record.probe_size, len(data.val_x))
    probe = (_normalise(data.val_x[:n_probe], device), data.val_y[:n_probe].to(device).long())
    check_forward(model, probe[0][:2], dims=4)

    def forward(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = data.train_y[idx].to(device).long()
        output = model(_normalise(data.train_x[idx], device))  # {"out"} and, for a pretrained fcn/deeplab, {"aux"}
        return segmentation_loss(output, y), output["out"], y  # rec.step counts pixel accuracy on "out"

    job = DenseRun(
        model=model,
        frozen=frozen,
        weights=bundle.weights,
        new_params=bundle.new_params,
        head=bundle.head,
        task=SegmentationTask(len(data.classes)),
        dataset=DatasetInfo(
            name=data.name,
            classes=data.classes,
            train_size=len(data.train_x),
            val_size=len(data.val_x),
            image_size=data.image_size,
            source=data.source,
        ),
        probe=probe,
        val=_Batches(data.val_x, data.val_y, cfg.batch_size, device),
        forward=forward,
        doing=f"segmenting {data.name}",
    )
    return run_dense(cfg, device, run_dir, job, ctx)
