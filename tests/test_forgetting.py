"""Forgetting of the source task: the pretrained head kept aside and evaluated with the backbone at every epoch.
Known answers: a toy model whose predictions are set by hand; the embedded default's source accuracy
recomputed from its shipped checkpoint and the run's saved weights (`digits_source_accuracy`, used by the
lp-ft run of test_strategies.py, which runs the embedded default); a torchvision model whose pretrained
head (in a weights file written here) predicts one class for every image; the folder names that are and
are not classes of the pretrained head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import cli, make_imagefolder
from torch import nn

from sftreport.cli import main
from sftreport.errors import UserError
from sftreport.record.source_task import SourceTask, evaluate_source
from sftreport.store import read_run


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftreport: error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- the evaluation itself


class _Toy(nn.Module):
    """Features = the input itself; the model's own head (3 classes) is never what the source task uses."""

    def __init__(self):
        super().__init__()
        self.body = nn.Identity()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_the_kept_aside_head_answers_and_other_classes_count_as_wrong():
    pretrained = nn.Linear(4, 6, bias=False)
    with torch.no_grad():  # output k = feature k for k < 4; outputs 4 and 5 never win on these inputs
        pretrained.weight.copy_(torch.cat([torch.eye(4), -torch.ones(2, 4)]))
    # source classes: "b" is head output 1, "d" is head output 3 (outputs 0, 2, 4, 5 have no images here)
    task = SourceTask(head=pretrained, data=None, classes=["b", "d"], targets=[1, 3], name="toy")
    x = torch.tensor(
        [
            [0.0, 5.0, 0.0, 0.0],  # true b, predicted 1 = b
            [0.0, 5.0, 0.0, 0.0],  # true b, predicted b
            [0.0, 0.0, 0.0, 5.0],  # true b, predicted 3 = d
            [5.0, 0.0, 0.0, 0.0],  # true d, predicted 0: another class of the head, "other"
            [0.0, 0.0, 0.0, 5.0],  # true d, predicted d
        ]
    )
    y = torch.tensor([1, 1, 1, 3, 3])
    task.data = [(x[:3], y[:3]), (x[3:], y[3:])]
    model = _Toy()
    ev = evaluate_source(model, "head", task, torch.device("cpu"), F.cross_entropy)
    assert ev.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert ev.accuracy == 3 / 5 and ev.per_class_accuracy == [2 / 3, 1 / 2, None]
    logits = x @ pretrained.weight.T
    assert ev.loss == pytest.approx(F.cross_entropy(logits, y, reduction="sum").item() / 5, rel=1e-6)
    info = task.info("head", 5)
    assert info.classes == ["b", "d", "other"] and info.other and info.head_classes == 6
    # the model's own head is back: the hook is gone
    assert model(x).shape == (5, 3)


def test_a_source_task_that_does_not_fit_its_head_is_refused():
    with pytest.raises(UserError, match=r"distinct outputs 0\.\.5"):
        SourceTask(head=nn.Linear(4, 6), data=[], classes=["a"], targets=[6])
    with pytest.raises(UserError, match="2 classes and 1 head outputs"):
        SourceTask(head=nn.Linear(4, 6), data=[], classes=["a", "b"], targets=[0])
    with pytest.raises(UserError, match="Linear or a Conv2d"):
        SourceTask(head=nn.Identity(), data=[], classes=["a"])


# --------------------------------------------------------------------------- the embedded default


def digits_source_accuracy(state: dict, fc: dict) -> float:
    """The backbone of `state` with the pretrained head `fc` on the held-out digits 0–4, computed here: the
    images as the pipeline feeds them (grey to RGB, 8 → 32 px bilinear, ImageNet normalisation)."""
    from sftreport.train.data import DIGITS_SOURCE_CLASSES, load_digits_split
    from sftreport.train.digits_resnet import DigitsResNet

    model = DigitsResNet(num_classes=5)
    model.load_state_dict({**{k: v for k, v in state.items() if not k.startswith("fc.")}, **fc})
    model.eval()
    _, held_out = load_digits_split(DIGITS_SOURCE_CLASSES)
    x = held_out.images.float().div(255).expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model((x - mean) / std).argmax(1)
    return (pred == held_out.labels).double().mean().item()


# --------------------------------------------------------------------------- torchvision models, --source-data


@pytest.fixture(scope="module")
def tv_case(tmp_path_factory) -> Path:
    """mobilenet_v3_small weights written as a file (random values, a 1000-class ImageNet head whose bias
    makes every image "goldfish", class 1), a tiny target ImageFolder and source folders named three ways."""
    import torchvision
    from PIL import Image

    d = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    state["classifier.3.bias"][1] += 1000.0
    torch.save(state, d / "weights.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("classifier.3.")}, d / "headless.pt")
    make_imagefolder(d / "target")
    rng = np.random.default_rng(1)
    # class 0 by its category name, class 1 by its synset id, class 7 ("cock") by its index; 224 px images
    for name, n in (("tench", 2), ("n01443537", 3), ("7", 1)):
        (d / "source" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(d / "source" / name / f"{i}.png")
    (d / "bad" / "tench").mkdir(parents=True)
    (d / "bad" / "not_a_class").mkdir(parents=True)
    for sub in ("tench", "not_a_class"):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / "bad" / sub / "0.png")
    return d


def _tv_args(d: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--model",
        "mobilenet_v3_small",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(d / "target"),
        "--image-size",
        "32",
        "--batch-size",
        "6",
        "--workers",
        "0",
        "--probe-size",
        "9",
        *extra,
    ]


@pytest.mark.slow
def test_source_data_by_name_synset_id_and_index_for_a_torchvision_model(tv_case: Path, tmp_path: Path):
    d = tv_case
    r = cli(
        *_tv_args(d, "--weights", str(d / "weights.pt"), "--source-data", str(d / "source"), "--epochs", "1"),
        "--quiet",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "r.html"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "run")
    task = run.info.source_task
    # folders sort as "7", "n01443537", "tench"; shown by the head's names, with the folder's where it differs
    assert task.classes == ["cock (7)", "goldfish (n01443537)", "tench", "other"] and task.other
    assert task.head == "classifier.3" and task.head_classes == 1000 and task.size == 6 and task.image_size == 224
    assert task.name == "ImageNet-1k, 3 of its 1000 classes"
    for e in run.epochs:  # every image is predicted "goldfish": right for its 3 images only
        assert e.source.confusion == [[0, 1, 0, 0], [0, 3, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]]
        assert e.source.accuracy == 3 / 6
    assert "Forgetting of the source task (ImageNet-1k, 3 of its 1000 classes)" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--weights", "none", "--source-data", "{d}/source"], "--weights none has none"),
        (["--weights", "{d}/headless.pt", "--source-data", "{d}/source"], "hold no classifier head"),
        (["--weights", "{d}/weights.pt", "--source-data", "{d}/bad"], "class folder(s) 'not_a_class' are not classes"),
        (["--weights", "{d}/weights.pt", "--source-data", "{d}/missing"], "is not a directory"),
    ],
)
def test_bad_source_data_is_one_line_and_exit_code_2(capsys, tv_case, tmp_path, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(capsys, _tv_args(tv_case, *[a.replace("{d}", str(tv_case)) for a in extra]))
    assert needle in line
    if "not_a_class" in needle:  # says how to name a folder instead
        assert "'tench'" in line and "'n01440764'" in line and "class index 0–999" in line
    assert not any(tmp_path.iterdir())


def test_folder_names_map_to_the_heads_classes():
    from sftreport.train.imagenet import imagenet_categories, imagenet_wnids
    from sftreport.train.models import SourceHead
    from sftreport.train.source import class_index

    wnids = imagenet_wnids()
    # the shipped list: 1000 distinct synset ids in class-index order (sorted), tench first, toilet tissue last
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert (wnids[0], wnids[1], wnids[999]) == ("n01440764", "n01443537", "n15075141")
    cats = imagenet_categories()
    assert (cats[0], cats[1], cats[999]) == ("tench", "goldfish", "toilet tissue")
    imagenet = SourceHead(nn.Linear(2, 1000), 1000, cats, 224, imagenet=True)
    assert [class_index(n, imagenet) for n in ("goldfish", "n01443537", "1", "toilet tissue", "999")] == [
        1,
        1,
        1,
        999,
        999,
    ]
    assert [class_index(n, imagenet) for n in ("1000", "01", "Goldfish", "n99999999", "")] == [None] * 5
    digits = SourceHead(nn.Linear(2, 5), 5, ["0", "1", "2", "3", "4"], 32)
    assert [class_index(n, digits) for n in ("0", "4", "5", "n01440764")] == [0, 4, None, None]
