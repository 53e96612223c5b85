"""An own loop resumed from its checkpoint with `Recorder(..., resume_after=k)` continues the same run directory
and records exactly what the loop never interrupted records (every number: weights against the original W₀,
histograms, updates, gradients, activations, CKA, projections, evaluation); lines recorded after the checkpoint
are moved aside, not lost; a run that cannot be continued is refused in one line before anything changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support import record_differences
from torch import nn

from sftreport.config import RecordOptions
from sftreport.errors import UserError
from sftreport.record.recorder import Recorder, RunDescription
from sftreport.schema import EpochSnapshot
from sftreport.store import EPOCHS_FILE, SUPERSEDED_FILE, read_run


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)
    )


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.arange(n) % 3


PROBE, VAL, TRAIN = _data(6, 1), _data(7, 2), _data(9, 3)


def _recorder(model: nn.Module, run_dir: Path, save_weights: str = "last", **kw) -> Recorder:
    options = RecordOptions(probe_size=8, hist_bins=8, grad_every=2, image_every=2, save_weights=save_weights)
    return Recorder(
        model,
        probe=PROBE,
        val_data=[(VAL[0][:4], VAL[1][:4]), (VAL[0][4:], VAL[1][4:])],
        run_dir=run_dir,
        options=options,
        run=RunDescription(name="tiny", planned_epochs=3),
        **kw,
    )


def _train(model: nn.Module, opt: torch.optim.Optimizer, rec: Recorder, epochs: range) -> None:
    for _ in epochs:
        for start in (0, 3, 6):  # three steps an epoch, the same batches every epoch
            x, y = TRAIN[0][start : start + 3], TRAIN[1][start : start + 3]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss, logits, y, lr=0.3)
        rec.epoch_end(logged={"my_metric": loss.item()})


def _start(run_dir: Path, epochs: int, save_weights: str = "last") -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    rec = _recorder(model, run_dir, save_weights)
    _train(model, opt, rec, range(epochs))
    rec.finish()
    return model, opt


def _restart(
    model: nn.Module, opt: torch.optim.Optimizer, run_dir: Path, after: int, to: int, save_weights: str = "last"
):
    """A new process: a new model and optimizer loaded from the checkpoint (here: the objects' states)."""
    model2 = _model()
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.3, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    rec = _recorder(model2, run_dir, save_weights, resume_after=after)
    running = read_run(run_dir).info
    _train(model2, opt2, rec, range(after, to))
    rec.finish()
    return running


@pytest.mark.parametrize("save_weights", ["last", "every"])
def test_a_resumed_loop_records_what_the_uninterrupted_loop_records(tmp_path: Path, save_weights: str):
    _start(tmp_path / "once", 3, save_weights)
    model, opt = _start(tmp_path / "twice", 1, save_weights)
    running = _restart(model, opt, tmp_path / "twice", 1, 3, save_weights)
    assert (
        running.status == "running"
        and running.status_detail == "resumed from a checkpoint after epoch 1; previous status: completed"
    )
    once, twice = read_run(tmp_path / "once"), read_run(tmp_path / "twice")
    assert [e.epoch for e in twice.epochs] == [0, 1, 2, 3] and [e.step for e in twice.epochs] == [0, 3, 6, 9]
    assert record_differences(once.epochs, twice.epochs, rel=1e-6, abs_tol=1e-12, skip=("timing",)) == []
    last = twice.epochs[-1]
    assert all(w.update_sq is not None for w in last.weights) and last.cka and last.images is not None
    assert twice.info.status == "completed" and twice.info.planned_epochs == 3
    assert twice.info.status_detail == "resumed from a checkpoint after epoch 1; previous status: completed"
    assert twice.info.duration_s >= sum(e.timing.train_s for e in twice.epochs)
    assert not (tmp_path / "twice" / SUPERSEDED_FILE).exists()
    # the images too (feature maps show the channels chosen at epoch 0)
    assets = sorted(p.name for p in (tmp_path / "once" / "assets").iterdir())
    assert len(assets) == 9 and assets == sorted(p.name for p in (tmp_path / "twice" / "assets").iterdir())
    for name in assets:
        assert (tmp_path / "once" / "assets" / name).read_bytes() == (tmp_path / "twice" / "assets" / name).read_bytes()
    weights = sorted(p.name for p in (tmp_path / "twice" / "weights").glob("*"))
    assert weights == [f"epoch_00{e}.pt" for e in ((0, 3) if save_weights == "last" else (0, 1, 2, 3))]


def test_lines_recorded_after_the_checkpoint_are_moved_aside_and_recorded_again(tmp_path: Path):
    run_dir = tmp_path / "r"
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    rec = _recorder(model, run_dir)
    _train(model, opt, rec, range(1))
    checkpoint = (
        {k: v.clone() for k, v in model.state_dict().items()},
        {"state": {k: {"momentum_buffer": v["momentum_buffer"].clone()} for k, v in opt.state_dict()["state"].items()}},
    )
    _train(model, opt, rec, range(1, 3))  # the fit went on past the checkpoint, then died (no finish)
    lines = (run_dir / EPOCHS_FILE).read_bytes().splitlines(keepends=True)
    (run_dir / EPOCHS_FILE).open("ab").write(b'{"epoch": 4, "st')  # and died writing a line

    model2 = _model()
    model2.load_state_dict(checkpoint[0])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.3, momentum=0.9)
    opt2.load_state_dict({**opt.state_dict(), "state": checkpoint[1]["state"]})
    rec2 = _recorder(model2, run_dir, resume_after=1)
    info = read_run(run_dir).info
    assert info.status == "running" and info.status_detail == (
        f"resumed from a checkpoint after epoch 1; epochs 2–3 recorded after that checkpoint were moved to {SUPERSEDED_FILE}"
    )
    assert (run_dir / SUPERSEDED_FILE).read_bytes() == b"".join(lines[2:]) + b'{"epoch": 4, "st\n'
    assert (run_dir / EPOCHS_FILE).read_bytes() == b"".join(lines[:2])
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == ["epoch_000.pt", "epoch_003.superseded.pt"]
    _train(model2, opt2, rec2, range(1, 3))
    rec2.finish("interrupted", "stopped by hand")
    run = read_run(run_dir)
    assert [e.epoch for e in run.epochs] == [0, 1, 2, 3]
    moved = [EpochSnapshot.model_validate_json(line) for line in lines[2:]]
    # the same training again: the same numbers
    assert record_differences(moved, run.epochs[2:], rel=1e-6, abs_tol=1e-12, skip=("timing",)) == []
    assert run.info.status_detail.startswith("stopped by hand; resumed from a checkpoint after epoch 1; epochs 2–3")
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == [
        "epoch_000.pt",
        "epoch_003.pt",
        "epoch_003.superseded.pt",
    ]


def test_a_resume_within_an_epoch_counts_steps_from_the_checkpoint(tmp_path: Path):
    model, opt = _start(tmp_path / "r", 1)
    rec = _recorder(model, tmp_path / "r", resume_after=1, resume_step=5)
    assert rec.global_step == 5 and rec.epoch == 1
    assert read_run(tmp_path / "r").info.status_detail == (
        "resumed from a checkpoint after epoch 1; at step 5, within epoch 2 (its training metrics cover the rest); "
        "previous status: completed"
    )
    _train(model, opt, rec, range(1, 2))
    assert read_run(tmp_path / "r").epochs[-1].step == 8


def test_a_run_that_cannot_be_continued_is_refused_in_one_line_before_anything_changes(tmp_path: Path):
    model, _ = _start(tmp_path / "r", 2)
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}

    def refused(match: str, run_dir: Path | None = tmp_path / "r", m: nn.Module = model, **kw) -> None:
        with pytest.raises(UserError, match=match) as e:
            _recorder(m, run_dir, **kw) if run_dir else Recorder(m, probe=PROBE, resume_after=1)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)

    refused("^resume_after needs the run_dir of the run to continue$", None)
    refused(r"cannot continue the run in .*gone: the directory is gone$", tmp_path / "gone", resume_after=1)
    refused(r"after epoch 3: it recorded epochs 0–2$", resume_after=3)
    refused(r"at step 2: its epoch 1 ended at step 3$", resume_after=1, resume_step=2)
    wider = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)
    )
    refused(
        r"the model differs from the one it started with \(0.weight: \[3, 1, 3, 3\], was shape \[2, 1, 3, 3\]\)$",
        m=wider,
        resume_after=1,
    )
    with pytest.raises(UserError, match="the probe set's images differ"):
        Recorder(model, probe=(PROBE[0] + 1, PROBE[1]), run_dir=tmp_path / "r", resume_after=1)
    with pytest.raises(UserError, match=r"it was recorded with a histogram bin count of 8, not 32$"):
        Recorder(model, probe=PROBE, run_dir=tmp_path / "r", resume_after=1)
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before
    _start(tmp_path / "none", 1, save_weights="none")
    refused(
        r"it kept no pretrained weights to measure from \(it was recorded with save_weights='none'\)$",
        tmp_path / "none",
        resume_after=1,
    )
    shutil.move(tmp_path / "r" / "weights" / "epoch_000.pt", tmp_path / "w0.pt")
    refused(r"weights/epoch_000.pt, the pretrained weights it is measured from, is gone$", resume_after=1)
    (tmp_path / "r" / "reference.pt").unlink()
    refused(r"it has no reference.pt", resume_after=1)
    assert (tmp_path / "r" / EPOCHS_FILE).read_bytes() == before[tmp_path / "r" / EPOCHS_FILE]


def test_a_recorder_without_probes_and_a_non_writing_process_resume_too(tmp_path: Path):
    model = _model()
    off = RecordOptions(enabled=False)
    rec = Recorder(model, probe=PROBE, run_dir=tmp_path / "off", options=off)
    rec.step(torch.tensor(1.0))
    rec.epoch_end()
    rec.finish()
    again = Recorder(model, probe=PROBE, run_dir=tmp_path / "off", options=off, resume_after=1)
    again.step(torch.tensor(0.5))
    assert again.epoch_end().epoch == 2
    with pytest.raises(UserError, match=r"with probes: it was recorded without them$"):
        Recorder(model, probe=PROBE, run_dir=tmp_path / "off", resume_after=2)
    other = Recorder(model, probe=PROBE, run_dir=tmp_path / "nowhere", writer=False, resume_after=4, resume_step=9)
    assert (other.epoch, other.global_step, other.info) == (4, 9, None) and not (tmp_path / "nowhere").exists()
    assert other.epoch_end().epoch == 5
