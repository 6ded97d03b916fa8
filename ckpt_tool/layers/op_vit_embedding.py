"""ViTPatchingAndEmbedding's last step, as keras-hub computes it: patches flattened to a
sequence, the class token put first, the position embeddings added.

    patches = reshape(conv_out, (B, P, D))            # conv_out (B, h, w, D), P = h*w
    x = concat([tile(class_token, B), patches], 1)    # (B, 1 + P, D)
    out = x + positions                               # positions (1, 1 + P, D)

Inputs: the patch projection's output and the position table (see PositionEmbedding's
`whole_table`). Weights: `class_token` (1, 1, D), only with `use_class_token`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, get_bool


def vit_embedding(
    patches: np.ndarray, positions: np.ndarray, class_token: np.ndarray | None
) -> np.ndarray:
    """(B, h, w, D) (or (B, h*w, D)) patches, (1, T, D) positions -> (B, T, D)."""
    b, d = patches.shape[0], patches.shape[-1]
    x = patches.reshape(b, -1, d)
    if class_token is not None:
        x = np.concatenate([np.broadcast_to(class_token.reshape(1, 1, d), (b, 1, d)), x], axis=1)
    if positions.shape[-2] != x.shape[1]:
        raise LayerConfigError(
            f"ViTPatchingAndEmbedding: {x.shape[1]} tokens but {positions.shape[-2]} positions"
        )
    return x + positions


class ViTPatchingAndEmbeddingKind(LayerKind):
    name = "ViTPatchingAndEmbedding"
    summary = "ViT: flatten patches, prepend the class token, add positions"
    min_inputs = 2
    max_inputs = 2

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["class_token"] if get_bool(config, "use_class_token", True) else []

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        d = input_shapes[0][-1]
        return {"class_token": (1, 1, d)} if self.weight_names(config) else {}

    def compute(self, config, weights, inputs, **call_kwargs):
        patches, positions = inputs
        return vit_embedding(patches, positions, weights.get("class_token"))
