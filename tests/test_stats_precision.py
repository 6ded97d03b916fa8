"""list --stats' streamed std stays at the two-pass reference where one-pass sums cancel:
near-constant tensors, a far-out first value, large offsets, constants (several chunks)."""

from __future__ import annotations

import numpy as np
import pytest

from ckpt_tool.listing import tensor_stats

RNG = np.random.default_rng(0)
N = 2_500_000  # three chunks of the streamed statistics


def _reference(values: np.ndarray) -> tuple[float, float]:
    """Two-pass mean and std in extended precision."""
    x = values.astype(np.longdouble).ravel()
    mean = x.mean()
    return float(mean), float(np.sqrt(((x - mean) ** 2).mean()))


def _near_constant():
    return (1000 + RNG.standard_normal(N) * 1e-3).astype(np.float32)


def _far_first_value():
    x = RNG.standard_normal(N).astype(np.float32) * 1e-3 + 5
    x[0] = 1e6  # each chunk's first value is its shift: here far out
    x[1 << 20] = -3e5
    return x


def _offset_float64():
    return 1e9 + RNG.standard_normal(N)


def _large_ints():
    return (2**40 + RNG.integers(-1000, 1000, N)).astype(np.int64)


@pytest.mark.parametrize(
    "make",
    [_near_constant, _far_first_value, _offset_float64, _large_ints],
    ids=lambda f: f.__name__,
)
def test_streamed_std_matches_two_pass_reference(make):
    values = make()
    mean, std = _reference(values)
    stats = tensor_stats(values)
    assert stats["mean"] == pytest.approx(mean, rel=1e-12)
    assert stats["std"] == pytest.approx(std, rel=1e-9)


@pytest.mark.parametrize("value", [0.1, 1000.0, -3.5e7])
def test_constant_tensor_has_zero_std(value):
    stats = tensor_stats(np.full(N, value, np.float32))
    assert stats["std"] == 0.0
    assert stats["mean"] == float(np.float32(value))
