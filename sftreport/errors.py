"""The errors the command line turns into one line on stderr (never a traceback), and its exit codes."""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """What `sftreport` returns; the README's "Exit codes" table lists the same."""

    COMPLETED = 0
    FAILED = 1  # anything that is not the user's input: a full disk, a bug, a failed rank
    BAD_INPUT = 2  # a flag, a config value, a dataset, a weights file, a run directory
    DIVERGED = 3  # the training loss became NaN or infinite
    INTERRUPTED = 130  # Ctrl-C or SIGTERM


class UserError(Exception):
    """Something the user can fix: a bad flag, config value, missing dataset, unreadable file."""


class RunDirError(UserError):
    """A run directory that cannot be read or validated (names the file and line)."""


class StorageError(Exception):
    """The disk refused a write (full, over a quota or a file-size limit, failing): not the user's input,
    so exit code 1. The message says what was kept."""


# errno values that mean "the storage cannot take this" rather than "this path is wrong"
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def validation_message(err, first_only: bool = False) -> str:
    """A pydantic ValidationError in one line naming the bad fields, e.g. `epochs: Input should be greater
    than or equal to 1`; `first_only`: the first error and how many more (for a long stored record)."""
    errors = err.errors()
    parts = []
    for e in errors[:1] if first_only else errors:
        loc = ".".join(str(x) for x in e["loc"]) or "value"
        parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    more = f" (and {len(errors) - 1} more)" if first_only and len(errors) > 1 else ""
    return "; ".join(parts) + more


def one_line(e: BaseException, limit: int = 300) -> str:
    """The gist of an exception in one line. A UserError re-raised by a DataLoader worker carries the
    worker's traceback first and the message last, so for those the last line is the one that matters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = lines[-1].split("UserError: ", 1)[-1] if "UserError: " in lines[-1] else lines[0]
    return text[:limit]
