"""End to end, as a user runs it: the command line in a fresh process, the run directory it leaves,
the reports it renders; Ctrl-C and divergence; the seed's CIFAR-10 case on a tiny CIFAR-10 on disk."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import QUICK, cli

from sftreport.store import read_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The embedded default (shortened to 3 epochs), with all three report formats."""
    d = tmp_path_factory.mktemp("default")
    r = cli(
        "run",
        "--epochs",
        "3",
        "--run-dir",
        str(d / "run"),
        "--out",
        str(d / "report.html"),
        "--out",
        str(d / "report.pdf"),
        "--out",
        str(d / "summary.md"),
        cwd=d,
    )
    return r, d


def test_default_run_succeeds_and_says_where_everything_is(default_run):
    r, d = default_run
    assert r.returncode == 0, r.stderr
    assert f"run directory: {d / 'run'}" in r.stdout
    for name in ("report.html", "report.pdf", "summary.md"):
        assert (d / name).stat().st_size > 1000
        assert f"report: {d / name}" in r.stdout
    assert "epoch 3/3" in r.stderr  # plain progress lines: stderr is not a terminal here


def test_default_run_is_transfer_learning_that_measurably_changes_the_model(default_run):
    _, d = default_run
    run = read_run(d / "run")
    assert run.info.status == "completed"
    assert "pretrained on digits 0–4" in run.info.weights
    assert [e.epoch for e in run.epochs] == [0, 1, 2, 3]
    first, last = run.epochs[0], run.epochs[-1]
    assert first.train_loss is None and first.step == 0  # epoch 0: the pretrained model, before any step
    assert last.val.accuracy > first.val.accuracy + 0.3
    moved = {w.name: w.rel_change for w in last.weights}
    assert moved["fc.weight"] > 0 and moved["layer1.0.conv1.weight"] > 0
    assert {w.name for w in last.weights if w.new} == {"fc.weight", "fc.bias"}
    arch = run.info.architecture
    assert arch.new_params == 128 * 5 + 5 and arch.total_params == sum(m.params for m in arch.modules)


def test_every_epoch_holds_every_probe(default_run):
    _, d = default_run
    run = read_run(d / "run")
    for snap in run.epochs:
        assert snap.val is not None and snap.weights and snap.activations and snap.features and snap.cka
        assert all(w.hist.total == _numel(w.shape) for w in snap.weights)
        assert {a.module for a in snap.activations} >= {"maxpool", "layer1.0", "layer4.0", "fc"}
        assert len(snap.features.projections[0].x) == run.info.probe.size
    assert all(c.value == pytest.approx(1.0) for c in run.epochs[0].cka)  # the pretrained model vs itself
    assert run.epochs[0].gradients == [] and run.epochs[1].gradients
    assert run.epochs[1].weights[0].update_ratio is not None
    images = [s.images for s in run.epochs if s.images]
    assert images[0].filters and images[0].feature_maps
    for img in images:
        assert (d / "run" / img.filters).read_bytes().startswith(b"\x89PNG")


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def test_render_rebuilds_reports_from_the_run_directory_without_torch(default_run, tmp_path: Path):
    _, d = default_run
    code = (
        "import sys; from sftreport.cli import main\n"
        f"rc = main(['render', {str(d / 'run')!r}, '--out', {str(tmp_path / 'again.html')!r}, "
        f"'--out', {str(tmp_path / 'again.md')!r}])\n"
        "assert rc == 0\n"
        "assert not [m for m in sys.modules if m == 'torch' or m.startswith('torch.')], 'render imported torch'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again.html").stat().st_size > 1000


def test_ctrl_c_stops_after_a_clean_write_and_renders_an_interrupted_report(tmp_path: Path):
    run_dir, out = tmp_path / "run", tmp_path / "report.html"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sftreport",
            "run",
            "--epochs",
            "500",
            "--run-dir",
            str(run_dir),
            "--out",
            str(out),
            "--probe-size",
            "32",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "CI": "true"},
    )
    epochs = run_dir / "epochs.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not epochs.exists() or epochs.read_text().count("\n") < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    run = read_run(run_dir)
    assert run.info.status == "interrupted"
    assert 3 <= len(run.epochs) < 500
    assert "interrupted" in out.read_text().lower()
    assert "Traceback" not in stderr


def test_a_loss_diverging_mid_epoch_stops_within_a_few_steps_and_keeps_the_evidence(tmp_path: Path):
    r = cli(
        "run",
        "--epochs",
        "3",
        "--lr",
        "10000",
        "--batch-size",
        "4",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "r.md"),
        "--probe-size",
        "32",
        "--quiet",
        cwd=tmp_path,
    )
    assert r.returncode == 3, r.stderr
    run = read_run(tmp_path / "run")
    assert run.info.status == "diverged" and "at epoch 1, step" in run.info.status_detail
    assert [e.epoch for e in run.epochs] == [0, 1]  # the partial epoch is recorded as evidence
    assert run.epochs[1].step < 168  # stopped before the epoch's end


def test_a_diverging_loss_stops_the_run_and_the_report_says_so(tmp_path: Path):
    r = cli(
        "run",
        "--epochs",
        "5",
        "--lr",
        "10000",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "report.html"),
        "--probe-size",
        "32",
        "--quiet",
        cwd=tmp_path,
    )
    assert r.returncode == 3, r.stderr
    assert "diverged" in r.stderr
    run = read_run(tmp_path / "run")
    assert run.info.status == "diverged" and "loss became" in run.info.status_detail
    assert len(run.epochs) < 6
    assert "diverged" in (tmp_path / "report.html").read_text().lower()


def test_seed_case_on_cifar10_files_with_a_local_weights_file(tmp_path: Path, cifar_root: Path):
    """The seed's command shape (model, weights, cifar10, data root) with weights from a local file,
    a linear probe: the backbone must not move at all, the new head must."""
    import torch
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    r = cli(
        "run",
        "--model",
        "resnet18",
        "--weights",
        str(weights),
        "--dataset",
        "cifar10",
        "--data-root",
        str(cifar_root),
        "--strategy",
        "linear-probe",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "r.md"),
        *QUICK,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "run")
    assert run.info.dataset.classes[:2] == ["airplane", "automobile"] and run.info.dataset.train_size == 100
    last = run.epochs[-1]
    for w in last.weights:
        if w.name.startswith("fc."):
            assert w.new and w.trainable and w.rel_change > 0
        else:
            assert not w.trainable and w.rel_change == 0.0
    assert {g.name for g in last.gradients} == {"fc.weight", "fc.bias"}


def test_imagefolder_with_a_toml_config_and_flag_overrides(tmp_path: Path, folder_root: Path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'model = "mobilenet_v3_small"\nweights = "none"\ndataset = "imagefolder"\n'
        f'data_root = "{folder_root}"\nimage_size = 48\nepochs = 4\nstrategy = "freeze-until:features.3"\n'
        f'optimizer = "adamw"\nlr = 0.001\n[record]\nprobe_size = 9\ntsne = true\n'
    )
    r = cli(
        "run",
        "--config",
        str(cfg),
        "--epochs",
        "1",
        "--batch-size",
        "6",
        "--workers",
        "0",
        "--run-dir",
        str(tmp_path / "run"),
        "--quiet",
        "--out",
        str(tmp_path / "r.md"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "run")
    assert run.info.config["epochs"] == 1 and run.info.config["optimizer"] == "adamw"  # flag over file
    assert run.info.dataset.classes == ["cat", "dog", "fox"] and run.info.dataset.image_size == 48
    frozen = {w.name.split(".")[1] for w in run.epochs[-1].weights if not w.trainable}
    assert frozen == {"0", "1", "2", "3"}
    assert [p.method for p in run.epochs[-1].features.projections] == ["pca", "tsne"]


def test_run_dir_default_and_refusal_to_overwrite(tmp_path: Path):
    r = cli("run", *QUICK, "--out", "r.md", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --quiet: no progress at all
    (made,) = list((tmp_path / "runs").iterdir())
    assert made.name.endswith("-digits_resnet-digits") and (made / "run.json").exists()
    again = cli("run", *QUICK, "--run-dir", str(made), cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert json.loads((made / "run.json").read_text())["status"] == "completed"  # untouched


def test_a_disk_that_fills_mid_run_keeps_every_finished_epoch_and_says_what_is_true(tmp_path: Path):
    """The run directory on a "disk" that refuses to grow a file past a limit (RLIMIT_FSIZE: a write past it
    is cut short, then fails with EFBIG, as a full disk fails with ENOSPC): the epoch that does not fit is
    undone, the finished ones stay readable, the message says what happened, exit code 1 (not bad input)."""
    import os
    import resource

    args = [
        "--max-steps-per-epoch",
        "2",
        "--probe-size",
        "16",
        "--batch-size",
        "8",
        "--quiet",
        "--save-weights",
        "none",
    ]
    ref = cli("run", "--epochs", "1", "--run-dir", str(tmp_path / "ref"), "--out", str(tmp_path / "ref.md"), *args)
    assert ref.returncode == 0, ref.stderr
    line = max(len(x) for x in (tmp_path / "ref" / "epochs.jsonl").read_bytes().splitlines())
    limit = int(2.5 * line)  # epochs 0 and 1 fit, epoch 2 is cut off half way

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed, as with ENOSPC

    def run_on_small_disk(*argv: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "sftreport", "run", *argv, *args]
        env = {**os.environ, "CI": "true"}
        return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_disk, env=env, timeout=300)

    run_dir = tmp_path / "run"
    out_md, out_html = str(tmp_path / "r.md"), str(tmp_path / "r.html")
    r = run_on_small_disk("--epochs", "4", "--run-dir", str(run_dir), "--out", out_md, "--out", out_html)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot record epoch 2" in r.stderr and "epochs 0–1 are kept" in r.stderr
    assert "report could not be written" in r.stderr and "r.html" in r.stderr
    assert "run directory is complete" not in r.stderr
    run = read_run(run_dir)
    assert [e.epoch for e in run.epochs] == [0, 1] and run.dropped is None
    assert run.info.status == "failed" and "cannot record epoch 2" in run.info.status_detail
    md = (tmp_path / "r.md").read_text()  # the small report fitted, and says what happened
    assert "FAILED" in md and "cannot record epoch 2" in md
    again = cli("render", str(run_dir), "--out", str(tmp_path / "again.html"))
    assert again.returncode == 0, again.stderr
    # the same disk cannot take the model's weights (1.3 MB): one line, exit 1, from epoch 0 on
    args[-1] = "last"
    r = run_on_small_disk("--epochs", "2", "--run-dir", str(tmp_path / "w"), "--out", str(tmp_path / "w.md"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot save the weights of epoch 0" in r.stderr and "Traceback" not in r.stderr


def test_saved_weights_recompute_the_last_epoch_s_change_and_accuracy(default_run):
    """--save-weights last (the default) keeps epoch 0 and the last epoch: from those files alone, by hand,
    the last epoch's relative change per tensor and its validation accuracy come out as recorded."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sftreport.train.data import DIGITS_TARGET_CLASSES, load_digits_split
    from sftreport.train.models import DigitsResNet

    _, d = default_run
    run = read_run(d / "run")
    assert sorted(p.name for p in (d / "run" / "weights").iterdir()) == ["epoch_000.pt", "epoch_003.pt"]
    assert (
        run.epochs[-1].weights_file == "weights/epoch_003.pt" and run.epochs[0].weights_file == "weights/epoch_000.pt"
    )
    w0 = torch.load(d / "run" / "weights" / "epoch_000.pt", weights_only=True)
    w3 = torch.load(d / "run" / "weights" / "epoch_003.pt", weights_only=True)
    for stat in run.epochs[-1].weights:
        a0, a3 = w0[stat.name].double().numpy(), w3[stat.name].double().numpy()
        expected = np.linalg.norm(a3 - a0) / np.linalg.norm(a0)
        assert stat.rel_change == pytest.approx(expected, rel=1e-6, abs=1e-12), stat.name

    model = DigitsResNet(num_classes=5)
    model.load_state_dict(w3)
    model.eval()
    _, val = load_digits_split(DIGITS_TARGET_CLASSES)
    x = val.images.float().div(255).expand(-1, 3, -1, -1)  # the embedded default's preprocessing, by hand
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        pred = model((x - mean) / std).argmax(dim=1)
    correct = int((pred == val.labels).sum())
    assert correct == round(run.epochs[-1].val.accuracy * run.epochs[-1].val.count)
    assert len(val.labels) == run.epochs[-1].val.count


def test_a_run_from_scratch_never_speaks_of_a_pretrained_model(tmp_path: Path):
    """--weights none: epoch 0 is an initialisation. The report says so once, lists no table of 'replaced'
    layers, and its findings, captions and legends speak of the initial model."""
    import re

    r = cli(
        "run",
        "--weights",
        "none",
        "--epochs",
        "2",
        "--max-steps-per-epoch",
        "3",
        "--probe-size",
        "16",
        "--batch-size",
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
    allowed = ["no pretrained weights", "New (not pretrained)", "nothing pretrained"]  # saying there are none
    md = (tmp_path / "r.md").read_text()
    assert "trained from scratch on digits" in md
    for hit in re.findall(r".{0,40}pretrained.{0,40}", md):
        assert any(a in hit for a in allowed), hit
    html = (tmp_path / "r.html").read_text()
    visible = re.sub(r"<script.*?</script>", "", html, flags=re.S)  # the page's text, not chart data
    assert "Trained from scratch: no pretrained weights were loaded" in visible
    assert 'id="replaced"' not in visible
    for hit in re.findall(r"[^<>]{0,40}pretrained[^<>]{0,40}", visible):
        assert any(a in hit for a in allowed), hit
    specs = re.search(r'id="sftreport-specs">(.*?)</script>', html, re.S).group(1)
    assert "pretrained" not in specs  # legends and labels of the charts


def test_what_a_task_loops_stop_means_for_the_run():
    """Segmentation's and detection's loops hand their exception to stop_meaning: each kind its status."""
    from types import SimpleNamespace

    from sftreport.errors import UserError
    from sftreport.train.runner import stop_meaning

    rec = SimpleNamespace(epoch=3)
    assert stop_meaning(KeyboardInterrupt(), rec, 10) == ("interrupted", "stopped after 3 of 10 epochs", None, False)
    assert stop_meaning(FloatingPointError("loss nan"), rec, 10) == ("diverged", "loss nan", None, False)
    bad = UserError("image.png is unreadable")
    assert stop_meaning(bad, rec, 10) == ("failed", "image.png is unreadable", bad, False)
    assert stop_meaning(ValueError("boom"), rec, 10) == ("failed", "ValueError in epoch 4: boom", None, True)
