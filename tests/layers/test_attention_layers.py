"""Attention (Luong) and AdditiveAttention (Bahdanau) against Keras 3."""

from __future__ import annotations

import itertools
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

MASKS = ["none", "query", "value", "both"]


def _inputs(rng, dtype, with_key, tq=4, tv=6, d=5, dv=3):
    """query (2, Tq, D), value (2, Tv, Dv), key (2, Tv, D); without a key, Dv = D."""
    dv = dv if with_key else d
    q = rng.normal(size=(2, tq, d)).astype(dtype)
    v = rng.normal(size=(2, tv, dv)).astype(dtype)
    k = rng.normal(size=(2, tv, d)).astype(dtype) if with_key else None
    return [q, v] if k is None else [q, v, k]


def _masks(which, rng, tq=4, tv=6):
    if which == "none":
        return None
    qm = rng.random((2, tq)) < 0.7
    qm[0, 0] = False
    vm = rng.random((2, tv)) < 0.6
    vm[0, 0] = True
    vm[1, :] = False  # every key of the second batch masked: uniform probabilities
    return [qm if which in ("query", "both") else None, vm if which in ("value", "both") else None]


def _compare(kind_name, layer, config, inputs, masks, causal, dtype, rng):
    layer(inputs)  # build
    weights = cast(random_weights(kind_name, config, [x.shape for x in inputs], rng), dtype)
    set_keras_weights(layer, kind_name, config, weights)
    kind = get_layer_kind(kind_name)
    for ret in (False, True):
        ref = layer(inputs, mask=masks, use_causal_mask=causal, return_attention_scores=ret)
        ours = kind.apply(
            config,
            weights,
            inputs,
            dtype=dtype,
            mask=masks,
            use_causal_mask=causal,
            return_attention_scores=ret,
        )
        if ret:
            assert_close(ours[0], ref[0], dtype, "output")
            assert_close(ours[1], ref[1], dtype, "attention scores")
        else:
            assert_close(ours, ref, dtype, "output")


ATTENTION_CASES = [
    (mode, scale, key, mask, causal)
    for mode, scale, key in itertools.product(["dot", "concat"], [False, True], [False, True])
    for mask, causal in [("none", False), ("both", False), ("query", True), ("value", True)]
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("score_mode", "use_scale", "with_key", "mask", "causal"), ATTENTION_CASES)
def test_attention(score_mode, use_scale, with_key, mask, causal, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((score_mode, use_scale, with_key, mask)).encode()))
    inputs = _inputs(rng, dtype, with_key)
    layer = keras.layers.Attention(use_scale=use_scale, score_mode=score_mode, dtype=dtype)
    layer(inputs)
    config = json_config(layer)
    _compare("Attention", layer, config, inputs, _masks(mask, rng), causal, dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_scale", [True, False])
@pytest.mark.parametrize("with_key", [False, True])
@pytest.mark.parametrize(("mask", "causal"), [("none", False), ("both", False), ("value", True)])
def test_additive_attention(use_scale, with_key, mask, causal, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((use_scale, with_key, mask, causal)).encode()))
    inputs = _inputs(rng, dtype, with_key)
    layer = keras.layers.AdditiveAttention(use_scale=use_scale, dtype=dtype)
    layer(inputs)
    config = json_config(layer)
    _compare("AdditiveAttention", layer, config, inputs, _masks(mask, rng), causal, dtype, rng)


def test_attention_self_same_length_causal():
    """Self-attention [x, x], causal, no masks: the decoder case."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 4))
    layer = keras.layers.Attention(use_scale=True, dtype="float64")
    layer([x, x])
    config = json_config(layer)
    _compare("Attention", layer, config, [x, x], None, True, "float64", rng)
