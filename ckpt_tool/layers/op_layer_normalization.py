"""LayerNormalization, exactly as Keras 3 computes it.

`keras.ops.layer_normalization` (TensorFlow backend, float32/float64 input):

    mean, var = moments(x, axes)            # var = mean((x - mean)^2), input dtype
    inv = rsqrt(var + epsilon) * gamma      # gamma reshaped to broadcast
    out = x * inv + (beta - mean * inv)

Weights: `gamma` then `beta` (each shaped by the normalized axes, sorted),
`gamma` only with `scale=True`, `beta` only with `center=True`. The
deprecated `rms_scaling=True` gives `x * rsqrt(var + epsilon) * gamma`, no beta.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, const, get_bool
from ckpt_tool.layers.chunks import map_rows
from ckpt_tool.layers.shape_match import shape_at, shape_layer


def _axes(config: Mapping[str, Any]) -> list[int]:
    a = config.get("axis", -1)
    if isinstance(a, int) and not isinstance(a, bool):
        return [a]
    if isinstance(a, (list, tuple)) and a and all(isinstance(i, int) for i in a):
        return sorted(a)
    raise LayerConfigError(f"LayerNormalization config axis={a!r} is not an int or a list")


def _epsilon(config: Mapping[str, Any]) -> float:
    eps = config.get("epsilon", 1e-3)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise LayerConfigError(f"LayerNormalization config epsilon={eps!r} is not a number")
    return float(eps)


def layer_normalization(
    x: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    axis: Sequence[int] = (-1,),
    epsilon: float = 1e-3,
    rms_scaling: bool = False,
) -> np.ndarray:
    """Normalize x over `axis` (a sorted list of axes), then scale and shift."""
    nd = x.ndim
    axes = sorted(axis)
    red = tuple(a % nd for a in axes)
    try:
        bshape = [1] * nd
        for a in axes:
            bshape[a] = x.shape[a]
    except IndexError:
        raise LayerConfigError(
            f"LayerNormalization axis {axes} out of range for rank {nd}"
        ) from None

    def broadcast(v: np.ndarray | None) -> np.ndarray | None:
        # Keras reshapes gamma/beta unless they already have x's rank or axis == [nd-1]
        if v is not None and v.ndim != nd and axes != [nd - 1]:
            return v.reshape(bshape)
        return v

    eps = const(epsilon, x.dtype)
    if red == (nd - 1,) and not rms_scaling and x.size and _is_vector(gamma) and _is_vector(beta):
        return _last_axis(x, gamma, beta, eps)
    # mean, var = [..., 1 at normalized axes]
    mean = np.mean(x, axis=red, keepdims=True)
    var = np.mean(np.square(x - mean), axis=red, keepdims=True)
    inv = const(1.0, x.dtype) / np.sqrt(var + eps)
    if rms_scaling:
        out = x * inv
        if gamma is not None:
            out = out * broadcast(gamma)
        return out
    gamma, beta = broadcast(gamma), broadcast(beta)
    if gamma is not None:
        inv = inv * gamma
    res = -mean * inv
    if beta is not None:
        res = res + beta
    return x * inv + res


def _is_vector(v: np.ndarray | None) -> bool:
    return v is None or v.ndim == 1


def _last_axis(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: np.ndarray
) -> np.ndarray:
    """The formula above over the last axis, rows at a time on every core (`chunks`):
    the same operations per row, so the same bits."""
    d = x.shape[-1]
    one = const(1.0, x.dtype)

    def rows(xr: np.ndarray, out: np.ndarray) -> None:
        mean = np.mean(xr, axis=-1, keepdims=True)  # (rows, 1)
        var = np.mean(np.square(xr - mean), axis=-1, keepdims=True)
        inv = one / np.sqrt(var + eps)
        if gamma is not None:
            inv = inv * gamma  # (rows, d)
        res = -mean * inv
        if beta is not None:
            res = res + beta
        np.multiply(xr, inv, out=out)
        out += res

    out = np.empty(x.shape, dtype=np.result_type(x, *(v for v in (gamma, beta) if v is not None)))
    map_rows(rows, x.reshape(-1, d), out.reshape(-1, d))
    return out


class LayerNormalizationKind(LayerKind):
    name = "LayerNormalization"
    summary = "(x - mean) * rsqrt(var + epsilon) * gamma + beta over `axis`"

    shape_match_rank = 20

    def match_shapes(self, infos, i):
        """gamma (D,), beta (D,)."""
        g, b = shape_at(infos, i), shape_at(infos, i + 1)
        if g is None or len(g) != 1 or b != g:
            return None
        weights = {"gamma": infos[i].key, "beta": infos[i + 1].key}
        return shape_layer("layer_normalization", self, weights, {"gamma": g, "beta": b}), 2

    def infer_config(self, shapes):
        return {"axis": -1, "epsilon": 1e-3, "center": "beta" in shapes, "scale": "gamma" in shapes}

    def unknown_settings(self):
        alternatives = [{"epsilon": e} for e in (1e-5, 1e-6, 1e-12)]
        return alternatives, "epsilon is not stored in the weights: assumed 1e-3"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        rms = get_bool(config, "rms_scaling", False)
        names = []
        if get_bool(config, "scale", True) or rms:
            names.append("gamma")
        if get_bool(config, "center", True) and not rms:
            names.append("beta")
        return names

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        shape = input_shapes[0]
        try:
            s = tuple(shape[a] for a in _axes(config))
        except IndexError:
            raise LayerConfigError(
                f"LayerNormalization axis {config.get('axis')} out of range for {shape}"
            ) from None
        return dict.fromkeys(self.weight_names(config), s)

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        return layer_normalization(
            x,
            weights.get("gamma"),
            weights.get("beta"),
            _axes(config),
            _epsilon(config),
            rms_scaling=get_bool(config, "rms_scaling", False),
        )
