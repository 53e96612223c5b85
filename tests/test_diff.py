"""`sftreport diff BASE TUNED --model NAME`: known answers (a checkpoint against itself changes nothing, a rank-1
change is reported as rank 1, a change with chosen singular values gives those values, a run's own saved
weights give the relative changes the run recorded), a replaced head, every refusal in one line (exit 2), and
one end-to-end diff with data written as HTML, PDF and Markdown."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support import QUICK, cli

from sftreport.cli import main
from sftreport.diff import diff_checkpoints
from sftreport.report.diff import build_diff
from sftreport.report.frames import RunFrames
from sftreport.store import read_run

WEIGHTS = Path(__file__).resolve().parents[1] / "sftreport" / "train" / "weights" / "digits_resnet_0to4.pt"
CONV = "layer4.0.conv2.weight"  # 128 × 128 × 3 × 3: a matrix of 128 × 1152


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    return torch.load(WEIGHTS, weights_only=True)


def saved(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def measured(tmp_path: Path, base_file: Path, tuned_file: Path, **kw):
    """Diff into a kept run directory; its Run and the diff report's Document."""
    run_dir = tmp_path / "diff-run"
    diff_checkpoints(base_file, tuned_file, "digits_resnet", [tmp_path / "d.md"], run_dir=run_dir, **kw)
    run = read_run(run_dir)
    return run, build_diff(run, "html")


def test_a_checkpoint_against_itself_changed_nothing(tmp_path):
    run, doc = measured(tmp_path, WEIGHTS, WEIGHTS)
    last = run.epochs[1]
    assert last.weights and all(w.diff_sq == 0.0 and w.rel_change == 0.0 for w in last.weights)
    assert all(m.singular_values == [] and m.effective_rank is None for m in run.info.spectrum.layers)
    assert [f.rule for f in doc.findings] == ["diff_identical"]
    assert doc.findings[0].evidence.startswith("Every one of the 38 compared parameter tensors is equal")
    notes = [b.text for s in doc.sections for b in s.blocks if b.kind == "note"]
    assert any(n.startswith("No weight matrix changed from BASE to TUNED") for n in notes)


def test_a_rank_one_change_is_reported_as_rank_one(tmp_path, base):
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(128, generator=g, dtype=torch.float64), torch.randn(1152, generator=g, dtype=torch.float64)
    tuned = dict(base)
    tuned[CONV] = base[CONV] + (0.01 * torch.outer(u, v)).reshape(128, 128, 3, 3).float()
    run, doc = measured(tmp_path, WEIGHTS, saved(tuned, tmp_path / "tuned.pt"))
    changed = [m for m in run.info.spectrum.layers if m.singular_values]
    assert [m.name for m in changed] == [CONV]
    m = changed[0]
    assert m.effective_rank == pytest.approx(1.0, abs=1e-9) and m.energy_top(1) == pytest.approx(1.0, abs=1e-5)
    assert m.singular_values[0] == pytest.approx(0.01 * float(u.norm() * v.norm()), rel=1e-5)
    delta = (tuned[CONV].double() - base[CONV].double()).numpy()
    assert m.diff_sq == pytest.approx(float((delta**2).sum()), rel=1e-12)
    rel = {w.module: w.rel_change for w in run.epochs[1].weights}
    assert rel["layer4.0.conv2"] == pytest.approx(
        math.sqrt(m.diff_sq / float((base[CONV].double() ** 2).sum())), rel=1e-6
    )
    assert all(v == 0 for k, v in rel.items() if k != "layer4.0.conv2")
    low = next(f for f in doc.findings if f.rule == "diff_low_rank")
    assert (
        low.title == "Every changed weight matrix changed along few directions: at least 90% of the change in the top 8"
    )
    assert "layer4.0.conv2 (100.0%, effective rank 1.0 of 128)" in low.evidence


def test_a_change_with_known_singular_values_gives_those_values(tmp_path, base):
    sigma = [0.5, 0.25, 0.125, 0.0625]
    g = np.random.default_rng(3)
    left, _ = np.linalg.qr(g.standard_normal((128, 4)))
    right, _ = np.linalg.qr(g.standard_normal((1152, 4)))
    tuned = dict(base)
    tuned[CONV] = base[CONV] + torch.from_numpy((left * sigma) @ right.T).reshape(128, 128, 3, 3).float()
    run, _ = measured(tmp_path, WEIGHTS, saved(tuned, tmp_path / "tuned.pt"))
    m = next(x for x in run.info.spectrum.layers if x.name == CONV)
    # float32 weights round the added change by up to half an ulp of each weight (~1e-8 here)
    assert m.singular_values[:4] == pytest.approx(sigma, rel=1e-4)
    p = np.asarray(sigma) / sum(sigma)
    assert m.effective_rank == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-3)


def test_a_replaced_head_is_named_and_not_compared(tmp_path, base):
    tuned = {k: v + 0.01 if v.is_floating_point() else v for k, v in base.items()}
    tuned["fc.weight"], tuned["fc.bias"] = torch.zeros(10, 128), torch.zeros(10)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in tuned.items()}}  # a DDP checkpoint, wrapped
    run, doc = measured(tmp_path, WEIGHTS, saved(wrapped, tmp_path / "tuned.pt"))
    assert run.info.config["diff"]["replaced"] == ["fc.weight", "fc.bias"]
    summary = dict(doc.summary[0].items)
    assert summary["Replaced head"].startswith("fc.weight, fc.bias: 5 outputs in BASE, 10 in TUNED")
    assert summary["Compared"] == "36 parameter tensors (307,536 values); 36 of them changed"
    moved = next(f for f in doc.findings if f.rule == "diff_moved")
    assert "fc" not in moved.evidence.replace("downsample", "")


def test_the_diff_of_a_runs_own_weights_is_what_the_run_recorded(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["run", *QUICK, "--run-dir", str(run_dir), "--out", str(tmp_path / "run.md")]) == 0
    run = read_run(run_dir)
    out = tmp_path / "diff"
    r = cli(
        "diff", str(run_dir / "weights" / "epoch_000.pt"), str(run_dir / "weights" / "epoch_001.pt"),
        "--model", "digits_resnet", "--dataset", "digits", "--probe-size", "16", "--run-dir", str(out / "measured"),
        "--out", str(out / "d.html"), "--out", str(out / "d.md"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("report: ") == 2 and r.stderr == ""
    diff = read_run(out / "measured")
    recorded = RunFrames(run).layer_weights
    found = RunFrames(diff).layer_weights
    a = recorded[recorded["epoch"] == 1].set_index("layer")["rel_change"]
    b = found[found["epoch"] == 1].set_index("layer")["rel_change"]
    assert list(a.index) == list(b.index)
    assert np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, atol=1e-9)
    assert diff.epochs[0].val.accuracy == run.epochs[0].val.accuracy
    assert diff.epochs[1].val.accuracy == run.epochs[1].val.accuracy
    spec_run, spec_diff = run.info.spectrum, diff.info.spectrum
    for x, y in zip(spec_run.layers, spec_diff.layers):
        assert x.name == y.name and x.singular_values == pytest.approx(y.singular_values, rel=1e-4, abs=1e-9)
    md = (out / "d.md").read_text()
    assert "TUNED gained" in md or "TUNED lost" in md or "TUNED kept" in md
    html = (out / "d.html").read_text()
    for chart in ("rel-change", "weight-hist", "spectrum", "per-class", "cka", "act-hist"):
        assert f'data-chart="{chart}"' in html


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftreport: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, base) -> Path:
    d = tmp_path_factory.mktemp("bad-checkpoints")
    fewer = {k: v for k, v in base.items() if not k.startswith("layer4.0.bn2")}
    saved(fewer, d / "fewer.pt")
    more = dict(base, **{"extra.weight": torch.zeros(2)})
    saved(more, d / "more.pt")
    shape = dict(base)
    shape[CONV] = torch.zeros(128, 128, 1, 1)
    saved(shape, d / "shape.pt")
    saved(dict(base, **{"fc.weight": torch.zeros(10, 128), "fc.bias": torch.zeros(10)}), d / "ten.pt")
    import torchvision

    saved(torchvision.models.resnet18(num_classes=5).state_dict(), d / "resnet18.pt")
    (d / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    return d


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{w}", "{b}/fewer.pt"], "hold different tensors: only in BASE: layer4.0.bn2.weight, layer4.0.bn2.bias, "),
        (["{w}", "{b}/more.pt"], "hold different tensors: only in TUNED: extra.weight"),
        (
            ["{w}", "{b}/shape.pt"],
            f"does not fit digits_resnet: {CONV} is 128×128×1×1 in the file and 128×128×3×3 in the model",
        ),
        (
            ["{b}/shape.pt", "{w}"],
            f"differ in shape outside the classifier head: {CONV} is 128×128×1×1 in BASE and 128×128×3×3 in TUNED",
        ),
        (
            ["{b}/shape.pt", "{b}/shape.pt"],
            f"does not fit digits_resnet: {CONV} is 128×128×1×1 in the file and 128×128×3×3",
        ),
        (
            ["{b}/resnet18.pt", "{b}/resnet18.pt"],
            "the checkpoints do not fit digits_resnet: unexpected layer1.1.conv1.weight, ",
        ),
        (["{w}", "{b}/missing.pt"], "weights file not found"),
        (["{w}", "{b}/garbage.pt"], "cannot read weights file"),
        (["{w}", "{w}", "--dataset", "cifar10"], "--data-root"),
        (["{w}", "{w}", "--data-root", "{b}"], "--data-root needs --dataset"),
        (
            ["{w}", "{b}/ten.pt", "--dataset", "digits", "--probe-size", "16"],
            "TUNED's head fc has 10 outputs but digits has 5 classes",
        ),
        (["{w}", "{w}", "--out", "x.docx"], "unknown report format"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, bad, args, needle, tmp_path):
    argv = ["diff"] + [a.format(w=WEIGHTS, b=bad) for a in args] + ["--model", "digits_resnet"]
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "d.html")]
    line = _one_line_error(capsys, argv)
    assert needle in line, line


def test_the_model_is_required_and_must_exist(capsys, tmp_path):
    assert "--model" in _one_line_error(capsys, ["diff", str(WEIGHTS), str(WEIGHTS)])
    line = _one_line_error(
        capsys, ["diff", str(WEIGHTS), str(WEIGHTS), "--model", "resnet9000", "--out", str(tmp_path / "x.md")]
    )
    assert "unknown model 'resnet9000'" in line


def test_with_data_a_replaced_head_evaluates_tuned_only(tmp_path, base):
    three = dict(base, **{"fc.weight": base["fc.weight"][:3].clone(), "fc.bias": base["fc.bias"][:3].clone()})
    run, doc = measured(tmp_path, saved(three, tmp_path / "three.pt"), WEIGHTS, dataset="digits", probe_size=16)
    assert run.epochs[0].val is None and run.epochs[1].val is not None
    assert run.info.config["diff"]["replaced"] == ["fc.weight", "fc.bias"]
    acc = next(f for f in doc.findings if f.rule == "diff_accuracy")
    assert acc.title == f"TUNED's validation accuracy: {run.epochs[1].val.accuracy:.1%}"
    assert all(w.rel_change == 0 for w in run.epochs[1].weights)  # the same backbone; the head not compared
