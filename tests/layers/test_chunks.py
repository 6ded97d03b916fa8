"""Work split into slices and threads (`chunks`) gives the bits of the unsplit formula."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.special import erfc

from ckpt_tool.layers import chunks
from ckpt_tool.layers.activations import add_bias_then, gelu, softmax
from ckpt_tool.layers.gelu_float32 import gelu_float32_into
from ckpt_tool.layers.op_layer_normalization import layer_normalization

# Row counts and widths that leave a partial last slice and a partial last piece.
SHAPES = [(3, 5), (7, 1000, 61), (2, 96, 3072)]


def _gelu_whole(x: np.ndarray) -> np.ndarray:
    """gelu's formula on the whole array: in float64 tf.nn.gelu's
    0.5 * x * erfc(-x * float32(1/sqrt 2)), in float32 `gelu_float32`'s."""
    if x.dtype == np.float32:
        out = np.empty(x.shape, np.float32)
        gelu_float32_into(np.ascontiguousarray(x), out)
        return out
    c = x.dtype.type(np.float32(0.7071067811865476))
    return (x.dtype.type(0.5) * x) * erfc(-x * c).astype(x.dtype)


@pytest.fixture(params=["threads", "one thread"])
def parallel(request, monkeypatch):
    if request.param == "threads":
        monkeypatch.setattr(chunks, "PARALLEL_MIN_ELEMENTS", 1)
        monkeypatch.setattr(chunks, "SLICE_ELEMENTS", 4096)
    else:
        monkeypatch.setattr(chunks, "PARALLEL_MIN_ELEMENTS", 1 << 62)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_equals_the_whole_array_formula(parallel, dtype, shape):
    x = (np.random.default_rng(0).normal(size=shape) * 4).astype(dtype)
    x.flat[:4] = [0.0, -9.0, 9.0, np.nan]
    np.testing.assert_array_equal(gelu(x), _gelu_whole(x))
    np.testing.assert_array_equal(gelu(x[..., ::2]), _gelu_whole(x[..., ::2]))  # a strided view


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_then_gelu_in_place(parallel, dtype, shape):
    rng = np.random.default_rng(1)
    y = rng.normal(size=shape).astype(dtype)
    bias = rng.normal(size=shape[-1:]).astype(dtype)
    want = _gelu_whole(y + bias)
    got = add_bias_then(y, bias, "gelu")
    assert got is y
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_layer_normalization_over_the_last_axis(parallel, dtype, shape):
    rng = np.random.default_rng(2)
    x = (rng.normal(size=shape) * 3 + 5).astype(dtype)
    gamma, beta = (rng.normal(size=shape[-1:]).astype(dtype) for _ in range(2))
    # Keras's formula on the whole array
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean(np.square(x - mean), axis=-1, keepdims=True)
    inv = dtype(1.0) / np.sqrt(var + dtype(1e-3)) * gamma
    want = x * inv + (-mean * inv + beta)
    np.testing.assert_array_equal(layer_normalization(x, gamma, beta, [-1], 1e-3), want)


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_over_the_last_axis(parallel, shape):
    x = np.random.default_rng(3).normal(size=shape) * 10
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    np.testing.assert_array_equal(softmax(x), e / np.sum(e, axis=-1, keepdims=True))


def test_slices_run_on_several_threads(monkeypatch):
    if chunks.usable_cores() < 2:
        pytest.skip("one CPU: no pool")
    monkeypatch.setattr(chunks, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(chunks, "SLICE_ELEMENTS", 64)
    seen = set()

    def square(x, out):
        seen.add(threading.get_ident())
        np.square(x, out=out)

    x = np.arange(100_000, dtype=np.float64)
    np.testing.assert_array_equal(chunks.map_elements(square, x), x * x)
    assert len(seen) >= 2


def test_out_must_be_contiguous():
    out = np.empty((4, 6))[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        chunks.map_elements(np.negative, np.ones((4, 3)), out)


def test_the_callers_error_state_holds_in_the_threads(monkeypatch, recwarn):
    monkeypatch.setattr(chunks, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(chunks, "SLICE_ELEMENTS", 64)
    x = np.zeros(10_000)
    with np.errstate(divide="ignore"):
        got = chunks.map_elements(lambda a, o: np.divide(1.0, a, out=o), x)
    assert np.all(got == np.inf)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    with pytest.warns(RuntimeWarning), np.errstate(divide="warn"):
        chunks.map_elements(lambda a, o: np.divide(1.0, a, out=o), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_gemms_shared_among_threads_are_the_same_bits(monkeypatch, dtype):
    """contract's batch of one-thread GEMMs (attention scores) split among threads gives
    what one np.matmul over the whole batch gives."""
    from ckpt_tool.layers.contract import contract

    rng = np.random.default_rng(4)
    q, k = (rng.normal(size=(3, 128, 5, 64)).astype(dtype) for _ in range(2))
    monkeypatch.setattr(chunks, "PARALLEL_MIN_ELEMENTS", 1)
    got = contract("BTNH,BSNH->BNTS", q, k)
    # (B, N, T, H) @ (B, N, H, S), one matmul over the stack
    want = np.matmul(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, np.einsum("btnh,bsnh->bnts", q, k), rtol=1e-4, atol=1e-4)
