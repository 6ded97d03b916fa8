"""Dense: `activation(x @ kernel + bias)`.

Keras: `keras.layers.Dense(units, activation, use_bias)`; weights `kernel`
(in, units) then `bias` (units,).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import add_bias_then, get_activation
from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, get_bool, require_int
from ckpt_tool.layers.shape_match import shape_at, shape_layer


def dense(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, activation: Any = None
) -> np.ndarray:
    """x (..., in) -> (..., units)."""
    lead = x.shape[:-1]
    # (prod(lead), in) @ (in, units) -> (prod(lead), units): one GEMM
    y = (x.reshape(-1, x.shape[-1]) @ kernel).reshape((*lead, kernel.shape[-1]))
    if bias is not None:
        if np.result_type(y, bias) == y.dtype and bias.shape == y.shape[-1:]:
            return add_bias_then(y, bias, activation)  # in place: the GEMM's result is ours
        y = y + bias
    return get_activation(activation)(y)


class DenseKind(LayerKind):
    name = "Dense"
    summary = "activation(x @ kernel + bias)"

    shape_match_rank = 50
    _ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh", "softmax")

    def match_shapes(self, infos, i):
        """kernel (I,O) [bias (O,)]."""
        k = shape_at(infos, i)
        if k is None or len(k) != 2:
            return None
        weights, shapes = {"kernel": infos[i].key}, {"kernel": k}
        if shape_at(infos, i + 1) == (k[1],):
            weights["bias"], shapes["bias"] = infos[i + 1].key, (k[1],)
        return shape_layer("dense", self, weights, shapes), len(weights)

    def infer_config(self, shapes):
        return {"units": shapes["kernel"][-1], "use_bias": "bias" in shapes, "activation": "linear"}

    def unknown_settings(self):
        alternatives = [{"activation": a} for a in self._ACTIVATIONS]
        return alternatives, "activation is not stored in the weights: assumed linear"

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
