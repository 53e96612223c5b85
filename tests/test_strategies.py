"""lp-ft, layer-wise learning-rate decay and LoRA (peft): their bad input, the optimizer groups, the effective
weight of LoRA layers against numpy in float64, one end-to-end run per strategy, and the own-loop Recorder
on a model the user wrapped with peft. Expected values are computed here, independently of sftreport."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import cli
from torch import nn

from sftreport.cli import main
from sftreport.store import read_run

peft = pytest.importorskip("peft")


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftreport: error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--lr-decay", "0"], "lr_decay: Input should be greater than 0"),
        (["--lr-decay", "1.5"], "lr_decay: Input should be less than or equal to 1"),
        (["--lr-decay", "-0.5"], "lr_decay: Input should be greater than 0"),
        (["--strategy", "lp-ft", "--epochs", "3", "--lp-epochs", "3"], "one of full fine-tuning: 3 of 3 epochs"),
        (["--strategy", "lp-ft", "--epochs", "1"], "lp_epochs: lp-ft needs at least one epoch"),
        (["--lp-epochs", "2"], "lp_epochs: only --strategy lp-ft has a linear-probe phase, not full"),
        (["--strategy", "lora:0"], "lora's rank must be a whole number of at least 1, not '0'"),
        (["--strategy", "lora:-2"], "not '-2'"),
        (["--strategy", "lora:eight"], "not 'eight'"),
        (["--lora-targets", "layer1.0.conv1"], "lora_targets: only --strategy lora:RANK adapts modules, not full"),
        (
            ["--strategy", "lora:2", "--lora-targets", "layer9.conv"],
            "--lora-targets: the model has no module 'layer9.conv'",
        ),
        (["--strategy", "lora:2", "--lora-targets", "fc"], "'fc' is the new head, which trains in full"),
        (["--strategy", "lora:2", "--lora-targets", "bn1"], "'bn1' is a BatchNorm2d; LoRA adapts Linear and Conv2d"),
    ],
)
def test_bad_strategy_input_is_one_line_and_exit_code_2(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert needle in _one_line_error(capsys, ["run", *argv])
    assert not any(tmp_path.iterdir())  # nothing written for bad input


def test_lora_without_peft_names_the_extra_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    line = _one_line_error(capsys, ["run", "--strategy", "lora:4"])
    assert "needs the peft library" in line and "pip install 'sftreport[lora]'" in line


def test_sftreport_imports_and_runs_its_other_strategies_without_peft():
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "import sftreport.cli, sftreport.train.runner, sftreport.record.recorder, sftreport.record.lora\n"
        "from sftreport.record.lora import lora_layers; import torch\n"
        "assert lora_layers(torch.nn.Linear(2, 2)) == []\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- layer-wise learning-rate decay


def test_lr_decay_groups_head_first_each_block_below_times_decay_to_the_stem():
    from sftreport.train.digits_resnet import DigitsResNet
    from sftreport.train.models import apply_strategy
    from sftreport.train.optim import make_optimizer
    from sftreport.train.strategies import optimizer_groups, param_groups

    model = DigitsResNet()
    groups = param_groups(model, "fc", 0.1, 0.5)
    # worked out by hand from the model: the head, its four blocks, and the stem (conv1, bn1 before layer1)
    expected = [
        ("fc", ("fc.",)),
        ("layer4.0", ("layer4.",)),
        ("layer3.0", ("layer3.",)),
        ("layer2.0", ("layer2.",)),
        ("layer1.0", ("layer1.",)),
        ("conv1, bn1 (stem)", ("conv1.", "bn1.")),
    ]
    assert [g.info.name for g in groups] == [name for name, _ in expected]
    named = dict(model.named_parameters())
    for depth, (g, (_, prefixes)) in enumerate(zip(groups, expected)):
        assert g.info.depth == depth and g.info.lr == pytest.approx(0.1 * 0.5**depth, rel=1e-15)
        members = {n for n, p in named.items() if any(p is q for q in g.params)}
        assert members == {n for n in named if n.startswith(prefixes)}
        assert g.info.params == sum(named[n].numel() for n in members)
    optimizer = make_optimizer(optimizer_groups(groups), "sgd", 0.1)
    assert [pg["lr"] for pg in optimizer.param_groups] == [0.1 * 0.5**k for k in range(6)]

    # a frozen block keeps its place: freezing up to layer2 leaves layer3 at lr·F², not lr·F^0 ... F^k shifted
    apply_strategy(model, "freeze-until:layer2", "fc")
    frozen_groups = param_groups(model, "fc", 0.1, 0.5)
    assert [(g.info.name, g.info.depth) for g in frozen_groups] == [("fc", 0), ("layer4.0", 1), ("layer3.0", 2)]
    # without decay: one group of every trainable parameter at lr
    (one,) = param_groups(model, "fc", 0.1, None)
    assert one.info.lr == 0.1 and len(one.params) == sum(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- LoRA's effective weight, known answers


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # 4×4 input → 4 channels of 2×2
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def _lora_tiny():
    torch.manual_seed(0)
    model = _Tiny()
    # r=2, α=6: peft scales B·A by α/r = 3
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, lora_alpha=6, target_modules=["conv", "fc"]), model)
    return model


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def test_lora_effective_weight_change_against_numpy_float64():
    from sftreport.record.lora import AdapterProbe
    from sftreport.record.weights import WeightProbe

    model = _lora_tiny()
    weights = WeightProbe(model, set(), 8)
    adapters = AdapterProbe(model, weights)
    assert [x.module for x in adapters.layers] == ["conv", "fc"]
    w0 = {n: _np(p).copy() for n, p in model.named_parameters()}
    weights.measure()
    first = {a.module: a for a in adapters.measure()}
    for name, a in first.items():  # peft starts B at zero: nothing changed yet
        assert a.diff_sq == 0 and a.rel_change == 0 and a.spectrum.rank == 0 and a.spectrum.singular_values == []
        assert a.ref_sq == pytest.approx(np.sum(w0[f"{name}.base_layer.weight"] ** 2), rel=1e-12)
        assert (a.rank, a.alpha, a.scaling) == (2, 6.0, 3.0)

    fc, conv = model.fc, model.conv
    rng = np.random.default_rng(1)
    a_fc = rng.normal(size=(2, 16))
    b_fc = np.outer(rng.normal(size=5), [1.0, -2.0])  # B·A is rank 1: B's columns are parallel
    a_cv, b_cv = rng.normal(size=(2, 3, 3, 3)), rng.normal(size=(4, 2, 1, 1))
    with torch.no_grad():
        fc.lora_A["default"].weight.copy_(torch.tensor(a_fc))
        fc.lora_B["default"].weight.copy_(torch.tensor(b_fc))
        conv.lora_A["default"].weight.copy_(torch.tensor(a_cv))
        conv.lora_B["default"].weight.copy_(torch.tensor(b_cv))
    a32 = {n: _np(p) for n, p in model.named_parameters()}  # the values as the model holds them (float32)
    delta = {
        "fc": 3.0 * a32["fc.lora_B.default.weight"] @ a32["fc.lora_A.default.weight"],
        "conv": 3.0
        * a32["conv.lora_B.default.weight"].reshape(4, 2)
        @ a32["conv.lora_A.default.weight"].reshape(2, 27),
    }
    weights.measure()
    measured = {a.module: a for a in adapters.measure()}
    for name, d in delta.items():
        a, w = measured[name], w0[f"{name}.base_layer.weight"].reshape(d.shape)
        assert a.diff_sq == pytest.approx(np.sum(d**2), rel=1e-12)
        assert a.ref_sq == pytest.approx(np.sum(w**2), rel=1e-12)
        assert a.rel_change == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w), rel=1e-12)
        sv = np.linalg.svd(d, compute_uv=False)
        assert a.spectrum.singular_values == pytest.approx(sv[: a.spectrum.rank], rel=1e-10)
        assert a.spectrum.energy == pytest.approx(np.sum(sv**2), rel=1e-12)
        # the effective weight is what peft computes with: base + its own delta
        merged = _np(model.get_submodule(name).get_delta_weight("default")).reshape(d.shape)
        assert np.allclose(merged, d, rtol=1e-6, atol=1e-7)
    assert measured["fc"].spectrum.rank == 1 and measured["conv"].spectrum.rank == 2
    assert measured["fc"].spectrum.stable_rank == pytest.approx(1.0)
    assert measured["fc"].spectrum.singular_values[0] == pytest.approx(
        3.0
        * np.linalg.norm(a32["fc.lora_B.default.weight"][:, 0])
        * np.linalg.norm(np.array([1.0, -2.0]) @ a32["fc.lora_A.default.weight"]),
        rel=1e-10,
    )

    # one optimizer step after the epoch end: the change of the effective weight against the epoch end's
    before = {n: np.sum((w0[f"{n}.base_layer.weight"].reshape(d.shape) + d) ** 2) for n, d in delta.items()}
    with torch.no_grad():
        fc.lora_A["default"].weight.mul_(1.5)
        conv.lora_B["default"].weight.add_(0.25)
    adapters.after_step()
    now = {n: _np(p) for n, p in model.named_parameters()}
    step = {
        "fc": 3.0 * now["fc.lora_B.default.weight"] @ now["fc.lora_A.default.weight"] - delta["fc"],
        "conv": 3.0 * now["conv.lora_B.default.weight"].reshape(4, 2) @ now["conv.lora_A.default.weight"].reshape(2, 27)
        - delta["conv"],
    }
    weights.measure()
    stepped = {a.module: a for a in adapters.measure()}
    for name in delta:
        a = stepped[name]
        assert a.update_sq == pytest.approx(np.sum(step[name] ** 2), rel=1e-10)
        assert a.before_update_sq == pytest.approx(before[name], rel=1e-12)
        assert a.update_ratio == pytest.approx(math.sqrt(np.sum(step[name] ** 2) / before[name]), rel=1e-10)

    # a base weight that trains too: the change is no longer low-rank, its spectrum comes from the dense ΔW
    with torch.no_grad():
        conv.base_layer.weight.add_(torch.tensor(rng.normal(scale=0.1, size=(4, 3, 3, 3)), dtype=torch.float32))
    weights.measure()
    dense = {a.module: a for a in adapters.measure()}["conv"]
    now = {n: _np(p) for n, p in model.named_parameters()}
    d = (now["conv.base_layer.weight"] - w0["conv.base_layer.weight"]).reshape(4, 27) + 3.0 * now[
        "conv.lora_B.default.weight"
    ].reshape(4, 2) @ now["conv.lora_A.default.weight"].reshape(2, 27)
    assert dense.diff_sq == pytest.approx(np.sum(d**2), rel=1e-12)
    assert dense.spectrum.rank == 4
    assert dense.spectrum.singular_values == pytest.approx(np.linalg.svd(d, compute_uv=False), rel=1e-10)


def test_lora_change_from_adapters_that_did_not_start_at_zero_has_rank_up_to_2r():
    """B₀ ≠ 0 (a user's own initialisation, a resumed adapter): ΔW = (α/r)·(B₁A₁ − B₀A₀), of rank 2r."""
    from sftreport.record.lora import AdapterProbe
    from sftreport.record.weights import WeightProbe

    model = _lora_tiny()
    fc = model.fc
    rng = np.random.default_rng(2)
    with torch.no_grad():
        fc.lora_A["default"].weight.copy_(torch.tensor(rng.normal(size=(2, 16))))
        fc.lora_B["default"].weight.copy_(torch.tensor(rng.normal(size=(5, 2))))
    start = {n: _np(p).copy() for n, p in model.named_parameters()}
    weights = WeightProbe(model, set(), 8)
    adapters = AdapterProbe(model, weights)
    weights.measure()
    adapters.measure()
    with torch.no_grad():
        fc.lora_A["default"].weight.copy_(torch.tensor(rng.normal(size=(2, 16))))
        fc.lora_B["default"].weight.copy_(torch.tensor(rng.normal(size=(5, 2))))
    now = {n: _np(p) for n, p in model.named_parameters()}
    weights.measure()
    a = {x.module: x for x in adapters.measure()}["fc"]
    e0 = start["fc.base_layer.weight"] + 3.0 * start["fc.lora_B.default.weight"] @ start["fc.lora_A.default.weight"]
    d = 3.0 * (now["fc.lora_B.default.weight"] @ now["fc.lora_A.default.weight"]) - (e0 - start["fc.base_layer.weight"])
    assert a.ref_sq == pytest.approx(np.sum(e0**2), rel=1e-12)
    assert a.diff_sq == pytest.approx(np.sum(d**2), rel=1e-12)
    sv = np.linalg.svd(d, compute_uv=False)
    assert a.spectrum.rank == 4 == np.linalg.matrix_rank(d)
    assert a.spectrum.singular_values == pytest.approx(sv[:4], rel=1e-9)


def test_the_own_loop_recorder_measures_a_model_the_user_wrapped_with_peft(tmp_path: Path):
    from sftreport.config import RecordOptions
    from sftreport.record.recorder import Recorder
    from sftreport.report.frames import RunFrames
    from sftreport.report.sections import build_report
    from sftreport.train.digits_resnet import DigitsResNet

    torch.manual_seed(0)
    targets = ["layer3.0.conv1", "layer4.0.conv2"]
    model = peft.get_peft_model(
        DigitsResNet(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, modules_to_save=["fc"])
    )
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 5
    start = {n: _np(p).copy() for n, p in model.named_parameters()}
    rec = Recorder(
        model,
        probe=(x[:10], y[:10]),
        val_data=[(x, y)],
        run_dir=tmp_path / "run",
        options=RecordOptions(probe_size=10, save_weights="none"),
    )
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.step(loss, logits, y)
    snap = rec.epoch_end()
    rec.finish()
    names = [f"base_model.model.{t}" for t in targets]
    assert [a.module for a in snap.adapters] == names
    now = {n: _np(p) for n, p in model.named_parameters()}
    for name, a in zip(names, snap.adapters):
        b0, a0 = start[f"{name}.lora_B.default.weight"], start[f"{name}.lora_A.default.weight"]
        b1, a1 = now[f"{name}.lora_B.default.weight"], now[f"{name}.lora_A.default.weight"]
        out = b1.shape[0]
        d = 2.0 * (b1.reshape(out, 2) @ a1.reshape(2, -1) - b0.reshape(out, 2) @ a0.reshape(2, -1))
        w = start[f"{name}.base_layer.weight"].reshape(out, -1)
        assert not np.any(b0) and a.rel_change > 0
        assert a.rel_change == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w), rel=1e-10)
        assert a.spectrum.rank == 2

    run = read_run(tmp_path / "run")
    arch = {m.name: m.adapter for m in run.info.architecture.modules}
    assert arch[names[0]] == "LoRA r=2, α=4" and arch[f"{names[0]}.lora_B.default"] == "LoRA B"
    frames = RunFrames(run)
    w = frames.layer_weights.set_index(["layer", "epoch"])
    assert w.loc[(names[1], 1), "rel_change"] == pytest.approx(snap.adapters[1].rel_change, rel=1e-12)
    assert bool(w.loc[(names[1], 1), "adapter"]) and not bool(w.loc[(names[1], 1), "new"])
    report = build_report(run, "html")
    table = next(b for s in report.sections for b in s.blocks if getattr(b, "id", "") == "adapters")
    assert [r[0].text for r in table.rows] == names and all(r[5].text == "2" for r in table.rows)


# --------------------------------------------------------------------------- end to end, one run per strategy


@pytest.mark.slow
def test_lp_ft_with_lr_decay_end_to_end_and_the_default_s_source_task(tmp_path: Path):
    """The embedded default: also its source task, digits 0–4, recomputed at epochs 0 and 3."""
    from test_forgetting import digits_source_accuracy

    from sftreport.train.models import DIGITS_WEIGHTS_FILE

    r = cli(
        "run",
        "--strategy",
        "lp-ft",
        "--epochs",
        "3",
        "--lp-epochs",
        "1",
        "--lr-decay",
        "0.9",
        "--lr",
        "0.5",  # high enough to forget the source task once every layer trains
        "--max-steps-per-epoch",
        "3",
        "--batch-size",
        "16",
        "--probe-size",
        "16",
        "--quiet",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "r.html"),
        "--out",
        str(tmp_path / "r.md"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "run")
    t = run.info.training
    assert t is not None and t.lp_epochs == 1 and t.lr_decay == 0.9
    assert [(g.name, g.lr) for g in t.param_groups] == [
        (name, 0.5 * 0.9**k)
        for k, name in enumerate(["fc", "layer4.0", "layer3.0", "layer2.0", "layer1.0", "conv1, bn1 (stem)"])
    ]
    e1, e2, e3 = run.epochs[1:]
    # epoch 1, the linear probe: only the head trained, the backbone did not move at all
    assert {w.name for w in e1.weights if w.trainable} == {"fc.weight", "fc.bias"}
    assert {g.name for g in e1.gradients} == {"fc.weight", "fc.bias"}
    assert all(w.diff_sq == 0 for w in e1.weights if not w.name.startswith("fc."))
    # epoch 2 on: every parameter trains, and is sampled
    assert all(w.trainable for w in e2.weights) and {g.name for g in e2.gradients} == {w.name for w in e2.weights}
    assert next(w for w in e2.weights if w.name == "layer1.0.conv1.weight").diff_sq > 0
    # the schedule restarts at the switch: the second phase's first step runs at the head's full learning rate
    assert e2.steps[0].lr == pytest.approx(0.5) and e1.steps[-1].lr < 0.5
    assert e3.steps[-1].lr < e2.steps[0].lr
    html = (tmp_path / "r.html").read_text()
    assert "lp-ft: linear probe for epochs 1–1 (only the new head trained), then every layer from epoch 2" in html
    assert "linear probe until epoch 1, then every layer trains" in html  # the switch's rule on the charts
    assert "Learning rate per parameter group" in html

    task = run.info.source_task
    assert task is not None and task.name == "digits 0–4" and task.classes == ["0", "1", "2", "3", "4"]
    assert task.head == "fc" and task.head_classes == 5 and not task.other and task.image_size == 32
    assert all(e.source is not None and e.source.count == task.size for e in run.epochs)
    from sklearn.datasets import load_digits

    per_class = np.bincount(load_digits().target)[:5]  # the held-out quarter of each of digits 0–4
    assert task.size == sum(round(n * 0.25) for n in per_class) == 225
    import sftreport.train

    shipped = torch.load(Path(sftreport.train.__file__).parent / "weights" / DIGITS_WEIGHTS_FILE, weights_only=True)
    fc = {k: v for k, v in shipped.items() if k.startswith("fc.")}
    for e in (run.epochs[0], e3):
        state = torch.load(tmp_path / "run" / e.weights_file, weights_only=True)
        assert e.source.accuracy == pytest.approx(digits_source_accuracy(state, fc), abs=1e-12)
    # the linear probe cannot change the backbone, so the source task is kept; full fine-tuning at 0.5 forgets it
    assert run.epochs[1].source.accuracy == run.epochs[0].source.accuracy
    assert e3.source.accuracy < run.epochs[0].source.accuracy - 0.05
    md = (tmp_path / "r.md").read_text()
    assert "| Source task | digits 0–4, pretrained head kept aside:" in md
    assert "**warning**: Fine-tuning forgot part of the source task: digits 0–4 accuracy fell" in md


@pytest.mark.slow
def test_lora_end_to_end_recomputed_from_the_saved_weights(tmp_path: Path):
    r = cli(
        "run",
        "--strategy",
        "lora:2",
        "--lora-alpha",
        "8",
        "--lora-targets",
        "layer4.0.conv1,layer4.0.conv2,conv1",
        "--epochs",
        "2",
        "--lr",
        "0.1",
        "--max-steps-per-epoch",
        "3",
        "--batch-size",
        "16",
        "--probe-size",
        "16",
        "--quiet",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "r.md"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "run")
    lora = run.info.training.lora
    assert lora.rank == 2 and lora.alpha == 8 and lora.targets == ["layer4.0.conv1", "layer4.0.conv2", "conv1"]
    last = run.epochs[-1]
    trainable = {w.name for w in last.weights if w.trainable}
    assert trainable == {f"{t}.lora_{ab}.default.weight" for t in lora.targets for ab in "AB"} | {
        "fc.weight",
        "fc.bias",
    }
    assert {w.name for w in last.weights if w.new} == trainable  # the factors and the head are new
    # the effective weight W_base + (α/r)·B·A recomputed from the saved state_dicts of epochs 0 and 2
    w0 = torch.load(tmp_path / "run" / run.epochs[0].weights_file, weights_only=True)
    w2 = torch.load(tmp_path / "run" / last.weights_file, weights_only=True)

    def effective(state, t):
        base = state[f"{t}.base_layer.weight"].double().numpy()
        a = state[f"{t}.lora_A.default.weight"].double().numpy()
        b = state[f"{t}.lora_B.default.weight"].double().numpy()
        return base.reshape(base.shape[0], -1) + 4.0 * b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)

    for a in last.adapters:
        e0, e2 = effective(w0, a.module), effective(w2, a.module)
        assert a.rel_change == pytest.approx(np.linalg.norm(e2 - e0) / np.linalg.norm(e0), rel=1e-9)
        assert a.rel_change > 0 and a.spectrum.rank <= 2
        assert np.array_equal(w0[f"{a.module}.base_layer.weight"], w2[f"{a.module}.base_layer.weight"])  # frozen
    arch = {m.name: m for m in run.info.architecture.modules}
    assert (
        arch["layer4.0.conv1"].adapter == "LoRA r=2, α=8" and arch["layer4.0.conv1.lora_A.default"].adapter == "LoRA A"
    )
    md = (tmp_path / "r.md").read_text()
    assert "LoRA-adapted layer, its effective weight" in md  # the moved-layers finding says what it measured
