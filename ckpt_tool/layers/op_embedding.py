"""Embedding, as `keras.layers.Embedding` computes it: a row lookup.

    y = embeddings[ids]        # ids (...) integers -> (..., output_dim)

Weights: `embeddings` (input_dim, output_dim). With `mask_zero=True` the layer
also emits the Keras mask `ids != 0` (see `embedding_mask`); the lookup itself
is the same. Ids arrive as any numeric array (the layer contract casts inputs
to the compute dtype, which holds every id below 2**24 exactly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, get_bool, get_int


def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table[ids]; an id outside [0, input_dim) is an error (TensorFlow's gather on CPU)."""
    index = np.asarray(ids).astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= table.shape[0]):
        raise LayerConfigError(
            f"Embedding ids range over [{index.min()}, {index.max()}], outside "
            f"[0, {table.shape[0]})"
        )
    return table[index]


def embedding_mask(ids: np.ndarray, config: Mapping[str, Any]) -> np.ndarray | None:
    """The Keras mask an Embedding emits: `ids != 0` with mask_zero, else None."""
    return np.asarray(ids) != 0 if get_bool(config, "mask_zero", False) else None


class EmbeddingKind(LayerKind):
    name = "Embedding"
    summary = "embeddings[ids] (mask_zero: Keras mask ids != 0)"

    def infer_config(self, shapes):
        table = shapes["embeddings"]
        return {"input_dim": table[0], "output_dim": table[1], "mask_zero": False}

    def unknown_settings(self):
        return [{"mask_zero": True}], "mask_zero is not stored in the weights: assumed False"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["embeddings"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, tuple[int | None, ...]]:
        return {"embeddings": (get_int(config, "input_dim"), get_int(config, "output_dim"))}

    def compute(self, config, weights, inputs, **call_kwargs):
        (ids,) = inputs
        return embedding(ids, weights["embeddings"])
