"""Work that streams over one tensor at a time (statistics, comparisons), on every core.

Each tensor's work runs in a thread while the next tensors' work starts in the others
(NumPy and file reads release the GIL); results come back in the tensors' order, and
an error is raised where the same work done one tensor after another would raise it.
Each tensor's work is the same whichever thread does it, so results are bit-identical.

What must not run in two threads at once (a reader's HDF5 calls: h5py holds a global
lock while it reads through a Python file object) happens in `prepare`, in the
caller's thread; `work` only reads plain files and computes. The cyclic garbage
collector stays paused meanwhile (see gc_pause): a collection in a worker could free an
h5py object while the caller's thread holds h5py's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache, partial
from typing import TypeVar

from ckpt_tool.ahead import ordered_ahead
from ckpt_tool.cores import usable_cores
from ckpt_tool.gc_pause import gc_paused

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


@cache
def _pool() -> ThreadPoolExecutor | None:
    n = usable_cores()
    return ThreadPoolExecutor(n, thread_name_prefix="ckpt-tool-stream") if n > 1 else None


# Bytes of tensors (by their size) under way at once beyond the first: a reader that
# cannot stream a tensor reads it whole in `prepare`, and that memory is held until its
# work is done.
AHEAD_BYTES = 128 << 20


def in_order(
    items: Iterable[T],
    prepare: Callable[[T], P],
    work: Callable[[P], R],
    size: Callable[[T], int],
) -> Iterator[R]:
    """work(prepare(item)) for each item, in order: prepare in this thread, work in the
    pool's threads, with at most two items per thread under way (a thread that is done
    need not wait for the one before it) and at most AHEAD_BYTES of them by size(item)
    (or one item, if it is larger). On one core both run here,
    one item after another."""
    pool = _pool()
    if pool is None:
        for item in items:
            yield work(prepare(item))
        return
    with gc_paused():
        start = partial(_submit, pool, prepare, work)
        yield from ordered_ahead(items, start, size, 2 * usable_cores(), AHEAD_BYTES)


def _submit(
    pool: ThreadPoolExecutor, prepare: Callable[[T], P], work: Callable[[P], R], item: T
) -> Future:
    """work(prepare(item)) as a future; an error of prepare is kept in the future, to be
    raised in its turn, after the items before it."""
    try:
        prepared = prepare(item)
    except Exception as e:  # raised by .result(), in its turn
        failed: Future = Future()
        failed.set_exception(e)
        return failed
    return pool.submit(work, prepared)
