"""Open input files without ever blocking on, or reading from, a special file.

Opening a FIFO for reading waits for a writer that may never come, and a
character device such as `/dev/zero` never ends. Both can sit where a weight
file, a checkpoint's `checkpoint` state file or `.index` is expected. Every input
is therefore opened non-blocking, checked with fstat to be a regular file, and
only then read (the check is on the opened descriptor, so a path swapped after
a stat() cannot slip through).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ckpt_tool.errors import CkptToolError
from ckpt_tool.storage import RemotePath

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class NotRegularFileError(CkptToolError):
    """An input path is a FIFO, a device or a socket: refused unread."""


def special_kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is ("a FIFO", ...); None for files and dirs."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def refuse_special(path: str | Path) -> None:
    """Raise NotRegularFileError if `path` (followed through symlinks) exists and is
    neither a regular file nor a directory. A missing path (or a URL) passes."""
    if isinstance(path, RemotePath):
        return
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    kind = special_kind(mode)
    if kind is not None:
        raise NotRegularFileError(f"is {kind}, not a regular file; refused unread", path)


def open_regular(path: str | Path) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file; raises NotRegularFileError
    for FIFOs, devices and sockets (without waiting on them) and OSError as open() does.
    A URL's path opens its object, whose reads are range requests."""
    if isinstance(path, RemotePath):
        return path.open("rb", 0)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        kind = special_kind(mode)
        if kind is not None:
            raise NotRegularFileError(f"is {kind}, not a regular file; refused unread", path)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_small(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The whole of a small regular file; CkptToolError if it is larger than `limit`."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CkptToolError(f"{what} is larger than {limit} bytes; refused", path)
    return data


def read_regular_bytes(path: str | Path) -> bytes:
    """Path.read_bytes() for a regular file, refusing special files."""
    with open_regular(path) as f:
        return f.read()
