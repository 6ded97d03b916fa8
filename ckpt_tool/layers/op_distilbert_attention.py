"""DistilBertAttention: DistilBERT's self-attention as transformers'
`TFMultiHeadSelfAttention` computes it, the output projection included.

Letters: B batch, T query length, S key length, D width, N heads, H = D / N.

    q = (x @ q_lin.kernel + q_lin.bias) as (B, T, N, H), scaled by 1/sqrt(H) first
    k, v = (x @ {k,v}_lin.kernel + bias) as (B, S, N, H)
    scores = einsum("btnh,bsnh->bnts", q, k)                        # (B, N, T, S)
    scores -= 1e30 * (1 - attention_mask[:, None, None, :])        # (B, 1, 1, S)
    ctx = softmax(scores) @ v -> (B, T, D)
    y = ctx @ out_lin.kernel + out_lin.bias                        # (B, T, D)

Weights: `{q,k,v,out}_lin.{kernel (D, D), bias (D,)}`. Config: `num_heads`.
Call: `attention_mask` (B, S), 1 keep, 0 pad (TF DistilBERT uses all ones when none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerKind, Shape, require_int
from ckpt_tool.layers.op_bert import split_heads_attention, square_projection_shapes
from ckpt_tool.layers.op_dense import dense

DISTILBERT_MASK_ADDER = -1e30
PROJECTIONS = ("q_lin", "k_lin", "v_lin", "out_lin")


def distilbert_attention(
    x: np.ndarray,
    attention_mask: np.ndarray | None,
    weights: Mapping[str, np.ndarray],
    num_heads: int,
) -> np.ndarray:
    """x (B, T, D) -> (B, T, D)."""
    ctx = split_heads_attention(
        x,
        attention_mask,
        weights,
        num_heads,
        PROJECTIONS[:3],
        DISTILBERT_MASK_ADDER,
        scale_queries=True,
        width="width",
    )
    return dense(ctx, weights["out_lin.kernel"], weights["out_lin.bias"])


class DistilBertAttentionKind(LayerKind):
    name = "DistilBertAttention"
    summary = "DistilBERT self-attention (q_lin, k_lin, v_lin, out_lin), mask -1e30"
    call_kwargs = frozenset({"attention_mask"})

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return [f"{p}.{w}" for p in PROJECTIONS for w in ("kernel", "bias")]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        return square_projection_shapes(self.weight_names(config), input_shapes[0][-1])

    def compute(self, config, weights, inputs, attention_mask=None, **call_kwargs):
        (x,) = inputs
        heads = require_int(config, "num_heads", self.name)
        return distilbert_attention(x, attention_mask, weights, heads)
