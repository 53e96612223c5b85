"""Datasets in their real formats, the device pipeline, sharding and the probe set."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from sftreport.config import RunConfig
from sftreport.errors import UserError
from sftreport.train.data import (
    DIGITS_TARGET_CLASSES,
    DevicePipeline,
    FolderImages,
    ImageTensors,
    TrainBatches,
    augment_params,
    choose_probe,
    eval_batches,
    load_cifar10,
    load_data,
    load_digits_split,
)


def test_digits_target_task_is_classes_5_to_9_relabelled(tmp_path: Path):
    train, val = load_digits_split(DIGITS_TARGET_CLASSES)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 8, 8)
    assert set(train.labels.tolist()) == set(val.labels.tolist()) == {0, 1, 2, 3, 4}
    assert 800 < len(train) + len(val) < 1000
    again, _ = load_digits_split(DIGITS_TARGET_CLASSES)
    assert torch.equal(again.labels, train.labels)  # the split never depends on the run's seed


def test_cifar10_is_read_from_the_standard_layout(cifar_root: Path):
    train, val, classes = load_cifar10(cifar_root, download=False)
    assert classes[0] == "airplane" and len(classes) == 10
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(val) == 20
    raw = pickle.loads((cifar_root / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes")
    assert torch.equal(train.images[0].reshape(-1), torch.as_tensor(raw[b"data"][0]))


def test_cifar10_test_files_are_in_the_official_format_and_python3_copies_read_the_same(
    cifar_root: Path, tmp_path: Path
):
    """torchvision's own reader (encoding="latin1", str keys, MD5 check aside) reads the test files, so they are
    Python 2 pickles like the official ones; a copy re-pickled under Python 3 (str keys) reads the same."""
    from support import unchecked_cifar10

    theirs = unchecked_cifar10()(str(cifar_root), train=True, download=False)
    train, _, classes = load_cifar10(cifar_root, download=False)
    assert theirs.classes == classes
    assert torch.equal(torch.as_tensor(theirs.data).permute(0, 3, 1, 2), train.images)
    assert theirs.targets == train.labels.tolist()

    copy = tmp_path / "py3" / "cifar-10-batches-py"
    copy.mkdir(parents=True)
    for f in (cifar_root / "cifar-10-batches-py").iterdir():
        obj = pickle.loads(f.read_bytes(), encoding="latin1")  # str keys, as a Python 3 user would re-save them
        assert all(isinstance(k, str) for k in obj)
        with open(copy / f.name, "wb") as out:
            pickle.dump(obj, out)
    train3, _, classes3 = load_cifar10(copy.parent, download=False)
    assert classes3 == classes and torch.equal(train3.images, train.images)


def test_cifar10_missing_or_broken_files_are_one_line_errors(tmp_path: Path, cifar_root: Path):
    with pytest.raises(UserError, match="not found"):
        load_cifar10(tmp_path, download=False)
    broken = tmp_path / "broken" / "cifar-10-batches-py"
    broken.mkdir(parents=True)
    for f in (cifar_root / "cifar-10-batches-py").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="data_batch_3"):
        load_cifar10(broken.parent, download=False)


def test_imagefolder_train_and_val(folder_root: Path):
    cfg = RunConfig(dataset="imagefolder", data_root=folder_root, image_size=24, batch_size=4, record={"probe_size": 8})
    data = load_data(cfg, None)
    assert data.classes == ["cat", "dog", "fox"]
    img, _label, _idx = data.train[0]
    assert img.shape == (3, 24, 24) and img.dtype == torch.uint8
    assert len(data.probe) == 8


def test_imagefolder_with_mismatched_classes(tmp_path: Path, folder_root: Path):
    import shutil

    root = tmp_path / "f"
    shutil.copytree(folder_root, root)
    shutil.rmtree(root / "val" / "fox")
    with pytest.raises(UserError, match="differ"):
        FolderImages(root / "val", 16, classes=["cat", "dog", "fox"])


def test_probe_set_is_fixed_and_class_balanced():
    _, val = load_digits_split(DIGITS_TARGET_CLASSES)
    a = choose_probe(val, 50, 5)
    b = choose_probe(val, 50, 5)
    assert torch.equal(a.images, b.images)
    assert torch.bincount(a.labels, minlength=5).tolist() == [10] * 5


def test_two_shards_together_make_the_one_process_batches():
    train, _ = load_digits_split(DIGITS_TARGET_CLASSES)
    cpu = torch.device("cpu")
    one = TrainBatches(train, 16, seed=3, rank=0, world=1, device=cpu, workers=None, max_steps=None)
    shards = [
        TrainBatches(train, 16, seed=3, rank=r, world=2, device=cpu, workers=None, max_steps=None) for r in (0, 1)
    ]
    assert len(one) == len(shards[0]) == len(shards[1])
    for (x, y, aug), (x0, y0, a0), (x1, y1, a1) in zip(
        one.epoch(2, True), shards[0].epoch(2, True), shards[1].epoch(2, True)
    ):
        whole = sorted(zip(y.tolist(), aug.tolist(), x.flatten(1).sum(1).tolist()))
        parts = sorted(
            zip(
                y0.tolist() + y1.tolist(),
                a0.tolist() + a1.tolist(),
                x0.flatten(1).sum(1).tolist() + x1.flatten(1).sum(1).tolist(),
            )
        )
        assert whole == parts


def test_batch_size_must_split_evenly_across_processes():
    train, _ = load_digits_split(DIGITS_TARGET_CLASSES)
    with pytest.raises(UserError, match="divisible"):
        TrainBatches(train, 15, 0, 0, 2, torch.device("cpu"), None, None)


def test_validation_shards_cover_every_sample_once():
    _, val = load_digits_split(DIGITS_TARGET_CLASSES)
    seen = []
    for rank in range(3):
        seen += [y for _, ys in eval_batches(val, 7, rank, 3, None, torch.device("cpu")) for y in ys.tolist()]
    assert sorted(seen) == sorted(val.labels.tolist())


@pytest.mark.parametrize(("n", "world", "batch"), [(5, 2, 2), (1, 2, 4), (9, 3, 2), (8, 2, 2)])
def test_equal_batches_for_a_sharded_model_pad_short_shards_with_empty_batches(n: int, world: int, batch: int):
    """Under FSDP every process must run as many forward passes as the others: the largest shard has
    ceil(n / world) samples, so every process yields ceil(ceil(n / world) / batch) batches."""
    _, val = load_digits_split(DIGITS_TARGET_CLASSES)
    data = ImageTensors(val.images[:n], val.labels[:n])
    expected = math.ceil(math.ceil(n / world) / batch)
    seen = []
    for rank in range(world):
        batches = list(eval_batches(data, batch, rank, world, None, torch.device("cpu"), equal_batches=True))
        assert len(batches) == expected
        for x, y in batches:
            assert x.shape[1:] == val.images.shape[1:] and x.dtype == val.images.dtype and y.dtype == torch.int64
            assert len(x) == len(y)
        seen += [i for _, ys in batches for i in ys.tolist()]
    assert sorted(seen) == sorted(data.labels.tolist())  # padding adds no sample


def test_device_pipeline_normalises_resizes_and_augments_deterministically():
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    p = DevicePipeline(torch.device("cpu"), 32, hflip=False, channels_last=False)
    ev = p.eval_batch(x)
    assert ev.shape == (4, 3, 32, 32) and ev.dtype == torch.float32
    aug = augment_params(10, seed=1, epoch=1, hflip=False)
    assert torch.equal(aug, augment_params(10, seed=1, epoch=1, hflip=False))
    assert not torch.equal(aug, augment_params(10, seed=1, epoch=2, hflip=False))
    assert (aug[:, 0] == 1).all()  # no mirror for digits
    tr = p.train_batch(x, aug[:4])
    assert tr.shape == ev.shape and not torch.allclose(tr, ev)
    identity = torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3)
    assert torch.allclose(p.train_batch(x, identity), ev, atol=1e-5)  # no shift, no flip = plain resize


def test_digits_read_without_importing_sklearn_are_sklearn_s_digits():
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from sftreport.train.data import read_digits

    pixels, labels = read_digits()
    d = load_digits()
    assert np.array_equal(pixels, d.images) and np.array_equal(labels, d.target)
    code = (
        "import sys; from sftreport.train.data import load_digits_split, DIGITS_TARGET_CLASSES; "
        "load_digits_split(DIGITS_TARGET_CLASSES); assert 'sklearn' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
