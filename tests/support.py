"""Helpers shared by the tests: the command line in a subprocess, tiny datasets in their real on-disk formats."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np



def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m sftreport ARGS` in a fresh process, as a user would run it."""
    full_env = {**os.environ, "CI": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sftreport", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


QUICK = ["--epochs", "1", "--max-steps-per-epoch", "2", "--probe-size", "16", "--batch-size", "8", "--quiet"]


def make_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the standard python layout: ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f)

    def batch(n: int, label: bytes) -> dict:
        labels = [i % 10 for i in range(n)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        # make the classes learnable: class k brightens channel k % 3
        for i, y in enumerate(labels):
            data[i, (y % 3) * 1024:(y % 3 + 1) * 1024] //= 4
        return {b"batch_label": label, b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}

    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch, f"training batch {i} of 5".encode()), f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump(batch(test, b"testing batch 1 of 1"), f)
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
