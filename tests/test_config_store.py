"""RunConfig (TOML + flags) and the run directory (atomic writes, validated reads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftreport.config import RunConfig, build_config
from sftreport.errors import RunDirError, UserError
from sftreport.schema import DatasetInfo, Environment, EpochSnapshot, RunInfo, json_schema
from sftreport.store import EPOCHS_FILE, RunWriter, read_run


def test_defaults_are_the_embedded_default_run():
    cfg = RunConfig()
    assert (cfg.model, cfg.weights, cfg.dataset, cfg.strategy) == ("digits_resnet", "DEFAULT", "digits", "full")


def test_flags_override_the_toml_file_and_record_tables_merge(tmp_path: Path):
    f = tmp_path / "run.toml"
    f.write_text('model = "resnet18"\nepochs = 3\nlr = 0.5\n[record]\nprobe_size = 64\nhist_bins = 16\n')
    cfg = build_config(f, {"epochs": 7, "record": {"hist_bins": 8}})
    assert (cfg.model, cfg.epochs, cfg.lr) == ("resnet18", 7, 0.5)
    assert (cfg.record.probe_size, cfg.record.hist_bins) == (64, 8)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("epochs = -1\n", "epochs"),
        ("optimiser = 'sgd'\n", "optimiser"),  # a typo is refused, not ignored
        ("strategy = 'freeze'\n", "strategy"),
        ("[record]\nprobe_size = 1\n", "record.probe_size"),
        ("epochs = \n", "not valid TOML"),
    ],
)
def test_bad_config_files_give_one_line_naming_the_field(tmp_path: Path, text: str, needle: str):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        build_config(f, {})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(UserError, match="config file not found"):
        build_config(tmp_path / "nope.toml", {})


def _info() -> RunInfo:
    return RunInfo(
        name="t",
        started_at="2026-01-01T00:00:00+00:00",
        model="m",
        weights="w",
        strategy="full",
        dataset=DatasetInfo(name="d", classes=["a", "b"], train_size=1, val_size=1, image_size=8),
        environment=Environment(python="3", platform="p", sftreport="0", device="cpu"),
    )


def test_run_directory_round_trip_and_nan_survives(tmp_path: Path):
    w = RunWriter(tmp_path / "run")
    w.write_run(_info())
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    w.append_epoch(EpochSnapshot(epoch=1, step=5, train_loss=float("nan")))
    run = read_run(tmp_path / "run")
    assert [e.epoch for e in run.epochs] == [0, 1]
    assert run.epochs[1].train_loss != run.epochs[1].train_loss  # NaN kept: a diverged run's evidence
    assert run.info.name == "t"


def test_a_broken_line_is_reported_with_file_and_line_number(tmp_path: Path):
    w = RunWriter(tmp_path / "run")
    w.write_run(_info())
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    with open(tmp_path / "run" / EPOCHS_FILE, "a") as f:
        f.write('{"epoch": 1, "step": "many"}\n')
    with pytest.raises(RunDirError) as e:
        read_run(tmp_path / "run")
    assert f"{EPOCHS_FILE}:2:" in str(e.value) and "step" in str(e.value)


def test_an_unfinished_last_line_is_left_out_and_said_not_fatal(tmp_path: Path):
    """A crash mid-append leaves a last line without its newline: the finished epochs stay readable."""
    w = RunWriter(tmp_path / "run")
    w.write_run(_info())
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    w.append_epoch(EpochSnapshot(epoch=1, step=3))
    with open(tmp_path / "run" / EPOCHS_FILE, "a") as f:
        f.write('{"epoch": 2, "st')
    run = read_run(tmp_path / "run")
    assert [e.epoch for e in run.epochs] == [0, 1]
    assert run.dropped and "16 bytes" in run.dropped and "2 complete" in run.dropped
    # a complete but broken line is still an error: that is damage, not an unfinished write
    with open(tmp_path / "run" / EPOCHS_FILE, "a") as f:
        f.write("oops\n")
    with pytest.raises(RunDirError, match=f"{EPOCHS_FILE}:3:"):
        read_run(tmp_path / "run")


def test_an_append_the_disk_refuses_half_way_is_undone(tmp_path: Path, monkeypatch):
    """The disk takes part of the line, then fails: the file goes back to its last complete line."""
    import errno
    import os

    from sftreport.errors import StorageError

    w = RunWriter(tmp_path / "run")
    w.write_run(_info())
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    w.append_epoch(EpochSnapshot(epoch=1, step=3))
    path = tmp_path / "run" / EPOCHS_FILE
    before = path.read_bytes()
    real_write = os.write
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])  # a short write ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageError) as e:
        w.append_epoch(EpochSnapshot(epoch=2, step=6))
    monkeypatch.setattr(os, "write", real_write)
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert "No space left on device" in str(e.value) and "epochs 0–1 are kept" in str(e.value)
    run = read_run(tmp_path / "run")
    assert [x.epoch for x in run.epochs] == [0, 1] and run.dropped is None
    w.append_epoch(EpochSnapshot(epoch=2, step=6))  # space again: the run can go on
    assert [x.epoch for x in read_run(tmp_path / "run").epochs] == [0, 1, 2]


def test_appends_are_fsynced(tmp_path: Path, monkeypatch):
    import os

    w = RunWriter(tmp_path / "run")
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    assert synced, "an epoch's line must reach the disk before the next epoch starts"


def test_duplicate_epochs_are_refused(tmp_path: Path):
    w = RunWriter(tmp_path / "run")
    w.write_run(_info())
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    w.append_epoch(EpochSnapshot(epoch=1, step=3))
    w.append_epoch(EpochSnapshot(epoch=1, step=3))
    with pytest.raises(RunDirError, match="repeated"):
        read_run(tmp_path / "run")


def test_a_second_run_never_appends_to_a_finished_one(tmp_path: Path):
    w = RunWriter(tmp_path / "run")
    w.write_run(_info())
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    with pytest.raises(RunDirError, match="already holds a run"):
        RunWriter(tmp_path / "run")


def test_newer_schema_versions_are_refused(tmp_path: Path):
    w = RunWriter(tmp_path / "run")
    info = json.loads(_info().model_dump_json())
    info["schema_version"] = 99
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunDirError, match="newer"):
        read_run(tmp_path / "run")
    del w


def test_asset_paths_cannot_leave_the_run_directory(tmp_path: Path):
    w = RunWriter(tmp_path / "run")
    w.write_run(_info())
    run = read_run(tmp_path / "run")
    with pytest.raises(RunDirError):
        run.asset("../../etc/passwd")


def test_json_schema_covers_both_files():
    schema = json_schema()
    assert set(schema["properties"]) == {"run.json", "epochs.jsonl (each line)"}
    assert "weights" in json.dumps(schema["properties"]["epochs.jsonl (each line)"])


@pytest.mark.parametrize(
    "model, task, optimizer, lr",
    [
        ("lraspp_mobilenet_v3_large", "segment", "adamw", 0.003),
        ("retinanet_resnet50_fpn", "detect", "adamw", 0.001),
        ("ssdlite320_mobilenet_v3_large", "detect", "adamw", 0.001),
        ("resnet18", "classify", "sgd", 0.01),
    ],
)
def test_a_torchvision_segmenter_or_detector_brings_its_task_and_defaults(model, task, optimizer, lr):
    """Named alone (the embedded digits as data), a segmenter or detector runs its task with that task's
    optimizer defaults; what the user sets still wins."""
    cfg = RunConfig(model=model)
    assert (cfg.task, cfg.optimizer, cfg.lr) == (task, optimizer, lr)
    assert RunConfig(model=model, lr=0.5).lr == 0.5
