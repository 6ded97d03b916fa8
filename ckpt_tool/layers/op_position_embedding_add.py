"""AddPositionEmbedding: a learned absolute position table added to a sequence, as
GPT-2's `wpe` is used (`keras.layers.Embedding` called on positions 0 .. T-1).

Letters: B batch, T length, D width, P positions.

    y = x + embeddings[:T]          # x (B, T, D), embeddings (P, D) -> (B, T, D)

Weights: `embeddings` (P, D). No config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape


def add_position_embedding(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """x (B, T, D) + table[:T] (T, D)."""
    t = x.shape[-2]
    if t > table.shape[0]:
        raise LayerConfigError(f"input length {t} exceeds the {table.shape[0]} position embeddings")
    return x + table[:t]


class AddPositionEmbeddingKind(LayerKind):
    name = "AddPositionEmbedding"
    summary = "x + embeddings[:T] (learned absolute positions, GPT-2's wpe)"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["embeddings"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, tuple[int | None, ...]]:
        return {"embeddings": (None, input_shapes[0][-1])}

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        if x.ndim < 2:
            raise LayerConfigError("AddPositionEmbedding input must be (..., T, D)")
        return add_position_embedding(x, weights["embeddings"])
