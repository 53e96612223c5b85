"""A model's components (record/components.py), their counts in the recorded architecture
(record/architecture.py, validated by schema.Architecture) and how far each moved (report/frames.py),
each checked against numbers made here by hand from the models' own parameters and buffers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torchvision.models import get_model
from torchvision.ops.misc import FrozenBatchNorm2d

from sftreport.record.architecture import describe
from sftreport.record.components import components
from sftreport.record.weights import WeightProbe
from sftreport.report.frames import RunFrames
from sftreport.schema import Architecture, ComponentSummary, DatasetInfo, Environment, EpochSnapshot, RunInfo
from sftreport.store import Run

DETECTION = {"weights_backbone": None, "rpn_pre_nms_top_n_test": 8, "rpn_post_nms_top_n_test": 8}
LAYOUTS = {  # torchvision model -> (its builder's keywords, the components it must be named by)
    "fasterrcnn_mobilenet_v3_large_320_fpn": (
        DETECTION,
        [
            ("backbone body", ["backbone.body"]),
            ("FPN", ["backbone.fpn"]),
            ("RPN", ["rpn"]),
            ("box head", ["roi_heads.box_head"]),
            ("box predictor", ["roi_heads.box_predictor"]),
        ],
    ),
    "retinanet_resnet50_fpn": (
        {"weights_backbone": None},
        [
            ("backbone body", ["backbone.body"]),
            ("FPN", ["backbone.fpn"]),
            ("classification head", ["head.classification_head"]),
            ("regression head", ["head.regression_head"]),
        ],
    ),
    "ssdlite320_mobilenet_v3_large": (
        {"weights_backbone": None},
        [
            ("backbone body", ["backbone.features"]),
            ("backbone extra layers", ["backbone.extra"]),
            ("classification head", ["head.classification_head"]),
            ("regression head", ["head.regression_head"]),
        ],
    ),
    "deeplabv3_mobilenet_v3_large": (
        {"weights_backbone": None, "aux_loss": True},
        [("backbone", ["backbone"]), ("classifier", ["classifier"]), ("aux classifier", ["aux_classifier"])],
    ),
    "lraspp_mobilenet_v3_large": (
        {"weights_backbone": None},
        [("backbone", ["backbone"]), ("classifier", ["classifier"])],
    ),
    "resnet18": (
        {},
        [("backbone", ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]), ("fc", ["fc"])],
    ),
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return get_model(name, weights=None, num_classes=3, **LAYOUTS[name][0])


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("name", LAYOUTS)
def test_torchvision_layouts_are_named_by_component_and_every_parameter_is_in_exactly_one(name: str):
    model = _model(name)
    expected = LAYOUTS[name][1]
    assert components(model) == expected
    for param, _ in model.named_parameters():  # the expected prefixes partition the parameters
        assert sum(_under(param, prefixes) for _, prefixes in expected) == 1, param


def test_the_embedded_detector_and_segmenter_are_named_by_their_parts():
    from sftreport.train.detectors import build_detector
    from sftreport.train.segmenters import DigitsSegmenter

    detector = build_detector("digits_resnet", "none", 6, 64).model
    assert components(detector) == [
        ("backbone", ["backbone"]),
        ("RPN", ["rpn"]),
        ("box head", ["roi_heads.box_head"]),
        ("box predictor", ["roi_heads.box_predictor"]),
    ]
    segmenter = DigitsSegmenter(4)
    stem_and_stages = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert components(segmenter, dense_output=True) == [("backbone", stem_and_stages), ("segmentation head", ["head"])]
    # describe() sees the {"out": maps} output itself
    arch = describe(segmenter, torch.rand(2, 3, 32, 32), set())
    assert [(c.name, c.params) for c in arch.components] == [
        ("backbone", sum(p.numel() for n, p in segmenter.named_parameters() if not n.startswith("head."))),
        ("segmentation head", sum(p.numel() for p in segmenter.head.parameters())),
    ]


def test_anything_else_is_grouped_by_top_level_child_and_the_models_own_parameters():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.zeros(3))
            self.encoder = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
            self.dropout = nn.Dropout()
            self.heads = nn.Linear(3, 2)

    assert components(Odd()) == [("(model)", [""]), ("encoder", ["encoder"]), ("heads", ["heads"])]


@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "resnet18"])
def test_component_counts_are_the_hand_counted_sums_of_their_parameters(name: str):
    model = _model(name)
    expected = LAYOUTS[name][1]
    first = expected[0]
    for p in model.parameters():  # the first component frozen, the others new
        p.requires_grad_(True)
    for n, p in model.named_parameters():
        if _under(n, first[1]):
            p.requires_grad_(False)
    new = {n for n, _ in model.named_parameters() if not _under(n, first[1])}
    arch = describe(model, torch.rand(2, 3, 32, 32), new)
    params = dict(model.named_parameters())
    for c, (cname, prefixes) in zip(arch.components, expected, strict=True):
        mine = [p for n, p in params.items() if _under(n, prefixes)]
        assert c.name == cname and c.modules == prefixes
        assert c.params == sum(p.numel() for p in mine)
        assert c.trainable == sum(p.numel() for p in mine if p.requires_grad)
        assert c.frozen == (c.params if cname == first[0] else 0)
        assert c.new == (0 if cname == first[0] else c.params)
        assert c.frozen_norm == 0
    assert sum(c.params for c in arch.components) == arch.total_params == sum(p.numel() for p in model.parameters())
    assert sum(c.trainable for c in arch.components) == arch.trainable_params


def _freeze_batchnorm(module: nn.Module) -> int:
    """Every BatchNorm2d under `module` replaced by a FrozenBatchNorm2d, as torchvision's pretrained detectors
    build their backbones; returns the affine values they hold (weight and bias: 2 per channel)."""
    values = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
            values += 2 * child.num_features
        else:
            values += _freeze_batchnorm(child)
    return values


def test_frozen_batchnorm_values_and_frozen_layers_of_a_detector_are_counted_where_they_are():
    model = _model("fasterrcnn_mobilenet_v3_large_320_fpn")
    frozen_values = _freeze_batchnorm(model.backbone.body)
    assert frozen_values > 0
    for n, p in model.named_parameters():  # trainable_backbone_layers=3's way: the first stages frozen
        if n.startswith(("backbone.body.0.", "backbone.body.1.", "backbone.body.2.")):
            p.requires_grad_(False)
    frozen_by_hand = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    arch = describe(model, torch.rand(1, 3, 64, 64), set())
    by = {c.name: c for c in arch.components}
    assert by["backbone body"].frozen_norm == frozen_values
    assert arch.frozen_norm == frozen_values
    assert sum(c.frozen_norm for c in arch.components) == frozen_values
    assert by["backbone body"].frozen == frozen_by_hand
    assert all(c.frozen == 0 and c.frozen_norm == 0 for c in arch.components if c.name != "backbone body")
    body = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone.body."))
    assert by["backbone body"].params == body  # the buffers are in no parameter count
    assert sum(c.params for c in arch.components) == arch.total_params


def test_the_architecture_refuses_components_that_do_not_cover_the_modules_or_add_up():
    model = _model("resnet18")
    arch = describe(model, torch.rand(1, 3, 32, 32), set())
    data = arch.model_dump()
    Architecture.model_validate(data)
    short = {**data, "components": [{**data["components"][0], "params": data["components"][0]["params"] - 1}]}
    with pytest.raises(ValidationError, match="component 'backbone': params"):
        Architecture.model_validate({**short, "components": short["components"] + data["components"][1:]})
    with pytest.raises(ValidationError, match="module 'fc' holds parameters but lies in no component"):
        Architecture.model_validate({**data, "components": data["components"][:1]})
    twice = {**data["components"][1], "name": "again"}
    with pytest.raises(ValidationError, match="a module prefix is listed under two components"):
        Architecture.model_validate({**data, "components": data["components"] + [twice]})


class _Segmenter(nn.Module):
    """torchvision's segmentation layout in miniature: backbone, classifier, aux_classifier."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Conv2d(4, 3, 1)
        self.aux_classifier = nn.Conv2d(4, 3, 1)
        nn.init.zeros_(self.aux_classifier.weight)  # starts at 0: ‖W₀‖ = 0
        nn.init.zeros_(self.aux_classifier.bias)

    def forward(self, x):
        f = self.backbone(x)
        return {"out": self.classifier(f), "aux": self.aux_classifier(f)}


def _run(tmp_path: Path, arch: Architecture, epochs: list[EpochSnapshot]) -> RunFrames:
    info = RunInfo(
        name="components",
        started_at="2026-01-01T00:00:00+00:00",
        model="m",
        weights="w",
        strategy="full",
        dataset=DatasetInfo(name="d", classes=["a", "b", "c"], train_size=1, val_size=1, image_size=8),
        environment=Environment(python="3", platform="p", sftreport="0", device="cpu"),
        architecture=arch,
    )
    return RunFrames(Run(root=tmp_path, info=info, epochs=epochs))


@pytest.mark.parametrize("aux_moves", [True, False])
def test_how_far_each_component_moved_is_computed_from_the_two_state_dicts(tmp_path: Path, aux_moves: bool):
    torch.manual_seed(0)
    model = _Segmenter()
    arch = describe(model, torch.rand(2, 3, 8, 8), set())
    assert [c.name for c in arch.components] == ["backbone", "classifier", "aux classifier"]
    w0 = {k: v.clone().double() for k, v in model.state_dict().items()}
    probe = WeightProbe(model, set(), bins=8)
    start = EpochSnapshot(epoch=0, step=0, weights=probe.measure())
    with torch.no_grad():  # one epoch: the backbone frozen (unchanged), the classifier moved, the aux head maybe
        model.classifier.weight.mul_(1.5).add_(0.25)
        model.classifier.bias.sub_(0.5)
        if aux_moves:
            model.aux_classifier.weight.fill_(0.125)
    w1 = {k: v.double() for k, v in model.state_dict().items()}
    frames = _run(tmp_path, arch, [start, EpochSnapshot(epoch=1, step=1, weights=probe.measure())])

    def moved(prefix: str) -> float:
        keys = [k for k in dict(model.named_parameters()) if k.startswith(prefix + ".")]
        diff = sum(float((w1[k] - w0[k]).square().sum()) for k in keys)
        ref = sum(float(w0[k].square().sum()) for k in keys)
        return math.sqrt(diff / ref) if ref else (0.0 if diff == 0 else math.inf)

    table = frames.what_trained.set_index("component")
    assert table.loc["backbone", "rel_change"] == 0.0  # exactly: frozen
    assert table.loc["classifier", "rel_change"] == pytest.approx(moved("classifier"), rel=1e-6)
    assert table.loc["aux classifier", "rel_change"] == (math.inf if aux_moves else 0.0)  # ‖W₀‖ = 0
    keys = [k for k, _ in model.named_parameters()]
    whole = math.sqrt(
        sum(float((w1[k] - w0[k]).square().sum()) for k in keys) / sum(float(w0[k].square().sum()) for k in keys)
    )
    assert table.loc["whole model", "rel_change"] == pytest.approx(whole, rel=1e-6)
    assert math.isnan(table.loc["classifier", "grad_norm"])  # no gradients sampled: not measured
    change = frames.component_change
    assert list(change[change["epoch"] == 0]["rel_change"]) == [0.0, 0.0, 0.0]
    per_epoch = change[change["epoch"] == 1].set_index("component")["rel_change"]  # what the line chart draws
    assert per_epoch["classifier"] == pytest.approx(moved("classifier"), rel=1e-6)
    assert per_epoch["backbone"] == 0.0


def test_a_component_without_weight_statistics_has_no_change(tmp_path: Path):
    model = _Segmenter()
    arch = describe(model, torch.rand(2, 3, 8, 8), set())
    frames = _run(tmp_path, arch, [EpochSnapshot(epoch=0, step=0)])
    table = frames.what_trained
    assert table["rel_change"].isna().all() and list(table["component"])[-1] == "whole model"
    assert ComponentSummary(name="x", modules=["x"], params=5, trainable=2, new=0).frozen == 3


def test_a_wrapper_that_holds_the_whole_model_is_looked_through():
    class Wrapper(nn.Module):  # as DistributedDataParallel's `module`, or peft's `base_model.model`
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.module = inner
            self.pool = nn.Identity()  # holds nothing: still one child with everything

    wrapped = Wrapper(Wrapper(_model("resnet18")))
    stem_and_stages = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert components(wrapped) == [
        ("backbone", [f"module.module.{n}" for n in stem_and_stages]),
        ("fc", ["module.module.fc"]),
    ]
