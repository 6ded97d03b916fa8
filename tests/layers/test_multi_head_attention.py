"""MultiHeadAttention kernel against keras.layers.MultiHeadAttention (Keras 3, TF backend)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras_layer_helpers import (
    DTYPES,
    assert_close,
    cast,
    json_config,
    random_weights,
    set_keras_weights,
)

from ckpt_tool.layers import get_layer_kind
from ckpt_tool.layers.op_multi_head_attention import (
    build_attention_equation,
    build_proj_equation,
)

KIND = get_layer_kind("MultiHeadAttention")


@dataclass
class Case:
    id: str
    config: dict
    q: tuple[int, ...] = (2, 5, 8)
    v: tuple[int, ...] | None = None  # None: self-attention (value is query)
    k: tuple[int, ...] | None = None
    masks: tuple[str, ...] = ()  # of "attention", "query", "value", "key"
    causal: bool = False
    extra: dict = field(default_factory=dict)


CASES = [
    Case("self", {"num_heads": 2, "key_dim": 4}),
    Case("cross", {"num_heads": 3, "key_dim": 4}, q=(2, 5, 8), v=(2, 7, 6)),
    Case("cross_key", {"num_heads": 2, "key_dim": 3}, q=(2, 5, 8), v=(2, 7, 6), k=(2, 7, 9)),
    Case("value_dim", {"num_heads": 2, "key_dim": 4, "value_dim": 6}, v=(2, 7, 5)),
    Case("output_int", {"num_heads": 2, "key_dim": 4, "output_shape": 11}, v=(2, 7, 8)),
    Case("output_tuple", {"num_heads": 2, "key_dim": 4, "output_shape": (2, 3)}, v=(2, 7, 8)),
    Case("no_bias", {"num_heads": 2, "key_dim": 4, "use_bias": False}, v=(2, 7, 6)),
    Case("gate", {"num_heads": 2, "key_dim": 4, "value_dim": 5, "use_gate": True}, v=(2, 7, 6)),
    Case(
        "gate_no_bias",
        {"num_heads": 2, "key_dim": 4, "use_gate": True, "use_bias": False},
        v=(2, 7, 6),
        k=(2, 7, 3),
    ),
    Case("attention_mask", {"num_heads": 2, "key_dim": 4}, v=(2, 7, 6), masks=("attention",)),
    Case("query_mask", {"num_heads": 2, "key_dim": 4}, v=(2, 7, 6), masks=("query",)),
    Case("value_mask", {"num_heads": 2, "key_dim": 4}, v=(2, 7, 6), masks=("value",)),
    Case(
        "key_mask", {"num_heads": 2, "key_dim": 4}, v=(2, 7, 6), k=(2, 7, 5), masks=("key", "value")
    ),
    Case(
        "all_masks",
        {"num_heads": 2, "key_dim": 4, "use_gate": True},
        v=(2, 7, 6),
        k=(2, 7, 5),
        masks=("attention", "query", "value", "key"),
        causal=True,
    ),
    Case("causal_self", {"num_heads": 2, "key_dim": 4}, causal=True),
    Case("causal_cross", {"num_heads": 2, "key_dim": 4}, v=(2, 7, 6), causal=True),
    Case(
        "causal_and_mask",
        {"num_heads": 2, "key_dim": 4},
        v=(2, 5, 6),
        masks=("attention",),
        causal=True,
    ),
    Case("causal_value_mask", {"num_heads": 2, "key_dim": 4}, masks=("value",), causal=True),
    Case("sliding_window", {"num_heads": 2, "key_dim": 4, "sliding_window": 2}, causal=False),
    Case(
        "sliding_window_causal",
        {"num_heads": 2, "key_dim": 4, "sliding_window": 3},
        masks=("query",),
        causal=True,
    ),
    Case("dropout_config", {"num_heads": 2, "key_dim": 4, "dropout": 0.3}, masks=("query",)),
    Case("axes_1_rank3", {"num_heads": 2, "key_dim": 4, "attention_axes": 1}, v=(2, 7, 6)),
    Case(
        "rank4_axes_2",
        {"num_heads": 2, "key_dim": 3, "attention_axes": (2,)},
        q=(2, 3, 5, 6),
        v=(2, 3, 4, 7),
        masks=("attention",),
    ),
    Case(
        "rank4_axes_neg2",
        {"num_heads": 2, "key_dim": 3, "attention_axes": -2, "use_gate": True},
        q=(2, 3, 5, 6),
        v=(2, 3, 4, 7),
    ),
    Case(
        "rank4_axes_1_2",
        {"num_heads": 3, "key_dim": 2, "value_dim": 4},
        q=(2, 3, 4, 6),
        v=(2, 2, 5, 7),
        masks=("attention",),
    ),
    Case(
        "rank4_axes_1",
        {"num_heads": 2, "key_dim": 3, "attention_axes": [1], "output_shape": [2, 2]},
        q=(2, 4, 3, 6),
        v=(2, 5, 3, 7),
        k=(2, 5, 3, 4),
    ),
]


def _masks(case: Case, q_shape, v_shape, rng) -> dict[str, np.ndarray]:
    """Random boolean masks, each with at least one fully masked row or batch."""
    b, t, s = q_shape[0], q_shape[1], v_shape[1]
    out = {}
    if "attention" in case.masks:
        # default axes: (B, T, S); otherwise the scores' shape without the head axis
        if len(q_shape) == 3:
            shape = (b, t, s)
        else:
            axes = case.config.get("attention_axes")
            if axes is None:
                shape = (b, *q_shape[1:-1], *v_shape[1:-1])
            else:
                shape = (b, q_shape[1], q_shape[2], v_shape[2])
        m = rng.random(shape) < 0.7
        m[0, 0] = False  # a fully masked query row
        out["attention_mask"] = m
    if "query" in case.masks:
        m = rng.random((b, t)) < 0.7
        m[0, 1] = False
        m[1, 0] = True
        out["query_mask"] = m
    if "value" in case.masks:
        m = rng.random((b, s)) < 0.7
        m[0, 0] = True
        m[-1, :] = False  # every key of the last batch masked
        out["value_mask"] = m
    if "key" in case.masks:
        m = rng.random((b, s)) < 0.6
        m[0, 0] = True
        out["key_mask"] = m
    return out


def _keras_call(layer, q, v, k, masks, causal, ret):
    qt = tf.constant(q)
    if "query_mask" in masks:
        # Keras reads the query mask only from the tensor's attached Keras mask
        keras.src.backend.set_keras_mask(qt, tf.constant(masks["query_mask"]))
    kwargs = {name: tf.constant(m) for name, m in masks.items() if name != "query_mask"}
    if k is not None:
        kwargs["key"] = tf.constant(k)
    return layer(qt, tf.constant(v), use_causal_mask=causal, return_attention_scores=ret, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_keras(case: Case, dtype: str):
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    q = rng.normal(size=case.q).astype(dtype)
    v = q if case.v is None else rng.normal(size=case.v).astype(dtype)
    k = None if case.k is None else rng.normal(size=case.k).astype(dtype)
    layer = keras.layers.MultiHeadAttention(**case.config, dtype=dtype)
    layer(q, v, key=k)  # build
    config = json_config(layer)
    shapes = [q.shape, v.shape] + ([k.shape] if k is not None else [])
    weights = cast(random_weights("MultiHeadAttention", config, shapes, rng), dtype)
    set_keras_weights(layer, "MultiHeadAttention", config, weights)
    masks = _masks(case, q.shape, v.shape, rng)
    inputs = [q, v] if k is None else [q, v, k]

    # the built layer's config (axes normalised by build) and the constructor's
    for cfg, ret in [(config, False), (config, True), (case.config, False)]:
        ref = _keras_call(layer, q, v, k, masks, case.causal, ret)
        ours = KIND.apply(
            cfg,
            weights,
            inputs,
            dtype=dtype,
            use_causal_mask=case.causal,
            return_attention_scores=ret,
            **masks,
        )
        if ret:
            assert_close(ours[0], ref[0], dtype, "output (scores route)")
            assert_close(ours[1], ref[1], dtype, "attention scores")
        else:
            assert_close(ours, ref, dtype, "output")


def test_fully_masked_rows_differ_between_keras_routes():
    """The two Keras routes disagree on fully masked query rows; we follow each."""
    rng = np.random.default_rng(7)
    q = rng.normal(size=(1, 3, 4))
    layer = keras.layers.MultiHeadAttention(1, 2, dtype="float64")
    layer(q, q)
    config = json_config(layer)
    weights = random_weights("MultiHeadAttention", config, [q.shape, q.shape], rng)
    set_keras_weights(layer, "MultiHeadAttention", config, weights)
    mask = np.ones((1, 3, 3), bool)
    mask[0, 1] = False
    fast = KIND.apply(config, weights, [q, q], attention_mask=mask)
    scored, probs = KIND.apply(
        config, weights, [q, q], attention_mask=mask, return_attention_scores=True
    )
    assert np.allclose(probs[0, 0, 1], 0.0)
    # scores route: zero context, so the row is the output bias
    assert np.allclose(scored[0, 1], weights["output.bias"])
    assert not np.allclose(fast[0, 1], scored[0, 1])
    assert_close(fast, layer(q, q, attention_mask=mask), "float64")


@pytest.mark.parametrize(
    ("rank", "axes"), [(4, (1,)), (5, (1, 2)), (5, (2,)), (6, (1, 3)), (5, (1, 2, 3))]
)
def test_equations_match_keras_builders(rank, axes):
    from keras.src.layers.attention import multi_head_attention as kmha

    assert build_attention_equation(rank, axes) == kmha._build_attention_equation(rank, axes)
    for free, bound, out in [(2, 1, 2), (3, 1, 2), (2, 2, 1), (3, 2, 2)]:
        assert build_proj_equation(free, bound, out) == kmha._build_proj_equation(free, bound, out)


def test_default_equations_are_formats_md_section_4():
    assert build_proj_equation(2, 1, 2) == ("abc,cde->abde", "de", 4)
    assert build_attention_equation(4, (1,))[:2] == ("aecd,abcd->acbe", "acbe,aecd->abcd")
    assert build_proj_equation(2, 2, 1)[0] == "abcd,cde->abe"


TF_KERAS_CASES = [
    c
    for c in CASES
    if not {"use_gate", "sliding_window", "dropout"} & set(c.config)
    and c.id in {"cross", "cross_key", "value_dim", "output_tuple", "no_bias", "attention_mask",
                 "query_mask", "key_mask", "causal_cross", "causal_value_mask", "rank4_axes_1_2"}
]  # fmt: skip


@pytest.mark.parametrize("robust", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TF_KERAS_CASES, ids=lambda c: c.id)
def test_matches_tf_keras(case: Case, dtype: str, robust: bool):
    """The tf-keras flavor (legacy .h5 models), chosen from the config's own keys."""
    import tf_keras

    rng = np.random.default_rng(zlib.crc32(case.id.encode()) + 1)
    q = rng.normal(size=case.q).astype(dtype)
    v = q if case.v is None else rng.normal(size=case.v).astype(dtype)
    k = None if case.k is None else rng.normal(size=case.k).astype(dtype)
    layer = tf_keras.layers.MultiHeadAttention(
        **case.config, softmax_robust_masking=robust, dtype=dtype
    )
    layer(q, v, key=k)
    config = json_config(layer)
    assert "softmax_robust_masking" in config
    shapes = [q.shape, v.shape] + ([k.shape] if k is not None else [])
    weights = cast(random_weights("MultiHeadAttention", config, shapes, rng), dtype)
    set_keras_weights(layer, "MultiHeadAttention", config, weights)
    masks = _masks(case, q.shape, v.shape, rng)
    inputs = [q, v] if k is None else [q, v, k]

    def tensor(x, mask_name):
        t = tf.constant(x)
        if mask_name in masks:  # tf-keras reads every input mask from the tensors
            t._keras_mask = tf.constant(masks[mask_name])
        return t

    for ret in (False, True):
        ref = layer(
            tensor(q, "query_mask"),
            tensor(v, "value_mask"),
            key=None if k is None else tensor(k, "key_mask"),
            attention_mask=masks.get("attention_mask"),
            use_causal_mask=case.causal,
            return_attention_scores=ret,
        )
        ours = KIND.apply(
            config,
            weights,
            inputs,
            dtype=dtype,
            use_causal_mask=case.causal,
            return_attention_scores=ret,
            **masks,
        )
        if ret:
            assert_close(ours[0], ref[0], dtype, "output")
            assert_close(ours[1], ref[1], dtype, "attention scores")
        else:
            assert_close(ours, ref, dtype, "output")


def test_flavor_follows_the_config():
    """A tf-keras config (it has softmax_robust_masking) selects the tf-keras maths."""
    rng = np.random.default_rng(11)
    q = rng.normal(size=(2, 4, 6))
    config = {"num_heads": 2, "key_dim": 3}
    weights = random_weights("MultiHeadAttention", config, [q.shape, q.shape], rng)
    mask = np.ones((2, 4, 4), bool)
    mask[0, 2] = False  # a fully masked row: tf-keras keeps it, Keras 3 does not

    def run(cfg, **kw):
        return KIND.apply(cfg, weights, [q, q], attention_mask=mask, **kw)

    tfk = {**config, "softmax_robust_masking": False}
    assert np.array_equal(run(tfk), run(config, flavor="tf_keras"))
    assert np.array_equal(run(config), run(tfk, flavor="keras"))
    assert not np.allclose(run(tfk)[0, 2], run(config)[0, 2])
