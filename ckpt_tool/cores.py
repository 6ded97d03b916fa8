"""How many threads the thread pools use: the cores this process may run on."""

from __future__ import annotations

import os

MAX_THREADS = 16


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system has one), 1 to 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))
