"""The layer registry: roles in Keras's order and shapes, lookups, and clear errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_layer_helpers import json_config, random_weights

from ckpt_tool.errors import CkptToolError
from ckpt_tool.layers import (
    LAYERS,
    LayerConfigError,
    LayerWeightsError,
    UnknownLayerError,
    apply_layer,
    get_layer_kind,
)

# Keras sublayer / variable names for our MultiHeadAttention roles.
MHA_PATHS = {
    "query": "query",
    "key": "key",
    "value": "value",
    "gate": "gate",
    "output": "attention_output",
}


def _role_of_path(path: str) -> str:
    """'mha/attention_output/kernel' -> 'output.kernel'; 'dense/kernel' -> 'kernel'."""
    parts = path.split("/")
    if len(parts) >= 3:
        sub = {v: k for k, v in MHA_PATHS.items()}[parts[-2]]
        return f"{sub}.{parts[-1]}"
    return parts[-1]


LAYER_CASES = [
    (keras.layers.MultiHeadAttention, {"num_heads": 2, "key_dim": 3}, [(1, 4, 5), (1, 6, 7)]),
    (
        keras.layers.MultiHeadAttention,
        {"num_heads": 2, "key_dim": 3, "use_gate": True},
        [(1, 4, 5), (1, 6, 7), (1, 6, 2)],
    ),
    (
        keras.layers.MultiHeadAttention,
        {"num_heads": 2, "key_dim": 3, "use_gate": True, "use_bias": False, "value_dim": 4},
        [(1, 4, 5), (1, 6, 7)],
    ),
    (
        keras.layers.MultiHeadAttention,
        {"num_heads": 3, "key_dim": 2, "output_shape": (2, 5)},
        [(1, 3, 4, 5), (1, 3, 2, 7)],
    ),
    (keras.layers.Dense, {"units": 4}, [(2, 3)]),
    (keras.layers.Dense, {"units": 4, "use_bias": False}, [(2, 5, 3)]),
    (
        keras.layers.EinsumDense,
        {"equation": "abc,cde->abde", "output_shape": (None, 2, 3), "bias_axes": "de"},
        [(1, 4, 5)],
    ),
    (
        keras.layers.EinsumDense,
        {"equation": "ab...,bc->ac...", "output_shape": (6, 3), "bias_axes": "c"},
        [(1, 5, 3)],
    ),
    (keras.layers.LayerNormalization, {}, [(2, 5)]),
    (keras.layers.LayerNormalization, {"axis": [1, 2], "center": False}, [(2, 3, 5)]),
    (keras.layers.LayerNormalization, {"scale": False}, [(2, 3, 5)]),
    (keras.layers.Attention, {"use_scale": True, "score_mode": "concat"}, [(1, 3, 4), (1, 5, 4)]),
    (keras.layers.Attention, {}, [(1, 3, 4), (1, 5, 4)]),
    (keras.layers.AdditiveAttention, {}, [(1, 3, 4), (1, 5, 4)]),
    (keras.layers.AdditiveAttention, {"use_scale": False}, [(1, 3, 4), (1, 5, 4)]),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "shapes"), LAYER_CASES, ids=[f"{c[0].__name__}{c[1]}" for c in LAYER_CASES]
)
def test_weight_names_and_shapes_follow_keras(cls, kwargs, shapes):
    layer = cls(**kwargs)
    xs = [np.zeros(s, "float32") for s in shapes]
    if cls is keras.layers.MultiHeadAttention:
        layer(xs[0], xs[1], key=xs[2] if len(xs) > 2 else None)
    elif cls in (keras.layers.Attention, keras.layers.AdditiveAttention):
        layer(xs)
    else:
        layer(xs[0])
    kind = get_layer_kind(cls.__name__)
    for config in (json_config(layer), kwargs):
        names = kind.weight_names(config)
        assert names == [_role_of_path(w.path) for w in layer.weights]
        shapes_ = kind.weight_shapes(config, shapes)
        assert [shapes_[n] for n in names] == [tuple(w.shape) for w in layer.weights]


def test_registry_names_are_keras_class_names_or_ours():
    ours = {
        "DenseSynthesizer",
        "RandomSynthesizer",
        "BertEmbeddings",
        "BertSelfAttention",
        "BertPooler",
        # Hugging Face TF families (ckpt_tool/families/hf_*.py)
        "AddPositionEmbedding",
        "DistilBertAttention",
        "GPT2Attention",
        "HFConv1D",
        "ViTEmbeddings",
        # keras-hub backbones (ckpt_tool/families/keras_hub*.py)
        "LlamaAttention",
        "ViTPatchingAndEmbedding",
    }
    import keras_hub

    for name in set(LAYERS) - ours:
        assert hasattr(keras.layers, name) or hasattr(keras_hub.layers, name), name
    for name, kind in LAYERS.items():
        assert kind.name == name
        assert kind.summary


def test_unknown_kind_lists_what_exists():
    with pytest.raises(UnknownLayerError) as err:
        get_layer_kind("Conv3D")
    assert isinstance(err.value, CkptToolError)
    for name in LAYERS:
        assert name in str(err.value)


def _mha_setup():
    rng = np.random.default_rng(0)
    config = {"num_heads": 2, "key_dim": 3}
    shapes = [(1, 4, 5), (1, 6, 5)]
    weights = random_weights("MultiHeadAttention", config, shapes, rng)
    inputs = [rng.normal(size=s) for s in shapes]
    return config, weights, inputs


def test_missing_and_extra_weights_are_named():
    config, weights, inputs = _mha_setup()
    del weights["key.bias"]
    weights["gate.kernel"] = weights["query.kernel"]
    with pytest.raises(LayerWeightsError, match=r"missing key\.bias.*unexpected gate\.kernel"):
        apply_layer("MultiHeadAttention", config, weights, inputs)


def test_wrong_weight_shape_is_named():
    config, weights, inputs = _mha_setup()
    weights["output.kernel"] = weights["output.kernel"].transpose(2, 0, 1)
    with pytest.raises(LayerWeightsError, match=r"output\.kernel has shape \(5, 2, 3\)"):
        apply_layer("MultiHeadAttention", config, weights, inputs)


def test_bad_calls_are_config_errors():
    config, weights, inputs = _mha_setup()
    with pytest.raises(LayerConfigError, match="takes 2 to 3 input"):
        apply_layer("MultiHeadAttention", config, weights, inputs[:1])
    with pytest.raises(LayerConfigError, match="unknown call argument"):
        apply_layer("MultiHeadAttention", config, weights, inputs, causal=True)
    with pytest.raises(LayerConfigError, match="float64 or float32"):
        apply_layer("MultiHeadAttention", config, weights, inputs, dtype=np.float16)
    with pytest.raises(LayerConfigError, match="key_dim"):
        apply_layer("MultiHeadAttention", {"num_heads": 2}, weights, inputs)
    with pytest.raises(LayerConfigError, match="does not broadcast"):
        apply_layer(
            "MultiHeadAttention", config, weights, inputs, attention_mask=np.ones((1, 4, 5), bool)
        )
    with pytest.raises(LayerConfigError, match="unknown activation 'swoosh'"):
        apply_layer("Activation", {"activation": "swoosh"}, {}, [inputs[0]])


def test_float32_stays_float32():
    config, weights, inputs = _mha_setup()
    out, scores = apply_layer(
        "MultiHeadAttention",
        config,
        weights,
        inputs,
        dtype=np.float32,
        return_attention_scores=True,
        use_causal_mask=True,
    )
    assert out.dtype == np.float32 and scores.dtype == np.float32


def test_training_argument_is_accepted_and_ignored():
    config, weights, inputs = _mha_setup()
    a = apply_layer("MultiHeadAttention", config, weights, inputs, training=False)
    b = apply_layer("MultiHeadAttention", config, weights, inputs)
    assert np.array_equal(a, b)
