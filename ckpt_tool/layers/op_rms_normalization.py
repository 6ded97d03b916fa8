"""RMSNormalization, as `keras.layers.RMSNormalization` and keras-hub's `LlamaLayerNorm`
compute it (no mean subtracted, unlike LayerNormalization's deprecated `rms_scaling`):

    out = x * rsqrt(mean(x^2 over the last axis) + epsilon) * scale

Weights: `scale` (D,). LlamaLayerNorm computes in float32 whatever the layer's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, const


def rms_normalization(x: np.ndarray, scale: np.ndarray, epsilon: float) -> np.ndarray:
    """x (..., D) scaled to unit root mean square, times scale (D,)."""
    # ms = (..., 1)
    ms = np.mean(np.square(x), axis=-1, keepdims=True)
    return x * (const(1.0, x.dtype) / np.sqrt(ms + const(epsilon, x.dtype))) * scale


class RMSNormalizationKind(LayerKind):
    name = "RMSNormalization"
    summary = "x * rsqrt(mean(x^2) + epsilon) * scale over the last axis"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["scale"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        return {"scale": (input_shapes[0][-1],)}

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        eps = config.get("epsilon", 1e-6)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool):
            raise LayerConfigError(f"RMSNormalization config epsilon={eps!r} is not a number")
        return rms_normalization(x, weights["scale"], float(eps))
