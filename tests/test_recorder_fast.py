"""The Recorder on a model of a few dozen parameters, in a second: every number of the run directory it writes,
recomputed by hand from the training loop (losses, accuracies, step points, sampled gradients, updates,
relative changes, evaluation, CKA of the head), an fp16-skipped step, images at the epochs promised, saved
weights, the model's train/eval mode, and the arguments it refuses."""

from __future__ import annotations

import copy
import math
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sftreport.config import RecordOptions
from sftreport.errors import UserError
from sftreport.record.recorder import Recorder, RunDescription, _now, environment
from sftreport.store import read_run


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)
    )


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.arange(n) % 3


def _flat(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy().ravel().copy() for k, v in model.named_parameters()}


def _hand_eval(model: nn.Module, batches) -> tuple[float, list[list[int]]]:
    m = copy.deepcopy(model).eval()
    loss, conf = 0.0, np.zeros((3, 3), dtype=int)
    with torch.no_grad():
        for x, y in batches:
            logits = m(x).double()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            for t, p in zip(y.tolist(), logits.argmax(1).tolist()):
                conf[t, p] += 1
    return loss, conf.tolist()


def _cka(a: np.ndarray, b: np.ndarray) -> float:
    n = a.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    ka, kb = h @ a @ a.T @ h, h @ b @ b.T @ h
    return float((ka * kb).sum() / (np.linalg.norm(ka) * np.linalg.norm(kb)))


class Loop:
    """A plain training loop that writes down, by hand, every number the recorder should store."""

    def __init__(self, tmp_path: Path, **opts):
        self.model = _model()
        self.probe = _data(6, 1)
        vx, vy = _data(7, 2)
        self.val = [(vx[:4], vy[:4]), (vx[4:], vy[4:])]
        self.train = _data(9, 3)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.5)
        options = RecordOptions(
            probe_size=8, hist_bins=8, grad_every=2, image_every=0, max_steps_points=10, save_weights="last", **opts
        )
        self.snapshots = {0: _flat(self.model)}
        self.evals = {0: _hand_eval(self.model, self.val)}
        self.head_out = {0: self._head_outputs()}
        self.dir = tmp_path / "run"
        self.mark = time.perf_counter()  # the recorder's first epoch clock starts after this
        self.rec = Recorder(
            self.model,
            probe=self.probe,
            val_data=self.val,
            run_dir=self.dir,
            class_names=["a", "b", "c"],
            new_params={"4.weight", "4.bias"},
            options=options,
            run=RunDescription(name="tiny", planned_epochs=2),
        )
        self.walls: dict[int, tuple[float, float]] = {}  # (since the last epoch_end began, epoch_end itself)
        self.step = 0
        self.epoch_steps: dict[int, list] = {}
        self.grads: dict[int, list] = {}
        self.updates: dict[int, dict] = {}

    def _head_outputs(self) -> np.ndarray:
        with torch.no_grad():
            m = copy.deepcopy(self.model).eval()
            return m(self.probe[0]).double().numpy()

    def epoch(self, epoch: int, steps: int, lrs, skip_first: bool = False, end_lr=None):
        rows = []
        for i in range(steps):
            sizes = (4, 3, 2)
            n = sizes[i % 3]
            start = (i * 2) % 7
            x, y = self.train[0][start : start + n], self.train[1][start : start + n]
            n = len(y)  # the slice may run past the end
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad()
            loss.backward()
            skipped = skip_first and i == 0
            before = _flat(self.model)
            if not skipped:
                self.opt.step()
            self.step += 1
            grads = {k: float(np.linalg.norm(p.grad.double().numpy())) for k, p in self.model.named_parameters()}
            sampled = i == 0 or (self.step - 1) % 2 == 0
            if sampled and not skipped:
                self.grads.setdefault(epoch, []).append(grads)
            if not skipped and epoch not in self.updates:
                after = _flat(self.model)
                self.updates[epoch] = {k: (((after[k] - before[k]) ** 2).sum(), (before[k] ** 2).sum()) for k in after}
            correct = int((logits.argmax(1) == y).sum())
            rows.append((loss.item(), n, correct, lrs[i]))
            self.rec.step(loss, logits, y, lr=lrs[i], skipped=torch.tensor(True) if skipped else None)
        self.epoch_steps[epoch] = rows
        self.snapshots[epoch] = _flat(self.model)
        self.evals[epoch] = _hand_eval(self.model, self.val)
        self.head_out[epoch] = self._head_outputs()
        t1 = time.perf_counter()
        snap = self.rec.epoch_end(lr=end_lr)
        t2 = time.perf_counter()
        self.walls[epoch] = (t1 - self.mark, t2 - t1)
        self.mark = t1  # the next epoch's clock starts inside this epoch_end
        return snap


@pytest.fixture
def loop(tmp_path) -> Loop:
    """Built again for every test (a tenth of a second): mutmut runs only the tests it saw reach a function,
    and a module-scoped fixture would be seen by the first of them alone."""
    lp = Loop(tmp_path)
    lp.epoch(1, 3, [0.1, 0.05, None])
    lp.epoch(2, 25, [0.01 * (i + 1) for i in range(25)], skip_first=True, end_lr=0.2)
    return lp


def test_epochs_steps_and_the_run_description(loop: Loop):
    run = read_run(loop.dir)
    assert [e.epoch for e in run.epochs] == [0, 1, 2] and [e.step for e in run.epochs] == [0, 3, 28]
    info = run.info
    assert (info.name, info.status, info.model, info.weights, info.strategy) == (
        "tiny",
        "running",
        "Sequential",
        "as given",
        "as given",
    )
    assert info.planned_epochs == 2 and info.finished_at is None
    assert info.dataset.name == "custom" and info.dataset.classes == ["a", "b", "c"] and info.dataset.image_size == 5
    assert info.probe.labels == [0, 1, 2, 0, 1, 2] and info.probe.size == 6
    assert info.architecture.total_params == 2 * 9 + 2 + 2 * 3 + 3 and info.architecture.new_params == 9
    assert info.environment.device == "cpu" and info.environment.precision == "fp32"
    assert loop.rec.epoch == 2 and loop.rec.last.epoch == 2 and loop.model.training


def test_train_metrics_are_the_sample_weighted_means_of_the_steps(loop: Loop):
    run = read_run(loop.dir)
    e0 = run.epochs[0]
    assert (e0.train_loss, e0.train_accuracy, e0.lr, e0.steps) == (None, None, None, [])
    for epoch in (1, 2):
        rows = loop.epoch_steps[epoch]
        n = sum(r[1] for r in rows)
        snap = run.epochs[epoch]
        assert snap.train_loss == pytest.approx(sum(r[0] * r[1] for r in rows) / n, rel=1e-6)
        assert snap.train_accuracy == pytest.approx(sum(r[2] for r in rows) / n)
    assert run.epochs[1].lr == 0.05  # the last learning rate given with a step
    assert run.epochs[2].lr == 0.2  # the one given to epoch_end wins


def test_step_points_are_averaged_in_buckets_ending_at_their_last_step(loop: Loop):
    run = read_run(loop.dir)
    p1 = [(p.step, p.steps, p.lr) for p in run.epochs[1].steps]
    assert p1 == [(1, 1, 0.1), (2, 1, 0.05), (3, 1, None)]
    assert [p.loss for p in run.epochs[1].steps] == pytest.approx([r[0] for r in loop.epoch_steps[1]], rel=1e-6)
    # 25 steps, at most 10 points: buckets of 3 (the last holds one), from global step 4
    rows = loop.epoch_steps[2]
    points = run.epochs[2].steps
    assert [(p.step, p.steps) for p in points] == [(3 + k + 3, 3) for k in range(0, 24, 3)] + [(28, 1)]
    for k, p in zip(range(0, 25, 3), points):
        chunk = rows[k : k + 3]
        assert p.loss == pytest.approx(sum(r[0] for r in chunk) / len(chunk), rel=1e-6)
        assert p.lr == chunk[-1][3]


def test_sampled_gradient_norms_skip_the_step_the_optimizer_skipped(loop: Loop):
    run = read_run(loop.dir)
    assert run.epochs[0].gradients == []
    for epoch, want_samples in ((1, 2), (2, 12)):  # epoch 2: step 4 sampled but skipped, then 5, 7, ..., 27
        grads = {g.name: g for g in run.epochs[epoch].gradients}
        assert list(grads) == ["0.weight", "0.bias", "4.weight", "4.bias"]
        assert len(loop.grads[epoch]) == want_samples
        for name, g in grads.items():
            norms = [s[name] for s in loop.grads[epoch]]
            assert (g.samples, g.nonfinite, g.module) == (want_samples, 0, name.split(".")[0])
            assert g.norm_sum == pytest.approx(sum(norms), rel=1e-5) and g.norm_max == pytest.approx(
                max(norms), rel=1e-5
            )


def test_weights_relative_change_and_the_first_real_update_of_each_epoch(loop: Loop):
    run = read_run(loop.dir)
    w0 = loop.snapshots[0]
    for epoch in (0, 1, 2):
        ws = {w.name: w for w in run.epochs[epoch].weights}
        assert [(w.trainable, w.new) for w in ws.values()] == [(True, False), (True, False), (True, True), (True, True)]
        for name, w in ws.items():
            now = loop.snapshots[epoch][name]
            assert w.ref_sq == pytest.approx((w0[name] ** 2).sum(), rel=1e-6)
            assert w.diff_sq == pytest.approx(((now - w0[name]) ** 2).sum(), rel=1e-5, abs=1e-12)
            assert w.stats.mean == pytest.approx(now.mean(), rel=1e-5, abs=1e-7)
            if epoch == 0:
                assert w.update_sq is None and w.rel_change == 0.0
            else:
                upd, before = loop.updates[epoch][name]
                assert w.update_sq == pytest.approx(upd, rel=1e-4) and w.before_update_sq == pytest.approx(
                    before, rel=1e-5
                )


def test_evaluation_features_and_cka_of_the_head(loop: Loop):
    run = read_run(loop.dir)
    for epoch, snap in enumerate(run.epochs):
        loss, conf = loop.evals[epoch]
        assert snap.val.confusion == conf and snap.val.count == 7
        assert snap.val.loss == pytest.approx(loss / 7, rel=1e-5)
        logits = loop.head_out[epoch]
        f = snap.features
        assert (f.module, f.dim, f.knn_k) == ("4", 2, 5)
        assert f.probe_accuracy == pytest.approx(float((logits.argmax(1) == np.array([0, 1, 2, 0, 1, 2])).mean()))
        ckas = {c.module: c.value for c in snap.cka}
        assert list(ckas) == ["0", "4"]
        assert ckas["4"] == pytest.approx(_cka(logits, loop.head_out[0]), rel=1e-5)
        assert 0 < ckas["0"] <= 1 + 1e-9
        assert [a.module for a in snap.activations] == ["0", "4"]
    conv_out = nn.functional.conv2d(
        loop.probe[0],
        torch.tensor(loop.snapshots[0]["0.weight"], dtype=torch.float32).view(2, 1, 3, 3),
        torch.tensor(loop.snapshots[0]["0.bias"], dtype=torch.float32),
        padding=1,
    )
    a0 = run.epochs[0].activations[0]
    assert a0.stats.count == conv_out.numel() and a0.channels == 2 and a0.shape == [2, 5, 5]
    assert a0.stats.mean == pytest.approx(conv_out.double().mean().item(), rel=1e-5, abs=1e-7)
    assert a0.stats.min == pytest.approx(conv_out.min().item()) and a0.hist.total == conv_out.numel()


def test_images_at_epoch_zero_and_the_planned_last_epoch_and_saved_weights(loop: Loop):
    run = read_run(loop.dir)
    assert run.epochs[1].images is None
    for epoch in (0, 2):
        img = run.epochs[epoch].images
        tag = f"e{epoch:03d}"
        assert img.filters == f"assets/filters_{tag}.png" and img.filters_module == "0"
        assert [(m.module, m.sample, m.path, m.channels) for m in img.feature_maps] == [
            ("0", 0, f"assets/fmap_0_s0_{tag}.png", 2),
            ("0", 1, f"assets/fmap_0_s1_{tag}.png", 2),
        ]
        assert (loop.dir / img.filters).read_bytes().startswith(b"\x89PNG")
    assert [e.weights_file for e in run.epochs] == [f"weights/epoch_{e:03d}.pt" for e in (0, 1, 2)]
    assert sorted(p.name for p in (loop.dir / "weights").iterdir()) == ["epoch_000.pt", "epoch_002.pt"]
    state = torch.load(loop.dir / "weights" / "epoch_002.pt", weights_only=True)
    assert np.allclose(state["4.weight"].double().numpy().ravel(), loop.snapshots[2]["4.weight"])
    t = [e.timing for e in run.epochs]
    assert t[0].train_s == 0.0 and t[0].samples_per_s is None and t[1].train_s > 0
    for epoch in (1, 2):
        since_last_end, end = loop.walls[epoch]
        samples = sum(r[1] for r in loop.epoch_steps[epoch])
        assert 0 < t[epoch].train_s <= since_last_end
        assert t[epoch].samples_per_s == pytest.approx(samples / t[epoch].train_s, rel=1e-9)
        assert t[epoch].eval_s > 0 and t[epoch].record_s > 0 and t[epoch].eval_s + t[epoch].record_s <= end
        assert 0 <= t[epoch].probes["save_weights"] <= t[epoch].record_s
    assert set(t[0].probes) == {
        "weights",
        "gradients",
        "activations",
        "features",
        "images",
        "save_weights",
        "reference",
    }
    assert set(t[1].probes) == {"weights", "gradients", "activations", "features", "save_weights"}
    assert t[1].record_s >= t[1].probes["weights"] and t[1].eval_s > 0


def test_finish_writes_the_status_and_renders_nothing_when_asked_for_nothing(tmp_path: Path):
    lp = Loop(tmp_path)
    lp.epoch(1, 1, [0.1])
    assert lp.rec.finish("interrupted", "stopped by hand") == []
    info = read_run(lp.dir).info
    assert (info.status, info.status_detail) == ("interrupted", "stopped by hand")
    assert info.finished_at is not None and info.duration_s > 0
    assert lp.rec.render([]) == []


def test_a_non_writing_process_records_metrics_only_and_a_disabled_recorder_no_probes(tmp_path: Path):
    model = _model()
    x, y = _data(4, 5)
    rec = Recorder(model, probe=(x, y), val_data=[(x, y)], run_dir=tmp_path / "rank1", writer=False)
    assert not (tmp_path / "rank1").exists() and rec.info is None and rec.class_names == ["0", "1", "2"]
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    rec.step(loss, logits, y)
    snap = rec.epoch_end()
    assert snap.epoch == 1 and snap.weights == [] and snap.val.count == 4
    assert snap.train_loss == pytest.approx(loss.item()) and snap.train_accuracy is not None
    assert rec.finish() == [] and rec.render("x.html") == []
    off = Recorder(model, probe=(x, y), run_dir=tmp_path / "off", options=RecordOptions(enabled=False))
    rec_loss = torch.tensor(2.0)
    off.step(rec_loss)  # no logits: no accuracy
    s = off.epoch_end()
    assert s.weights == [] and s.activations == [] and s.features is None and s.weights_file is None
    assert s.train_loss == 2.0 and s.train_accuracy is None and s.val is None
    assert [e.epoch for e in read_run(tmp_path / "off").epochs] == [0, 1]


def test_the_model_keeps_its_eval_mode(tmp_path: Path):
    model = _model().eval()
    x, y = _data(4, 6)
    rec = Recorder(model, probe=(x, y), val_data=[(x, y)], run_dir=tmp_path / "r")
    assert not model.training
    rec.epoch_end()
    assert not model.training


def test_refused_arguments(tmp_path: Path):
    model = _model()
    x, y = _data(4, 7)
    with pytest.raises(UserError, match=r"^the probe set needs at least 2 samples, got 1$"):
        Recorder(model, probe=(x[:1], y[:1]), run_dir=tmp_path / "a")
    with pytest.raises(UserError) as e:
        Recorder(model, probe=(x, torch.tensor([0, 1, 3, 0])), run_dir=tmp_path / "b")
    assert str(e.value) == "probe labels must be class indices 0..2, found 0..3"
    with pytest.raises(UserError) as e:
        Recorder(model, probe=(x, torch.tensor([-1, 0, 1, 2])), run_dir=tmp_path / "b")
    assert str(e.value) == "probe labels must be class indices 0..2, found -1..2"
    with pytest.raises(UserError) as e:
        Recorder(nn.Sequential(nn.Conv2d(1, 2, 3)), probe=(x, y), run_dir=tmp_path / "c")
    assert str(e.value) == "Sequential must return logits of shape (batch, classes), or an object with them as .logits"
    with pytest.raises(UserError) as e:
        Recorder(nn.Sequential(nn.Flatten(), nn.Linear(3, 3)), probe=(x, y), run_dir=tmp_path / "d")
    assert str(e.value).startswith("Sequential cannot run on inputs of shape [1, 5, 5]: ")
    with pytest.raises(UserError, match="no module named 'nope'"):
        Recorder(model, probe=(x, y), run_dir=tmp_path / "e", options=RecordOptions(activations=["nope"]))
    assert not (tmp_path / "e").exists()  # refused before anything is written
    assert model.training


def test_image_modules_and_image_epochs():
    convs = nn.Sequential(*(nn.Conv2d(1, 1, 1) for _ in range(5)), nn.Linear(1, 1))
    names = [str(i) for i in range(6)]
    assert Recorder._image_modules(convs, names) == ["0", "2", "4"]  # early, middle, late; never the Linear
    assert Recorder._image_modules(convs, ["1", "5", "3"]) == ["1", "3"]
    rec = Recorder.__new__(Recorder)
    rec.options, rec.planned_epochs = RecordOptions(image_every=3), 7
    assert [e for e in range(10) if rec._want_images(e)] == [0, 3, 6, 7, 9]
    rec.options = RecordOptions(image_every=0)
    assert [e for e in range(10) if rec._want_images(e)] == [0, 7]


def test_environment_and_timestamps(tmp_path: Path, monkeypatch):
    import platform
    import socket

    from sftreport import __version__

    monkeypatch.chdir(tmp_path)
    env = environment(torch.device("cpu"), "bf16", 4)
    assert (env.python, env.torch, env.sftreport, env.device) == (
        platform.python_version(),
        torch.__version__,
        __version__,
        "cpu",
    )
    assert (env.precision, env.world_size, env.git_commit, env.hostname) == ("bf16", 4, None, socket.gethostname())
    assert env.device_name == (platform.processor() or None) and env.platform == platform.platform()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert environment(torch.device("cpu")).git_commit == head and environment(torch.device("cpu")).precision == "fp32"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", _now())
    assert not math.isnan(float(_now()[:4]))


# --------------------------------------------------------------------------- second round: recorder mutants the first campaign left alive


def test_a_non_writer_holds_no_probe_buffers_and_counts_steps_without_logits(tmp_path: Path):
    model = _model()
    x, y = _data(4, 8)
    rec = Recorder(model, probe=(x, y), run_dir=tmp_path / "r", writer=False)
    assert (rec.probes, rec.saver, rec.writer) == (None,) * 3
    rec.step(torch.tensor(1.0), targets=y)  # targets without logits: counted, no accuracy
    rec.step(torch.tensor(3.0))  # neither: one sample
    s = rec.epoch_end()
    assert s.train_loss == pytest.approx((1.0 * 4 + 3.0 * 1) / 5) and s.train_accuracy is None
    assert s.timing.samples_per_s == pytest.approx(5 / s.timing.train_s, rel=1e-9)


def test_run_description_dataset_defaults_and_a_two_sample_probe(tmp_path: Path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    x = torch.randn(2, 1, 4, 6)  # the smallest probe allowed, wider than high
    desc = RunDescription(name="d", model="net", weights="w0", strategy="s", config={"lr": 0.5})
    Recorder(
        model,
        probe=(x, torch.tensor([0, 2])),
        run_dir=tmp_path / "r",
        run=desc,
        options=RecordOptions(save_weights="none"),
    )
    info = read_run(tmp_path / "r").info
    assert (info.model, info.weights, info.strategy, info.config) == ("net", "w0", "s", {"lr": 0.5})
    d = info.dataset
    assert (d.name, d.classes, d.train_size, d.val_size, d.image_size) == ("custom", ["0", "1", "2"], 0, 0, 6)
    assert info.architecture.input_shape == [1, 4, 6]


def test_class_names_set_the_class_count_and_options_reach_the_probes(tmp_path: Path, monkeypatch):
    import sys
    import types
    from contextlib import contextmanager

    class FakeTSNE:
        def __init__(self, **kw):
            pass

        def fit_transform(self, a):
            return np.zeros((len(a), 2))

    monkeypatch.setitem(sys.modules, "sklearn.manifold", types.SimpleNamespace(TSNE=FakeTSNE))
    entered = []

    @contextmanager
    def autocast():
        entered.append(1)
        yield

    model = _model()
    x, y = _data(6, 9)
    rec = Recorder(
        model,
        probe=(x, y),
        val_data=[(x, y)],
        run_dir=tmp_path / "r",
        class_names=["a", "b", "c", "d"],  # one more than the model's logits
        options=RecordOptions(tsne=True, save_weights="none"),
        autocast=autocast,
    )
    snap = read_run(tmp_path / "r").epochs[0]
    assert len(snap.val.confusion) == 4 and snap.val.per_class_accuracy[3] is None
    assert [p.method for p in snap.features.projections] == ["pca", "tsne"]
    assert len(entered) == 1 + 2  # the evaluation, and the two probe passes of epoch 0
    assert rec.num_classes == 4


def test_a_run_directory_is_named_after_the_time_by_default(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = _data(4, 10)
    before = time.strftime("%Y%m%d")
    Recorder(_model(), probe=(x, y), options=RecordOptions(enabled=False))
    (made,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-recorder", made.name) and made.name[:8] >= before
    assert [e.epoch for e in read_run(made).epochs] == [0]


def test_finish_defaults_duration_and_rendering_through_render_run(tmp_path: Path, monkeypatch):
    import sys
    import types

    from sftreport.errors import StorageError

    rendered = []

    def render_run(root, outs, run=None):
        rendered.append((root, outs, run.info.status, [e.epoch for e in run.epochs]))
        return outs

    monkeypatch.setitem(sys.modules, "sftreport.report.render", types.SimpleNamespace(render_run=render_run))
    x, y = _data(4, 11)
    start = time.perf_counter()
    rec = Recorder(_model(), probe=(x, y), run_dir=tmp_path / "r", options=RecordOptions(enabled=False))
    rec.step(torch.tensor(1.0))
    rec.epoch_end()
    assert rec.finish(out=[tmp_path / "a.html", str(tmp_path / "b.md")]) == [tmp_path / "a.html", tmp_path / "b.md"]
    wall = time.perf_counter() - start
    info = read_run(tmp_path / "r").info
    assert (info.status, info.status_detail) == ("completed", "") and 0 < info.duration_s <= wall
    assert rendered == [(tmp_path / "r", [tmp_path / "a.html", tmp_path / "b.md"], "completed", [0, 1])]
    assert rec.render(tmp_path / "c.pdf") == [tmp_path / "c.pdf"] and rendered[-1][1] == [tmp_path / "c.pdf"]
    # the disk refuses run.json: the reports are still rendered (with the status held here), then the error is raised

    def refuse(info):
        raise StorageError("cannot write run.json: No space left on device")

    rec.writer.write_run = refuse
    with pytest.raises(StorageError):
        rec.finish("interrupted", out=tmp_path / "d.html")
    assert rendered[-1][1:3] == ([tmp_path / "d.html"], "interrupted")


class _Twice(nn.Module):
    """One convolution applied twice (its maps are labelled conv#1 and conv#2), then a wider one."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.wide = nn.Conv2d(1, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.wide(self.conv(self.conv(x))).mean(dim=(2, 3)))


def test_feature_maps_of_a_module_called_twice_and_of_modules_with_different_channel_counts(tmp_path: Path):
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(12))
    Recorder(
        _Twice(), probe=(x, torch.tensor([0, 1, 0])), run_dir=tmp_path / "r", options=RecordOptions(save_weights="none")
    )
    img = read_run(tmp_path / "r").epochs[0].images
    assert img.filters == "assets/filters_e000.png" and img.filters_module == "conv"
    assert [(m.module, m.sample, m.path, m.channels) for m in img.feature_maps] == [
        ("conv#1", 0, "assets/fmap_conv_1_s0_e000.png", 1),
        ("conv#1", 1, "assets/fmap_conv_1_s1_e000.png", 1),
        ("conv#2", 0, "assets/fmap_conv_2_s0_e000.png", 1),
        ("conv#2", 1, "assets/fmap_conv_2_s1_e000.png", 1),
        ("wide", 0, "assets/fmap_wide_s0_e000.png", 3),
        ("wide", 1, "assets/fmap_wide_s1_e000.png", 3),
    ]
    assert all((tmp_path / "r" / m.path).exists() for m in img.feature_maps)


def test_best_mode_keeps_the_epoch_with_the_best_validation_accuracy(tmp_path: Path):
    lin = nn.Linear(2, 2, bias=False)
    vx = torch.eye(2).repeat(2, 1)  # four one-hot inputs
    vy = torch.tensor([0, 1, 0, 1])

    def set_weight(rows):
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(rows))

    set_weight([[1.0, 0.0], [0.0, 1.0]])  # epoch 0: right on all four
    rec = Recorder(
        lin, probe=(vx, vy), val_data=[(vx, vy)], run_dir=tmp_path / "r", options=RecordOptions(save_weights="best")
    )
    for rows in ([[1.0, 0.0], [1.0, -1.0]], [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]):  # 50 %, 100 %, 0 %
        set_weight(rows)
        rec.epoch_end()
    run = read_run(tmp_path / "r")
    assert [e.val.accuracy for e in run.epochs] == [1.0, 0.5, 1.0, 0.0]
    assert [e.weights_file for e in run.epochs] == [
        "weights/epoch_000.pt",
        "weights/epoch_001.pt",
        "weights/epoch_002.pt",
        None,
    ]
    assert sorted(p.name for p in (tmp_path / "r" / "weights").iterdir()) == ["epoch_000.pt", "epoch_002.pt"]
    # without a validation set "best" keeps the latest
    rec2 = Recorder(_model(), probe=_data(4, 13), run_dir=tmp_path / "s", options=RecordOptions(save_weights="best"))
    assert rec2.epoch_end().weights_file == "weights/epoch_001.pt"


def test_per_step_losses_are_averaged_over_processes(monkeypatch):
    """A stand-in process group of two identical ranks: sums double, per-step losses stay as they were."""
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.mul_(2))
    x, y = _data(4, 14)
    rec = Recorder(_model(), probe=(x, y), writer=False)
    for loss in (1.0, 3.0):
        rec.step(torch.tensor(loss), targets=y)
    s = rec.epoch_end()
    assert [p.loss for p in s.steps] == [1.0, 3.0] and s.train_loss == 2.0


def test_environment_names_versions_devices_and_a_missing_git(monkeypatch, tmp_path: Path):
    import importlib.metadata
    import platform
    import types

    real_version = importlib.metadata.version
    assert environment(torch.device("cpu")).torchvision == real_version("torchvision")
    assert environment(torch.device("cpu")).world_size == 1
    monkeypatch.setattr(platform, "processor", lambda: "TestCPU 3000")
    assert environment(torch.device("cpu")).device_name == "TestCPU 3000"
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: asked.append(d) or "FakeGPU")
    gpu = types.SimpleNamespace(type="cuda", __str__=lambda self: "cuda:0")
    assert environment(gpu).device_name == "FakeGPU" and asked == [gpu]

    def no_torchvision(name):
        if name == "torchvision":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", no_torchvision)
    assert environment(torch.device("cpu")).torchvision is None

    def no_git(*a, **k):
        raise OSError("git: not found")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert environment(torch.device("cpu")).git_commit is None


class _Output:
    """What a Hugging Face classifier returns: an object holding the logits (and a loss) as attributes."""

    def __init__(self, logits: torch.Tensor):
        self.logits, self.loss = logits, None


class _ObjectModel(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> _Output:
        return _Output(self.inner(x))


def test_a_model_returning_an_output_object_records_what_the_same_tensor_model_records(tmp_path: Path):
    x, y = _data(12, 4)
    plain = _model()
    wrapped = _ObjectModel(copy.deepcopy(plain))
    runs = {}
    for name, model in (("plain", plain), ("wrapped", wrapped)):
        rec = Recorder(model, probe=(x[:6], y[:6]), val_data=[(x, y)], run_dir=tmp_path / name)
        runs[name] = rec.last
    a, b = runs["plain"], runs["wrapped"]
    assert a is not None and b is not None and a.val is not None and b.val is not None
    loss, conf = _hand_eval(plain, [(x, y)])
    assert b.val.confusion == conf and b.val.loss == pytest.approx(loss / 12, rel=1e-6)
    assert a.val == b.val
    assert a.features is not None and b.features is not None
    assert b.features.probe_accuracy == a.features.probe_accuracy


def test_a_model_returning_neither_logits_nor_an_object_with_them_is_refused(tmp_path: Path):
    class Dicty(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(25, 3)

        def forward(self, x):
            return {"scores": self.fc(x.flatten(1))}

    x, y = _data(6, 1)
    with pytest.raises(UserError, match=r"or an object with them as \.logits"):
        Recorder(Dicty(), probe=(x, y), run_dir=tmp_path / "r")


def test_logged_metrics_are_stored_per_epoch_as_numbers_and_drawn(tmp_path: Path):
    x, y = _data(12, 5)
    model = _model()
    rec = Recorder(model, probe=(x[:6], y[:6]), val_data=[(x, y)], run_dir=tmp_path / "r")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch, val_loss in enumerate((0.75, 0.5), start=1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(loss)
        logged = {
            "val_loss": torch.tensor(val_loss),  # a one-element tensor is read
            "val_acc": epoch / 4,
            "epoch": epoch,
            "name": "text is left out",
            "per_class": torch.ones(3),  # many values: left out
            "flag": True,  # a bool is not a metric
        }
        rec.epoch_end(logged=logged)
    rec.finish(out=tmp_path / "r.html")
    run = read_run(tmp_path / "r")
    assert [e.logged for e in run.epochs] == [
        {},
        {"val_loss": 0.75, "val_acc": 0.25, "epoch": 1.0},
        {"val_loss": 0.5, "val_acc": 0.5, "epoch": 2.0},
    ]
    html = (tmp_path / "r.html").read_text()
    assert "Metrics your training logged" in html
    # the chart's data holds every logged value at its epoch, nothing else
    from tests.report.report_support import spec_blob

    spec = spec_blob(html)["logged"]
    lines = spec["datasets"][spec["data"]["name"]].split()  # the data travel as CSV
    assert lines[0] == "epoch,metric,value"
    rows = [(int(e), m, float(v)) for e, m, v in (line.split(",") for line in lines[1:])]
    assert sorted(rows) == sorted(
        [(1, "val_loss", 0.75), (1, "val_acc", 0.25), (1, "epoch", 1.0)]
        + [(2, "val_loss", 0.5), (2, "val_acc", 0.5), (2, "epoch", 2.0)]
    )
    assert spec["resolve"]["scale"]["y"] == "independent"


def test_a_run_without_logged_metrics_has_no_logged_chart(loop: Loop):
    from sftreport.report.render import render_run

    out = loop.rec.writer.root / "plain.html"  # type: ignore[union-attr]
    render_run(loop.rec.writer.root, [out])  # type: ignore[union-attr]
    assert "Metrics your training logged" not in out.read_text()
