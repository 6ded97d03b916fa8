"""Two-operand einsum on BLAS: `contract("abc,cde->abde", x, w)`.

`np.einsum` runs batched contractions such as `"aecd,abcd->acbe"` in its own C
loops, far from BLAS speed. Here every two-operand equation is planned once per
(equation, shapes) into transpose -> reshape to 3-D -> `np.matmul` -> reshape ->
transpose, which hands the work to one batched GEMM:

    x: (batch..., x_free..., summed...)  ->  (Bt, M, K)
    y: (batch..., summed..., y_free...)  ->  (Bt, K, N)
    out = x @ y                          ->  (Bt, M, N) -> output order

A batch of small products (attention's per-head (T, H) @ (H, S)) is further
split by rows so that each GEMM stays within 2^18 multiply-adds: OpenBLAS
runs such a GEMM on one thread, where a two-thread GEMM this small gains
nothing and waits on a thread hand-off per call, which costs dearly on a
machine whose cores are busy. The batch of them is shared among threads
instead (`chunks.split_range`); each GEMM is the same call either way.

Letters that appear in one operand only and not in the output are summed away
first; anything else unusual (a letter repeated inside one operand, ellipsis
broadcasting between operands of different sizes) falls back to `np.einsum`
with a cached contraction path.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ckpt_tool.layers import chunks
from ckpt_tool.layers.base import LayerConfigError

Shape = tuple[int, ...]

# OpenBLAS computes a GEMM of at most 65536 * GEMM_MULTITHREAD_THRESHOLD (4)
# multiply-adds on the calling thread.
_ONE_THREAD_GEMM = 1 << 18


@dataclass(frozen=True)
class _Plan:
    pre_sum_x: tuple[int, ...]  # axes of x summed before the product
    pre_sum_y: tuple[int, ...]
    perm_x: tuple[int, ...]  # x (after pre-sum) -> (batch, x_free, summed)
    perm_y: tuple[int, ...]  # y (after pre-sum) -> (batch, summed, y_free)
    shape_x3: Shape  # (Bt, M, K)
    shape_y3: Shape  # (Bt, K, N)
    shape_out: Shape  # (batch..., x_free..., y_free...)
    perm_out: tuple[int, ...] | None  # -> output letter order (None: already there)
    row_chunks: int = 1  # batched small GEMMs: M split into this many one-thread GEMMs


def expand_ellipsis(equation: str, *ndims: int) -> str:
    """Replace `...` by explicit letters, right-aligned as numpy broadcasts them."""
    eq = equation.replace(" ", "")
    if "->" not in eq:
        raise LayerConfigError(f"einsum equation {equation!r} has no '->'")
    lhs, out = eq.split("->")
    ins = lhs.split(",")
    if len(ins) != len(ndims):
        raise LayerConfigError(
            f"einsum equation {equation!r} names {len(ins)} operand(s), got {len(ndims)}"
        )
    if "..." not in eq:
        return eq
    used = set(eq) - {".", ",", "-", ">"}
    pool = [c for c in string.ascii_uppercase + string.ascii_lowercase if c not in used]
    n_ell = max(
        (nd - (len(s) - 3) for s, nd in zip(ins, ndims, strict=True) if "..." in s), default=0
    )
    if n_ell < 0 or n_ell > len(pool):
        raise LayerConfigError(f"einsum equation {equation!r} does not fit the operand ranks")
    ell = "".join(pool[:n_ell])

    def fill(spec: str, nd: int | None) -> str:
        if "..." not in spec:
            return spec
        k = n_ell if nd is None else nd - (len(spec) - 3)
        return spec.replace("...", ell[n_ell - k :])

    new_ins = [fill(s, nd) for s, nd in zip(ins, ndims, strict=True)]
    return ",".join(new_ins) + "->" + fill(out, None)


@lru_cache(maxsize=512)
def _plan(eq: str, sx: Shape, sy: Shape) -> _Plan | None:
    """Plan `eq` (no ellipsis) for operand shapes; None means: use np.einsum."""
    lhs, out = eq.split("->")
    a, b = lhs.split(",")
    if len(a) != len(sx) or len(b) != len(sy):
        raise LayerConfigError(
            f"einsum {eq!r}: operand ranks {len(sx)}, {len(sy)} do not fit the equation"
        )
    if len(set(a)) != len(a) or len(set(b)) != len(b) or len(set(out)) != len(out):
        return None  # diagonals: leave to np.einsum
    if set(out) - set(a) - set(b):
        raise LayerConfigError(f"einsum {eq!r}: output letters not in any input")
    size: dict[str, int] = {}
    for spec, shape in ((a, sx), (b, sy)):
        for c, n in zip(spec, shape, strict=True):
            if size.setdefault(c, n) != n:
                return None  # broadcasting size-1 dims: leave to np.einsum

    pre_x = tuple(i for i, c in enumerate(a) if c not in b and c not in out)
    pre_y = tuple(i for i, c in enumerate(b) if c not in a and c not in out)
    a2 = "".join(c for c in a if c in b or c in out)
    b2 = "".join(c for c in b if c in a or c in out)
    batch = [c for c in out if c in a2 and c in b2]
    x_free = [c for c in a2 if c not in b2]
    y_free = [c for c in b2 if c not in a2]
    summed = [c for c in a2 if c in b2 and c not in out]

    def prod(cs: list[str]) -> int:
        return int(np.prod([size[c] for c in cs], dtype=np.int64)) if cs else 1

    perm_x = tuple(a2.index(c) for c in batch + x_free + summed)
    perm_y = tuple(b2.index(c) for c in batch + summed + y_free)
    got = batch + x_free + y_free
    perm_out = tuple(got.index(c) for c in out)
    bt, m, k, n = prod(batch), prod(x_free), prod(summed), prod(y_free)
    chunks = 1
    if bt > 1 and m * n * k > _ONE_THREAD_GEMM:
        small = (c for c in range(2, m + 1) if m % c == 0 and (m // c) * n * k <= _ONE_THREAD_GEMM)
        chunks = next(small, 1)
    return _Plan(
        pre_sum_x=pre_x,
        pre_sum_y=pre_y,
        perm_x=perm_x,
        perm_y=perm_y,
        shape_x3=(prod(batch), prod(x_free), prod(summed)),
        shape_y3=(prod(batch), prod(summed), prod(y_free)),
        shape_out=tuple(size[c] for c in got),
        perm_out=None if perm_out == tuple(range(len(got))) else perm_out,
        row_chunks=chunks,
    )


@lru_cache(maxsize=128)
def _einsum_path(eq: str, sx: Shape, sy: Shape) -> list:
    return np.einsum_path(eq, np.empty(sx), np.empty(sy), optimize="optimal")[0]


def _transpose(x: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    return x if perm == tuple(range(x.ndim)) else x.transpose(perm)


def contract(equation: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`np.einsum(equation, x, y)` computed as one batched matmul where possible.

    The result has the dtype of the operands (both must share it) and is
    summed in that dtype, as TensorFlow's einsum does.
    """
    eq = expand_ellipsis(equation, x.ndim, y.ndim)
    plan = _plan(eq, tuple(x.shape), tuple(y.shape))
    if plan is None:
        return np.einsum(eq, x, y, optimize=_einsum_path(eq, tuple(x.shape), tuple(y.shape)))
    if plan.pre_sum_x:
        x = x.sum(axis=plan.pre_sum_x)
    if plan.pre_sum_y:
        y = y.sum(axis=plan.pre_sum_y)
    x3 = _transpose(x, plan.perm_x).reshape(plan.shape_x3)
    y3 = _transpose(y, plan.perm_y).reshape(plan.shape_y3)
    if plan.row_chunks > 1:
        # (Bt, c, M/c, K) @ (Bt, 1, K, N): c one-thread GEMMs per batch entry
        bt, m, k = plan.shape_x3
        x3 = x3.reshape(bt, plan.row_chunks, m // plan.row_chunks, k)
        y3 = y3[:, None]
        # the batch shared among threads: each entry is the same one-thread GEMMs
        out = np.empty((*x3.shape[:-1], y3.shape[-1]), dtype=np.result_type(x3, y3))
        chunks.split_range(
            lambda s, e: np.matmul(x3[s:e], y3[s:e], out=out[s:e]),
            bt,
            parallel=out.size >= chunks.PARALLEL_MIN_ELEMENTS,
        )
        out = out.reshape(plan.shape_out)
    else:
        out = np.matmul(x3, y3).reshape(plan.shape_out)
    return out if plan.perm_out is None else np.ascontiguousarray(out.transpose(plan.perm_out))
