"""torchvision's detectors, every family, for K = 4 classes: the class-predicting module has K outputs per
anchor and the structure torchvision itself gives a K-class model; a training forward on two tiny images (one
without boxes) gives finite losses, an eval forward gives boxes. Pretrained weights are read offline from a
fake torch.hub cache holding a 91-class model's state_dict with a few tensors set to known values: those are
loaded, the new head is the only new part, torchvision's FrozenBatchNorm2d and frozen layers are kept and stay
frozen under every strategy. An empty cache is one line naming the file and the folder; a run of the command
line fine-tunes a pretrained detector on a tiny COCO tree."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchvision
from test_detection_data import CATS, _coco, _tree
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from sftreport.errors import UserError
from sftreport.record.detection_eval import object_level
from sftreport.train.detectors import build_detector
from sftreport.train.models import apply_strategy

K = 4  # background and three classes


@pytest.fixture(autouse=True)
def one_thread():
    """Convolutions this small run faster on one thread, and far faster when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(size: int = 64) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    x = list(torch.rand(2, 3, size, size, generator=g))
    y = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 44.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # an image with no object
    ]
    return x, y


# the class-predicting convolutions' outputs: anchors per location × K (torchvision's anchor generators:
# RetinaNet 3 sizes × 3 ratios; FCOS one point; SSD300 4 or 6 boxes per map; SSDlite 6 on each of 6 maps)
FAMILIES = [
    pytest.param("fasterrcnn_mobilenet_v3_large_320_fpn", "roi_heads.box_predictor", [K], id="faster"),
    pytest.param("ssdlite320_mobilenet_v3_large", "head.classification_head", [6 * K] * 6, id="ssdlite"),
    pytest.param(
        "retinanet_resnet50_fpn_v2", "head.classification_head", [9 * K], id="retinanet", marks=pytest.mark.slow
    ),
    pytest.param("fcos_resnet50_fpn", "head.classification_head", [K], id="fcos", marks=pytest.mark.slow),
    pytest.param("maskrcnn_resnet50_fpn", "roi_heads.box_predictor", [K], id="mask", marks=pytest.mark.slow),
    pytest.param(
        "ssd300_vgg16",
        "head.classification_head",
        [4 * K, 6 * K, 6 * K, 6 * K, 4 * K, 4 * K],
        id="ssd",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("name, head, outputs", FAMILIES)
def test_each_family_builds_for_k_classes_trains_and_detects(name, head, outputs):
    torch.manual_seed(0)
    det = build_detector(name, "none", K, 64)
    model = det.model
    params = {n for n, _ in model.named_parameters()}
    assert det.new_params == params and not det.builder_frozen  # no weights: everything new, nothing frozen
    assert det.head_params == {n for n in params if n.startswith(head + ".")} != set()
    # the modules that output the class scores: Faster R-CNN's cls_score; RetinaNet's and FCOS' cls_logits;
    # SSD's convolution per feature map (SSDlite's: each block's 1×1 after its depthwise 3×3)
    scores = re.compile(r"(cls_score|cls_logits|module_list\.\d+|module_list\.\d+\.1)")
    out = [
        getattr(m, "out_features", None) or m.out_channels
        for n, m in model.get_submodule(head).named_modules()
        if scores.fullmatch(n) and isinstance(m, nn.Linear | nn.Conv2d)
    ]
    assert out == outputs
    # the same modules (their repr: channels, kernels, norm layers and their eps) and tensor shapes as
    # torchvision's own model built for K classes
    own = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=K)
    assert repr(model.get_submodule(head)) == repr(own.get_submodule(head))
    theirs = {k: v.shape for k, v in own.get_submodule(head).state_dict().items()}
    assert {k: v.shape for k, v in model.get_submodule(head).state_dict().items()} == theirs
    x, y = _batch()
    model.train()
    losses = model(x, y)
    assert losses and all(math.isfinite(float(v.detach())) for v in losses.values())
    assert not any("mask" in k for k in losses)
    model.eval()
    with torch.no_grad():
        found = model(x)
    assert len(found) == 2 and all(p["boxes"].shape[1:] == (4,) and "masks" not in p for p in found)
    labels = torch.cat([p["labels"] for p in found])
    assert len(labels) > 0 or name.startswith(("retinanet", "fcos"))  # focal-loss heads start near 0.01
    assert bool(((labels >= 1) & (labels < K)).all())
    assert det.activations and all(model.get_submodule(m) is not None for m in det.activations)


def test_mask_rcnn_loses_its_mask_branch_and_says_so():
    det = build_detector("maskrcnn_resnet50_fpn", "none", K, 64)
    roi = det.model.roi_heads
    assert roi.mask_roi_pool is None and roi.mask_head is None and roi.mask_predictor is None
    assert not any(".mask_" in n for n, _ in det.model.named_parameters())
    assert "boxes only: the mask branch removed" in det.weights


@pytest.mark.parametrize(
    "name, weights, said",
    [
        ("keypointrcnn_resnet50_fpn", "none", "keypointrcnn_resnet50_fpn predicts human keypoints"),
        ("resnet18", "none", "'resnet18' is not a detector: digits_resnet .* or one of torchvision's fasterrcnn_"),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", "COCO_V9", "unknown weights 'COCO_V9' .*: one of DEFAULT, COCO_V1"),
    ],
)
def test_what_is_not_a_detector_or_its_weights_is_one_line(name, weights, said):
    with pytest.raises(UserError, match=said) as e:
        build_detector(name, weights, K, 64)
    assert "\n" not in str(e.value)


def test_the_feature_probe_reads_the_finest_map_at_stride_8_or_coarser():
    maps = [torch.zeros(1, 8, 128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]  # an FPN's levels on 128 px
    assert object_level(maps, 128) is maps[1]
    ssd300 = [torch.zeros(1, 8, n, n) for n in (38, 19, 10, 5, 3, 1)]
    assert object_level(ssd300, 300) is ssd300[0]
    fine = [torch.zeros(1, 8, 32, 32), torch.zeros(1, 8, 16, 16)]
    assert object_level(fine, 64) is fine[-1]  # all finer than stride 8: the coarsest


# --------------------------------------------------------------------------- pretrained, offline

SMALL = "fasterrcnn_mobilenet_v3_large_320_fpn"
SMALL_FILE = "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth"  # its DEFAULT (COCO_V1) weights' file name
KNOWN = {  # tensors of the fake pretrained file set to values no initialisation gives
    "backbone.body.0.0.weight": 0.5,  # the stem's conv: frozen by torchvision (trainable_backbone_layers=3)
    "backbone.body.0.1.running_mean": 0.75,  # its BatchNorm's statistics, read into a FrozenBatchNorm2d
    "backbone.fpn.inner_blocks.0.0.weight": 0.25,
    "rpn.head.conv.0.0.weight": 0.125,
    "roi_heads.box_head.fc6.bias": -0.5,
    "roi_heads.box_predictor.cls_score.weight": 9.0,  # the COCO head: replaced, not loaded
}


class NoNetwork:
    """torch.hub's download, refused at once (and counted): no test waits on a network."""

    def __init__(self):
        self.urls: list[str] = []

    def __call__(self, url, dst, *args, **kwargs):
        self.urls.append(url)
        raise OSError("no network in the tests")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub cache of our own (TORCH_HOME and torch.hub's dir), downloads refused."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored after the test
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", NoNetwork())
    return tmp_path / "torch" / "hub"


def _cache(hub, name: str, file: str, known: dict[str, float]) -> None:
    """The file torchvision's DEFAULT weights would be cached as: a 91-class model's state_dict (COCO's
    count), with the `known` tensors filled."""
    torch.manual_seed(1)
    state = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=91).state_dict()
    for k, v in known.items():
        state[k].fill_(v)
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(state, hub / "checkpoints" / file)


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _check_pretrained(name: str, head: str, known: dict[str, float]) -> None:
    det = build_detector(name, "DEFAULT", K, 64)
    model = det.model
    state = model.state_dict()
    for k, v in known.items():
        if k.startswith(head + "."):
            assert not bool((state[k] == v).all()), k
        else:
            assert bool((state[k] == v).all()), k
    params = {n for n, _ in model.named_parameters()}
    heads = {n for n in params if n.startswith(head + ".")}
    assert det.new_params == det.head_params == heads
    assert f"{head} for {K - 1} classes" in det.weights and det.weights.startswith("torchvision ")
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.get_submodule("backbone").modules())
    # what torchvision itself leaves frozen, reading the same cached file
    tv = torchvision.models.get_model(name, weights="DEFAULT")
    frozen = {n for n, p in tv.named_parameters() if not p.requires_grad}
    assert frozen and det.builder_frozen == frozen
    apply_strategy(model, "full", det.head, det.head_params, det.builder_frozen)
    assert _trainable(model) == params - frozen
    apply_strategy(model, "linear-probe", det.head, det.head_params, det.builder_frozen)
    assert _trainable(model) == heads


def test_default_weights_load_from_the_cache_with_torchvision_s_frozen_layers(hub):
    _cache(hub, SMALL, SMALL_FILE, KNOWN)
    _check_pretrained(SMALL, "roi_heads.box_predictor", KNOWN)
    det = build_detector(SMALL, "COCO_V1", K, 64)  # the member by name: the same file
    assert det.weights.startswith("torchvision FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1")
    assert {n for n in det.builder_frozen if not n.startswith("backbone.body.")} == set()
    assert "backbone.body.0.0.weight" in det.builder_frozen
    apply_strategy(det.model, "freeze-until:backbone.fpn", det.head, det.head_params, det.builder_frozen)
    assert _trainable(det.model) == {n for n, _ in det.model.named_parameters() if n.startswith(("rpn.", "roi_"))}
    assert torch.hub.download_url_to_file.urls == []


@pytest.mark.slow
def test_retinanet_default_weights_keep_conv1_and_layer1_frozen(hub):
    known = {
        "backbone.body.conv1.weight": 0.5,
        "backbone.body.layer4.0.conv1.weight": 0.25,
        "head.regression_head.bbox_reg.weight": 0.125,  # kept: the box regression does not depend on K
        "head.classification_head.cls_logits.weight": 9.0,
        "head.classification_head.conv.0.0.weight": 9.0,  # the whole classification head is new
    }
    _cache(hub, "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_coco-eeacb38b.pth", known)
    _check_pretrained("retinanet_resnet50_fpn", "head.classification_head", known)
    det = build_detector("retinanet_resnet50_fpn", "DEFAULT", K, 64)
    assert {n.split(".")[2] for n in det.builder_frozen} == {"conv1", "layer1"}


def test_an_empty_cache_is_one_line_naming_the_file_and_the_folder(hub):
    with pytest.raises(UserError) as e:
        build_detector(SMALL, "DEFAULT", K, 64)
    said = str(e.value)
    assert "\n" not in said and f"put {SMALL_FILE} in {hub / 'checkpoints'}" in said
    assert said.startswith("cannot download FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1 (OSError")
    assert torch.hub.download_url_to_file.urls == [f"https://download.pytorch.org/models/{SMALL_FILE}"]
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    (hub / "checkpoints" / SMALL_FILE).write_bytes(b"cut short")  # an interrupted copy
    with pytest.raises(UserError, match=f"cannot load {hub / 'checkpoints' / SMALL_FILE} into {SMALL} .*delete it"):
        build_detector(SMALL, "DEFAULT", K, 64)


def test_cli_fine_tunes_a_pretrained_detector_from_the_cache(hub, tmp_path, capsys):
    from sftreport.cli import main
    from sftreport.store import read_run

    root = _tree(tmp_path / "coco")  # train: two images, one without boxes; val: two images (a probe set)
    val = [
        {"id": 20, "image_id": 7, "category_id": 1, "bbox": [0, 0, 25, 25], "iscrowd": 0, "area": 625},
        {"id": 21, "image_id": 8, "category_id": 90, "bbox": [10, 5, 30, 20], "iscrowd": 0, "area": 600},
    ]
    _coco(root, "val", [(7, "c.jpg", 50, 50), (8, "d.jpg", 60, 40)], val, CATS)
    args = ["run", "--model", SMALL, "--weights", "DEFAULT", "--dataset", "coco", "--data-root", str(root)]
    quick = ["--image-size", "64", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "1"]
    quick += ["--probe-size", "8", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "r.md"), "--quiet"]
    assert main(args + quick) == 2  # the cache is empty: one line, exit 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"put {SMALL_FILE} in" in err
    _cache(hub, SMALL, SMALL_FILE, KNOWN)
    assert main(args + quick) == 0, capsys.readouterr().err
    run = read_run(tmp_path / "run")
    assert run.info.weights.startswith("torchvision FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1")
    arch = run.info.architecture
    assert arch is not None and 0 < arch.new_params < arch.trainable_params < arch.total_params
    head = sum(m.new for m in arch.modules if m.name.startswith("roi_heads.box_predictor"))
    assert head == arch.new_params == 1024 * K + K + 1024 * 4 * K + 4 * K  # cls_score and bbox_pred
    assert len(run.epochs) == 2 and run.epochs[1].val is not None


def test_a_state_dict_file_loads_everything_but_the_new_head(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.get_model(SMALL, weights=None, weights_backbone=None, num_classes=91).state_dict()
    for k, v in KNOWN.items():
        state[k].fill_(v)
    # as torchvision's own files hold them (FrozenBatchNorm2d): no BatchNorm batch counts
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "coco.pth")
    det = build_detector(SMALL, str(tmp_path / "coco.pth"), K, 64)
    loaded = det.model.state_dict()
    for k, v in KNOWN.items():
        assert bool((loaded[k] == v).all()) != k.startswith("roi_heads.box_predictor."), k
    assert det.new_params == det.head_params == {n for n in loaded if n.startswith("roi_heads.box_predictor.")}
    assert not det.builder_frozen and det.weights.startswith(f"file {tmp_path / 'coco.pth'}; new roi_heads")
    state["rpn.head.conv.0.0.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"bad\.pth do not fit FasterRCNN: wrong shape 1 \(e\.g\. rpn\.head\.conv"):
        build_detector(SMALL, str(tmp_path / "bad.pth"), K, 64)


def test_a_classifier_s_torchvision_weights_come_from_the_same_cache(hub):
    from sftreport.train.models import _pretrained_state

    file = "mobilenet_v3_small-047dcff4.pth"  # MobileNet_V3_Small_Weights.DEFAULT (IMAGENET1K_V1)
    with pytest.raises(UserError, match=f"put {file} in {hub / 'checkpoints'} or pass --weights FILE"):
        _pretrained_state("mobilenet_v3_small", "DEFAULT")
    state = torchvision.models.mobilenet_v3_small().state_dict()
    state["classifier.3.bias"].fill_(0.5)
    torch.save(state, hub / "checkpoints" / file)
    loaded, described, meta = _pretrained_state("mobilenet_v3_small", "DEFAULT")
    assert loaded is not None and bool((loaded["classifier.3.bias"] == 0.5).all())
    assert described == "torchvision MobileNet_V3_Small_Weights.IMAGENET1K_V1" and len(meta["categories"]) == 1000
