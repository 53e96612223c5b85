"""Errors that the CLI turns into one line on stderr and exit code 2 (bad input, never a traceback)."""


class UserError(Exception):
    """Something the user can fix: a bad flag, config value, missing dataset, unreadable file."""


class RunDirError(UserError):
    """A run directory that cannot be read or validated (names the file and line)."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """The gist of an exception in one line. A UserError re-raised by a DataLoader worker carries the
    worker's traceback first and the message last, so for those the last line is the one that matters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = lines[-1].split("UserError: ", 1)[-1] if "UserError: " in lines[-1] else lines[0]
    return text[:limit]
