"""The run directory: run.json (atomic rewrites), epochs.jsonl (append + flush + fsync), assets/.

A run killed at any moment leaves every finished epoch readable: each snapshot is one complete line,
written and flushed before the next epoch starts; run.json is replaced atomically, never half-written.
Reading validates every line and names the file and line number of the first bad one.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from sftreport.errors import RunDirError, UserError
from sftreport.schema import EpochSnapshot, RunInfo

RUN_FILE = "run.json"
EPOCHS_FILE = "epochs.jsonl"
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
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_run_dir_free(root: Path) -> None:
    """Never append a second run's epochs to a first one's: that would lose the first run's meaning."""
    root = Path(root)
    if (root / EPOCHS_FILE).exists() and (root / EPOCHS_FILE).stat().st_size:
        raise RunDirError(f"run directory {root} already holds a run; choose another --run-dir")
    if root.exists() and not root.is_dir():
        raise RunDirError(f"run directory {root} is a file")


class RunWriter:
    """Writes one run directory as the run goes. Only one process (rank 0) ever holds one."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.assets = self.root / ASSETS_DIR
        check_run_dir_free(self.root)
        try:
            self.assets.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create run directory {self.root}: {e.strerror}") from None

    def write_run(self, info: RunInfo) -> None:
        atomic_write_text(self.root / RUN_FILE, info.model_dump_json(indent=1) + "\n")

    def append_epoch(self, snap: EpochSnapshot) -> None:
        # One write() of the whole line on an O_APPEND descriptor: a reader never sees half a line
        # of a finished epoch, and a crash cannot interleave two.
        line = (snap.model_dump_json() + "\n").encode("utf-8")
        fd = os.open(self.root / EPOCHS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, line)
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

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
        raise RunDirError(f"{run_file}: {_first_error(e)}") from None

    epochs: list[EpochSnapshot] = []
    epochs_file = root / EPOCHS_FILE
    if epochs_file.exists():
        with open(epochs_file, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    epochs.append(EpochSnapshot.model_validate_json(line))
                except ValidationError as e:
                    raise RunDirError(f"{epochs_file}:{lineno}: {_first_error(e)}") from None
    seen = [e.epoch for e in epochs]
    if seen != sorted(set(seen)):
        raise RunDirError(f"{epochs_file}: epochs out of order or repeated: {seen}")
    return Run(root=root, info=info, epochs=epochs)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{loc + ': ' if loc else ''}{err['msg']}{more}"
