"""Dense, EinsumDense, LayerNormalization, Add, Dropout, Activation against Keras 3."""

from __future__ import annotations

import zlib

import keras
import numpy as np
import pytest
from keras_layer_helpers import (
    DTYPES,
    assert_close,
    cast,
    json_config,
    random_weights,
    set_keras_weights,
)

from ckpt_tool.layers import get_layer_kind
from ckpt_tool.layers.activations import ACTIVATIONS

ACTIVATION_NAMES = sorted(set(ACTIVATIONS) - {"gelu_approximate"})


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _check_layer(kind_name, layer, config, inputs, dtype, rng, call=None):
    """Build `layer` on inputs, load random weights, compare outputs."""
    layer_inputs = inputs if len(inputs) > 1 else inputs[0]
    layer(layer_inputs)  # build
    weights = cast(random_weights(kind_name, config, [x.shape for x in inputs], rng), dtype)
    set_keras_weights(layer, kind_name, config, weights)
    ref = layer(layer_inputs) if call is None else call(layer, layer_inputs)
    ours = get_layer_kind(kind_name).apply(config, weights, inputs, dtype=dtype)
    assert_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_activations(activation, use_bias, dtype):
    rng = _rng("dense", activation, use_bias)
    x = (rng.normal(size=(3, 4, 6)) * 2).astype(dtype)  # reaches the tails of each function
    layer = keras.layers.Dense(5, activation=activation, use_bias=use_bias, dtype=dtype)
    layer(x)
    _check_layer("Dense", layer, json_config(layer), [x], dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_gelu_approximate(dtype):
    """tanh GELU: Keras has no name for it; keras_hub registers `gelu_approximate`."""
    rng = _rng("gelu_approximate")
    x = (rng.normal(size=(4, 7)) * 3).astype(dtype)
    layer = keras.layers.Dense(
        6, activation=lambda t: keras.activations.gelu(t, approximate=True), dtype=dtype
    )
    config = {"units": 6, "activation": "keras_hub>gelu_approximate", "use_bias": True}
    _check_layer("Dense", layer, config, [x], dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5), (2, 2, 3, 5)])
def test_dense_input_ranks(shape, dtype):
    rng = _rng("dense_rank", shape)
    x = rng.normal(size=shape).astype(dtype)
    layer = keras.layers.Dense(4, activation="tanh", dtype=dtype)
    layer(x)
    _check_layer("Dense", layer, json_config(layer), [x], dtype, rng)


EINSUM_CASES = [
    ("ab,bc->ac", (4, 5), 6, "c", None),
    ("abc,cd->abd", (2, 3, 5), (None, 6), "d", "relu"),
    ("abc,cde->abde", (2, 3, 5), (None, 2, 4), "de", None),
    ("abc,cde->abde", (2, 3, 5), (None, 2, 4), "e", None),
    ("abcd,cde->abe", (2, 3, 2, 4), (None, 7), "e", "gelu"),
    ("abcd,cdef->abef", (2, 3, 2, 4), (None, 2, 3), "ef", None),
    ("abc,cd->abd", (2, 3, 5), (None, 6), None, "sigmoid"),
    ("...b,bc->...c", (2, 3, 4, 5), 6, "c", None),
    ("ab...,bc->ac...", (2, 5, 3), (6, 3), "c", None),
    ("abc,dc->abd", (2, 3, 5), (None, 4), "d", None),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("equation", "in_shape", "out_shape", "bias_axes", "activation"),
    EINSUM_CASES,
    ids=[f"{c[0]}|{c[3]}" for c in EINSUM_CASES],
)
def test_einsum_dense(equation, in_shape, out_shape, bias_axes, activation, dtype):
    rng = _rng("einsum", equation, bias_axes)
    x = rng.normal(size=in_shape).astype(dtype)
    layer = keras.layers.EinsumDense(
        equation, out_shape, bias_axes=bias_axes, activation=activation, dtype=dtype
    )
    layer(x)
    _check_layer("EinsumDense", layer, json_config(layer), [x], dtype, rng)


LN_CASES = [
    ({}, (3, 4, 6)),
    ({"epsilon": 1e-6}, (3, 4, 6)),
    ({"axis": 1}, (3, 4, 6)),
    ({"axis": [1, 2]}, (3, 4, 6)),
    ({"axis": [-2, -1]}, (2, 3, 4, 5)),
    ({"axis": [2, 1]}, (2, 3, 4, 5)),
    ({"center": False}, (3, 6)),
    ({"scale": False}, (3, 6)),
    ({"center": False, "scale": False}, (3, 4, 6)),
    ({"rms_scaling": True}, (3, 4, 6)),
    ({"axis": [1, 3], "epsilon": 1e-5}, (2, 3, 4, 5)),
]


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("kwargs", "shape"), LN_CASES, ids=[repr(c[0]) for c in LN_CASES])
def test_layer_normalization(kwargs, shape, dtype):
    rng = _rng("ln", repr(kwargs))
    # an offset and a spread so that mean and variance both matter
    x = (rng.normal(size=shape) * 3 + 1.5).astype(dtype)
    layer = keras.layers.LayerNormalization(**kwargs, dtype=dtype)
    layer(x)
    config = json_config(layer)
    # random gamma and beta, not Keras's ones and zeros
    _check_layer("LayerNormalization", layer, config, [x], dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_three_inputs(dtype):
    rng = _rng("add")
    xs = [rng.normal(size=(2, 3, 4)).astype(dtype) for _ in range(3)]
    ref = keras.layers.Add(dtype=dtype)(xs)
    ours = get_layer_kind("Add").apply({}, {}, xs, dtype=dtype)
    assert_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_is_identity_at_inference(dtype):
    rng = _rng("dropout")
    x = rng.normal(size=(4, 5)).astype(dtype)
    layer = keras.layers.Dropout(0.5, dtype=dtype)
    ours = get_layer_kind("Dropout").apply(json_config(layer), {}, [x], dtype=dtype)
    assert_close(ours, layer(x, training=False), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "softmax", "silu", "relu"])
def test_activation_layer(activation, dtype):
    rng = _rng("activation", activation)
    x = (rng.normal(size=(3, 8)) * 2).astype(dtype)
    layer = keras.layers.Activation(activation, dtype=dtype)
    ours = get_layer_kind("Activation").apply(json_config(layer), {}, [x], dtype=dtype)
    assert_close(ours, layer(x), dtype)
