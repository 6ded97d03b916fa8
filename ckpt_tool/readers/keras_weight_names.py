"""Names of a Keras layer's weights, from its class and config.

Keras 3 `.weights.h5` files store a layer's weights as `vars/0`, `vars/1`, ...
in the order the layer created them (trainable first, then non-trainable).
Weights that a config flag turns off (`use_bias=False`, `center=False`, ...)
are simply absent, so the later indices shift. This module knows, for the
built-in layers ckpt-tool cares about, which weight each index is.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Config = Mapping[str, Any]


@dataclass(frozen=True)
class WeightSpec:
    """One weight a layer may create; `present(config)` says whether it does."""

    name: str
    present: Callable[[Config], bool] = lambda cfg: True


@dataclass(frozen=True)
class LayerSchema:
    """The weights of one layer class, in creation order.

    `defaults` fill config keys a saved config may omit; `choices` lists the
    values to try for each flag when there is no config at all.
    """

    weights: tuple[WeightSpec, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


def _flag(key: str) -> Callable[[Config], bool]:
    return lambda cfg: bool(cfg.get(key))


def _kernel_bias(kernel: str = "kernel") -> LayerSchema:
    return LayerSchema(
        (WeightSpec(kernel), WeightSpec("bias", _flag("use_bias"))),
        defaults={"use_bias": True},
        choices={"use_bias": (True, False)},
    )


_CONV_CLASSES = (
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
)

SCHEMAS: dict[str, LayerSchema] = {
    "Dense": _kernel_bias(),
    "EinsumDense": LayerSchema(
        (WeightSpec("kernel"), WeightSpec("bias", lambda cfg: cfg.get("bias_axes") is not None)),
        defaults={"bias_axes": None},
        choices={"bias_axes": ("b", None)},
    ),
    **{name: _kernel_bias() for name in _CONV_CLASSES},
    "DepthwiseConv1D": _kernel_bias("depthwise_kernel"),
    "DepthwiseConv2D": _kernel_bias("depthwise_kernel"),
    "SeparableConv1D": LayerSchema(
        (
            WeightSpec("depthwise_kernel"),
            WeightSpec("pointwise_kernel"),
            WeightSpec("bias", _flag("use_bias")),
        ),
        defaults={"use_bias": True},
        choices={"use_bias": (True, False)},
    ),
    "Embedding": LayerSchema((WeightSpec("embeddings"),)),
    "LayerNormalization": LayerSchema(
        (
            WeightSpec("gamma", lambda cfg: bool(cfg.get("scale") or cfg.get("rms_scaling"))),
            WeightSpec("beta", lambda cfg: bool(cfg.get("center") and not cfg.get("rms_scaling"))),
        ),
        defaults={"scale": True, "center": True, "rms_scaling": False},
        choices={"scale": (True, False), "center": (True, False), "rms_scaling": (False, True)},
    ),
    "RMSNormalization": LayerSchema((WeightSpec("scale"),)),
    "GroupNormalization": LayerSchema(
        (WeightSpec("gamma", _flag("scale")), WeightSpec("beta", _flag("center"))),
        defaults={"scale": True, "center": True},
        choices={"scale": (True, False), "center": (True, False)},
    ),
    "BatchNormalization": LayerSchema(
        (
            WeightSpec("gamma", _flag("scale")),
            WeightSpec("beta", _flag("center")),
            WeightSpec("moving_mean"),
            WeightSpec("moving_variance"),
        ),
        defaults={"scale": True, "center": True},
        choices={"scale": (True, False), "center": (True, False)},
    ),
    "Attention": LayerSchema(
        (
            WeightSpec("scale", _flag("use_scale")),
            WeightSpec("concat_score_weight", lambda cfg: cfg.get("score_mode") == "concat"),
        ),
        defaults={"use_scale": False, "score_mode": "dot"},
        choices={"use_scale": (False, True), "score_mode": ("dot", "concat")},
    ),
    "AdditiveAttention": LayerSchema(
        (WeightSpec("scale", _flag("use_scale")),),
        defaults={"use_scale": True},
        choices={"use_scale": (True, False)},
    ),
}
SCHEMAS["SeparableConv2D"] = SCHEMAS["SeparableConv1D"]

# MultiHeadAttention keeps no weights of its own: its sublayers (EinsumDense)
# do. Listed in the order MultiHeadAttention creates them (the order of
# `layer.weights`); the file stores them under these attribute names, with a
# leading underscore in Keras 3.0.0-3.0.2 and tf-keras (`_query_dense`).
MHA_SUBLAYERS = ("query_dense", "key_dense", "gate_dense", "value_dense", "output_dense")
MHA_CLASSES = ("MultiHeadAttention",)

# Layers of keras-hub (keras_nlp) that Keras saves like its own: weights they create
# themselves, in creation order.
SCHEMAS.update(
    {
        "ReversibleEmbedding": LayerSchema(
            (
                WeightSpec("embeddings"),
                WeightSpec("reverse_embeddings", lambda cfg: not cfg.get("tie_weights")),
            ),
            defaults={"tie_weights": True},
            choices={"tie_weights": (True, False)},
        ),
        "PositionEmbedding": LayerSchema((WeightSpec("embeddings"),)),
        "LlamaLayerNorm": LayerSchema((WeightSpec("scale"),)),
        "ViTPatchingAndEmbedding": LayerSchema(
            (WeightSpec("class_token", _flag("use_class_token")),),
            defaults={"use_class_token": True},
            choices={"use_class_token": (True, False)},
        ),
    }
)

# Composite layers (keras-hub's): attribute -> sublayer class, in the order the layer
# creates them (the order of `layer.weights`; the file lists attributes alphabetically).
# Attention layers whose sublayers are named like MultiHeadAttention's count as one.
_MHA, _LN, _DENSE = "MultiHeadAttention", "LayerNormalization", "Dense"
SUBLAYERS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "TransformerEncoder": (
        ("self_attention_layer", _MHA),
        ("self_attention_layer_norm", _LN),
        ("feedforward_layer_norm", _LN),
        ("feedforward_intermediate_dense", _DENSE),
        ("feedforward_output_dense", _DENSE),
    ),
    "TransformerDecoder": (
        ("self_attention_layer", _MHA),
        ("self_attention_layer_norm", _LN),
        ("cross_attention_layer", _MHA),
        ("cross_attention_layer_norm", _LN),
        ("feedforward_intermediate_dense", _DENSE),
        ("feedforward_output_dense", _DENSE),
        ("feedforward_layer_norm", _LN),
    ),
    "LlamaTransformerDecoder": (
        ("self_attention_layer", _MHA),  # LlamaAttention: MHA's sublayer names
        ("self_attention_layernorm", "LlamaLayerNorm"),
        ("feedforward_intermediate_dense", _DENSE),
        ("feedforward_gate_dense", _DENSE),
        ("feedforward_output_dense", _DENSE),
        ("feedforward_layernorm", "LlamaLayerNorm"),
    ),
    "TokenAndPositionEmbedding": (
        ("token_embedding", "ReversibleEmbedding"),
        ("position_embedding", "PositionEmbedding"),
    ),
    "ViTPatchingAndEmbedding": (
        ("patch_embedding", "Conv2D"),
        ("position_embedding", "Embedding"),
    ),
    "ViTEncoder": (("encoder_layers", None), ("layer_norm", _LN)),
    "ViTEncoderBlock": (
        ("layer_norm_1", _LN),
        ("mha", _MHA),
        ("layer_norm_2", _LN),
        ("mlp", "MLP"),
    ),
    "MLP": (("dense_1", _DENSE), ("dense_2", _DENSE)),
}
_LIBRARY_CLASSES = (
    "TransformerEncoder",
    "TransformerDecoder",
    "LlamaTransformerDecoder",
    "LlamaLayerNorm",
    "ReversibleEmbedding",
    "PositionEmbedding",
    "TokenAndPositionEmbedding",
    "ViTPatchingAndEmbedding",
    "ViTEncoder",
    "ViTEncoderBlock",
)


def sublayer(parent_class: str | None, attr_name: str) -> tuple[int, str | None] | None:
    """(creation rank, class) of a composite layer's sublayer attribute, or None."""
    for rank, (attr, class_name) in enumerate(SUBLAYERS.get(parent_class or "", ())):
        if attr == attr_name.lstrip("_"):
            return rank, class_name
    return None


def to_snake_case(name: str) -> str:
    """Keras' `naming.to_snake_case`: `MultiHeadAttention` -> `multi_head_attention`."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# `dense_3` -> Dense: file group names are snake_case class names plus a counter.
_CLASS_BY_SNAKE = {
    to_snake_case(name): name for name in (*SCHEMAS, *MHA_CLASSES, *_LIBRARY_CLASSES)
}


def class_from_group_name(group_name: str) -> str | None:
    """Guess the layer class from a Keras 3 file group name such as `dense_3`."""
    if group_name in _CLASS_BY_SNAKE:
        return _CLASS_BY_SNAKE[group_name]
    base = re.sub(r"_\d+$", "", group_name)
    return _CLASS_BY_SNAKE.get(base)


def mha_sublayer(attr_name: str) -> str | None:
    """`_query_dense` / `query_dense` -> `query_dense`; None if not an MHA sublayer."""
    name = attr_name.lstrip("_")
    return name if name in MHA_SUBLAYERS else None


def mha_sublayer_config(mha_config: Config | None) -> dict[str, Any] | None:
    """The EinsumDense config implied by a MultiHeadAttention config."""
    if mha_config is None:
        return None
    return {"bias_axes": "b" if mha_config.get("use_bias", True) else None}


def weight_names(class_name: str | None, config: Config | None, count: int) -> list[str] | None:
    """Names for a layer's `count` stored weights, in index order.

    With a config, the flags decide which weights exist; stored weights beyond
    the known ones (quantization scales, ...) keep their index as name. Without
    a config, every flag combination is tried and the answer is used only when
    exactly one list of names has `count` entries. None when unknown.
    """
    schema = SCHEMAS.get(class_name or "")
    if schema is None or count == 0:
        return None
    if config is not None:
        names = _names_for(schema, {**schema.defaults, **config})
        if len(names) > count:
            return None  # the file disagrees with the config: do not guess
        return names + [str(i) for i in range(len(names), count)]
    candidates = {
        tuple(
            _names_for(
                schema, {**schema.defaults, **dict(zip(schema.choices, values, strict=True))}
            )
        )
        for values in itertools.product(*schema.choices.values())
    }
    matching = [c for c in candidates if len(c) == count]
    return list(matching[0]) if len(matching) == 1 else None


def _names_for(schema: LayerSchema, config: Config) -> list[str]:
    return [w.name for w in schema.weights if w.present(config)]
