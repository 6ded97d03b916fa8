"""HFConv1D: the "Conv1D" of OpenAI GPT / GPT-2 in Hugging Face transformers (`TFConv1D`),
a dense layer whose weight is stored (in, out) and whose bias is (1, out).

Letters: I input width, O output width.

    y = activation(x @ kernel + bias[0])     # x (..., I), kernel (I, O), bias (1, O)

Weights: `kernel` (I, O), `bias` (1, O). Config: `units` (O, optional), `activation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, get_int
from ckpt_tool.layers.op_dense import dense


class HFConv1DKind(LayerKind):
    name = "HFConv1D"
    summary = "activation(x @ kernel + bias[0]) (transformers' TFConv1D, bias (1, O))"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["kernel", "bias"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, tuple[int | None, ...]]:
        units = get_int(config, "units")
        return {"kernel": (input_shapes[0][-1], units), "bias": (1, units)}

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        if x.ndim < 1:
            raise LayerConfigError("HFConv1D input must have at least one dimension")
        kernel, bias = weights["kernel"], weights["bias"]
        if bias.shape[-1] != kernel.shape[-1]:
            raise LayerConfigError(
                f"HFConv1D bias {tuple(bias.shape)} does not fit kernel {tuple(kernel.shape)}"
            )
        return dense(x, kernel, bias[0], config.get("activation"))
