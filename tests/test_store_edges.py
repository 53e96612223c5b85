"""The run directory at its edges: refused paths, durable and atomic writes, the exact messages a user
reads, appends cut short, and every way a run directory can be unreadable."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from sftreport import store
from sftreport.errors import RunDirError, StorageError, UserError
from sftreport.schema import DatasetInfo, Environment, EpochSnapshot, RunInfo
from sftreport.store import (
    EPOCHS_FILE,
    RUN_FILE,
    Run,
    RunWriter,
    atomic_write_bytes,
    atomic_write_text,
    atomic_write_with,
    check_output_path,
    check_run_dir_free,
    read_run,
    write_error,
)


def _info(name: str = "t") -> RunInfo:
    return RunInfo(
        name=name,
        started_at="2026-01-01T00:00:00+00:00",
        model="m",
        weights="w",
        strategy="full",
        dataset=DatasetInfo(name="d", classes=["a", "b"], train_size=1, val_size=1, image_size=8),
        environment=Environment(python="3", platform="p", sftreport="0", device="cpu"),
    )


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- output paths


def test_output_path_that_is_a_directory_or_under_a_file_is_refused(tmp_path: Path):
    with pytest.raises(UserError) as e:
        check_output_path(tmp_path)
    assert str(e.value) == f"cannot write {tmp_path}: it is a directory"
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UserError) as e:
        check_output_path(f / "sub" / "deeper" / "report.html")
    assert str(e.value) == f"cannot write {f / 'sub' / 'deeper' / 'report.html'}: {f} is not a directory"


def test_output_path_in_folders_yet_to_be_made_is_fine(tmp_path: Path):
    check_output_path(tmp_path / "a" / "b" / "report.html")  # created later from tmp_path
    check_output_path(tmp_path / "report.html")
    check_output_path(Path("/nonexistent-root-dir/a/report.html").relative_to("/"))  # relative, from cwd


def test_output_path_in_an_unwritable_folder_is_refused(tmp_path: Path, monkeypatch):
    asked = []

    def access(path, mode):
        asked.append((Path(path), mode))
        return False

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(UserError) as e:
        check_output_path(tmp_path / "new" / "report.html")
    assert str(e.value) == f"cannot write {tmp_path / 'new' / 'report.html'}: {tmp_path} is not writable"
    assert asked == [(tmp_path, os.W_OK | os.X_OK)]  # the folder must be writable and enterable


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_through_a_hidden_temporary_file_with_ordinary_permissions(
    tmp_path: Path, monkeypatch, umask_022
):
    target = tmp_path / "sub" / "deeper" / "out.bin"  # the folders are created
    replaced, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((Path(a), Path(b))), real_replace(a, b)))
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    ((tmp, dest),) = replaced
    assert dest == target and tmp.parent == target.parent
    assert tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp") and not tmp.exists()
    assert len(synced) == 1  # durable by default: fsync'ed before the rename
    assert (target.stat().st_mode & 0o777) == 0o644  # 0666 less the umask, not mkstemp's 0600
    atomic_write_bytes(target, b"second", durable=False)
    assert target.read_bytes() == b"second" and len(synced) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_atomic_write_follows_the_umask(tmp_path: Path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
    assert store._umask() == old  # reading the umask leaves it as it was


def test_atomic_write_text_is_utf8(tmp_path: Path):
    atomic_write_text(tmp_path / "t.txt", "‖W‖ × café")
    assert (tmp_path / "t.txt").read_bytes() == "‖W‖ × café".encode()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def disk_full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError) as e:
        atomic_write_with(target, disk_full)
    assert str(e.value) == f"cannot write {target}: No space left on device"
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]

    def interrupted(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, interrupted)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_write_under_a_file_is_the_users_error(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as e:
        atomic_write_bytes(tmp_path / "file" / "out.txt", b"x")
    assert not isinstance(e.value, StorageError)
    assert str(e.value) == f"cannot write {tmp_path / 'file' / 'out.txt'}: File exists"  # mkdir says so


def test_write_error_tells_the_disk_from_the_path():
    p = Path("/x/y")
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS):
        err = write_error(p, OSError(code, os.strerror(code)))
        assert isinstance(err, StorageError) and str(err) == f"cannot write /x/y: {os.strerror(code)}"
    err = write_error(p, OSError(errno.EACCES, "Permission denied"))
    assert type(err) is UserError and str(err) == "cannot write /x/y: Permission denied"
    bare = write_error(p, OSError("no errno at all"))
    assert type(bare) is UserError and str(bare) == "cannot write /x/y: no errno at all"


# --------------------------------------------------------------------------- the writer


def test_a_run_directory_is_free_when_empty_or_holding_an_empty_epochs_file(tmp_path: Path):
    check_run_dir_free(tmp_path / "new")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / EPOCHS_FILE).write_bytes(b"")
    check_run_dir_free(tmp_path / "r")
    RunWriter(tmp_path / "r")  # an empty epochs file is no run yet
    assert (tmp_path / "r" / "assets").is_dir()
    RunWriter(tmp_path / "r")  # nor is an assets folder
    (tmp_path / "r" / EPOCHS_FILE).write_bytes(b"{}\n")
    with pytest.raises(RunDirError) as e:
        check_run_dir_free(tmp_path / "r")
    assert str(e.value) == f"run directory {tmp_path / 'r'} already holds a run; choose another --run-dir"


def test_a_run_directory_that_is_a_file_or_cannot_be_made(tmp_path: Path):
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(RunDirError) as e:
        RunWriter(f)
    assert str(e.value) == f"run directory {f} is a file"
    with pytest.raises(RunDirError) as e:
        RunWriter(f / "run")
    assert str(e.value) == f"cannot create run directory {f / 'run'}: Not a directory"


def test_run_json_is_indented_json_with_a_final_newline(tmp_path: Path):
    w = RunWriter(tmp_path / "run")
    w.write_run(_info("first"))
    w.write_run(_info("second"))  # rewritten whole
    text = (tmp_path / "run" / RUN_FILE).read_text()
    assert text.endswith("}\n") and text.count("\n") > 10
    assert text.splitlines()[1].startswith(' "') and json.loads(text)["name"] == "second"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["assets", RUN_FILE]


def test_each_epoch_is_one_line_written_then_fsynced(tmp_path: Path, monkeypatch, umask_022):
    w = RunWriter(tmp_path / "run")
    events = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, b: (events.append("write"), real_write(fd, b))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    fds = _open_fds()
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    w.append_epoch(EpochSnapshot(epoch=1, step=2, train_loss=0.5))
    assert events == ["write", "fsync", "write", "fsync"]
    assert _open_fds() == fds  # the descriptor is closed
    path = tmp_path / "run" / EPOCHS_FILE
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert [EpochSnapshot.model_validate_json(x).epoch for x in lines[:2]] == [0, 1]
    assert lines[0] == EpochSnapshot(epoch=0, step=0).model_dump_json().encode()
    assert path.stat().st_mode & 0o777 == 0o644


def test_short_writes_are_completed(tmp_path: Path, monkeypatch):
    w = RunWriter(tmp_path / "run")
    real_write = os.write
    sizes = []

    def dribble(fd, data):
        sizes.append(len(data))
        return real_write(fd, bytes(data[:7]))  # seven bytes at a time

    monkeypatch.setattr(os, "write", dribble)
    w.append_epoch(EpochSnapshot(epoch=0, step=0))
    monkeypatch.setattr(os, "write", real_write)
    line = EpochSnapshot(epoch=0, step=0).model_dump_json().encode() + b"\n"
    assert (tmp_path / "run" / EPOCHS_FILE).read_bytes() == line
    assert sizes[0] == len(line) and sizes[1] == len(line) - 7 and len(sizes) == -(-len(line) // 7)


@pytest.mark.parametrize(
    "epoch, kept",
    [(0, "nothing was recorded"), (1, "epoch 0 is kept"), (2, "epochs 0–1 are kept"), (5, "epochs 0–4 are kept")],
)
def test_a_refused_append_says_what_was_kept(tmp_path: Path, monkeypatch, epoch: int, kept: str):
    w = RunWriter(tmp_path / "run")
    for e in range(epoch):
        w.append_epoch(EpochSnapshot(epoch=e, step=e))
    path = tmp_path / "run" / EPOCHS_FILE
    before = path.read_bytes() if path.exists() else b""
    real_write = os.write
    fds = _open_fds()

    def quota(fd, data):
        real_write(fd, data[:3])
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "write", quota)
    with pytest.raises(StorageError) as e:
        w.append_epoch(EpochSnapshot(epoch=epoch, step=epoch))
    assert str(e.value) == f"cannot record epoch {epoch} in {path}: Disk quota exceeded; {kept}"
    assert path.read_bytes() == before and _open_fds() == fds


def test_a_refused_append_without_a_reason_still_says_something(tmp_path: Path, monkeypatch):
    w = RunWriter(tmp_path / "run")
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError("device gone")))
    with pytest.raises(StorageError) as e:
        w.append_epoch(EpochSnapshot(epoch=0, step=0))
    assert str(e.value).endswith(": device gone; nothing was recorded")


def test_an_epochs_file_that_cannot_be_opened(tmp_path: Path):
    w = RunWriter(tmp_path / "run")
    (tmp_path / "run" / EPOCHS_FILE).mkdir()
    with pytest.raises(UserError) as e:
        w.append_epoch(EpochSnapshot(epoch=0, step=0))
    assert str(e.value) == f"cannot write {tmp_path / 'run' / EPOCHS_FILE}: Is a directory"


def test_weights_files_are_durable_and_assets_are_not(tmp_path: Path, monkeypatch):
    w = RunWriter(tmp_path / "run")
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    path = w.write_file("weights/epoch_000.pt", lambda f: f.write(b"state"))
    assert path == tmp_path / "run" / "weights" / "epoch_000.pt" and path.read_bytes() == b"state"
    assert len(synced) == 1
    rel = w.write_asset("filters_e000.png", b"png")
    assert rel == "assets/filters_e000.png" and (tmp_path / "run" / rel).read_bytes() == b"png"
    assert len(synced) == 1  # an image is not worth an fsync


# --------------------------------------------------------------------------- reading


def _written(tmp_path: Path, epochs=(0, 1)) -> Path:
    w = RunWriter(tmp_path / "run")
    w.write_run(_info())
    for e in epochs:
        w.append_epoch(EpochSnapshot(epoch=e, step=e))
    return tmp_path / "run"


def test_reading_what_is_not_a_run_directory(tmp_path: Path):
    with pytest.raises(RunDirError) as e:
        read_run(tmp_path / "missing")
    assert str(e.value) == f"not a run directory: {tmp_path / 'missing'}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError) as e:
        read_run(tmp_path / "empty")
    assert str(e.value) == f"{tmp_path / 'empty' / RUN_FILE}: missing (is {tmp_path / 'empty'} a run directory?)"


def test_run_json_that_cannot_be_read_or_is_invalid(tmp_path: Path):
    root = tmp_path / "r"
    (root / RUN_FILE).mkdir(parents=True)  # a folder where the file should be
    with pytest.raises(RunDirError, match=r"run\.json: cannot read: "):
        read_run(root)
    (root / RUN_FILE).rmdir()
    (root / RUN_FILE).write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(RunDirError, match=r"run\.json: cannot read: .*codec"):
        read_run(root)
    (root / RUN_FILE).write_text('{"name": "x"}')
    with pytest.raises(RunDirError) as e:
        read_run(root)
    assert str(e.value).startswith(f"{root / RUN_FILE}: ") and "more)" in str(e.value) and "\n" not in str(e.value)


def test_a_run_without_epochs_reads_as_no_epochs(tmp_path: Path):
    root = _written(tmp_path, epochs=())
    run = read_run(root)
    assert run.epochs == [] and run.dropped is None and run.info.name == "t" and run.root == root


def test_an_epochs_path_that_cannot_be_read(tmp_path: Path):
    root = _written(tmp_path, epochs=())
    (root / EPOCHS_FILE).mkdir()
    with pytest.raises(RunDirError) as e:
        read_run(root)
    assert str(e.value) == f"{root / EPOCHS_FILE}: cannot read: Is a directory"


def test_blank_lines_are_skipped_but_counted_and_the_error_names_its_line(tmp_path: Path):
    root = _written(tmp_path)
    with open(root / EPOCHS_FILE, "ab") as f:
        f.write(b"\n   \n")
        f.write(EpochSnapshot(epoch=2, step=2).model_dump_json().encode() + b"\n")
    assert [e.epoch for e in read_run(root).epochs] == [0, 1, 2]
    with open(root / EPOCHS_FILE, "ab") as f:
        f.write(b'{"epoch": 3, "step": -1, "lr": -2}\n')
    with pytest.raises(RunDirError) as e:
        read_run(root)
    msg = str(e.value)
    assert msg.startswith(f"{root / EPOCHS_FILE}:6: ") and msg.endswith("(and 1 more)")


def test_an_unfinished_last_line_is_measured_in_bytes(tmp_path: Path):
    root = _written(tmp_path, epochs=(0, 1, 2))
    with open(root / EPOCHS_FILE, "ab") as f:
        f.write(b"{" + b" " * 1233)  # 1,234 bytes and no newline
    run = read_run(root)
    assert [e.epoch for e in run.epochs] == [0, 1, 2]
    assert run.dropped == (
        f"{EPOCHS_FILE} ends in an unfinished line of 1,234 bytes after 3 complete ones (a write cut short, "
        "e.g. by a full disk); it was left out"
    )
    # trailing spaces after the last newline are no unfinished write
    root2 = _written(tmp_path / "b")
    with open(root2 / EPOCHS_FILE, "ab") as f:
        f.write(b"   ")
    assert read_run(root2).dropped is None


def test_epochs_out_of_order_are_refused(tmp_path: Path):
    root = _written(tmp_path, epochs=(0, 2, 1))
    with pytest.raises(RunDirError) as e:
        read_run(root)
    assert str(e.value) == f"{root / EPOCHS_FILE}: epochs out of order or repeated: [0, 2, 1]"
    gaps = _written(tmp_path / "gaps", epochs=(0, 3, 7))  # missing epochs are fine, order is what counts
    assert [e.epoch for e in read_run(gaps).epochs] == [0, 3, 7]


def test_asset_paths_resolve_inside_the_run_directory_only(tmp_path: Path):
    root = _written(tmp_path)
    run = read_run(root)
    assert run.asset("assets/x.png") == (root / "assets" / "x.png").resolve()
    assert run.asset("assets/../assets/y.png") == (root / "assets" / "y.png").resolve()
    for bad in ("../outside.png", "/etc/passwd", ".", "assets/../../x"):
        with pytest.raises(RunDirError) as e:
            run.asset(bad)
        assert str(e.value) == f"{root}: asset path {bad!r} points outside the run directory"
    assert Run(root=root, info=run.info, epochs=[]).dropped is None
