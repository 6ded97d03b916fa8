"""Pause Python's cyclic garbage collector while building millions of small objects.

Listing an index of a million entries creates tens of millions of tuples, strings
and dataclasses, none in a reference cycle. The collector would scan them again and
again as they pile up (most of the time of a large `list`); reference counting frees
them all the same, so collection is paused while they are built.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
