"""The Lightning callback on a real Lightning Trainer (CPU, no download): the embedded default's pretrained
digits_resnet fine-tuned for 2 short epochs, against the same training written as an own loop."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.lightning_module import BATCH, Finetune, digits
from torch.utils.data import DataLoader

from sftreport.errors import UserError
from sftreport.integrations.lightning import SFTReport
from sftreport.record.recorder import Recorder
from sftreport.store import read_run

BATCHES = 4


def trainer(**kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=BATCHES,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
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
    script = Path(__file__).parent / "helpers" / "lightning_ddp.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(script.parent), *sys.path])}
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "r.md")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = read_run(tmp_path / "run")
    assert run.info.status == "completed" and [e.epoch for e in run.epochs] == [0, 1, 2]
    assert all(e.val is not None and e.val.count == 64 for e in run.epochs)  # not 128: each batch once
    assert run.info.dataset.val_size == 64
    assert [e.step for e in run.epochs] == [0, 3, 6]
    assert (tmp_path / "r.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md", "run"]  # rank 1 wrote nothing


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
