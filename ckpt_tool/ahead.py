"""Results in order, with the next items' work already under way in threads.

The loop shared by the URL read-ahead (storage.produce_ahead) and the per-core
statistics and comparisons (streaming.in_order): items are started in order while at
most `max_pending` are under way and their sizes stay within `ahead_bytes` (or one
item, if it is larger); results come back in the items' order, and an error in its
turn, after the results before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

_END = object()


def ordered_ahead(
    items: Iterable[T],
    start: Callable[[T], Future],
    size: Callable[[T], int],
    max_pending: int,
    ahead_bytes: int,
) -> Iterator:
    """future.result() of start(item) for each item, in order. No item is started after
    one that has failed; on the way out, what was not started is cancelled and what is
    running is waited for (its files may be closed next)."""
    pending: deque[tuple[Future, int]] = deque()
    under_way = 0
    upcoming = iter(items)
    item = next(upcoming, _END)
    try:
        while True:
            while item is not _END and len(pending) < max_pending:
                n = size(item)
                if pending and (under_way + n > ahead_bytes or _failed(pending[-1][0])):
                    break
                pending.append((start(item), n))
                under_way += n
                item = next(upcoming, _END)
            if not pending:
                return
            future, n = pending.popleft()
            under_way -= n
            yield future.result()
    finally:
        for future, _ in pending:
            future.cancel()
        for future, _ in pending:
            if not future.cancelled():
                future.exception()


def _failed(future: Future) -> bool:
    return future.done() and future.exception() is not None
