"""PositionEmbedding, as keras-hub's `keras_hub.layers.PositionEmbedding` computes it:
the first T rows of a learned table, broadcast to the input's shape.

    y = broadcast(embeddings[:T], x.shape)   # x (B, T, D) -> (B, T, D)

With `whole_table: True` (ViT's position embedding, looked up at `arange(P)`), the
output is the whole table as (1, P, D), whatever the input's length.
Weights: `embeddings` (max_length, D).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, get_bool


def position_embedding(x: np.ndarray, table: np.ndarray, whole_table: bool = False) -> np.ndarray:
    """table[:T] broadcast to x's shape (B, T, D); the whole table (1, P, D) if asked."""
    if whole_table:
        return table[None]
    t = x.shape[1]
    if t > table.shape[0]:
        raise LayerConfigError(
            f"PositionEmbedding: sequence length {t} exceeds the table's {table.shape[0]} rows"
        )
    return np.broadcast_to(table[:t], (*x.shape[:-1], table.shape[-1])).copy()


class PositionEmbeddingKind(LayerKind):
    name = "PositionEmbedding"
    summary = "embeddings[:T] broadcast to the input (keras-hub's learned positions)"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["embeddings"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, tuple[int | None, ...]]:
        return {"embeddings": (None, None)}

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        whole = get_bool(config, "whole_table", False)
        return position_embedding(x, weights["embeddings"], whole)
