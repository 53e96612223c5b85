"""The run directory: run.json (atomic rewrites), epochs.jsonl (append + flush + fsync), assets/.

A run killed at any moment leaves every finished epoch readable: each snapshot is one complete line,
written and flushed before the next epoch starts; run.json is replaced atomically, never half-written.
An append the disk refuses (full, over quota) is undone: the file is cut back to its last complete line.
Reading validates every line and names the file and line number of the first bad one; a last line
without its newline is a write that never finished (a crash mid-append), which is left out and reported
in `Run.dropped` rather than making every finished epoch unreadable.

A run resumed from a checkpoint continues its directory (`RunWriter(root, resume=True)`); lines of epochs
recorded after that checkpoint are moved, not deleted, to epochs.superseded.jsonl (`supersede_after`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from sftreport.errors import STORAGE_ERRNOS, RunDirError, StorageError, UserError, validation_message
from sftreport.schema import EpochSnapshot, RunInfo

RUN_FILE = "run.json"
EPOCHS_FILE = "epochs.jsonl"
SUPERSEDED_FILE = "epochs.superseded.jsonl"  # lines a resumed run replaced, appended in the order moved
ASSETS_DIR = "assets"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path: Path) -> None:
    """Refuse, in one line, a file that cannot be written: its folder is a file, or is not writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folder will be created from here
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {parent} is not writable")


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file in the same folder, then rename over the target: readers see the old
    file or the new one, never half of one. `durable`: fsync before the rename, so that a crash of the
    machine cannot leave an empty file under the name."""
    atomic_write_with(path, lambda f: f.write(data), durable)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object], durable: bool = True) -> None:
    """`atomic_write_bytes` for a writer function given the open file (torch.save streams into it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_error(path: Path, e: OSError) -> Exception:
    """A refused write as the error it is: the disk's (StorageError, exit 1) or the path's (UserError, exit 2)."""
    reason = e.strerror or str(e)
    if e.errno in STORAGE_ERRNOS:
        return StorageError(f"cannot write {path}: {reason}")
    return UserError(f"cannot write {path}: {reason}")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_run_dir_free(root: Path) -> None:
    """Never append a second run's epochs to a first one's: that would lose the first run's meaning."""
    root = Path(root)
    if (root / EPOCHS_FILE).exists() and (root / EPOCHS_FILE).stat().st_size:
        raise RunDirError(f"run directory {root} already holds a run; choose another --run-dir")
    if root.exists() and not root.is_dir():
        raise RunDirError(f"run directory {root} is a file")


def recorded_steps(root: Path) -> dict[int, int]:
    """The epochs a run directory holds complete lines for, with the optimizer step of each (read without
    validating the lines: enough to tell where a run can continue)."""
    root = Path(root)
    if not (root / RUN_FILE).is_file():
        raise RunDirError(
            f"cannot continue the run in {root}: "
            + ("the directory is gone" if not root.exists() else f"it holds no {RUN_FILE}")
        )
    try:
        data = (root / EPOCHS_FILE).read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise RunDirError(f"{root / EPOCHS_FILE}: cannot read: {e.strerror or e}") from None
    steps = {}
    for lineno, line in enumerate(data.split(b"\n")[:-1], 1):
        if line.strip():
            try:
                snap = json.loads(line)
                steps[int(snap["epoch"])] = int(snap["step"])
            except (ValueError, KeyError, TypeError):
                raise RunDirError(f"{root / EPOCHS_FILE}:{lineno}: not an epoch snapshot") from None
    return steps


class RunWriter:
    """Writes one run directory as the run goes. Only one process (rank 0) ever holds one. `resume`: continue
    the run the directory holds (it must hold one) instead of starting one (it must not)."""

    def __init__(self, root: Path, resume: bool = False):
        self.root = Path(root)
        self.assets = self.root / ASSETS_DIR
        if resume:
            recorded_steps(self.root)  # refuses a directory that is gone or holds no run
        else:
            check_run_dir_free(self.root)
        try:
            self.assets.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create run directory {self.root}: {e.strerror}") from None

    def write_run(self, info: RunInfo) -> None:
        atomic_write_text(self.root / RUN_FILE, info.model_dump_json(indent=1) + "\n")

    def append_epoch(self, snap: EpochSnapshot) -> None:
        """One line per epoch on an O_APPEND descriptor, fsync'ed. If the disk refuses part of it, the file is
        cut back to where it was, so every epoch already written stays readable, and StorageError says so."""
        line = (snap.model_dump_json() + "\n").encode("utf-8")
        path = self.root / EPOCHS_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise write_error(path, e) from None
        try:
            before = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            except OSError as e:
                os.ftruncate(fd, before)  # frees what the half line took: a full disk can always shrink a file
                os.fsync(fd)
                kept = (
                    f"epochs 0–{snap.epoch - 1} are kept"
                    if snap.epoch > 1
                    else ("epoch 0 is kept" if snap.epoch == 1 else "nothing was recorded")
                )
                raise StorageError(f"cannot record epoch {snap.epoch} in {path}: {e.strerror or e}; {kept}") from None
        finally:
            os.close(fd)

    def supersede_after(self, epoch: int) -> list[int]:
        """Move the lines of the epochs after `epoch` (recorded after the checkpoint a run resumes from) to the
        end of epochs.superseded.jsonl, fsync'ed, then cut epochs.jsonl back to the lines up to `epoch`
        (replaced atomically): nothing is deleted, and a crash in between at worst leaves a line in both.
        An unfinished last line (a write cut short) is moved too. Returns the epochs moved."""
        path = self.root / EPOCHS_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RunDirError(f"{path}: cannot read: {e.strerror or e}") from None
        *lines, tail = data.split(b"\n")
        keep: list[bytes] = []
        moved: list[bytes] = []
        epochs: list[int] = []
        for line in lines:
            if not line.strip():
                continue
            number = int(json.loads(line)["epoch"])  # recorded_steps has read every line already
            (moved if number > epoch else keep).append(line + b"\n")
            if number > epoch:
                epochs.append(number)
        if tail.strip():
            moved.append(tail + b"\n")
        if not moved:
            return []
        aside = self.root / SUPERSEDED_FILE
        try:
            with open(aside, "ab") as f:
                f.write(b"".join(moved))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_error(aside, e) from None
        atomic_write_bytes(path, b"".join(keep))
        return epochs

    def write_file(self, rel: str, write: Callable[[BinaryIO], object]) -> Path:
        """A durable file inside the run directory (saved weights), written atomically."""
        path = self.root / rel
        atomic_write_with(path, write)
        return path

    def write_asset(self, name: str, data: bytes) -> str:
        """Store an image under assets/ and return its path relative to the run directory. No fsync per
        image (tens of ms each on some disks): a machine crash can at worst lose an image, which the report
        then shows as not recorded, while the epoch's numbers are fsync'ed with its line."""
        atomic_write_bytes(self.assets / name, data, durable=False)
        return f"{ASSETS_DIR}/{name}"


@dataclass
class Run:
    """A run directory read back and validated."""

    root: Path
    info: RunInfo
    epochs: list[EpochSnapshot]
    dropped: str | None = None  # what was left out of an unfinished last write, in words

    def asset(self, rel: str) -> Path:
        path = (self.root / rel).resolve()
        if self.root.resolve() not in path.parents:
            raise RunDirError(f"{self.root}: asset path {rel!r} points outside the run directory")
        return path


def read_run(root: Path) -> Run:
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"not a run directory: {root}")
    run_file = root / RUN_FILE
    try:
        text = run_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunDirError(f"{run_file}: missing (is {root} a run directory?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{run_file}: cannot read: {e}") from None
    try:
        info = RunInfo.model_validate_json(text)
    except ValidationError as e:
        raise RunDirError(f"{run_file}: {validation_message(e, first_only=True)}") from None

    epochs: list[EpochSnapshot] = []
    dropped = None
    epochs_file = root / EPOCHS_FILE
    if epochs_file.exists():
        try:
            data = epochs_file.read_bytes()
        except OSError as e:
            raise RunDirError(f"{epochs_file}: cannot read: {e.strerror or e}") from None
        lines = data.split(b"\n")
        if lines[-1].strip():  # no newline after the last line: an append that never finished
            dropped = (
                f"{epochs_file.name} ends in an unfinished line of {len(lines[-1]):,} bytes after "
                f"{len(lines) - 1} complete ones (a write cut short, e.g. by a full disk); it was left out"
            )
        for lineno, line in enumerate(lines[:-1], 1):
            if not line.strip():
                continue
            try:
                epochs.append(EpochSnapshot.model_validate_json(line))
            except ValidationError as e:
                raise RunDirError(f"{epochs_file}:{lineno}: {validation_message(e, first_only=True)}") from None
    seen = [e.epoch for e in epochs]
    if seen != sorted(set(seen)):
        raise RunDirError(f"{epochs_file}: epochs out of order or repeated: {seen}")
    return Run(root=root, info=info, epochs=epochs, dropped=dropped)
