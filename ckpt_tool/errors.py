"""Errors that are the user's problem, not a bug in ckpt-tool.

The CLI turns every CkptToolError into one line on stderr and its exit code;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

# Exit codes (documented in the README).
EXIT_OK = 0
EXIT_DISAGREE = 1  # verify/diff: the numbers do not agree
EXIT_USAGE = 2  # bad input, bad usage, unreadable or corrupt file


class CkptToolError(Exception):
    """A problem the user can act on: a clear message and an exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class NotFoundError(CkptToolError):
    """The path (or a file it needs, such as a data shard) does not exist."""


class UnsupportedFormatError(CkptToolError):
    """The path exists but is not a format ckpt-tool reads."""


class CorruptFileError(CkptToolError):
    """The file claims to be a supported format but its bytes are wrong."""


class UsageError(CkptToolError):
    """Options that do not fit together, or a bad option value."""
