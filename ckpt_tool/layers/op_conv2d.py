"""Conv2D, as `keras.layers.Conv2D` computes it, for the settings patch embeddings use:
channels_last, padding "valid", any strides, no dilation, one group.

    patches = windows of x (B, Hi, Wi, C) -> (B, Ho, Wo, kh, kw, C)
    y = einsum("bhwijc,ijco->bhwo", patches, kernel) + bias     # (B, Ho, Wo, O)

Weights: `kernel` (kh, kw, C, O) then `bias` (O,) when `use_bias`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import get_activation
from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, get_bool, get_int_tuple
from ckpt_tool.layers.contract import contract


def _pair(config: Mapping[str, Any], key: str, default: int) -> tuple[int, int]:
    value = get_int_tuple(config, key) or (default,)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def conv2d_valid(x: np.ndarray, kernel: np.ndarray, strides: tuple[int, int]) -> np.ndarray:
    """x (B, Hi, Wi, C), kernel (kh, kw, C, O) -> (B, Ho, Wo, O), padding "valid"."""
    kh, kw = kernel.shape[:2]
    sh, sw = strides
    # windows = (B, Hi-kh+1, Wi-kw+1, C, kh, kw) -> strided -> (B, Ho, Wo, kh, kw, C)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    windows = windows[:, ::sh, ::sw].transpose(0, 1, 2, 4, 5, 3)
    b, ho, wo = windows.shape[:3]
    flat = np.ascontiguousarray(windows).reshape(b, ho, wo, -1)
    # (B, Ho, Wo, kh*kw*C) @ (kh*kw*C, O)
    return contract("bhwk,ko->bhwo", flat, kernel.reshape(-1, kernel.shape[-1]))


class Conv2DKind(LayerKind):
    name = "Conv2D"
    summary = "2-D convolution (channels_last, padding valid, no dilation or groups)"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["kernel", "bias"] if get_bool(config, "use_bias", True) else ["kernel"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, tuple[int | None, ...]]:
        kh, kw = _pair(config, "kernel_size", 1)
        filters = config.get("filters")
        shapes: dict[str, tuple[int | None, ...]] = {
            "kernel": (kh, kw, input_shapes[0][-1], filters)
        }
        if get_bool(config, "use_bias", True):
            shapes["bias"] = (filters,)
        return shapes

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        unsupported = {
            "padding": (config.get("padding", "valid"), "valid"),
            "data_format": (config.get("data_format") or "channels_last", "channels_last"),
            "dilation_rate": (_pair(config, "dilation_rate", 1), (1, 1)),
            "groups": (config.get("groups", 1) or 1, 1),
        }
        for key, (value, supported) in unsupported.items():
            if value != supported:
                raise LayerConfigError(f"Conv2D {key}={value!r}: only {supported!r} is supported")
        if x.ndim != 4:
            raise LayerConfigError(f"Conv2D input must be (B, H, W, C), got shape {x.shape}")
        y = conv2d_valid(x, weights["kernel"], _pair(config, "strides", 1))
        if "bias" in weights:
            y = y + weights["bias"]
        return get_activation(config.get("activation"))(y)
