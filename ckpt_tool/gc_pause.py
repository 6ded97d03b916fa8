"""Pause Python's cyclic garbage collector.

Two reasons to:

- Listing an index of a million entries creates tens of millions of tuples, strings
  and dataclasses, none in a reference cycle. The collector would scan them again and
  again as they pile up (most of the time of a large `list`); reference counting frees
  them all the same, so collection is paused while they are built.
- h5py holds its global lock while it reads from a Python file object. When that
  object waits on another thread (a URL's reads may run on fsspec's event loop thread,
  or a server in the same process answers them), a collection started in that thread
  may free an h5py object, which needs the same lock: both threads wait forever. So
  the collector stays paused while h5py reads a URL.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holds = 0  # pauses open now, in any thread
_enabled_before = True  # the collector's state before the first of them


def hold_paused() -> None:
    """Pause the collector until the matching release_paused(); pauses nest, and the
    collector resumes (if it ran before) only when the last one is released."""
    global _holds, _enabled_before
    with _lock:
        if _holds == 0:
            _enabled_before = gc.isenabled()
            gc.disable()
        _holds += 1


def release_paused() -> None:
    global _holds
    with _lock:
        _holds -= 1
        if _holds == 0 and _enabled_before:
            gc.enable()


@contextmanager
def gc_paused() -> Iterator[None]:
    hold_paused()
    try:
        yield
    finally:
        release_paused()
