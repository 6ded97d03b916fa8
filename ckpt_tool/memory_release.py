"""Give freed memory back to the system after a large, short-lived working set.

Reading an index of a million entries uses a few hundred arrays of some megabytes for
a moment. When they are freed, the C allocator (glibc's malloc) keeps much of that
memory for later use, so the process's resident memory stays near its peak. Where the
allocator offers `malloc_trim` (glibc on Linux), asking it to release free pages makes
the memory budget hold for what comes after; elsewhere nothing is done.
"""

from __future__ import annotations

import functools


@functools.cache
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the process runs on
    except (OSError, AttributeError):  # not glibc: no malloc_trim
        return None


def release_freed_memory() -> None:
    """Return the allocator's free memory to the system, where it can."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
