"""NumPy reference kernels for Keras layers, one small module per layer kind.

`LAYERS` maps a Keras class name (or our own name, for layers Keras lacks) to
a `LayerKind`:

    kind = get_layer_kind("MultiHeadAttention")
    kind.weight_names(config)                 # roles, in Keras's creation order
    kind.weight_shapes(config, input_shapes)  # role -> shape
    kind.apply(config, weights, inputs, dtype=np.float32, use_causal_mask=True)

`config` is the layer's Keras config dict (as in a `.keras` file's
config.json), `weights` a dict keyed by role (e.g. "query.kernel"),
`inputs` a list of arrays in Keras call order. Every computation stays in
`dtype` (float64 by default; float32 mimics a float32 model's rounding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import (
    LayerConfigError,
    LayerKind,
    LayerWeightsError,
    UnknownLayerError,
)
from ckpt_tool.layers.op_attention import AdditiveAttentionKind, AttentionKind
from ckpt_tool.layers.op_bert import BertEmbeddingsKind, BertPoolerKind, BertSelfAttentionKind
from ckpt_tool.layers.op_conv2d import Conv2DKind
from ckpt_tool.layers.op_dense import DenseKind
from ckpt_tool.layers.op_distilbert_attention import DistilBertAttentionKind
from ckpt_tool.layers.op_einsum_dense import EinsumDenseKind
from ckpt_tool.layers.op_embedding import EmbeddingKind
from ckpt_tool.layers.op_gpt2_attention import GPT2AttentionKind
from ckpt_tool.layers.op_hf_conv1d import HFConv1DKind
from ckpt_tool.layers.op_layer_normalization import LayerNormalizationKind
from ckpt_tool.layers.op_llama_attention import LlamaAttentionKind
from ckpt_tool.layers.op_multi_head_attention import MultiHeadAttentionKind
from ckpt_tool.layers.op_position_embedding import PositionEmbeddingKind
from ckpt_tool.layers.op_position_embedding_add import AddPositionEmbeddingKind
from ckpt_tool.layers.op_rms_normalization import RMSNormalizationKind
from ckpt_tool.layers.op_simple import ActivationKind, AddKind, DropoutKind, MultiplyKind
from ckpt_tool.layers.op_synthesizer import DenseSynthesizerKind, RandomSynthesizerKind
from ckpt_tool.layers.op_vit_embedding import ViTPatchingAndEmbeddingKind
from ckpt_tool.layers.op_vit_embeddings import ViTEmbeddingsKind

__all__ = [
    "LAYERS",
    "LayerConfigError",
    "LayerKind",
    "LayerWeightsError",
    "UnknownLayerError",
    "apply_layer",
    "get_layer_kind",
]

LAYERS: dict[str, LayerKind] = {
    kind.name: kind
    for kind in (
        ActivationKind(),
        AddKind(),
        AdditiveAttentionKind(),
        AttentionKind(),
        BertEmbeddingsKind(),
        BertPoolerKind(),
        BertSelfAttentionKind(),
        Conv2DKind(),
        DenseKind(),
        DenseSynthesizerKind(),
        DropoutKind(),
        EinsumDenseKind(),
        EmbeddingKind(),
        LayerNormalizationKind(),
        LlamaAttentionKind(),
        MultiHeadAttentionKind(),
        MultiplyKind(),
        PositionEmbeddingKind(),
        RandomSynthesizerKind(),
        RMSNormalizationKind(),
        ViTPatchingAndEmbeddingKind(),
        GPT2AttentionKind(),
        HFConv1DKind(),
        AddPositionEmbeddingKind(),
        DistilBertAttentionKind(),
        ViTEmbeddingsKind(),
    )
}


def get_layer_kind(name: str) -> LayerKind:
    """The kernel for a Keras class name; an UnknownLayerError lists what exists."""
    kind = LAYERS.get(name)
    if kind is None:
        raise UnknownLayerError(
            f"no NumPy kernel for layer kind {name!r}; available: {', '.join(sorted(LAYERS))}"
        )
    return kind


def apply_layer(
    name: str,
    config: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    inputs: Sequence[np.ndarray],
    *,
    dtype: Any = np.float64,
    **call_kwargs: Any,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """`get_layer_kind(name).apply(config, weights, inputs, dtype=dtype, **call_kwargs)`."""
    return get_layer_kind(name).apply(config, weights, inputs, dtype=dtype, **call_kwargs)
