"""Known-answer tests of the probes: numbers we can work out by hand or by a slow, obvious route."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import activation_pass
from torch import nn

from sftreport.record.activations import default_modules
from sftreport.record.architecture import describe
from sftreport.record.evaluation import evaluate
from sftreport.record.features import PCA2, centered_gram, knn_accuracy, linear_cka
from sftreport.record.gradients import GradientProbe
from sftreport.record.stats import FlatBuffer, count_bins, count_positions
from sftreport.record.weights import WeightProbe


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


# ----------------------------------------------------------------------------- weights


def test_frozen_parameter_change_is_exactly_zero_and_trained_one_is_not():
    model = _tiny_cnn()
    model[0].weight.requires_grad_(False)
    probe = WeightProbe(model, new_params={"4.weight", "4.bias"}, bins=16)
    first = {w.name: w for w in probe.measure()}
    assert all(w.rel_change == 0 for w in first.values())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    opt.step()
    after = {w.name: w for w in probe.measure()}
    assert after["0.weight"].rel_change == 0.0
    assert after["0.weight"].diff_sq == 0.0
    assert after["4.weight"].rel_change > 0
    assert after["4.weight"].new and not after["0.weight"].new
    for w in after.values():
        assert w.hist.total == math.prod(w.shape)


def test_relative_change_and_update_ratio_known_answers():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))  # ‖W0‖ = 5
    probe = WeightProbe(lin, set(), bins=8)
    probe.measure()  # epoch 0: the reference
    with torch.no_grad():
        lin.weight.add_(torch.tensor([[0.3, 0.4]]))  # one "step": ‖ΔW‖ = 0.5
    probe.after_step()
    with torch.no_grad():
        lin.weight.add_(torch.tensor([[0.3, 0.4]]))  # a second step is not the measured one
    probe.after_step()
    w = probe.measure()[0]
    assert w.rel_change == pytest.approx(1.0 / 5.0)  # ‖W_t − W_0‖ = 1.0
    assert w.update_ratio == pytest.approx(0.5 / 5.0)  # first step after the last epoch end


# ----------------------------------------------------------------------------- gradients


def test_gradient_norms_sampled_every_k_steps_and_non_finite_counted():
    lin = nn.Linear(2, 1, bias=False)
    probe = GradientProbe(lin, every=2)
    grads = [
        torch.tensor([[3.0, 4.0]]),
        torch.tensor([[100.0, 0.0]]),
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[float("nan"), 0.0]]),
    ]
    for g in grads:
        lin.weight.grad = g
        probe.maybe_sample()  # samples steps 1, 3, 5
    (stat,) = probe.collect()
    assert stat.samples == 3
    assert stat.nonfinite == 1
    assert stat.norm_sum == pytest.approx(5.0 + 1.0)
    assert stat.norm_max == pytest.approx(5.0)
    assert stat.mean_norm == pytest.approx(3.0)
    assert probe.collect() == []  # a new epoch starts empty
    lin.weight.grad = torch.tensor([[0.0, 2.0]])  # step 6: not a multiple of k, but an epoch's first step
    probe.maybe_sample()
    (stat,) = probe.collect()
    assert stat.samples == 1 and stat.norm_sum == pytest.approx(2.0)


# ----------------------------------------------------------------------------- activations


def _activation_pass(model: nn.Module, modules: list[str], x: torch.Tensor, bins: int = 8):
    return activation_pass(model, modules, x, bins=bins)


def test_relu_fed_only_negatives_reports_all_zeros_and_dead_channels():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    stats, reps, _ = _activation_pass(model, ["1"], -torch.rand(5, 4, 3, 3) - 0.1)
    (s,) = stats
    assert s.stats.zero_fraction == 1.0
    assert s.dead_channels == s.channels == 4
    assert s.dead_fraction == 1.0 and s.nonnegative
    assert s.hist.total == 5 * 4 * 3 * 3
    assert reps["1"].shape == (5, 4 * 3 * 3)


def test_dead_units_are_counted_per_channel_not_per_element():
    x = torch.randn(6, 3, 4, 4).abs() + 0.1
    x[:, 1] = -1.0  # channel 1 never fires
    x[0, 2, 0, 0] = -1.0  # channel 2 has a single zero element: alive
    (s,), _, _ = _activation_pass(nn.Sequential(nn.ReLU()), ["0"], x)
    assert s.dead_channels == 1
    assert 0 < s.stats.zero_fraction < 0.5


def test_inplace_relu_reused_three_times_records_each_call_as_it_happened():
    """torchvision's Bottleneck calls one ReLU(inplace=True) three times: one entry per call, each with the
    statistics of that call's output at that moment, not of the tensor after later in-place ops."""
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    block = Bottleneck(8, 2).eval()
    x = torch.randn(4, 8, 5, 5)
    stats, _, _ = _activation_pass(block, ["relu"], x)
    by_name = {s.module: s for s in stats}
    assert sorted(by_name) == ["relu#1", "relu#2", "relu#3"]
    with torch.no_grad():  # the three outputs, computed by hand
        o1 = torch.relu(block.bn1(block.conv1(x)))
        o2 = torch.relu(block.bn2(block.conv2(o1)))
        o3 = torch.relu(block.bn3(block.conv3(o2)) + x)
    for name, ref in (("relu#1", o1), ("relu#2", o2), ("relu#3", o3)):
        st = by_name[name].stats
        assert st.count == ref.numel()
        assert st.mean == pytest.approx(ref.mean().item(), rel=1e-5)
        assert st.max == pytest.approx(ref.max().item(), rel=1e-6)
        assert st.zeros == (ref == 0).sum().item()


def test_default_modules_are_stem_blocks_and_head_in_network_order():
    import torchvision

    r18 = torchvision.models.resnet18()
    assert default_modules(r18, "fc") == [
        "maxpool",
        "layer1.0",
        "layer1.1",
        "layer2.0",
        "layer2.1",
        "layer3.0",
        "layer3.1",
        "layer4.0",
        "layer4.1",
        "fc",
    ]
    mods = default_modules(torchvision.models.mobilenet_v2(), "classifier.1")
    assert mods[0] == "features.0" and mods[-1] == "classifier.1" and "features.17" in mods
    vit = default_modules(torchvision.models.vit_b_16(), "heads.head")  # blocks inside the Encoder module
    assert vit == ["conv_proj", *(f"encoder.layers.encoder_layer_{i}" for i in range(12)), "heads.head"]
    goog = default_modules(torchvision.models.googlenet(aux_logits=False, init_weights=False), "fc")
    assert goog[:4] == ["conv1", "conv2", "conv3", "inception3a"] and goog[-2:] == ["inception5b", "fc"]


def test_default_modules_look_inside_a_wrapper_around_the_whole_network():
    """A LightningModule's `self.net` (or DDP's `module`): the blocks inside, not the wrapper as one block.
    A second child with parameters, or parameters of the wrapper's own, make it a network of its own."""
    import torchvision

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.resnet18()
            self.loss = nn.CrossEntropyLoss()  # no parameters: still a wrapper

    inner = ["maxpool", *(f"layer{i}.{j}" for i in range(1, 5) for j in range(2)), "fc"]
    assert default_modules(Wrapper(), "net.fc") == [f"net.{n}" for n in inner]
    outer = nn.Sequential()
    outer.add_module("wrapped", Wrapper())
    assert default_modules(outer, "wrapped.net.fc") == [f"wrapped.net.{n}" for n in inner]  # wrappers nest
    two = Wrapper()
    two.extra = nn.Linear(2, 2)
    assert default_modules(two, "net.fc") == ["net", "net.fc", "extra"]
    scaled = Wrapper()
    scaled.scale = nn.Parameter(torch.ones(1))
    assert default_modules(scaled, "net.fc") == ["net", "net.fc"]


def test_count_bins_is_the_same_with_index_add_as_with_bincount():
    idx = torch.randint(0, 40, (10_000,), dtype=torch.int32)
    assert torch.equal(count_bins(idx, 41, index_add=True), count_bins(idx, 41, index_add=False))
    assert count_bins(idx, 41).sum() == idx.numel()


def test_counting_positions_by_histc_in_chunks_equals_bincount_and_skips_nan():
    """The CUDA route (histc over chunks, no host sync), taken here on the CPU, against a plain count."""
    x = torch.randint(0, 34, (4, 7, 5, 3)).float().contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = float("nan")
    expected = np.bincount(x.numpy().ravel()[~np.isnan(x.numpy().ravel())].astype(int), minlength=34)
    for histc, chunk in ((True, 100), (True, 1 << 24), (False, 1)):
        got = count_positions(x.clone(memory_format=torch.channels_last), 34, histc=histc, chunk=chunk)
        assert got.tolist() == expected.tolist()


def test_channels_last_weights_are_read_in_logical_order():
    conv = nn.Conv2d(3, 4, 3)
    cl = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    with torch.no_grad():
        cl.weight.copy_(conv.weight)
    assert not cl.weight.is_contiguous()
    a = FlatBuffer([conv.weight.numel()], torch.device("cpu")).load([conv.weight])
    b = FlatBuffer([cl.weight.numel()], torch.device("cpu")).load([cl.weight])
    assert torch.equal(a.buf, b.buf)


# ----------------------------------------------------------------------------- features


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(40, 12)
    assert linear_cka(centered_gram(x), centered_gram(x)).item() == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transform_and_isotropic_scaling():
    torch.manual_seed(0)
    x = torch.randn(50, 10, dtype=torch.float64)
    y = x @ torch.randn(10, 10, dtype=torch.float64) + 0.5 * torch.randn(50, 10, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    base = linear_cka(centered_gram(x), centered_gram(y)).item()
    assert 0 < base < 1
    assert linear_cka(centered_gram(x @ q), centered_gram(y)).item() == pytest.approx(base, abs=1e-10)
    assert linear_cka(centered_gram(3.7 * x), centered_gram(y)).item() == pytest.approx(base, abs=1e-10)
    unrelated = torch.randn(50, 10, dtype=torch.float64)
    assert linear_cka(centered_gram(x), centered_gram(unrelated)).item() < base


def test_knn_accuracy_on_separated_and_on_mixed_clusters():
    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(20)
    centers = torch.eye(3) * 10
    separated = centers[labels] + 0.1 * torch.randn(60, 3)
    assert knn_accuracy(separated, labels, k=5).item() == 1.0
    noise = torch.randn(60, 3)
    assert knn_accuracy(noise, labels, k=5).item() < 0.7


def test_pca_axes_are_the_principal_directions_and_fixed():
    torch.manual_seed(0)
    x = torch.randn(200, 3) * torch.tensor([10.0, 1.0, 0.1])
    pca = PCA2(x)
    assert pca.components[0].abs().argmax().item() == 0
    assert pca.components[1].abs().argmax().item() == 1
    xy = pca.transform(x)
    assert xy[:, 0].var() > xy[:, 1].var() > 0.5


# ----------------------------------------------------------------------------- architecture and evaluation


def test_architecture_rows_sum_to_the_totals_and_shapes_come_from_a_forward_pass():
    import torchvision

    model = torchvision.models.resnet18(num_classes=5)
    model.layer1.requires_grad_(False)
    new = {"fc.weight", "fc.bias"}
    model.train()
    arch = describe(model, torch.randn(2, 3, 32, 32), new)
    assert model.training  # mode restored
    assert sum(m.params for m in arch.modules) == arch.total_params == sum(p.numel() for p in model.parameters())
    assert sum(b.params for b in arch.blocks) == arch.total_params
    assert arch.new_params == 512 * 5 + 5
    assert arch.trainable_params == arch.total_params - sum(p.numel() for p in model.layer1.parameters())
    rows = {m.name: m for m in arch.modules}
    assert rows["layer1"].output_shape == [64, 8, 8]
    assert rows["fc"].output_shape == [5]
    assert rows["layer1.0.relu"].calls == 2  # BasicBlock reuses its ReLU
    assert not any(h for m in model.modules() for h in m._forward_hooks.values())  # hooks removed


def test_evaluation_confusion_matrix_and_per_class_accuracy():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x  # the inputs are the logits

    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    targets = torch.tensor([0, 1, 2, 2])
    ev = evaluate(Fixed(), [(logits[:2], targets[:2]), (logits[2:], targets[2:])], 3, torch.device("cpu"))
    assert ev.confusion == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert ev.accuracy == 0.75 and ev.count == 4
    assert ev.per_class_accuracy == [1.0, 1.0, 0.5]
    ref = torch.nn.functional.cross_entropy(logits, targets).item()
    assert ev.loss == pytest.approx(ref, rel=1e-6)


def test_a_step_skipped_by_the_fp16_grad_scaler_is_not_a_non_finite_gradient():
    from sftreport.record.gradients import skipped_by_scaler

    lin = nn.Linear(2, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    probe = GradientProbe(lin, every=1)
    for overflow in (True, False):
        opt.zero_grad()
        x = torch.tensor([[1e38, 1.0]]) if overflow else torch.tensor([[1.0, 1.0]])
        scaler.scale(lin(x).sum()).backward()
        scaler.unscale_(opt)
        skipped = skipped_by_scaler(scaler, opt)
        assert skipped is not None and bool(skipped) is overflow
        scaler.step(opt)
        scaler.update()
        probe.maybe_sample(valid=~skipped)
    stats = probe.collect()
    assert all(s.samples == 1 and s.nonfinite == 0 for s in stats)  # only the real step counts


# ----------------------------------------------------------------------------- saved weights


def test_weight_saver_keeps_what_each_mode_promises(tmp_path):
    from sftreport.record.saved_weights import WeightSaver
    from sftreport.store import RunWriter

    def run(mode: str, accuracies: list[float | None]) -> list[str]:
        writer = RunWriter(tmp_path / mode / str(len(list(tmp_path.glob(f"{mode}/*")))))
        saver = WeightSaver(writer, mode)
        model = nn.Linear(2, 1)
        for epoch, acc in enumerate(accuracies):
            with torch.no_grad():
                model.weight.fill_(epoch)
            saver.save(model, epoch, acc)
            saver.prune()
        files = (
            sorted(p.name for p in (writer.root / "weights").glob("*.pt")) if (writer.root / "weights").exists() else []
        )
        for f in files:  # each file holds its own epoch's weights
            assert torch.load(writer.root / "weights" / f, weights_only=True)["weight"][0, 0] == int(f[6:9])
        return files

    assert run("none", [0.1, 0.5, 0.4]) == []
    assert run("last", [0.1, 0.5, 0.4]) == ["epoch_000.pt", "epoch_002.pt"]
    assert run("best", [0.1, 0.5, 0.4, 0.5]) == ["epoch_000.pt", "epoch_001.pt"]  # a tie keeps the earlier
    assert run("best", [0.1, 0.2, 0.6]) == ["epoch_000.pt", "epoch_002.pt"]
    assert run("best", [None, None, None]) == ["epoch_000.pt", "epoch_002.pt"]  # no validation: the latest
    assert run("every", [0.1, 0.5, 0.4]) == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]


def test_a_superseded_weights_file_stays_until_the_new_epoch_is_recorded(tmp_path):
    from sftreport.record.saved_weights import WeightSaver
    from sftreport.store import RunWriter

    saver = WeightSaver(RunWriter(tmp_path / "r"), "last")
    model = nn.Linear(2, 1)
    for epoch in (0, 1, 2):
        saver.save(model, epoch, None)
        if epoch < 2:
            saver.prune()
    names = sorted(p.name for p in (tmp_path / "r" / "weights").glob("*.pt"))
    assert names == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]  # epoch 2 not yet recorded: 1 stays
    saver.prune()
    assert sorted(p.name for p in (tmp_path / "r" / "weights").glob("*.pt")) == ["epoch_000.pt", "epoch_002.pt"]
