"""torchvision's segmenters with pretrained weights, with no network: `--weights DEFAULT` (or the enum's name)
read from a fake torch hub cache holding a state_dict of the same architecture with a few tensors set to known
values; every tensor but the heads loads, both heads (classifier and aux classifier; LR-ASPP's low and high)
are new with the dataset's classes, linear-probe trains exactly them; an empty cache is one line. The training
loss (out + 0.5·aux, void ignored) against a hand computation, and one end-to-end run on a tiny VOC tree whose
report lists both replaced heads."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision
from test_segmentation import make_voc

from sftreport.cli import main
from sftreport.errors import UserError
from sftreport.store import read_run
from sftreport.train.models import apply_strategy
from sftreport.train.segmenters import build_segmenter, segmentation_loss

K = 6  # the dataset's classes in these tests (the fake pretrained weights have VOC's 21)
DEEPLAB = "deeplabv3_mobilenet_v3_large"
LRASPP = "lraspp_mobilenet_v3_large"
DEEPLAB_HEADS = ("classifier.4", "aux_classifier.4")
LRASPP_HEADS = ("classifier.low_classifier", "classifier.high_classifier")
KNOWN = {  # tensors of the fake pretrained weights set to values a fresh initialisation cannot have
    DEEPLAB: {
        "backbone.0.0.weight": lambda t: torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) / 1000,
        "classifier.0.convs.0.0.weight": lambda t: torch.full_like(t, 0.25),
        # the aux classifier's body loads (values of both signs: its ReLU must not be dead for the loss to train it)
        "aux_classifier.0.weight": lambda t: (torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) % 7 - 3) / 100,
        "aux_classifier.1.running_var": lambda t: torch.full_like(t, 3.0),
    },
    LRASPP: {
        "backbone.0.0.weight": lambda t: torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) / 1000,
        "classifier.cbr.0.weight": lambda t: torch.full_like(t, 0.25),
    },
}


def _params_of(heads: tuple[str, ...]) -> set[str]:
    return {f"{h}.{p}" for h in heads for p in ("weight", "bias")}


@dataclass
class Hub:
    dir: Path
    downloads: list[str]  # the URLs a download was attempted for


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Hub:
    """An empty torch hub cache in tmp_path; any download attempt fails at once (and is counted)."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored after the test; set_dir below sets it
    torch.hub.set_dir(str(home / "hub"))
    downloads: list[str] = []

    def no_network(url, *args, **kwargs):
        downloads.append(url)
        raise OSError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return Hub(home / "hub", downloads)


def _cache_default_weights(hub: Hub, name: str) -> dict[str, torch.Tensor]:
    """Write the state_dict torchvision's DEFAULT weights of `name` would hold (21 classes, the aux classifier
    where the architecture has one), with KNOWN's tensors set; return it."""
    torch.manual_seed(0)  # the same fake weights whatever ran before
    aux = {} if name == LRASPP else {"aux_loss": True}
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21, **aux)
    state = model.state_dict()
    for key, value in KNOWN[name].items():
        state[key] = value(state[key])
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    (hub.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(state, hub.dir / "checkpoints" / url.rsplit("/", 1)[-1])
    return state


def _trained(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_deeplab_default_weights_load_with_both_heads_new(hub):
    state = _cache_default_weights(hub, DEEPLAB)
    seg = build_segmenter(DEEPLAB, "DEFAULT", K)
    assert seg.weights.endswith(".COCO_WITH_VOC_LABELS_V1") and seg.head == "classifier.4"
    mine = seg.model.state_dict()
    for key in KNOWN[DEEPLAB]:
        assert torch.equal(mine[key], state[key]), key
    outside = [k for k in state if not k.startswith(tuple(h + "." for h in DEEPLAB_HEADS))]
    assert all(torch.equal(mine[k], state[k]) for k in outside)
    assert len(outside) == len(mine) - 4  # nothing else left out
    for h in DEEPLAB_HEADS:
        assert mine[f"{h}.weight"].shape[0] == K and mine[f"{h}.bias"].shape == (K,)
    assert seg.new_params == seg.head_params == _params_of(DEEPLAB_HEADS)
    out = seg.model.eval()(torch.randn(1, 3, 64, 64))
    assert out["out"].shape == out["aux"].shape == (1, K, 64, 64)

    apply_strategy(seg.model, "linear-probe", seg.head, head_params=seg.head_params)
    assert _trained(seg.model) == _params_of(DEEPLAB_HEADS)
    apply_strategy(seg.model, "freeze-until:backbone.16", seg.head, head_params=seg.head_params)
    assert {n.split(".")[0] for n in _trained(seg.model)} == {"classifier", "aux_classifier"}
    assert _params_of(DEEPLAB_HEADS) < _trained(seg.model)
    assert not hub.downloads

    # the enum's own name reads the same file
    assert build_segmenter(DEEPLAB, "COCO_WITH_VOC_LABELS_V1", K).weights == seg.weights


def test_lraspp_default_weights_get_new_low_and_high_classifiers(hub):
    state = _cache_default_weights(hub, LRASPP)
    seg = build_segmenter(LRASPP, "DEFAULT", K)
    mine = seg.model.state_dict()
    assert all(torch.equal(mine[k], state[k]) for k in state if not k.startswith(LRASPP_HEADS))
    assert torch.equal(mine["classifier.cbr.0.weight"], torch.full_like(mine["classifier.cbr.0.weight"], 0.25))
    assert all(mine[f"{h}.weight"].shape[0] == K for h in LRASPP_HEADS)
    assert seg.new_params == seg.head_params == _params_of(LRASPP_HEADS)
    assert not any(n.startswith("aux_classifier") for n in mine)
    apply_strategy(seg.model, "linear-probe", seg.head, head_params=seg.head_params)
    assert _trained(seg.model) == _params_of(LRASPP_HEADS)


def test_weights_none_builds_no_aux_classifier_and_everything_is_new():
    seg = build_segmenter(DEEPLAB, "none", K)
    names = {n for n, _ in seg.model.named_parameters()}
    assert not any(n.startswith("aux_classifier") for n in names)
    assert seg.new_params == names and seg.head_params == _params_of(("classifier.4",))


def test_empty_cache_is_one_line_naming_the_file_to_put_there(hub):
    with pytest.raises(UserError) as e:
        build_segmenter(DEEPLAB, "DEFAULT", K)
    message = str(e.value)
    assert "\n" not in message
    assert f"put deeplabv3_mobilenet_v3_large-fc3c493d.pth in {hub.dir / 'checkpoints'}" in message
    assert len(hub.downloads) == 1


def test_a_state_dict_missing_an_aux_tensor_is_refused_in_one_line(tmp_path):
    model = torchvision.models.get_model(DEEPLAB, weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    state = model.state_dict()
    del state["aux_classifier.1.running_mean"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(
        UserError, match=rf"do not fit {DEEPLAB}: missing 1 \(e\.g\. aux_classifier\.1\.running_mean\)$"
    ):
        build_segmenter(DEEPLAB, str(tmp_path / "w.pt"), K)


# --------------------------------------------------------------------------- the loss


def _logits(*pixels: list[float]) -> torch.Tensor:
    """(1, classes, 1, len(pixels)) from each pixel's logits, with gradients."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, len(pixels[0]), 1, len(pixels)).requires_grad_()


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_loss_of_out_alone_is_the_mean_cross_entropy_by_hand():
    loss = segmentation_loss({"out": _logits([1, 2, 3], [0, 0, 0])}, torch.tensor([[[2, 0]]]))
    assert loss.item() == pytest.approx((_ce([1, 2, 3], 2) + _ce([0, 0, 0], 0)) / 2)


def test_loss_adds_half_the_aux_cross_entropy_and_ignores_void():
    out = _logits([2, 0], [5, -5], [0, 1])
    aux = _logits([0, 0], [9, 9], [1, 3])
    target = torch.tensor([[[0, 255, 1]]])
    expected = (_ce([2, 0], 0) + _ce([0, 1], 1)) / 2 + 0.5 * (_ce([0, 0], 0) + _ce([1, 3], 1)) / 2
    assert segmentation_loss({"out": out, "aux": aux}, target).item() == pytest.approx(expected)


def test_a_void_image_counts_nowhere_and_a_void_batch_has_loss_zero_not_nan():
    out = torch.cat([_logits([4, -1], [3, 3]), _logits([1, 0], [0, 2])]).detach().requires_grad_()
    target = torch.tensor([[[255, 255]], [[0, 1]]])
    loss = segmentation_loss({"out": out}, target)
    assert loss.item() == pytest.approx((_ce([1, 0], 0) + _ce([0, 2], 1)) / 2)  # the second image's mean

    void = torch.full((2, 1, 2), 255)
    loss = segmentation_loss({"out": out, "aux": out * 2}, void)
    loss.backward()
    assert loss.item() == 0.0 and out.grad is not None and torch.equal(out.grad, torch.zeros_like(out))


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def one_thread():
    """torch on one thread for a tiny in-process run: on a busy machine more threads only wait on each other
    (this run with --strategy full: 70 s on two threads of 2 busy shared cores, 6 s on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cli_linear_probes_pretrained_deeplab_and_the_report_lists_both_new_heads(hub, tmp_path, capsys, one_thread):
    _cache_default_weights(hub, DEEPLAB)
    voc = make_voc(tmp_path / "voc")
    run_dir, html = tmp_path / "run", tmp_path / "r.html"
    rc = main(
        [
            "run", "--model", DEEPLAB, "--weights", "DEFAULT", "--dataset", "voc-seg", "--data-root", str(voc),
            "--strategy", "linear-probe", "--image-size", "64", "--epochs", "1", "--max-steps-per-epoch", "2",
            "--batch-size", "1",
            "--run-dir", str(run_dir), "--out", str(html), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    run = read_run(run_dir)
    arch = run.info.architecture
    assert {m.name for m in arch.modules if m.new > 0} == {m.name for m in arch.modules if m.trainable > 0}
    assert {m.name for m in arch.modules if m.new > 0} == set(DEEPLAB_HEADS)
    assert len(run.epochs) == 2 and run.epochs[-1].step == 2 and run.epochs[-1].val.task == "segment"
    before, after = ({w.name: w.stats for w in e.weights} for e in run.epochs)
    assert after["aux_classifier.4.weight"] != before["aux_classifier.4.weight"]  # the loss's aux term trains it
    page = html.read_text()
    table = re.search(r"What fine-tuning replaced.*?</table>", page, re.S)
    assert table is not None
    assert all(f">{h}<" in table.group(0) for h in DEEPLAB_HEADS), table.group(0)
