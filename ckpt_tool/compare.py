"""Agreement metrics between two arrays and the pass/fail rule (Polygraphy-style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Defaults a float32 model meets with margin against a float64 reference.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


@dataclass
class Agreement:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    median_abs: float
    max_rel: float
    cosine: float
    # The smallest tolerances that would pass on their own.
    required_atol: float
    required_rtol: float
    atol: float
    rtol: float
    passed: bool

    def to_json(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data


def compare(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> Agreement:
    """Elementwise rule: an element fails only if its error exceeds both atol and
    rtol * |expected|. A shape mismatch fails with infinite errors."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        inf = float("inf")
        return Agreement(
            name, tuple(expected.shape), inf, inf, inf, inf, 0.0, inf, inf, atol, rtol, False
        )
    err = np.abs(actual - expected)
    scale = np.abs(expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err == 0, 0.0, err / scale)
    nonfinite_mismatch = bool(np.any(np.isnan(actual) != np.isnan(expected)))
    if err.size == 0:
        return Agreement(name, tuple(expected.shape), 0, 0, 0, 0, 1.0, 0, 0, atol, rtol, True)
    err = np.where(np.isnan(err) & np.isnan(expected) & np.isnan(actual), 0.0, err)
    failing = (err > atol) & (err > rtol * scale)
    return Agreement(
        name=name,
        shape=tuple(expected.shape),
        max_abs=float(np.max(err)),
        mean_abs=float(np.mean(err)),
        median_abs=float(np.median(err)),
        max_rel=float(np.max(rel)),
        cosine=_cosine(actual, expected),
        required_atol=float(np.max(err)),
        required_rtol=float(np.max(rel)),
        atol=atol,
        rtol=rtol,
        passed=not bool(np.any(failing)) and not nonfinite_mismatch,
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))
