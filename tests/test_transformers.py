"""The Hugging Face Trainer callback on a real Trainer (CPU, no download): a tiny ViTForImageClassification
built from a ViTConfig, with a new head, fine-tuned on digits images fed as dict samples."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.hf_vit import accuracy, datasets, digit_images, tiny_vit, training_args
from torch.utils.data import DataLoader, TensorDataset
from transformers import Trainer, TrainerCallback

from sftreport.config import RecordOptions
from sftreport.errors import UserError
from sftreport.integrations.transformers import EvalBatches, SFTReportCallback, record_failures
from sftreport.store import read_run

ROOT = Path(__file__).resolve().parents[1]


def probe(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digit_images()
    return x[1400 : 1400 + n], y[1400 : 1400 + n]


def test_a_trainer_fit_records_every_epoch_its_evaluation_its_losses_and_the_trained_weights(tmp_path: Path):
    """2 epochs of 256 images, batch 32, gradient accumulation 2: 4 optimizer steps an epoch. Dropout on, so a
    second fit without the callback shows the callback left the training's random numbers alone."""
    train, val = datasets()
    model = tiny_vit(dropout=0.1)
    w0 = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
    new = [n for n in w0 if n.startswith("classifier.")]
    cb = SFTReportCallback(
        probe=probe(),
        val_data=val,  # the Trainer's eval dataset of dict samples, as it is
        run_dir=tmp_path / "run",
        out=tmp_path / "r.html",
        new_params=new,
        options=RecordOptions(grad_every=1),
    )
    args = training_args(tmp_path / "hf", gradient_accumulation_steps=2, logging_steps=1)
    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=val, compute_metrics=accuracy, callbacks=[cb]
    )
    trainer.train()

    run = read_run(tmp_path / "run")
    assert run.info.status == "completed" and [e.epoch for e in run.epochs] == [0, 1, 2]
    assert run.info.name == "ViTForImageClassification (Hugging Face Trainer)" and run.info.planned_epochs == 2
    assert (run.info.dataset.train_size, run.info.dataset.val_size) == (256, 128)
    assert [e.step for e in run.epochs] == [0, 4, 8]

    # the Trainer's own numbers, as it logged them: the evaluation at each epoch end, the loss of every step
    history = trainer.state.log_history
    evals = [h for h in history if "eval_loss" in h]
    assert [h["epoch"] for h in evals] == [1.0, 2.0]
    for e, h in zip(run.epochs[1:], evals):
        assert e.logged == {"eval_loss": h["eval_loss"], "eval_accuracy": h["eval_accuracy"]}
        assert e.val is not None and e.val.count == 128  # the recorder's own evaluation of the same images
        assert e.val.loss == pytest.approx(h["eval_loss"], rel=1e-5)
        assert e.val.accuracy == pytest.approx(h["eval_accuracy"], abs=1e-9)
    trainer_losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    steps = [p for e in run.epochs[1:] for p in e.steps]
    assert [p.step for p in steps] == list(range(1, 9))
    # (transformers 4.x logs the loss rounded to 4 decimals)
    assert [p.loss for p in steps] == pytest.approx([trainer_losses[s] for s in range(1, 9)], rel=1e-5, abs=5e-5)
    assert [p.lr for p in steps] == pytest.approx([5e-3 * (1 - k / 8) for k in range(8)])  # linear decay
    for e in run.epochs[1:]:
        assert e.train_loss == pytest.approx(np.mean([p.loss for p in e.steps]), rel=1e-6)
        assert e.train_accuracy is not None
        assert {g.samples for g in e.gradients} == {4}  # grad_every=1: one sample per optimizer step

    # the weights at the last epoch are the trained model's
    last = {w.name: w for w in run.epochs[-1].weights}
    assert {n for n, w in last.items() if w.new} == set(new) == {"classifier.weight", "classifier.bias"}
    encoder = next(n for n in w0 if ".0." in n and w0[n].ndim == 2)  # the first encoder layer's first matrix
    for name in ("classifier.weight", encoder):
        w = dict(model.named_parameters())[name].detach().double().numpy()
        change = np.linalg.norm(w - w0[name]) / np.linalg.norm(w0[name])
        assert change > 1e-3
        assert last[name].rel_change == pytest.approx(change, rel=1e-5)
        assert last[name].stats.mean == pytest.approx(w.mean(), rel=1e-5, abs=1e-9)
    html = (tmp_path / "r.html").read_text()
    assert "ViTForImageClassification (Hugging Face Trainer)" in html and "completed" in html
    assert encoder.rpartition(".")[0] in html and "classifier.weight" in html  # the layers' weights drawn
    assert "Metrics your training logged" in html

    plain = tiny_vit(dropout=0.1)
    Trainer(model=plain, args=args, train_dataset=train, eval_dataset=val, compute_metrics=accuracy).train()
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(a, b), name


class RaiseAtStep(TrainerCallback):
    def __init__(self, step: int, error: BaseException):
        self.step, self.error = step, error
        self.steps_begun = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps_begun += 1
        if state.global_step == self.step:
            raise self.error


def test_a_probe_the_model_cannot_take_or_an_unwritable_out_fails_at_train_begin(tmp_path: Path):
    train, _ = datasets(64)
    x, y = probe(4)
    counter = RaiseAtStep(-1, RuntimeError())
    bad = SFTReportCallback(probe=(x[:, :1], y), run_dir=tmp_path / "bad")  # one channel: the model takes three
    args = training_args(tmp_path / "hf", eval_strategy="no")
    with pytest.raises(UserError, match=r"cannot run on inputs of shape \[1, 16, 16\]") as e:
        Trainer(model=tiny_vit(), args=args, train_dataset=train, callbacks=[bad, counter]).train()
    assert "\n" not in str(e.value) and counter.steps_begun == 0 and not (tmp_path / "bad").exists()
    (tmp_path / "file").write_text("")
    unwritable = SFTReportCallback(probe=(x, y), out=tmp_path / "file" / "r.html", run_dir=tmp_path / "r")
    with pytest.raises(UserError, match="is not a directory"):
        Trainer(model=tiny_vit(), args=args, train_dataset=train, callbacks=[unwritable, counter]).train()
    assert counter.steps_begun == 0 and not (tmp_path / "r").exists()  # refused before anything was written


def test_a_train_that_raises_keeps_its_finished_epochs_and_is_marked_failed_inside_record_failures(tmp_path: Path):
    """256 images, batch 32: 8 steps an epoch; the error comes in epoch 2. Without `record_failures` the run
    stays *running*; with it, *failed* and rendered. Label smoothing takes the labels away from the model:
    the steps are counted without a loss of the callback's own, and the Trainer's logged loss is kept."""
    train, val = datasets()
    args = training_args(tmp_path / "hf", label_smoothing_factor=0.1, logging_steps=2)
    for wrapped in (False, True):
        cb = SFTReportCallback(probe=probe(16), run_dir=tmp_path / f"r{wrapped}", out=tmp_path / f"r{wrapped}.md")
        trainer = Trainer(
            model=tiny_vit(),
            args=args,
            train_dataset=train,
            eval_dataset=val,
            callbacks=[cb, RaiseAtStep(10, RuntimeError("out of memory (a stand-in)"))],
        )
        with pytest.raises(RuntimeError, match="a stand-in"):
            if wrapped:
                with record_failures(cb):
                    trainer.train()
            else:
                trainer.train()
        run = read_run(tmp_path / f"r{wrapped}")
        assert [e.epoch for e in run.epochs] == [0, 1] and run.epochs[1].step == 8
        assert run.epochs[1].train_loss is None and run.epochs[1].steps == []
        logged_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and h["step"] <= 8]
        assert run.epochs[1].logged["loss"] == pytest.approx(np.mean(logged_losses))
        assert set(run.epochs[1].logged) == {"loss", "eval_loss"}  # no compute_metrics here
    assert json.loads((tmp_path / "rFalse" / "run.json").read_text())["status"] == "running"
    assert not (tmp_path / "rFalse.md").exists()
    run = read_run(tmp_path / "rTrue")
    assert run.info.status == "failed"
    assert run.info.status_detail == "RuntimeError in epoch 2: out of memory (a stand-in)"
    assert "failed" in (tmp_path / "rTrue.md").read_text()


def test_a_two_process_fit_writes_one_run_directory_with_the_trainers_losses_and_each_image_evaluated_once(
    tmp_path: Path,
):
    script = ROOT / "tests" / "helpers" / "hf_ddp.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(script.parent), *sys.path])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)]
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run(
        [*cmd, str(tmp_path / "run"), str(tmp_path / "r.md"), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = read_run(tmp_path / "run")
    assert run.info.status == "completed" and run.info.environment.world_size == 2
    assert [e.step for e in run.epochs] == [0, 8, 16] and run.info.dataset.val_size == 128
    assert all(e.val is not None and e.val.count == 128 for e in run.epochs)  # not 256: each batch once
    history = json.loads((out / "history.json").read_text())
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    steps = [p for e in run.epochs[1:] for p in e.steps]
    assert [p.loss for p in steps] == pytest.approx([losses[s] for s in range(1, 17)], rel=1e-5, abs=5e-5)
    evals = [h for h in history if "eval_loss" in h]
    assert [e.logged["eval_accuracy"] for e in run.epochs[1:]] == [h["eval_accuracy"] for h in evals]
    assert (tmp_path / "r.md").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.md", "run"]


def test_eval_batches_takes_dict_samples_dict_batches_and_pairs_and_shares_batches_between_processes():
    x, y = probe(10)
    _, val = datasets(val_size=10)
    from_samples = list(EvalBatches(val, batch_size=4))
    from_pairs = list(EvalBatches(DataLoader(TensorDataset(x, y), batch_size=4)))
    from_dicts = list(EvalBatches(DataLoader(val, batch_size=4)))
    for batches in (from_samples, from_pairs, from_dicts):
        assert [len(b[1]) for b in batches] == [4, 4, 2]
        assert torch.equal(torch.cat([b[0] for b in batches]), x) and torch.equal(torch.cat([b[1] for b in batches]), y)
    shared = EvalBatches(val, batch_size=4)
    assert [len(b) for _, b in shared.share(0, 2)] == [4, 2] and [len(b) for _, b in shared.share(1, 2)] == [4]
    assert len(EvalBatches(val).dataset) == 10  # the validation size, for run.json
    with pytest.raises(UserError, match=r"hold \['labels', 'pixel_values'\], not 'pixel_values' and 'label'"):
        next(iter(EvalBatches(val, labels="label")))


def test_importing_the_integration_without_transformers_names_the_extra_in_one_line():
    code = "import sys; sys.modules['transformers'] = None; import sftreport.integrations.transformers"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == (
        "ImportError: sftreport.integrations.transformers needs Hugging Face transformers: "
        "pip install 'sftreport[transformers]'"
    )


def test_readme_shows_the_trainer_example_verbatim_with_at_most_four_added_lines():
    code = (ROOT / "examples" / "hf_trainer.py").read_text()
    body = code.split('"""', 2)[2].lstrip("\n")
    m = re.search(
        r"<!-- example: examples/hf_trainer.py -->\s*```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S
    )
    assert m and m.group(1) == body
    assert 1 <= sum(1 for line in body.splitlines() if "# sftreport" in line) <= 4


@pytest.mark.slow
def test_the_trainer_example_runs_and_records_every_epoch(tmp_path: Path):
    example = ROOT / "examples" / "hf_trainer.py"
    r = subprocess.run([sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()  # the recorder's default: runs/<date>-<time>-recorder
    run = read_run(run_dir)
    assert [e.epoch for e in run.epochs] == [0, 1, 2] and run.info.status == "completed"
    last = run.epochs[-1]
    assert last.weights and last.gradients and last.features and last.val and last.activations
    assert set(last.logged) == {"eval_loss", "eval_accuracy"}
    assert {w.name for w in last.weights if w.new} == {"classifier.weight", "classifier.bias"}
    assert (tmp_path / "vit.html").stat().st_size > 10_000
