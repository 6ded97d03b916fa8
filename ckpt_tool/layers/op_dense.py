"""Dense: `activation(x @ kernel + bias)`.

Keras: `keras.layers.Dense(units, activation, use_bias)`; weights `kernel`
(in, units) then `bias` (units,).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import get_activation
from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, get_bool, require_int


def dense(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, activation: Any = None
) -> np.ndarray:
    """x (..., in) -> (..., units)."""
    lead = x.shape[:-1]
    # (prod(lead), in) @ (in, units) -> (prod(lead), units): one GEMM
    y = (x.reshape(-1, x.shape[-1]) @ kernel).reshape((*lead, kernel.shape[-1]))
    if bias is not None:
        y = y + bias
    return get_activation(activation)(y)


class DenseKind(LayerKind):
    name = "Dense"
    summary = "activation(x @ kernel + bias)"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["kernel", "bias"] if get_bool(config, "use_bias", True) else ["kernel"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        units = require_int(config, "units", self.name)
        d_in = input_shapes[0][-1]
        shapes: dict[str, Shape] = {"kernel": (d_in, units)}
        if get_bool(config, "use_bias", True):
            shapes["bias"] = (units,)
        return shapes

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        if x.ndim < 1:
            raise LayerConfigError("Dense input must have at least one dimension")
        return dense(x, weights["kernel"], weights.get("bias"), config.get("activation"))
