"""The float32 GELU's own formula (`gelu_float32`) against the float64 GELU and TensorFlow.

Bounds are in units of 2^-24, float32's relative rounding step. The formula's constant
1/sqrt(2) and the argument -x/sqrt(2) are rounded to float32 as tf.nn.gelu rounds them,
which alone moves the result by about 1.5 units of max(|x|, 1); TensorFlow's float32
GELU measures 2.2 units here, the formula 2.3 (see the module's docstring).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erfc

from ckpt_tool.layers.activations import gelu
from ckpt_tool.layers.gelu_float32 import gelu_float32_into

UNIT = 2.0**-24


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = np.concatenate(
        [rng.uniform(-20, 20, 400_000), rng.normal(0, 2, 400_000), np.linspace(-20, 20, 400_001)]
    )
    return x.astype(np.float32)


def _exact(x: np.ndarray) -> np.ndarray:
    """0.5 x erfc(-x / sqrt 2) of the float32 inputs, in float64."""
    x64 = x.astype(np.float64)
    return 0.5 * x64 * erfc(-x64 / np.sqrt(2.0))


def _ours(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    gelu_float32_into(x, out)
    return out


def test_error_within_float32_rounding_of_the_input_scale(inputs):
    err = np.abs(_ours(inputs).astype(np.float64) - _exact(inputs))
    assert (err / np.maximum(np.abs(inputs), 1.0)).max() <= 3 * UNIT


def test_error_relative_to_the_result(inputs):
    """Small results keep their own precision: x > 0 within 10 units; x < 0 within
    10 (1 + a^2) units, a = |x|/sqrt 2 (the rounding of a, amplified by exp(-a^2))."""
    want = _exact(inputs)
    rel = np.abs(_ours(inputs).astype(np.float64) - want)
    normal = np.abs(want) >= np.finfo(np.float32).tiny
    rel[normal] /= np.abs(want[normal])
    pos, neg = normal & (inputs > 0), normal & (inputs < 0)
    assert rel[pos].max() <= 10 * UNIT
    a2 = inputs[neg].astype(np.float64) ** 2 / 2
    assert (rel[neg] / (1 + a2)).max() <= 10 * UNIT


def test_tiny_results_round_to_zero_as_float32_does(inputs):
    want = _exact(inputs)
    tiny = np.abs(want) < np.finfo(np.float32).tiny
    assert np.all(np.abs(_ours(inputs)[tiny]) <= np.finfo(np.float32).tiny)


def test_against_tensorflow(inputs):
    """tf.nn.gelu in float32 is itself within the same bound of the float64 GELU, and
    the two float32 results are within the sum of both errors."""
    import tensorflow as tf

    theirs = tf.nn.gelu(tf.constant(inputs), approximate=False).numpy().astype(np.float64)
    scale = np.maximum(np.abs(inputs), 1.0)
    assert (np.abs(theirs - _exact(inputs)) / scale).max() <= 3 * UNIT
    assert (np.abs(_ours(inputs) - theirs) / scale).max() <= 6 * UNIT


def test_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-30, -1e-30, -100.0])
    with np.errstate(invalid="ignore"):  # -inf * 0, as in TensorFlow
        got = _ours(x.astype(np.float32))
    assert got[0] == 0 and not np.signbit(got[0])
    assert got[1] == 0 and np.signbit(got[1])
    assert got[2] == np.inf
    assert np.isnan(got[3]) and np.isnan(got[4])
    assert got[5] == np.float32(1e30)
    assert got[6] == 0 and got[9] == 0
    np.testing.assert_allclose(got[7:9], [5e-31, -5e-31], rtol=3 * UNIT)


def test_no_overflow_or_invalid_warning_for_finite_inputs():
    """(Underflow, ignored by NumPy's default, happens in the tail as in TensorFlow.)"""
    x = np.array([3e38, -3e38, 1e-45, -1e-45, 0.0, -12.0], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = _ours(x)
    assert got[0] == np.float32(3e38) and got[1] == 0 and -1e-31 < got[5] < 0


def test_gelu_takes_it_for_float32_only(inputs):
    x = inputs[:5000]
    np.testing.assert_array_equal(gelu(x), _ours(x))
    x64 = x.astype(np.float64)
    c = np.float64(np.float32(0.7071067811865476))  # tf.nn.gelu's constant, float64 or not
    np.testing.assert_allclose(gelu(x64), 0.5 * x64 * erfc(-x64 * c), rtol=1e-13, atol=0)
