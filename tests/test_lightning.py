"""The Lightning callback on a real Lightning Trainer (CPU, no download): the embedded default's pretrained
digits_resnet fine-tuned for 2 short epochs, against the same training written as an own loop."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.lightning_module import BATCH, Finetune, digits
from lightning.pytorch.callbacks import ModelCheckpoint
from support import record_differences
from torch.utils.data import DataLoader

from sftreport.config import RecordOptions
from sftreport.errors import UserError
from sftreport.integrations.lightning import SFTReport
from sftreport.record.recorder import Recorder
from sftreport.schema import EpochSnapshot
from sftreport.store import EPOCHS_FILE, SUPERSEDED_FILE, read_run

BATCHES = 4


def trainer(**kw) -> pl.Trainer:
    settings = {"max_epochs": 2, "limit_train_batches": BATCHES, "enable_checkpointing": False, **kw}
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False, **settings
    )


def test_a_lightning_fit_records_the_same_numbers_as_the_own_loop(tmp_path: Path):
    train, val = digits()
    probe = (val.tensors[0][:32], val.tensors[1][:32])
    val_loader = DataLoader(val, batch_size=64)

    module = Finetune()
    new = {f"net.{n}" for n in module.new}
    cb = SFTReport(probe=probe, val_data=val_loader, run_dir=tmp_path / "pl", new_params=new, out=tmp_path / "pl.html")
    trainer(callbacks=[cb]).fit(module, DataLoader(train, batch_size=BATCH))

    # the same computation as an own loop: same start, same batches in the same order, same optimizer
    model = Finetune()
    opt = model.configure_optimizers()
    rec = Recorder(model, probe=probe, val_data=val_loader, run_dir=tmp_path / "own", new_params=new)
    loader = DataLoader(train, batch_size=BATCH)
    for _ in range(2):
        model.train()
        for i, (x, y) in enumerate(loader):
            if i == BATCHES:
                break
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss, targets=y, lr=0.05)
        rec.epoch_end()
    rec.finish()

    got, want = read_run(tmp_path / "pl"), read_run(tmp_path / "own")
    assert got.info.status == "completed" and [e.epoch for e in got.epochs] == [0, 1, 2]
    assert got.info.planned_epochs == 2 and got.info.architecture.new_params == 645
    assert (got.info.dataset.train_size, got.info.dataset.val_size) == (len(train), 64)
    assert (want.info.dataset.train_size, want.info.dataset.val_size) == (0, 64)  # an own loop's, not known
    assert len(got.epochs) == len(want.epochs) == 3
    for g, w in zip(got.epochs, want.epochs, strict=True):
        assert g.step == w.step == BATCHES * g.epoch
        assert g.val is not None and w.val is not None
        assert g.val.confusion == w.val.confusion and g.val.loss == pytest.approx(w.val.loss, rel=1e-6)
        if g.epoch:
            assert g.train_loss == pytest.approx(w.train_loss, rel=1e-6) and g.lr == 0.05
        assert [s.name for s in g.weights] == [s.name for s in w.weights]
        for a, b in zip(g.weights, w.weights):
            assert a.stats.mean == pytest.approx(b.stats.mean, rel=1e-6, abs=1e-9)
            assert a.stats.std == pytest.approx(b.stats.std, rel=1e-6, abs=1e-9)
            assert (a.stats.min, a.stats.max, a.hist.counts) == (b.stats.min, b.stats.max, b.hist.counts)
            assert a.diff_sq == pytest.approx(b.diff_sq, rel=1e-5, abs=1e-12)
            assert (a.update_sq is None) == (b.update_sq is None) == (g.epoch == 0)
            if a.update_sq is not None:
                assert a.update_sq == pytest.approx(b.update_sq, rel=1e-5)
        for a, b in zip(g.gradients, w.gradients):
            assert a.name == b.name and a.samples == b.samples
            assert a.mean_norm == pytest.approx(b.mean_norm, rel=1e-5)
    # gradients sampled once per optimizer step, at steps 1, 6, 11, ... (--grad-every 5) and each epoch's first:
    # epoch 1 (steps 1-4) at step 1; epoch 2 (steps 5-8) at steps 5 and 6
    assert [{s.samples for s in e.gradients} for e in got.epochs[1:]] == [{1}, {2}]
    html = (tmp_path / "pl.html").read_text()
    assert "Finetune (Lightning)" in html and "completed" in html
    assert f"custom: 5 classes, {len(train):,} training / 64 validation images, 32×32 px" in html
    assert json.loads((tmp_path / "pl" / "run.json").read_text())["status"] == "completed"


def test_a_probe_the_model_cannot_take_or_an_unwritable_report_fails_at_fit_start(tmp_path: Path):
    train, _ = digits()
    data = DataLoader(train, batch_size=BATCH)
    bad_probe = (torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))  # one channel: the model takes three
    with pytest.raises(UserError, match=r"cannot run on inputs of shape \[1, 32, 32\]"):
        trainer(callbacks=[SFTReport(probe=bad_probe, run_dir=tmp_path / "bad")]).fit(Finetune(), data)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "file").write_text("")
    probe = (train.tensors[0][:8], train.tensors[1][:8])
    with pytest.raises(UserError, match="is not a directory"):
        trainer(callbacks=[SFTReport(probe=probe, out=tmp_path / "file" / "r.html", run_dir=tmp_path / "r")]).fit(
            Finetune(), data
        )
    assert not (tmp_path / "r").exists()  # refused before anything was written


class FailsInEpochTwo(Finetune):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 2:
            raise RuntimeError("out of memory (a stand-in)")
        return super().training_step(batch, batch_idx)


def test_a_fit_that_fails_is_marked_failed_and_rendered_from_its_finished_epochs(tmp_path: Path):
    train, val = digits()
    cb = SFTReport(probe=(val.tensors[0][:16], val.tensors[1][:16]), run_dir=tmp_path / "r", out=[tmp_path / "r.md"])
    with pytest.raises(RuntimeError, match="a stand-in"):
        trainer(callbacks=[cb]).fit(FailsInEpochTwo(), DataLoader(train, batch_size=BATCH))
    run = read_run(tmp_path / "r")
    assert run.info.status == "failed" and [e.epoch for e in run.epochs] == [0, 1]
    assert run.info.status_detail == "RuntimeError in epoch 2: out of memory (a stand-in)"
    assert "failed" in (tmp_path / "r.md").read_text()


def test_gradient_accumulation_records_one_step_and_one_gradient_sample_per_optimizer_step(tmp_path: Path):
    """accumulate_grad_batches=2 over 4 batches: 2 optimizer steps an epoch. The own loop below does the same
    accumulation by hand and calls rec.step once per optimizer step with the mean loss of its two batches."""
    train, val = digits()
    probe = (val.tensors[0][:16], val.tensors[1][:16])
    module = Finetune()
    cb = SFTReport(probe=probe, run_dir=tmp_path / "pl")
    trainer(callbacks=[cb], accumulate_grad_batches=2).fit(module, DataLoader(train, batch_size=BATCH))

    model = Finetune()
    opt = model.configure_optimizers()
    rec = Recorder(model, probe=probe, run_dir=tmp_path / "own")
    loader = DataLoader(train, batch_size=BATCH)
    for _ in range(2):
        model.train()
        losses, sizes = [], []
        for i, (x, y) in enumerate(loader):
            if i == BATCHES:
                break
            loss = F.cross_entropy(model(x), y)
            (loss / 2).backward()
            losses.append(loss.detach())
            sizes.append(len(y))
            if i % 2 == 1:
                opt.step()
                mean = sum(loss * n for loss, n in zip(losses, sizes)) / sum(sizes)
                rec.step(mean, targets=torch.zeros(sum(sizes)))
                opt.zero_grad()
                losses, sizes = [], []
        rec.epoch_end()

    got, want = read_run(tmp_path / "pl"), read_run(tmp_path / "own")
    assert [e.step for e in got.epochs] == [0, 2, 4] == [e.step for e in want.epochs]
    assert [[p.step for p in e.steps] for e in got.epochs[1:]] == [[1, 2], [3, 4]]
    for g, w in zip(got.epochs[1:], want.epochs[1:]):
        assert g.train_loss == pytest.approx(w.train_loss, rel=1e-6)
        assert [p.loss for p in g.steps] == pytest.approx([p.loss for p in w.steps], rel=1e-6)
        assert {s.samples for s in g.gradients} == {1}  # steps 1 and 3, each epoch's first
        for a, b in zip(g.gradients, w.gradients):
            assert a.mean_norm == pytest.approx(b.mean_norm, rel=1e-5)
        for a, b in zip(g.weights, w.weights):
            assert a.diff_sq == pytest.approx(b.diff_sq, rel=1e-5, abs=1e-12)
            assert a.update_sq == pytest.approx(b.update_sq, rel=1e-5)


def test_a_two_process_ddp_fit_writes_one_run_directory_with_each_validation_image_counted_once(tmp_path: Path):
    """Then a second fit in the same two processes resumes from the first epoch's checkpoint to 3 epochs: the
    processes agree on where the run goes on, and only rank 0 touches the run directory."""
    script = Path(__file__).parent / "helpers" / "lightning_ddp.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(script.parent), *sys.path])}
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "r.md"), str(tmp_path / "ckpt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    first = (tmp_path / "first.jsonl").read_bytes().splitlines(keepends=True)
    assert [EpochSnapshot.model_validate_json(x).epoch for x in first] == [0, 1, 2]
    run = read_run(tmp_path / "run")
    assert run.info.status == "completed" and [e.epoch for e in run.epochs] == [0, 1, 2, 3]
    assert all(e.val is not None and e.val.count == 64 for e in run.epochs)  # not 128: each batch once
    assert run.info.dataset.val_size == 64
    assert [e.step for e in run.epochs] == [0, 3, 6, 9]
    assert (tmp_path / "run" / SUPERSEDED_FILE).read_bytes() == first[2]  # the first fit's epoch 2
    assert (tmp_path / "run" / EPOCHS_FILE).read_bytes().startswith(b"".join(first[:2]))
    assert (tmp_path / "r.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "first.jsonl", "r.md", "run"]  # rank 1: nothing


def test_readme_shows_the_lightning_example_verbatim_with_four_added_lines():
    root = Path(__file__).resolve().parents[1]
    code = (root / "examples" / "lightning_fit.py").read_text()
    body = code.split('"""', 2)[2].lstrip("\n")
    m = re.search(
        r"<!-- example: examples/lightning_fit.py -->\s*```python\n(.*?)```", (root / "README.md").read_text(), re.S
    )
    assert m and m.group(1) == body
    assert sum(1 for line in body.splitlines() if "# sftreport" in line) == 4


@pytest.mark.slow
def test_the_lightning_example_runs_and_records_every_epoch(tmp_path: Path):
    example = Path(__file__).resolve().parents[1] / "examples" / "lightning_fit.py"
    r = subprocess.run([sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = read_run(tmp_path / "runs" / "lightning")
    assert [e.epoch for e in run.epochs] == [0, 1, 2] and run.info.status == "completed"
    last = run.epochs[-1]
    assert last.weights and last.gradients and last.features and last.val
    assert [a.module for a in last.activations][:2] == ["net.maxpool", "net.layer1.0"]  # inside the wrapper
    assert (tmp_path / "lightning.html").stat().st_size > 10_000


class Halving(Finetune):
    """The learning rate halves after every optimizer step (a per-step scheduler, as Lightning steps it)."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.08)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_each_step_records_the_learning_rate_it_trained_with(tmp_path: Path):
    train, val = digits()
    cb = SFTReport(probe=(val.tensors[0][:16], val.tensors[1][:16]), run_dir=tmp_path / "r")
    trainer(callbacks=[cb]).fit(Halving(), DataLoader(train, batch_size=BATCH))
    run = read_run(tmp_path / "r")
    lrs = [p.lr for e in run.epochs[1:] for p in e.steps]
    assert lrs == [0.08 * 0.5**k for k in range(2 * BATCHES)]  # steps 1..8 trained at 0.08, 0.04, ...
    assert [e.lr for e in run.epochs[1:]] == [0.08 * 0.5**3, 0.08 * 0.5**7]  # each epoch's last step's


def test_the_callback_leaves_the_training_unchanged_random_numbers_included(tmp_path: Path):
    """A shuffled training set: the recorder's evaluation must not draw from the generator the shuffling uses."""
    train, val = digits()
    finals = []
    for with_callback in (False, True):
        torch.manual_seed(7)
        cbs = (
            [
                SFTReport(
                    probe=(val.tensors[0][:16], val.tensors[1][:16]),
                    val_data=DataLoader(val, batch_size=32),
                    run_dir=tmp_path / "r",
                )
            ]
            if with_callback
            else []
        )
        module = Finetune()
        torch.manual_seed(7)
        trainer(callbacks=cbs).fit(module, DataLoader(train, batch_size=BATCH, shuffle=True))
        finals.append(module.net.fc.weight.detach().clone())
    assert torch.equal(finals[0], finals[1])


def test_a_finished_run_is_left_alone_by_a_later_failure_on_the_same_callback(tmp_path: Path):
    train, val = digits()
    cb = SFTReport(probe=(val.tensors[0][:16], val.tensors[1][:16]), run_dir=tmp_path / "r")
    data = DataLoader(train, batch_size=BATCH)
    trainer(callbacks=[cb]).fit(Finetune(), data)
    with pytest.raises(UserError, match="already holds"):  # the same run directory again: refused at fit start
        trainer(callbacks=[cb]).fit(Finetune(), data)
    cb.run_dir = tmp_path / "r2"  # a second fit into a run directory of its own, which fails
    with pytest.raises(RuntimeError, match="a stand-in"):
        trainer(callbacks=[cb]).fit(FailsInEpochTwo(), data)
    run, second = read_run(tmp_path / "r"), read_run(tmp_path / "r2")
    assert run.info.status == "completed" and [e.epoch for e in run.epochs] == [0, 1, 2]
    assert second.info.status == "failed" and [e.epoch for e in second.epochs] == [0, 1]


# ---------------------------------------------------------------------------- metrics the module logs


class LogsMetrics(Finetune):
    """Logs val_loss and val_acc in its validation loop and train_loss per epoch, and writes down by hand what
    each epoch's validation and training saw (the sanity check's validation apart)."""

    def __init__(self):
        super().__init__()
        self.val_seen: dict[int, list[tuple[float, int, int]]] = {}  # epoch (1-based) -> (loss × n, correct, n)
        self.train_seen: dict[int, list[tuple[float, int]]] = {}

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.train_seen.setdefault(self.current_epoch + 1, []).append((loss.item() * len(batch[1]), len(batch[1])))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        correct = (logits.argmax(1) == y).sum()
        self.log("val_loss", loss)
        self.log("val_acc", correct.float() / len(y))
        if not self.trainer.sanity_checking:
            self.val_seen.setdefault(self.current_epoch + 1, []).append((loss.item() * len(y), int(correct), len(y)))


def _mean(rows) -> float:
    return sum(r[0] for r in rows) / sum(r[-1] for r in rows)


def test_the_validation_metrics_the_module_logs_are_recorded_with_their_epoch(tmp_path: Path):
    """No val_data: the module's own validation is the run's. Epoch 0 holds nothing logged (the sanity check's
    values are not the pretrained model's full validation), epochs 1 and 2 what their validations logged."""
    train, val = digits()
    module = LogsMetrics()
    cb = SFTReport(probe=(val.tensors[0][:16], val.tensors[1][:16]), run_dir=tmp_path / "r", out=tmp_path / "r.html")
    trainer(callbacks=[cb]).fit(module, DataLoader(train, batch_size=BATCH), DataLoader(val, batch_size=BATCH))
    run = read_run(tmp_path / "r")
    assert run.epochs[0].logged == {} and all(e.val is None for e in run.epochs)
    for e in run.epochs[1:]:
        seen = module.val_seen[e.epoch]
        assert e.logged.keys() == {"val_loss", "val_acc"} and len(seen) == 2  # 64 images, 2 batches
        assert e.logged["val_loss"] == pytest.approx(_mean([(s[0], s[2]) for s in seen]), rel=1e-6)
        assert e.logged["val_acc"] == pytest.approx(sum(s[1] for s in seen) / 64, rel=1e-6)
    module.eval()  # the last epoch's validation saw the final model
    with torch.no_grad():
        logits = module(val.tensors[0])
    last = run.epochs[-1].logged
    assert last["val_loss"] == pytest.approx(F.cross_entropy(logits, val.tensors[1]).item(), rel=1e-5)
    assert last["val_acc"] == (logits.argmax(1) == val.tensors[1]).float().mean().item()
    html = (tmp_path / "r.html").read_text()
    assert "Metrics your training logged" in html and "val_acc" in html


def test_metrics_names_what_to_record_and_an_epoch_without_validation_records_no_stale_value(tmp_path: Path):
    train, val = digits()
    module = LogsMetrics()
    cb = SFTReport(
        probe=(val.tensors[0][:16], val.tensors[1][:16]),
        metrics=["val_acc", "train_loss", "nope"],
        run_dir=tmp_path / "r",
    )
    with pytest.warns(UserWarning, match=r"^SFTReport: the module never logged nope \(in `metrics`\)$"):
        trainer(callbacks=[cb], max_epochs=3, check_val_every_n_epoch=2).fit(
            module, DataLoader(train, batch_size=BATCH), DataLoader(val, batch_size=BATCH)
        )
    run = read_run(tmp_path / "r")
    assert [sorted(e.logged) for e in run.epochs] == [[], ["train_loss"], ["train_loss", "val_acc"], ["train_loss"]]
    assert sorted(module.val_seen) == [2]  # validated after epoch 2 only: epoch 3 does not repeat its value
    assert run.epochs[2].logged["val_acc"] == pytest.approx(sum(s[1] for s in module.val_seen[2]) / 64)
    for e in run.epochs[1:]:
        assert e.logged["train_loss"] == pytest.approx(_mean(module.train_seen[e.epoch]), rel=1e-6)


# ---------------------------------------------------------------------------- resuming from a checkpoint


class StatusSpy(pl.Callback):
    """Reads the run's status as each training epoch starts."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.seen = run_dir, []

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen.append(read_run(self.run_dir).info.status)


def _fit(
    run_dir: Path,
    epochs: int,
    ckpt_dir: Path | None = None,
    ckpt_path: Path | None = None,
    module: pl.LightningModule | None = None,
    **kw,
) -> tuple[SFTReport, StatusSpy]:
    """The default's fine-tuning with the callback (and its own evaluation), no shuffling: the same batches in
    the same order in every fit. `ckpt_dir`: a checkpoint at every epoch end, named after its epoch."""
    train, val = digits()
    cb = SFTReport(
        probe=(val.tensors[0][:32], val.tensors[1][:32]),
        val_data=DataLoader(val, batch_size=32),
        new_params={f"net.{n}" for n in Finetune().new},
        options=RecordOptions(image_every=2),
        run_dir=run_dir,
        **kw,
    )
    spy = StatusSpy(run_dir)
    callbacks: list[pl.Callback] = [cb, spy]
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1))
    trainer(callbacks=callbacks, max_epochs=epochs, enable_checkpointing=ckpt_dir is not None).fit(
        module or Finetune(), DataLoader(train, batch_size=BATCH), ckpt_path=ckpt_path
    )
    return cb, spy


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """3 epochs in one fit, a checkpoint at every epoch end (epoch=0.ckpt is saved after the run's epoch 1)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    _fit(root / "run", 3, ckpt_dir=root / "ckpt")
    return root


def test_a_fit_resumed_from_a_checkpoint_continues_its_run_as_if_never_interrupted(tmp_path: Path, uninterrupted):
    """A fit of 3 epochs fails in epoch 2; a new Trainer resumes it from epoch 1's checkpoint: one run directory
    with epochs 0–3 whose every number (the relative change from the original W₀, histograms, updates,
    gradients, activations, CKA, projections, evaluation, losses) and image equals the uninterrupted fit's;
    one report."""
    with pytest.raises(RuntimeError, match="a stand-in"):
        _fit(tmp_path / "run", 3, ckpt_dir=tmp_path / "ckpt", module=FailsInEpochTwo())
    assert read_run(tmp_path / "run").info.status == "failed"
    cb, spy = _fit(tmp_path / "run", 3, ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt", out=tmp_path / "r.html")
    assert spy.seen == ["running", "running"]  # epochs 2 and 3
    assert cb.recorder is None and cb.state_dict()["epoch"] == 3
    once, twice = read_run(uninterrupted / "run"), read_run(tmp_path / "run")
    assert [e.epoch for e in twice.epochs] == [0, 1, 2, 3] and [e.step for e in twice.epochs] == [0, 4, 8, 12]
    assert record_differences(once.epochs, twice.epochs, rel=1e-6, abs_tol=1e-12, skip=("timing",)) == []
    w0 = {s.name: s.ref_sq for s in once.epochs[0].weights}
    assert all(s.ref_sq == w0[s.name] and s.diff_sq > 0 and s.update_sq for s in twice.epochs[2].weights)
    for name in sorted(p.name for p in (uninterrupted / "run" / "assets").iterdir()):
        assert (tmp_path / "run" / "assets" / name).read_bytes() == (
            uninterrupted / "run" / "assets" / name
        ).read_bytes()
    assert twice.info.status == "completed" and twice.info.planned_epochs == 3
    assert twice.info.status_detail == (
        "resumed from a checkpoint after epoch 1; previous status: failed (RuntimeError in epoch 2: out of memory "
        "(a stand-in))"
    )
    assert not (tmp_path / "run" / SUPERSEDED_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "r.html", "run"]
    assert "resumed from a checkpoint after epoch 1" in (tmp_path / "r.html").read_text()


def test_a_resume_from_an_earlier_checkpoint_moves_the_later_epochs_aside(tmp_path: Path, uninterrupted):
    """The fit went on to epoch 3; resuming from the checkpoint of epoch 1 moves the lines of epochs 2 and 3
    to epochs.superseded.jsonl (not deleted), marks the run running again, and records them anew: equal,
    as the training is the same. The run directory was moved meanwhile: run_dir= says where it is now."""
    shutil.copytree(uninterrupted / "run", tmp_path / "moved")
    lines = (tmp_path / "moved" / EPOCHS_FILE).read_bytes().splitlines(keepends=True)
    spy_dir = tmp_path / "moved"
    cb, spy = _fit(spy_dir, 3, ckpt_path=uninterrupted / "ckpt" / "epoch=0.ckpt")
    assert spy.seen == ["running", "running"]
    assert (spy_dir / SUPERSEDED_FILE).read_bytes() == b"".join(lines[2:])
    run = read_run(spy_dir)
    assert [e.epoch for e in run.epochs] == [0, 1, 2, 3]
    old = [EpochSnapshot.model_validate_json(x) for x in lines[2:]]
    assert record_differences(old, run.epochs[2:], rel=1e-6, abs_tol=1e-12, skip=("timing",)) == []
    assert run.info.status == "completed" and run.info.status_detail == (
        "resumed from a checkpoint after epoch 1; epochs 2–3 recorded after that checkpoint were moved to "
        "epochs.superseded.jsonl; previous status: completed"
    )
    assert sorted(p.name for p in (spy_dir / "weights").iterdir()) == [
        "epoch_000.pt",
        "epoch_003.pt",
        "epoch_003.superseded.pt",
    ]
    assert cb.state_dict()["run_dir"] == str(spy_dir.resolve())
    assert read_run(uninterrupted / "run").epochs[-1].epoch == 3  # the original is untouched


def test_a_checkpoint_without_the_callbacks_state_or_whose_run_is_gone_is_refused_in_one_line(tmp_path: Path):
    train, val = digits()
    data = DataLoader(train, batch_size=BATCH)
    plain = trainer(max_epochs=1, limit_train_batches=1, enable_checkpointing=True, default_root_dir=tmp_path)
    plain.fit(Finetune(), data)
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    probe = (val.tensors[0][:8], val.tensors[1][:8])

    def refused(match: str, ckpt_path: Path, **kw) -> None:
        cb = SFTReport(probe=probe, **kw)
        with pytest.raises(UserError, match=match) as e:
            trainer(callbacks=[cb], max_epochs=2, limit_train_batches=1).fit(Finetune(), data, ckpt_path=ckpt_path)
        assert "\n" not in str(e.value)

    refused(
        r"^checkpoint .*\.ckpt holds no SFTReport state \(a fit without the callback saved it\)",
        ckpt,
        run_dir=tmp_path / "r",
    )
    assert not (tmp_path / "r").exists()
    cb = SFTReport(probe=probe, run_dir=tmp_path / "r")
    trainer(
        callbacks=[cb], max_epochs=1, limit_train_batches=1, enable_checkpointing=True, default_root_dir=tmp_path / "c"
    ).fit(Finetune(), data)
    ckpt = next((tmp_path / "c" / "checkpoints").glob("*.ckpt"))
    shutil.rmtree(tmp_path / "r")
    refused(
        r"^cannot continue the run of checkpoint .*: its run directory .*r is gone \(pass run_dir= if it moved\)$", ckpt
    )
    trainer(callbacks=[SFTReport(probe=probe, run_dir=tmp_path / "r")], max_epochs=1, limit_train_batches=1).fit(
        Finetune(), data
    )  # another run in its place
    refused(r"^cannot continue the run of checkpoint .*: .*r holds another run$", ckpt)
    assert [e.epoch for e in read_run(tmp_path / "r").epochs] == [0, 1]  # left as it was


@pytest.mark.parametrize("recorded", [True, False])
@pytest.mark.parametrize("saved", ["after validation", "at the last step"])
def test_a_checkpoint_saved_at_an_epochs_end_before_it_was_recorded_continues_after_that_epoch(
    tmp_path: Path, saved: str, recorded: bool
):
    """A checkpoint saved after an epoch's last step, before this callback recorded the epoch: by ModelCheckpoint
    after a validation run every 2nd epoch (Lightning then runs that epoch's end again when resuming), or at
    a step that ends an epoch (Lightning goes on with the next epoch). The fit that saved it went on to record
    the epoch (its line is kept), or died first (the epoch is recorded at the resume, without its training
    loss); either way the run goes on after that epoch, recording each epoch once."""
    train, val = digits()
    probe = (val.tensors[0][:16], val.tensors[1][:16])
    validating = saved == "after validation"
    data = [DataLoader(train, batch_size=BATCH)] + ([DataLoader(val, batch_size=BATCH)] if validating else [])
    settings = {"check_val_every_n_epoch": 2} if validating else {}
    every = {} if validating else {"every_n_train_steps": BATCHES}
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}-{step}", save_top_k=-1, **every)
    cb = SFTReport(probe=probe, run_dir=tmp_path / "r")
    trainer(callbacks=[cb, ckpt], enable_checkpointing=True, **settings).fit(LogsMetrics(), *data)
    name = "epoch=1-step=8.ckpt" if validating else "epoch=0-step=4.ckpt"
    state = torch.load(tmp_path / "ckpt" / name, weights_only=False)["callbacks"]["SFTReport"]
    saved_after = 2 if validating else 1  # the epoch whose end the checkpoint holds
    assert state["epoch"] == saved_after - 1  # not recorded yet when it was saved
    lines = (tmp_path / "r" / EPOCHS_FILE).read_bytes().splitlines(keepends=True)
    if not recorded:
        (tmp_path / "r" / EPOCHS_FILE).write_bytes(b"".join(lines[:saved_after]))
    cb = SFTReport(probe=probe, run_dir=tmp_path / "r")
    trainer(callbacks=[cb], max_epochs=3, **settings).fit(LogsMetrics(), *data, ckpt_path=tmp_path / "ckpt" / name)
    run = read_run(tmp_path / "r")
    assert [(e.epoch, e.step) for e in run.epochs] == [(0, 0), (1, 4), (2, 8), (3, 12)]
    assert (tmp_path / "r" / EPOCHS_FILE).read_bytes().startswith(b"".join(lines[: saved_after + recorded]))
    again = run.epochs[saved_after]
    assert (again.train_loss is None) == (not recorded) and again.weights and run.epochs[-1].train_loss is not None
    detail = run.info.status_detail
    if recorded:
        assert detail.startswith(f"resumed from a checkpoint after epoch {saved_after};")
    else:
        assert detail.startswith(f"resumed from a checkpoint after epoch {saved_after - 1};")


def test_a_checkpoint_loaded_by_validate_does_not_make_a_later_fit_resume(tmp_path: Path, uninterrupted):
    train, val = digits()
    before = (uninterrupted / "run" / EPOCHS_FILE).read_bytes()
    cb = SFTReport(probe=(val.tensors[0][:16], val.tensors[1][:16]), run_dir=tmp_path / "new")
    ckpt = uninterrupted / "ckpt" / "epoch=0.ckpt"
    trainer(callbacks=[cb]).validate(LogsMetrics(), DataLoader(val, batch_size=BATCH), ckpt_path=ckpt)
    trainer(callbacks=[cb]).fit(Finetune(), DataLoader(train, batch_size=BATCH))
    assert [e.epoch for e in read_run(tmp_path / "new").epochs] == [0, 1, 2]
    assert (uninterrupted / "run" / EPOCHS_FILE).read_bytes() == before


def test_an_fsdp2_fit_records_every_number_of_the_same_fit_in_one_process(tmp_path: Path):
    """Lightning's ModelParallelStrategy with fully_shard (FSDP2) over 2 CPU processes, against the same linear
    probe in one process (tests/helpers/lightning_fsdp.py): every recorded number equal to 1e-5, counts
    exactly; the second process's empty validation batch lets it join the writer's sharded forwards."""
    script = Path(__file__).parent / "helpers" / "lightning_fsdp.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(script.parent), *sys.path])}
    for name, devices in (("one", "1"), ("fsdp", "2")):
        r = subprocess.run(
            [sys.executable, str(script), str(tmp_path / name), devices],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
    one, fsdp = (
        [json.loads(line) for line in (tmp_path / n / "epochs.jsonl").read_text().splitlines()] for n in ("one", "fsdp")
    )
    assert [e["epoch"] for e in fsdp] == [0, 1, 2]
    assert record_differences(one, fsdp) == []
    run = read_run(tmp_path / "fsdp")
    assert run.info.environment.sharding == "fsdp" and run.info.environment.world_size == 2
    assert all(e.val is not None and e.val.count == 64 for e in run.epochs)
    assert [g.samples for g in run.epochs[-1].gradients] == [3, 3]  # the head's weight and bias, every step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsdp", "fsdp.html", "one", "one.html"]


def test_lightnings_fsdp1_strategy_is_refused_in_one_line_at_fit_start(tmp_path: Path):
    """Lightning runs FSDPStrategy on GPUs only, so the callback's fit start is called here by hand with it."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    _, val = digits()
    cb = SFTReport(probe=(val.tensors[0][:8], val.tensors[1][:8]), run_dir=tmp_path / "run")
    with pytest.raises(UserError) as e:
        cb.on_fit_start(SimpleNamespace(strategy=FSDPStrategy(), ckpt_path=None), Finetune())  # type: ignore[arg-type]
    assert str(e.value) == (
        "SFTReport cannot read parameters under Lightning's FSDPStrategy (FSDP1 flattens the parameters into "
        "per-process shards that are not DTensors); sharded training is recorded under ModelParallelStrategy with "
        "fully_shard (FSDP2)"
    )
    assert not (tmp_path / "run").exists() and cb.recorder is None
