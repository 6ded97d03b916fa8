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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import softmax
from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, const, require_int
from ckpt_tool.layers.contract import contract
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
    d = weights["q_lin.kernel"].shape[-1]
    if d % num_heads:
        raise LayerConfigError(f"width {d} is not a multiple of num_heads {num_heads}")
    h = d // num_heads

    def heads(role: str) -> np.ndarray:
        y = dense(x, weights[f"{role}.kernel"], weights[f"{role}.bias"])  # (B, T, D)
        return y.reshape((*y.shape[:-1], num_heads, h))  # (B, T, N, H)

    q = heads("q_lin") * const(1.0 / math.sqrt(h), x.dtype)  # scaled before the product
    k, v = heads("k_lin"), heads("v_lin")
    scores = contract("btnh,bsnh->bnts", q, k)  # (B, N, T, S)
    if attention_mask is not None:
        keep = np.asarray(attention_mask).astype(x.dtype)[:, None, None, :]  # (B, 1, 1, S)
        scores = scores - const(-DISTILBERT_MASK_ADDER, x.dtype) * (const(1.0, x.dtype) - keep)
    probs = softmax(scores, axis=-1)
    ctx = contract("bnts,bsnh->btnh", probs, v)  # (B, T, N, H)
    ctx = ctx.reshape((*ctx.shape[:-2], d))  # (B, T, D)
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
        d = input_shapes[0][-1]
        return {
            name: (d, d) if name.endswith("kernel") else (d,) for name in self.weight_names(config)
        }

    def compute(self, config, weights, inputs, attention_mask=None, **call_kwargs):
        (x,) = inputs
        heads = require_int(config, "num_heads", self.name)
        return distilbert_attention(x, attention_mask, weights, heads)
