"""ViTEmbeddings: a Vision Transformer's input as transformers' `TFViTEmbeddings` makes it
(no position interpolation): patches through a strided Conv2D, [CLS] in front, positions
added.

Letters: B batch, C channels, Hi x Wi image, p patch size, Gh x Gw = Hi/p x Wi/p patches,
L = Gh*Gw, D width.

    x = pixel_values as (B, Hi, Wi, C)               # the input is channels-first (B, C, Hi, Wi)
    patches = x cut into p x p tiles -> (B, L, p*p*C)    rows in (Gh, Gw) order
    emb = patches @ kernel as (p*p*C, D) + bias       # Conv2D(D, p, strides p, "valid")
    emb = concat([cls_token] * B, emb) + position_embeddings     # (B, 1 + L, D)

Weights: `cls_token` (1, 1, D), `position_embeddings` (1, 1 + L, D),
`patch_embeddings.projection.kernel` (p, p, C, D) (Keras Conv2D HWIO),
`patch_embeddings.projection.bias` (D,). Config: `channels_first` (default True: the
input is (B, C, Hi, Wi) as Hugging Face's TF ViT takes it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, get_bool
from ckpt_tool.layers.op_vit_embedding import vit_embedding

KERNEL, BIAS = "patch_embeddings.projection.kernel", "patch_embeddings.projection.bias"


def patch_projection(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Conv2D with kernel (p, q, C, D), strides (p, q), "valid": x (B, Hi, Wi, C) ->
    (B, Gh*Gw, D)."""
    p, q, c, d = kernel.shape
    b, hi, wi, _ = x.shape
    gh, gw = hi // p, wi // q
    tiles = x[:, : gh * p, : gw * q].reshape(b, gh, p, gw, q, c)  # (B, Gh, p, Gw, q, C)
    tiles = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(b * gh * gw, p * q * c)  # (B*L, p*q*C)
    emb = tiles @ kernel.reshape(p * q * c, d) + bias  # (B*L, D)
    return emb.reshape(b, gh * gw, d)


def vit_embeddings(
    pixel_values: np.ndarray, weights: Mapping[str, np.ndarray], channels_first: bool = True
) -> np.ndarray:
    """pixel_values (B, C, Hi, Wi) (or (B, Hi, Wi, C)) -> (B, 1 + L, D)."""
    x = pixel_values.transpose(0, 2, 3, 1) if channels_first else pixel_values  # (B, Hi, Wi, C)
    kernel = weights[KERNEL]
    if x.shape[-1] != kernel.shape[2]:
        raise LayerConfigError(
            f"the image has {x.shape[-1]} channels, the patch kernel takes {kernel.shape[2]}"
        )
    emb = patch_projection(x, kernel, weights[BIAS])  # (B, L, D)
    positions = weights["position_embeddings"]  # (1, 1 + L, D)
    if positions.shape[1] != emb.shape[1] + 1:
        raise LayerConfigError(
            f"the image gives {emb.shape[1]} patches, the position embeddings fit "
            f"{positions.shape[1] - 1} (no interpolation here)"
        )
    return vit_embedding(emb, positions, weights["cls_token"])


class ViTEmbeddingsKind(LayerKind):
    name = "ViTEmbeddings"
    summary = "[CLS] + Conv2D patches (strides = patch size) + position embeddings (ViT)"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["cls_token", "position_embeddings", KERNEL, BIAS]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, tuple[int | None, ...]]:
        channels_first = get_bool(config, "channels_first", True)
        shape = input_shapes[0]
        c = shape[1] if channels_first else shape[-1]
        return {
            "cls_token": (1, 1, None),
            "position_embeddings": (1, None, None),
            KERNEL: (None, None, c, None),
            BIAS: (None,),
        }

    def compute(self, config, weights, inputs, **call_kwargs):
        (pixels,) = inputs
        if pixels.ndim != 4:
            raise LayerConfigError(f"ViT takes (B, C, H, W) images, got shape {pixels.shape}")
        return vit_embeddings(pixels, weights, get_bool(config, "channels_first", True))
