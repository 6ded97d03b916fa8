"""Helpers shared by the layer-kernel tests: random weights, Keras twins, comparison."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from ckpt_tool.layers import get_layer_kind

DTYPES = ["float64", "float32"]


def random_weights(
    kind_name: str, config: dict, input_shapes: list[tuple[int, ...]], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random weights for every role, scaled so that softmaxes stay interesting."""
    kind = get_layer_kind(kind_name)
    shapes = kind.weight_shapes(config, input_shapes)
    out = {}
    for role in kind.weight_names(config):
        shape = shapes[role]
        fan_in = shape[0] if len(shape) > 1 else 1
        out[role] = rng.normal(size=shape) / np.sqrt(fan_in)
    return out


def set_keras_weights(layer: keras.layers.Layer, kind_name: str, config: dict, weights: dict):
    """Load our role-keyed weights into the Keras layer, in our weight_names order.

    Checks first that the Keras layer's own weights have exactly the shapes
    that order implies, so a wrong order cannot pass silently.
    """
    names = get_layer_kind(kind_name).weight_names(config)
    assert [tuple(w.shape) for w in layer.weights] == [weights[n].shape for n in names]
    layer.set_weights([weights[n] for n in names])


def json_config(layer: keras.layers.Layer) -> dict:
    """The layer's config as it would be read back from a .keras file's config.json."""

    def encode(obj):  # tf-keras configs hold TensorShapes (query_shape, ...)
        if hasattr(obj, "as_list"):
            return obj.as_list()
        raise TypeError(f"cannot serialize {obj!r}")

    return json.loads(json.dumps(layer.get_config(), default=encode))


def cast(d: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=dtype) for k, v in d.items()}


def assert_close(ours: np.ndarray, ref, dtype: str, what: str = "output") -> None:
    """float64: agreement to ~1e-12; float32: to float32 rounding (1e-5 of the magnitude)."""
    ref = np.asarray(ref)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert ours.dtype == np.dtype(dtype), f"{what}: dtype {ours.dtype} != {dtype}"
    scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))) / scale
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert err < tol, f"{what}: relative max abs error {err:.3g} >= {tol:g}"
