"""Elementwise and row-wise NumPy work in cache-sized chunks, on every core.

A NumPy ufunc runs on one thread and walks the whole array once per operation; a
formula of twenty operations on a 12 MB activation streams it through memory twenty
times. TensorFlow fuses such formulas and runs them on all cores. Here a formula is
applied to slices of a few thousand rows at a time, so its temporaries stay in the
CPU cache, and the slices are shared among threads (NumPy releases the GIL inside
its loops).

Splitting only ever cuts between rows (whole last-axis rows for row-wise work,
elements for elementwise work): every element, and every reduction over the last
axis, is computed by the same operations as on the whole array, so results are
bit-identical to the unsplit formula.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

from ckpt_tool.cores import usable_cores

# Elements per slice: a float64 slice and a few temporaries of it fit in L2.
SLICE_ELEMENTS = 1 << 16
# Below this many elements one thread does it all (handing work out costs more).
PARALLEL_MIN_ELEMENTS = 1 << 17
# Slices are handed out in this many pieces per thread, so a thread slowed by other
# work on the machine holds back the rest by at most one piece.
PIECES_PER_THREAD = 2


@cache
def _pool() -> ThreadPoolExecutor | None:
    n = usable_cores()
    return ThreadPoolExecutor(n, thread_name_prefix="ckpt-tool-chunks") if n > 1 else None


def map_rows(
    fn: Callable[[np.ndarray, np.ndarray], object], x: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """Call `fn(x_rows, out_rows)` on slices of rows of 2-D `x` and `out`; returns `out`.

    `fn` writes its result for those rows into `out_rows` and must not look at other
    rows. `out` may be `x` itself when `fn` works in place."""
    rows, width = x.shape
    per_slice = max(1, SLICE_ELEMENTS // max(width, 1))

    def run(start: int, stop: int) -> None:
        for s in range(start, stop, per_slice):
            e = min(s + per_slice, stop)
            fn(x[s:e], out[s:e])

    split_range(run, rows, parallel=x.size >= PARALLEL_MIN_ELEMENTS)
    return out


def split_range(run: Callable[[int, int], object], n: int, *, parallel: bool = True) -> None:
    """Call `run(start, stop)` over pieces covering range(n), on every core when
    `parallel` (and there is more than one core and one item)."""
    pool = _pool()
    if pool is None or not parallel or n < 2:
        run(0, n)
        return
    pieces = min(n, usable_cores() * PIECES_PER_THREAD)
    bounds = [int(b) for b in np.linspace(0, n, pieces + 1)]
    # Each piece runs in a copy of the caller's context, so NumPy's error state
    # (np.errstate) holds in the threads too; the caller's thread takes the first piece.
    futures = [
        pool.submit(contextvars.copy_context().run, run, a, b)
        for a, b in itertools.pairwise(bounds[1:])
    ]
    run(bounds[0], bounds[1])
    for f in futures:
        f.result()


def map_elements(
    fn: Callable[[np.ndarray, np.ndarray], object],
    x: np.ndarray,
    out: np.ndarray | None = None,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Elementwise `fn(x_part, out_part)` over slices of `x`, into `out` (new if None,
    of `dtype` or x's dtype). `x` need not be contiguous; `out` is returned in x's shape."""
    if out is None:
        out = np.empty(x.shape, dtype=dtype or x.dtype)
    elif not out.flags.c_contiguous:
        raise ValueError("map_elements writes into a C-contiguous `out` only")
    flat_x = np.ascontiguousarray(x).reshape(-1)
    flat_out = out.reshape(-1)
    n = flat_x.size
    width = SLICE_ELEMENTS if n >= SLICE_ELEMENTS else max(n, 1)
    full = n - n % width
    if full:
        map_rows(fn, flat_x[:full].reshape(-1, width), flat_out[:full].reshape(-1, width))
    if full < n:
        fn(flat_x[full:], flat_out[full:])
    return out
