"""A file written front to back whose finished bytes start going to disk while the rest is
still being produced, so that the final fsync waits for the tail only.

Every `_STEP` bytes the file asks the kernel to begin writing out the pages written since
the last time (Linux `sync_file_range(..., SYNC_FILE_RANGE_WRITE)`: it starts the I/O and
does not wait for it). This is a hint, never a promise: it flushes no metadata and no
disk cache, so durability still comes from the fsync the caller makes when the file is
complete. Where the call does not exist (not Linux), writing is unchanged.
"""

from __future__ import annotations

import io
import os

__all__ = ["WriteBehindFile"]

_STEP = 32 << 20  # bytes between two hints: large requests, few calls
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


class WriteBehindFile(io.BufferedWriter):
    """A buffered binary writer on the raw file `raw` (`open(..., buffering=0)`) that
    starts writeback behind itself."""

    def __init__(self, raw):
        super().__init__(raw)
        self._hinted = 0  # bytes before this offset were already handed to writeback

    def write(self, data) -> int:
        n = super().write(data)
        if n >= _STEP or self.tell() - self._hinted >= _STEP:
            self._start_writeback()
        return n

    def _start_writeback(self) -> None:
        sync_range = _sync_file_range()
        if sync_range is None:
            return
        end = self.raw.tell()  # what has reached the kernel (the buffer holds the rest)
        if end > self._hinted:
            # A failure here only means no early start: the final fsync reports errors.
            sync_range(self.raw.fileno(), self._hinted, end - self._hinted, _SYNC_FILE_RANGE_WRITE)
            self._hinted = end


_UNSET = object()
_sync_range = _UNSET


def _sync_file_range():
    """libc's sync_file_range, or None where there is none."""
    global _sync_range
    if _sync_range is _UNSET:
        _sync_range = None
        if hasattr(os, "posix_fadvise"):  # a POSIX system; sync_file_range is Linux's
            try:
                import ctypes

                func = ctypes.CDLL(None, use_errno=True).sync_file_range
            except (AttributeError, OSError):
                pass
            else:
                func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                func.restype = ctypes.c_int
                _sync_range = func
    return _sync_range
