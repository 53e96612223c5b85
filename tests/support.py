"""Helpers shared by the tests: the command line in a subprocess, tiny datasets in their real on-disk formats."""

from __future__ import annotations

import math
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np


def cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`python -m sftreport ARGS` in a fresh process, as a user would run it."""
    full_env = {**os.environ, "CI": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sftreport", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


QUICK = ["--epochs", "1", "--max-steps-per-epoch", "2", "--probe-size", "16", "--batch-size", "8", "--quiet"]


class Py2Pickler(pickle._Pickler):
    """Pickles the way Python 2's cPickle wrote CIFAR-10's own files: protocol 2, every string a byte string
    (BINSTRING opcodes), numpy arrays reconstructed through `numpy.core.multiarray`. Loaded with
    encoding="bytes" the keys are bytes; with encoding="latin1" (torchvision) they are str."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + raw)
        self.memoize(obj)

    def save_py2_global(self, obj, name=None) -> None:
        module = {"numpy._core.multiarray": "numpy.core.multiarray"}.get(obj.__module__, obj.__module__)
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string
    dispatch[type] = save_py2_global


def py2_pickle(obj, path: Path) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def unchecked_cifar10():
    """torchvision's CIFAR10 reader without its check of the official files' MD5 sums (test data cannot
    match them): the same reading of the same on-disk format otherwise."""
    import torchvision.datasets.cifar as cifar
    from torchvision.datasets import CIFAR10

    class UncheckedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            real, cifar.check_integrity = cifar.check_integrity, lambda *a, **k: True
            try:
                super()._load_meta()
            finally:
                cifar.check_integrity = real

    return UncheckedCIFAR10


CIFAR10_CLASSES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def make_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the standard python layout (ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,
    batches.meta}), pickled the way the real files are (Python 2, protocol 2)."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    py2_pickle(
        {b"label_names": CIFAR10_CLASSES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, base / "batches.meta"
    )

    def batch(n: int, label: bytes) -> dict:
        labels = [i % 10 for i in range(n)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        # make the classes learnable: class k brightens channel k % 3
        for i, y in enumerate(labels):
            data[i, (y % 3) * 1024 : (y % 3 + 1) * 1024] //= 4
        return {b"batch_label": label, b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}

    for i in range(1, 6):
        py2_pickle(batch(per_batch, f"training batch {i} of 5".encode()), base / f"data_batch_{i}")
    py2_pickle(batch(test, b"testing batch 1 of 1"), base / "test_batch")
    return root


def make_imagefolder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 6, size: int = 20) -> Path:
    """A tiny ImageFolder tree with train/ and val/ class folders of real PNG and JPEG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(size + i, size, 3), dtype=np.uint8)
                arr[..., c % 3] = 255  # learnable colour cue
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(arr).save(d / f"{i}.{ext}")
    return root


def activation_pass(model, modules: list[str], first, later=None, bins: int = 8, chunk: int = 3):
    """The recorder's two passes over a probe set: `first` fixes the histogram bins (as the pretrained
    model's pass does), then `later` (default: `first` again) is measured in chunks. Returns collect()."""
    import torch

    from sftreport.record.activations import ActivationProbe

    probe = ActivationProbe(modules, bins, image_modules=[], image_samples=0)
    with torch.no_grad():
        with probe.hooks(model, want_hist=False, want_reps=False) as next_chunk:
            model(first)
            next_chunk()
        probe.fix_bins()
        with probe.hooks(model, want_hist=True, want_reps=True) as next_chunk:
            for part in (first if later is None else later).split(chunk):
                model(part)
                next_chunk()
    return probe.collect()


def record_differences(
    one: list, two: list, rel: float = 1e-5, abs_tol: float = 1e-9, skip: tuple[str, ...] = ("timing", "weights_file")
) -> list[tuple]:
    """Where two runs' epoch records (epochs.jsonl lines as dicts, or EpochSnapshots) differ, the fields in
    `skip` aside: floats beyond `rel` relative (or `abs_tol`), anything else (counts, histogram bins, names,
    lengths) at all. NaN equals NaN."""
    out: list = []
    if len(one) != len(two):
        return [("epochs", len(one), len(two))]
    for a, b in zip(one, two):
        a, b = (x if isinstance(x, dict) else x.model_dump() for x in (a, b))
        _differences(a, b, f"epoch {a['epoch']}", out, rel, abs_tol, tuple(f".{k}" for k in skip))
    return out


def _differences(a, b, path: str, out: list, rel: float, abs_tol: float, skip: tuple[str, ...]) -> None:
    if skip and path.endswith(skip):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            out.append((path, sorted(a.keys() ^ b.keys())))
            return
        for k in a:
            _differences(a[k], b[k], f"{path}.{k}", out, rel, abs_tol, skip)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append((path, len(a), len(b)))
            return
        for i, (u, v) in enumerate(zip(a, b)):
            _differences(u, v, f"{path}[{i}]", out, rel, abs_tol, skip)
    elif isinstance(a, float) and isinstance(b, float):
        if not (math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol) or (math.isnan(a) and math.isnan(b))):
            out.append((path, a, b))
    elif a != b:  # integers (counts, histogram bins), strings, booleans, a float against anything else
        out.append((path, a, b))
