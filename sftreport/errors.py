"""Errors that the CLI turns into one line on stderr and exit code 2 (bad input, never a traceback)."""


class UserError(Exception):
    """Something the user can fix: a bad flag, config value, missing dataset, unreadable file."""


class RunDirError(UserError):
    """A run directory that cannot be read or validated (names the file and line)."""
