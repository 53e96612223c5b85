"""The model zoo: head replacement across torchvision families, weights files, freezing strategies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sftreport.errors import UserError
from sftreport.train.models import DIGITS_MODEL, apply_strategy, build_model, set_train_mode

FAMILIES = {  # model -> the head torchvision gives it
    "resnet18": "fc",
    "vgg11": "classifier.6",
    "mobilenet_v2": "classifier.1",
    "mobilenet_v3_small": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "convnext_tiny": "classifier.2",
    "vit_b_16": "heads.head",
    "squeezenet1_0": "classifier.1",
}


@pytest.mark.parametrize("name, head", FAMILIES.items())
def test_head_is_replaced_for_the_target_classes(name: str, head: str):
    torch.manual_seed(0)
    b = build_model(name, "none", num_classes=7)
    assert b.head == head
    size = 224 if name.startswith("vit") else 64
    b.model.eval()
    with torch.no_grad():
        out = b.model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 7)
    assert b.new_params == {n for n, _ in b.model.named_parameters()}  # weights none: everything is new


def test_local_state_dict_is_loaded_and_only_the_head_is_new(tmp_path: Path):
    import torchvision

    src = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)  # DDP-style wrapper
    b = build_model("resnet18", str(path), num_classes=4)
    assert b.new_params == {"fc.weight", "fc.bias"}
    assert torch.equal(b.model.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    assert b.model.fc.out_features == 4


def test_weights_that_do_not_fit_the_model_are_refused_in_one_line(tmp_path: Path):
    import torchvision

    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(UserError) as e:
        build_model("resnet18", str(path), num_classes=4)
    assert "do not fit" in str(e.value) and "unexpected" in str(e.value) and "\n" not in str(e.value)


def test_weights_are_loaded_with_weights_only(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(UserError, match="weights_only=True"):
        build_model("resnet18", str(path), num_classes=2)


def test_embedded_default_loads_its_shipped_pretrained_weights():
    b = build_model(DIGITS_MODEL, "DEFAULT", num_classes=5)
    assert "pretrained on digits 0–4" in b.weights
    assert b.new_params == {"fc.weight", "fc.bias"}
    assert b.model.layer1[0].conv1.weight.abs().sum() > 0


def test_strategies_freeze_what_they_say():
    b = build_model("resnet18", "none", num_classes=3)
    frozen = apply_strategy(b.model, "linear-probe", b.head)
    assert [n for n, p in b.model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert "layer4.1.bn2" in frozen
    set_train_mode(b.model, frozen)
    assert not b.model.layer4[1].bn2.training and b.model.fc.training  # frozen BN keeps its statistics

    apply_strategy(b.model, "freeze-until:layer2", b.head)
    trainable = {n.split(".")[0] for n, p in b.model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}

    apply_strategy(b.model, "full", b.head)
    assert all(p.requires_grad for p in b.model.parameters())


@pytest.mark.parametrize(
    "strategy, message",
    [("freeze-until:nope", "no module"), ("freeze-until:fc", "new head"), ("freeze-until:relu", "no parameters")],
)
def test_bad_freeze_targets(strategy: str, message: str):
    b = build_model("resnet18", "none", num_classes=3)
    with pytest.raises(UserError, match=message):
        apply_strategy(b.model, strategy, b.head)


def test_unknown_model_and_weights_names():
    with pytest.raises(UserError, match="unknown model"):
        build_model("resnet1000", "none", 2)
    with pytest.raises(UserError, match="IMAGENET1K_V2"):
        build_model("resnet50", "IMAGENET9K", 2)


def test_head_replacement_leaves_a_plain_module(tmp_path: Path):
    b = build_model("mobilenet_v3_small", "none", num_classes=2)
    assert isinstance(b.model.get_submodule(b.head), nn.Linear)


def test_the_embedded_model_is_torchvision_s_resnet_with_basic_blocks():
    """digits_resnet is written with plain torch.nn (importing torchvision costs a second); its shipped
    weights load into torchvision's own ResNet and BasicBlock, built at widths 16-128, with the same keys,
    and both give the same outputs."""
    from torchvision.models.resnet import BasicBlock, ResNet

    class TorchvisionDigits(ResNet):
        def __init__(self, num_classes: int = 5, widths=(16, 32, 64, 128)):
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(BasicBlock, widths[0], 1)
            self.layer2 = self._make_layer(BasicBlock, widths[1], 1, stride=2)
            self.layer3 = self._make_layer(BasicBlock, widths[2], 1, stride=2)
            self.layer4 = self._make_layer(BasicBlock, widths[3], 1, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[3], num_classes)

    ours = build_model(DIGITS_MODEL, "DEFAULT", 5).model.eval()
    theirs = TorchvisionDigits().eval()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [type(m).__name__ for _, m in ours.named_modules()][1:] == [
        type(m).__name__ for _, m in theirs.named_modules()
    ][1:]
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


@pytest.mark.parametrize("name", ["digits_lstm", "digits_transformer"])
def test_embedded_sequence_models_ship_weights_that_know_digits_0_to_4(name: str):
    """The shipped checkpoint with its own 5-class head, on the held-out digits 0–4 it never trained on:
    a broken or stale checkpoint would fall far below what `sftreport pretrain` reached (99.6 %, 97.3 %)."""
    from sftreport.train.data import DIGITS_SOURCE_CLASSES, DevicePipeline, load_digits_split
    from sftreport.train.models import EMBEDDED
    from sftreport.train.pretrain import WEIGHTS_DIR

    embedded = EMBEDDED[name]
    model = embedded.build(num_classes=5).eval()
    model.load_state_dict(torch.load(WEIGHTS_DIR / embedded.weights_file(name), weights_only=True))
    _, val = load_digits_split(DIGITS_SOURCE_CLASSES)
    x = DevicePipeline(torch.device("cpu"), embedded.image_size, hflip=False, channels_last=False).eval_batch(
        val.images
    )
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == val.labels).float().mean().item()
    assert accuracy > 0.95
    b = build_model(name, "DEFAULT", num_classes=5)  # fine-tuning: a new head, the rest loaded
    assert b.new_params == {"fc.weight", "fc.bias"} and "pretrained on digits 0–4" in b.weights
    key = "embed.weight" if name == "digits_transformer" else "lstm.weight_hh_l1"
    assert torch.equal(dict(b.model.named_parameters())[key], model.state_dict()[key])


def test_pretrain_builds_a_sequence_model_checkpoint_that_loads(tmp_path):
    from sftreport.train.pretrain import pretrain_digits

    out = tmp_path / "lstm.pt"
    accuracy = pretrain_digits(out, epochs=1, model_name="digits_lstm", log=lambda _: None)
    assert 0 <= accuracy <= 1
    assert build_model("digits_lstm", str(out), num_classes=5).new_params == {"fc.weight", "fc.bias"}


def test_sequence_models_default_to_adamw_unless_told_otherwise():
    from sftreport.config import build_config

    assert (build_config(None, {"model": "digits_lstm"}).optimizer, build_config(None, {}).optimizer) == (
        "adamw",
        "sgd",
    )
    told = build_config(None, {"model": "digits_transformer", "optimizer": "sgd", "lr": 0.5})
    assert (told.optimizer, told.lr) == ("sgd", 0.5)


def test_linear_probe_trains_every_new_head_and_keeps_what_the_builder_froze():
    """A detector has several new heads (the digit detector: RPN and ROI heads) that are not the last module;
    linear-probe trains exactly them, and torchvision's own frozen layers stay frozen under `full`."""
    b = build_model("resnet18", "none", num_classes=3)
    heads = {n for n, _ in b.model.named_parameters() if n.startswith(("layer4.1.conv2.", "fc."))}
    apply_strategy(b.model, "linear-probe", b.head, head_params=heads)
    assert {n for n, p in b.model.named_parameters() if p.requires_grad} == heads
    with pytest.raises(UserError, match=r"new head 'layer4\.1\.conv2'"):
        apply_strategy(b.model, "freeze-until:layer4", b.head, head_params=heads)
    apply_strategy(b.model, "freeze-until:layer3", b.head, head_params=heads)
    assert {n.split(".")[0] for n, p in b.model.named_parameters() if p.requires_grad} == {"layer4", "fc"}
    builder = frozenset(n for n, _ in b.model.named_parameters() if n.startswith(("conv1.", "layer1.")))
    frozen = apply_strategy(b.model, "full", b.head, builder_frozen=builder)
    assert {n for n, p in b.model.named_parameters() if not p.requires_grad} == builder
    assert "layer1" in frozen and "layer2" not in frozen
