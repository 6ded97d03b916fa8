"""The memory budget: how much a command may allocate for what a file claims.

`list`, `export` and `diff` hold one tensor at a time (two for `diff`), so they
need about twice the largest tensor they must hold, plus a floor for everything
else. Anything a file asks to be inflated or buffered (a compressed zip member,
an HDF5 chunk, a reassembled partitioned tensor) is checked against this budget
before any work starts, so a small hostile file cannot claim gigabytes.
"""

from __future__ import annotations

MiB = 1 << 20
MEMORY_FLOOR = 256 * MiB


def allowance(largest_tensor_bytes: int) -> int:
    """Bytes a command may use while holding tensors of at most this size."""
    return max(MEMORY_FLOOR, 2 * largest_tensor_bytes)
