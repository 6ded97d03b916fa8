"""The building blocks: `contract` (einsum on matmul) and `erfc`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ckpt_tool.layers import LayerConfigError
from ckpt_tool.layers.contract import _plan, contract, expand_ellipsis
from ckpt_tool.layers.special import erfc

EQUATIONS = [
    ("abc,cde->abde", (2, 3, 4), (4, 5, 6)),
    ("aecd,abcd->acbe", (2, 7, 3, 4), (2, 5, 3, 4)),
    ("acbe,aecd->abcd", (2, 3, 5, 7), (2, 7, 3, 4)),
    ("abcd,cde->abe", (2, 5, 3, 4), (3, 4, 6)),
    ("abcde,abfde->abdcf", (2, 3, 4, 5, 6), (2, 3, 7, 5, 6)),
    ("ab,bc->ac", (3, 4), (4, 5)),
    ("ab,ab->", (3, 4), (3, 4)),
    ("ab,cd->abcd", (2, 3), (4, 5)),
    ("abc,c->ab", (2, 3, 4), (4,)),
    ("abc,bd->ad", (2, 3, 4), (3, 5)),  # c summed alone before the product
    ("...qd,...kd->...qk", (2, 3, 4, 5), (2, 3, 6, 5)),
    ("ab...,bc->ac...", (2, 5, 3), (5, 6)),
    ("...b,bc->...c", (7, 5), (5, 6)),
    ("aab,bc->ac", (3, 3, 4), (4, 2)),  # a diagonal: np.einsum's job
    ("ab,ab->ab", (1, 4), (3, 4)),  # broadcasting a size-1 dim
    ("bth,bhs->bts", (3, 128, 64), (3, 64, 128)),  # split into one-thread GEMMs
    ("BTNH,BSNH->BNTS", (2, 96, 3, 64), (2, 80, 3, 64)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("eq", "sa", "sb"), EQUATIONS, ids=[e[0] for e in EQUATIONS])
def test_contract_matches_einsum(eq, sa, sb, dtype):
    rng = np.random.default_rng(0)
    a = rng.normal(size=sa).astype(dtype)
    b = rng.normal(size=sb).astype(dtype)
    got = contract(eq, a, b)
    want = np.einsum(eq, a.astype(np.float64), b.astype(np.float64))
    assert got.shape == want.shape
    assert got.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.max(np.abs(got - want), initial=0.0) < tol * max(1.0, np.max(np.abs(want)))


def test_expand_ellipsis_right_aligns():
    assert expand_ellipsis("...b,bc->...c", 3, 2) == "ABb,bc->ABc"
    assert expand_ellipsis("ab...,bc->ac...", 3, 2) == "abA,bc->acA"
    assert expand_ellipsis("abc,cd->abd", 3, 2) == "abc,cd->abd"


def test_contract_rejects_wrong_ranks():
    with pytest.raises(LayerConfigError):
        contract("abc,cd->abd", np.ones((2, 3)), np.ones((3, 4)))
    with pytest.raises(LayerConfigError):
        contract("ab,bc", np.ones((2, 3)), np.ones((3, 4)))


def test_erfc_matches_libm():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            np.linspace(-27.0, 27.0, 54001),
            rng.normal(size=20000) * 3,
            [0.0, -0.0, 0.46875, -0.46875, 4.0, -4.0, 1e-300, -1e-300],
        ]
    )
    want = np.array([math.erfc(v) for v in x])
    got = erfc(x)
    normal = want > 1e-300  # leave subnormal results aside
    rel = np.abs(got - want)[normal] / want[normal]
    assert rel.max() < 2e-15
    assert np.all(np.abs(got - want)[~normal] < 1e-300)


def test_erfc_special_values():
    got = erfc(np.array([np.inf, -np.inf, np.nan, 30.0, -30.0]))
    assert got[0] == 0.0 and got[1] == 2.0 and np.isnan(got[2])
    assert got[3] == 0.0 and got[4] == 2.0


def test_batched_small_gemms_are_split_by_rows():
    plan = _plan("bth,bhs->bts", (3, 128, 64), (3, 64, 128))
    assert plan.row_chunks == 4  # 32 x 64 x 128 = 2^18 multiply-adds each
    assert _plan("bth,bhs->bts", (1, 128, 64), (1, 64, 128)).row_chunks == 1  # one GEMM
    assert _plan("ab,bc->ac", (1024, 768), (768, 768)).row_chunks == 1


def test_gelu_library_erfc_in_float64():
    """gelu's library erfc in float64: within a few units in the last place of Cody's.
    (float32 has its own formula: tests/layers/test_gelu_float32.py.)"""
    from ckpt_tool.layers.activations import gelu

    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=50000) * 4, [0.0, -9.0, 9.0, np.inf, -np.inf]])
    arg = -x * np.float64(np.float32(0.7071067811865476))  # as tf.nn.gelu rounds it
    with np.errstate(invalid="ignore"):  # gelu(-inf) is -inf * 0: NaN, as in TensorFlow
        want = 0.5 * x * erfc(arg)
        got = gelu(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=2e-14, atol=0)
