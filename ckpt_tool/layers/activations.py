"""Keras activations by name, in NumPy, computed in the input's dtype.

Each function follows the TensorFlow op that Keras 3 calls on the TensorFlow
backend (e.g. `gelu` exact is `0.5 * x * erfc(-x / sqrt(2))` as `tf.nn.gelu`
writes it). `get_activation` accepts what a Keras config holds: a name
(`"relu"`), None (linear), a registered name with a package prefix
(`"keras_hub>gelu_approximate"`), or a serialized dict whose `config` is one of
those.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError
from ckpt_tool.layers.chunks import map_elements, map_rows
from ckpt_tool.layers.gelu_float32 import gelu_float32_into

Activation = Callable[[np.ndarray], np.ndarray]


def _c(value: float, x: np.ndarray) -> np.ndarray:
    return np.asarray(value, dtype=x.dtype)[()]


def _c32(value: float, x: np.ndarray) -> np.ndarray:
    """A constant as TensorFlow's `cast(python_float, dtype)` makes it: rounded to
    float32 first (the float32 default for Python floats), then widened."""
    return np.asarray(np.float32(value), dtype=x.dtype)[()]


def linear(x: np.ndarray) -> np.ndarray:
    return x


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, _c(0.0, x))


def relu6(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, _c(0.0, x)), _c(6.0, x))


def leaky_relu(x: np.ndarray) -> np.ndarray:
    # keras.activations.leaky_relu(negative_slope=0.2) -> tf.nn.leaky_relu, whose
    # `alpha` attribute is a float32: the slope is float32(0.2) even for float64
    return np.where(x > 0, x, _c32(0.2, x) * x)


def elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, _c(0.0, x))))


def selu(x: np.ndarray) -> np.ndarray:
    alpha = _c(1.6732632423543772848170429916717, x)
    scale = _c(1.0507009873554804934193349852946, x)
    return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, _c(0.0, x))))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    one = _c(1.0, x)
    return np.where(x >= 0, one / (one + e), e / (one + e))


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return relu6(x + _c(3.0, x)) / _c(6.0, x)


def hard_silu(x: np.ndarray) -> np.ndarray:
    return x * hard_sigmoid(x)


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(_c(0.0, x), x)


def softsign(x: np.ndarray) -> np.ndarray:
    return x / (np.abs(x) + _c(1.0, x))


def exponential(x: np.ndarray) -> np.ndarray:
    return np.exp(x)


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def mish(x: np.ndarray) -> np.ndarray:
    return x * np.tanh(softplus(x))


@cache
def _erfc() -> Callable[..., np.ndarray]:
    """SciPy's erfc (its float32 loop evaluates in float64 and rounds once), else the
    float64 one of `special` rounded to the argument's dtype. Called as `f(x, out=o)`."""
    try:
        from scipy.special import erfc
    except ImportError:
        from ckpt_tool.layers.special import erfc as erfc64

        def erfc(x: np.ndarray, out: np.ndarray) -> np.ndarray:
            out[...] = erfc64(x)
            return out

    return erfc


def _gelu_into(x: np.ndarray, out: np.ndarray) -> None:
    """out = 0.5 * x * erfc(-x * float32(1/sqrt(2))) for a slice of x (float32/float64);
    `out` may be `x`. float32 runs its own float32 formula (`gelu_float32`), float64
    SciPy's erfc."""
    if x.dtype == np.float32:
        gelu_float32_into(x, out)
        return
    half_x = np.multiply(x, _c(0.5, x))
    np.multiply(x, -_c32(0.7071067811865476, x), out=out)
    _erfc()(out, out=out)  # float64 erfc rounded once to x's dtype
    out *= half_x


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU: 0.5 * x * erfc(-x / sqrt(2)) (keras.activations.gelu default).

    tf.nn.gelu casts 1/sqrt(2) from a Python float, so it is float32(1/sqrt(2))
    even in float64. Computed slice by slice on every core (`chunks`); float32 with
    its own formula, within float32 rounding of the float64 one (`gelu_float32`)."""
    if x.dtype not in (np.float32, np.float64):
        arg = (-x * _c32(0.7071067811865476, x)).astype(np.float64)
        e = _erfc()(arg, out=np.empty_like(arg)).astype(x.dtype, copy=False)
        e *= _c(0.5, x) * x
        return e
    return map_elements(_gelu_into, x)


def add_bias_then(y: np.ndarray, bias: np.ndarray, activation: Any) -> np.ndarray:
    """`activation(y + bias)` for a fresh `y` of bias's dtype, `bias` over y's last axis:
    in place, rows at a time on every core (`chunks`) where the activation allows."""
    name = activation_name(activation) if not callable(activation) else None
    if name not in ("linear", "gelu") or y.dtype not in (np.float32, np.float64):
        y += bias
        return get_activation(activation)(y)

    def rows(r: np.ndarray, out: np.ndarray) -> None:
        r += bias
        if name == "gelu":
            _gelu_into(r, r)

    map_rows(rows, y.reshape(-1, y.shape[-1]), y.reshape(-1, y.shape[-1]))
    return y


def gelu_approximate(x: np.ndarray) -> np.ndarray:
    """tanh GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    As tf.nn.gelu: 0.044715 is cast from a Python float (float32-rounded),
    sqrt(2/pi) multiplies as a Python float (exact in the tensor's dtype)."""
    inner = _c(0.7978845608028654, x) * (x + _c32(0.044715, x) * x**3)
    return _c(0.5, x) * x * (_c(1.0, x) + np.tanh(inner))


def _softmax_rows(x: np.ndarray, out: np.ndarray) -> None:
    """Softmax over the last axis of 2-D `x`, into `out` (may be `x`)."""
    np.subtract(x, np.max(x, axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=-1, keepdims=True)


def softmax(x: np.ndarray, axis: int | tuple[int, ...] = -1) -> np.ndarray:
    """exp(x - max) / sum, as tf.nn.softmax."""
    if axis in (-1, x.ndim - 1) and x.ndim >= 1 and x.size:
        # over the last axis: rows at a time, on every core (`chunks`)
        out = np.empty(x.shape, dtype=x.dtype)
        map_rows(_softmax_rows, x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1]))
        return out
    e = x - np.max(x, axis=axis, keepdims=True)  # a new array: safe to work in place
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def logsumexp(x: np.ndarray, axis: tuple[int, ...], keepdims: bool = True) -> np.ndarray:
    """As tf.math.reduce_logsumexp: max (0 where not finite) + log(sum(exp(x - max)))."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, _c(0.0, x))
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


ACTIVATIONS: dict[str, Activation] = {
    "linear": linear,
    "relu": relu,
    "relu6": relu6,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "selu": selu,
    "gelu": gelu,
    "gelu_approximate": gelu_approximate,
    "sigmoid": sigmoid,
    "hard_sigmoid": hard_sigmoid,
    "hard_silu": hard_silu,
    "hard_swish": hard_silu,
    "tanh": tanh,
    "softplus": softplus,
    "softsign": softsign,
    "exponential": exponential,
    "silu": silu,
    "swish": silu,
    "mish": mish,
    "softmax": softmax,
    "log_softmax": log_softmax,
}

# Names other libraries register for the same functions.
_ALIASES = {
    "gelu_approx": "gelu_approximate",
    "approximate_gelu": "gelu_approximate",
}


def activation_name(spec: Any) -> str:
    """The canonical activation name in a Keras config value (None -> linear)."""
    if spec is None:
        return "linear"
    if isinstance(spec, dict) and isinstance(spec.get("config"), str):
        # a registered function: {"class_name": "function", "config": "pkg>name", ...}
        spec = spec["config"]
    if not isinstance(spec, str):
        raise LayerConfigError(f"activation {spec!r} is not a name ckpt-tool knows")
    name = spec.rsplit(">", 1)[-1].rsplit(".", 1)[-1]  # "keras_hub>gelu_approximate"
    name = _ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        raise LayerConfigError(
            f"unknown activation {spec!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        )
    return name


def get_activation(spec: Any) -> Activation:
    """The activation function a Keras config value names (a callable passes through)."""
    if callable(spec):
        return spec
    return ACTIVATIONS[activation_name(spec)]
