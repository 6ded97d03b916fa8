"""Dense and Random Synthesizer kernels against a small TensorFlow implementation.

Keras has no synthesizer layer, so the reference is written here with tf ops,
following Tay et al. 2020 (single head): B = W2 relu(W1 x + b1) + b2 per
position (dense) or a learned (L, L) matrix (random), Y = softmax(B) G(x).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import tensorflow as tf
from keras_layer_helpers import DTYPES, assert_close, cast, random_weights

from ckpt_tool.layers import LayerConfigError, get_layer_kind


def _tf_softmax(logits, causal: bool):
    if causal:
        t = logits.shape[-1]
        mask = tf.linalg.band_part(tf.ones((t, t), tf.bool), -1, 0)
        logits = tf.where(mask, logits, tf.constant(-1e9, logits.dtype))
        return tf.where(mask, tf.nn.softmax(logits, axis=-1), tf.zeros_like(logits))
    return tf.nn.softmax(logits, axis=-1)


def _tf_value(x, w):
    g = tf.einsum("btd,du->btu", x, w["value.kernel"])
    return g + w["value.bias"] if "value.bias" in w else g


def tf_dense_synthesizer(x, w, causal):
    t = x.shape[1]
    h = tf.einsum("btd,de->bte", x, w["w1.kernel"])
    h = tf.nn.relu(h + w["w1.bias"] if "w1.bias" in w else h)
    logits = tf.einsum("btd,dl->btl", h, w["w2.kernel"])
    logits = logits + w["w2.bias"] if "w2.bias" in w else logits
    probs = _tf_softmax(logits[:, :, :t], causal)
    return tf.matmul(probs, _tf_value(x, w)), probs


def tf_random_synthesizer(x, w, causal):
    t = x.shape[1]
    probs = _tf_softmax(tf.constant(w["random.logits"])[:t, :t], causal)
    y = tf.einsum("ts,bsu->btu", probs, _tf_value(x, w))
    return y, probs


CASES = [
    # (config, input shape (B, T, D))
    ({"seq_len": 6}, (2, 6, 5)),
    ({"seq_len": 9}, (2, 6, 5)),  # shorter input than the synthesizer's length
    ({"seq_len": 6, "units": 3}, (3, 6, 4)),
    ({"seq_len": 6, "use_bias": False}, (2, 6, 5)),
    ({}, (2, 7, 4)),  # length from the weights
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("config", "shape"), CASES, ids=[repr(c) for c in CASES])
@pytest.mark.parametrize(
    ("kind_name", "reference"),
    [("DenseSynthesizer", tf_dense_synthesizer), ("RandomSynthesizer", tf_random_synthesizer)],
)
def test_synthesizer_matches_tf(kind_name, reference, config, shape, causal, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((kind_name, config, shape)).encode()))
    x = rng.normal(size=shape).astype(dtype)
    length = config.get("seq_len", shape[1])
    weights = random_weights(kind_name, {**config, "seq_len": length}, [shape], rng)
    weights = cast(weights, dtype)
    ref_y, ref_p = reference(tf.constant(x), weights, causal)
    kind = get_layer_kind(kind_name)
    y = kind.apply(config, weights, [x], dtype=dtype, use_causal_mask=causal)
    assert_close(y, ref_y, dtype, "output")
    y2, p = kind.apply(
        config, weights, [x], dtype=dtype, use_causal_mask=causal, return_attention_scores=True
    )
    assert_close(y2, ref_y, dtype, "output")
    assert_close(p, ref_p, dtype, "attention probabilities")


def test_weight_roles():
    dense = get_layer_kind("DenseSynthesizer")
    assert dense.weight_names({}) == [
        "w1.kernel",
        "w1.bias",
        "w2.kernel",
        "w2.bias",
        "value.kernel",
        "value.bias",
    ]
    assert dense.weight_shapes({"seq_len": 8, "units": 3}, [(2, 8, 5)]) == {
        "w1.kernel": (5, 5),
        "w1.bias": (5,),
        "w2.kernel": (5, 8),
        "w2.bias": (8,),
        "value.kernel": (5, 3),
        "value.bias": (3,),
    }
    rand = get_layer_kind("RandomSynthesizer")
    assert rand.weight_names({"use_bias": False}) == ["random.logits", "value.kernel"]
    assert rand.weight_shapes({"seq_len": 8}, [(2, 8, 5)])["random.logits"] == (8, 8)


def test_input_longer_than_length_is_refused():
    rng = np.random.default_rng(0)
    kind = get_layer_kind("RandomSynthesizer")
    weights = random_weights("RandomSynthesizer", {"seq_len": 4}, [(1, 4, 3)], rng)
    with pytest.raises(LayerConfigError, match="exceeds"):
        kind.apply({}, weights, [rng.normal(size=(1, 5, 3))])
