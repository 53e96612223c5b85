"""Datasets, the device-side image pipeline, and the fixed probe set.

Every dataset arrives as uint8 images (N, C, H, W) plus int64 labels. Datasets that fit in memory
(the embedded digits, CIFAR-10) live on the device as uint8 and are resized, augmented and normalised
there, a whole batch at a time; ImageFolder trees are decoded and resized by DataLoader workers into
pinned memory, then augmented and normalised on the device by the same code.

Augmentation draws its random numbers per sample index from a generator seeded by (seed, epoch), so a
sample is augmented identically whichever process (or how many) handles it: a 2-process run sees the
same global batches as a 1-process run.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sftreport.config import RunConfig
from sftreport.errors import UserError

# torchvision's classification weights all expect ImageNet normalisation; the embedded digits model was
# pretrained with it too, so one normalisation serves every model.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_SEED = 0  # the train/val split and the probe set never depend on --seed: runs stay comparable
DIGITS_SOURCE_CLASSES = (0, 1, 2, 3, 4)  # the embedded model was pretrained on these ...
DIGITS_TARGET_CLASSES = (5, 6, 7, 8, 9)  # ... and the default run fine-tunes it on these


# --------------------------------------------------------------------------- raw uint8 data


@dataclass
class ImageTensors:
    """A dataset held in memory: uint8 images (N, C, H, W) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> ImageTensors:
        return ImageTensors(self.images[idx], self.labels[idx])


class FolderImages(Dataset):
    """An ImageFolder split decoded to uint8 (C, S, S) by DataLoader workers; returns the index too."""

    def __init__(self, root: Path, size: int, classes: list[str] | None = None):
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(root), loader=_path_only, allow_empty=False)
        except (FileNotFoundError, OSError) as e:
            raise UserError(f"ImageFolder split {root}: {e}") from None
        if classes is not None and self.folder.classes != classes:
            raise UserError(f"{root}: classes {self.folder.classes} differ from the train split's {classes}")
        self.size = size
        self.classes = self.folder.classes
        self.labels = torch.tensor(self.folder.targets, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path, label = self.folder.samples[i]
        try:
            with Image.open(path) as src:
                im = src.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read image {path}: {e}") from None
        img = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        return img, label, i

    def load_all(self, indices: list[int]) -> ImageTensors:
        items = [self[i] for i in indices]
        return ImageTensors(torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items]))


def _path_only(path: str) -> str:
    return path  # ImageFolder's scan only; decoding happens in FolderImages.__getitem__


# --------------------------------------------------------------------------- the three datasets


@dataclass
class DataBundle:
    name: str
    classes: list[str]
    image_size: int
    train: ImageTensors | FolderImages
    val: ImageTensors | FolderImages
    hflip: bool  # mirror images as augmentation (never for digits)
    source: str
    probe: ImageTensors = field(init=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits: (1797, 8, 8) values 0..16 and their labels.

    Read straight from the file scikit-learn ships (datasets/data/digits.csv.gz, the same numbers that
    `sklearn.datasets.load_digits` returns) without importing scikit-learn, which costs about a second of
    the default run; `load_digits` itself if the file is not where it has been since 2011."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def load_digits_split(classes: tuple[int, ...], val_fraction: float = 0.25) -> tuple[ImageTensors, ImageTensors]:
    """scikit-learn's bundled 8×8 handwritten digits (no download), restricted to `classes`,
    relabelled 0..k-1, split per class into train and validation with a fixed seed."""
    pixels, labels = read_digits()
    images = torch.from_numpy(pixels).float()  # values 0..16
    images = (images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
    target = torch.from_numpy(labels).long()
    g = torch.Generator().manual_seed(SPLIT_SEED)
    train_idx, val_idx = [], []
    for _new_label, c in enumerate(classes):
        idx = (target == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(len(idx) * val_fraction)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    tr, va = torch.cat(train_idx), torch.cat(val_idx)
    return (ImageTensors(images[tr], relabel[target[tr]]), ImageTensors(images[va], relabel[target[va]]))


def load_cifar10(root: Path, download: bool) -> tuple[ImageTensors, ImageTensors, list[str]]:
    """CIFAR-10 from its standard on-disk layout, ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    base = root / "cifar-10-batches-py"
    if not base.is_dir() and download:
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=True, download=True)
        except Exception as e:
            raise UserError(f"cannot download CIFAR-10 into {root}: {e}") from None
    if not base.is_dir():
        raise UserError(
            f"CIFAR-10 not found: {base} does not exist (put the extracted python version there, or pass --download)"
        )

    def read(name: str) -> dict:
        try:
            with open(base / name, "rb") as f:
                obj = pickle.load(f, encoding="bytes")
            # the official files are Python 2 pickles (byte-string keys); a copy re-pickled under Python 3 has str keys
            return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}
        except FileNotFoundError:
            raise UserError(f"CIFAR-10 is incomplete: {base / name} is missing") from None
        except Exception as e:
            raise UserError(f"CIFAR-10 file {base / name} is not readable: {e}") from None

    def batch(names: list[str]) -> ImageTensors:
        parts = [read(n) for n in names]
        try:
            data = torch.cat([torch.as_tensor(p[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32) for p in parts])
            labels = torch.cat([torch.as_tensor(p[b"labels"], dtype=torch.int64) for p in parts])
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise UserError(f"CIFAR-10 files in {base} are not in the expected format: {e}") from None
        return ImageTensors(data, labels)

    meta = read("batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(b"label_names", [])]
    if len(classes) != 10:
        raise UserError(f"{base / 'batches.meta'}: expected 10 label names, found {len(classes)}")
    return batch([f"data_batch_{i}" for i in range(1, 6)]), batch(["test_batch"]), classes


def load_data(cfg: RunConfig, default_size: int | None) -> DataBundle:
    """The dataset named by the config, with its probe set chosen."""
    if cfg.dataset in ("digits", "digits-seq"):
        train, val = load_digits_split(DIGITS_TARGET_CLASSES)
        sequences = cfg.dataset == "digits-seq"
        bundle = DataBundle(
            cfg.dataset,
            [str(c) for c in DIGITS_TARGET_CLASSES],
            cfg.image_size or default_size or (8 if sequences else 32),
            train,
            val,
            hflip=False,
            source="scikit-learn's bundled handwritten digits (8×8), classes 5–9"
            + (", read as sequences of 8 rows of 8 pixels" if sequences else ""),
        )
    elif cfg.dataset == "cifar10":
        if cfg.data_root is None:
            raise UserError("--dataset cifar10 needs --data-root DIR (holding cifar-10-batches-py)")
        train, val, classes = load_cifar10(cfg.data_root, cfg.download)
        bundle = DataBundle(
            "cifar10",
            classes,
            cfg.image_size or default_size or 32,
            train,
            val,
            hflip=True,
            source=f"CIFAR-10 from {cfg.data_root}",
        )
    else:
        if cfg.data_root is None:
            raise UserError("--dataset imagefolder needs --data-root DIR (holding train/ and val/)")
        for split in ("train", "val"):
            if not (cfg.data_root / split).is_dir():
                raise UserError(
                    f"ImageFolder dataset: {cfg.data_root / split} is not a directory (expected train/ and val/ class folders)"
                )
        size = cfg.image_size or default_size or 224
        train_tree = FolderImages(cfg.data_root / "train", size)
        val_tree = FolderImages(cfg.data_root / "val", size, classes=train_tree.classes)
        bundle = DataBundle(
            "imagefolder",
            train_tree.classes,
            size,
            train_tree,
            val_tree,
            hflip=True,
            source=f"ImageFolder tree at {cfg.data_root}",
        )
    if len(bundle.train) < cfg.batch_size:
        raise UserError(f"the training split has {len(bundle.train)} images, fewer than --batch-size {cfg.batch_size}")
    if len(bundle.val) < 2:
        raise UserError(f"the validation split has {len(bundle.val)} images; it needs at least 2")
    bundle.probe = choose_probe(bundle.val, cfg.record.probe_size, bundle.num_classes)
    return bundle


def choose_probe(val: ImageTensors | FolderImages, size: int, num_classes: int) -> ImageTensors:
    """A fixed, class-balanced subset of the validation set: the same images at every epoch and in every run."""
    labels = val.labels
    g = torch.Generator().manual_seed(SPLIT_SEED)
    per_class = [(labels == c).nonzero().flatten() for c in range(num_classes)]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(size, len(labels)):
        for idx in per_class:  # round-robin over classes
            if depth < len(idx) and len(chosen) < size:
                chosen.append(int(idx[depth]))
        depth += 1
    order = torch.tensor(chosen)
    if isinstance(val, FolderImages):
        return val.load_all(order.tolist())
    return val.subset(order)


# --------------------------------------------------------------------------- device-side pipeline


class DevicePipeline:
    """uint8 batch on the device -> float, resized, (augmented), normalised, channels_last on CUDA."""

    def __init__(self, device: torch.device, size: int, hflip: bool, channels_last: bool, translate: float = 0.125):
        self.device, self.size, self.hflip, self.translate = device, size, hflip, translate
        self.channels_last = channels_last
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def eval_batch(self, x: torch.Tensor) -> torch.Tensor:
        x = self._to_float(x)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self._finish(x)

    def train_batch(self, x: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        """`aug` (B, 3): per-sample horizontal flip sign and x/y shift in [-1, 1] (see `augment_params`).
        Resize, flip and shift happen in one grid_sample."""
        x = self._to_float(x)
        aug = aug.to(self.device, non_blocking=True)
        b = x.shape[0]
        theta = torch.zeros(b, 2, 3, device=self.device)
        theta[:, 0, 0] = aug[:, 0]
        theta[:, 1, 1] = 1.0
        theta[:, :, 2] = aug[:, 1:] * (2 * self.translate)
        grid = F.affine_grid(theta, [b, 3, self.size, self.size], align_corners=False)
        # "border" so that a zero shift is exactly the plain resize of eval_batch (edges replicate, as F.interpolate does)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self._finish(x)


def augment_params(n: int, seed: int, epoch: int, hflip: bool) -> torch.Tensor:
    """Per-sample augmentation for one epoch, indexed by sample: (flip sign, shift x, shift y)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    shift = torch.rand(n, 2, generator=g) * 2 - 1
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    return torch.cat([flip.unsqueeze(1), shift], dim=1)


# --------------------------------------------------------------------------- batches


class TrainBatches:
    """The training batches of one process: a DistributedSampler shards a seeded permutation, so the k-th
    batches of all ranks together are exactly the k-th batch of a 1-process run with the global batch size."""

    def __init__(
        self,
        data: ImageTensors | FolderImages,
        global_batch: int,
        seed: int,
        rank: int,
        world: int,
        device: torch.device,
        workers: int | None,
        max_steps: int | None,
    ):
        if global_batch % world:
            raise UserError(f"--batch-size {global_batch} must be divisible by the number of processes ({world})")
        self.data, self.local_batch, self.seed, self.device = data, global_batch // world, seed, device
        self.sampler: DistributedSampler[int] = DistributedSampler(
            _Indices(len(data)), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.max_steps = max_steps
        self.loader: DataLoader | None = None
        if isinstance(data, FolderImages):
            n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
            self.loader = DataLoader(
                data,
                batch_size=self.local_batch,
                sampler=self.sampler,
                drop_last=True,
                num_workers=n_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=n_workers > 0,
            )
        elif data.images.device != device:
            data.images, data.labels = data.images.to(device), data.labels.to(device)

    def __len__(self) -> int:
        n = len(self.sampler) // self.local_batch
        return min(n, self.max_steps) if self.max_steps else n

    def epoch(self, epoch: int, hflip: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels, augmentation params) for every step of one epoch."""
        self.sampler.set_epoch(epoch)
        aug = augment_params(len(self.data), self.seed, epoch, hflip)
        steps = len(self)
        if self.loader is not None:
            for step, (x, y, idx) in enumerate(self.loader):
                if step >= steps:
                    break
                yield x, y.to(self.device, non_blocking=True), aug[idx]
            return
        data = self.data
        assert isinstance(data, ImageTensors), "only an ImageFolder tree has a loader"
        # the epoch's order and augmentation go to the device once, not a small copy per step
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long).to(self.device)
        aug = aug.to(self.device)
        for step in range(steps):
            idx = order[step * self.local_batch : (step + 1) * self.local_batch]
            yield data.images[idx], data.labels[idx], aug[idx]


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def eval_batches(
    data: ImageTensors | FolderImages,
    batch: int,
    rank: int,
    world: int,
    workers: int | None,
    device: torch.device,
    equal_batches: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Validation shard of this process: every `world`-th sample, no padding, so sums over ranks are exact.
    `equal_batches`: every process yields as many batches as the largest shard needs, a shorter one ending
    with empty batches (a sharded model's forward is a collective that every process must join)."""
    if equal_batches:
        batches = math.ceil(math.ceil(len(data) / world) / batch)
        yielded, last = 0, None
        for x, y in eval_batches(data, batch, rank, world, workers, device):
            yielded, last = yielded + 1, (x, y)
            yield x, y
        if yielded < batches:
            if last is None:  # this process's shard is empty: one sample tells the shapes
                last = next(eval_batches(data, 1, 0, 1, 0, device))
            for _ in range(batches - yielded):
                yield last[0][:0], last[1][:0]
        return
    idx = torch.arange(rank, len(data), world)
    if isinstance(data, FolderImages):
        n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        loader = DataLoader(
            torch.utils.data.Subset(data, idx.tolist()),
            batch_size=batch,
            shuffle=False,
            num_workers=n_workers,
            pin_memory=device.type == "cuda",
        )
        for x, y, _ in loader:
            yield x, y
        return
    for start in range(0, len(idx), batch):
        part = idx[start : start + batch]
        yield data.images[part.to(data.images.device)], data.labels[part.to(data.labels.device)]
