"""GPT2Attention: GPT-2's causal self-attention as transformers' `TFAttention` computes it,
with the fused query/key/value projection `c_attn` and the output projection `c_proj`
(both `TFConv1D`: kernels (in, out), biases (1, out)).

Letters: B batch, T query length, S key length (= T), D width, N heads, H = D / N.

    qkv = x @ c_attn.kernel + c_attn.bias[0]                       # (B, T, 3D)
    q, k, v = columns [0:D], [D:2D], [2D:3D] of qkv, each as (B, T, N, H)
    w = einsum("btnh,bsnh->bnts", q, k) / sqrt(H)                   # (B, N, T, S)
    w = w * causal - 1e4 * (1 - causal)       causal[t, s] = s <= t
    w += (1 - attention_mask[:, None, None, :]) * -1e4             # padding (B, 1, 1, S)
    ctx = softmax(w) @ v -> (B, T, D)
    y = ctx @ c_proj.kernel + c_proj.bias[0]                       # (B, T, D)

Weights: `c_attn.kernel` (D, 3D), `c_attn.bias` (1, 3D), `c_proj.kernel` (D, D),
`c_proj.bias` (1, D). Config: `num_heads`, `scale` (default True: divide by sqrt(H)).
Call: `attention_mask` (B, S), 1 keep, 0 pad (optional).
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

GPT2_MASK_ADDER = -10000.0  # TF GPT-2: causal and padding masks alike


def split_heads(y: np.ndarray, num_heads: int) -> np.ndarray:
    """(B, T, N*H) -> (B, T, N, H)."""
    return y.reshape((*y.shape[:-1], num_heads, y.shape[-1] // num_heads))


def causal_mask(t: int, s: int, dtype: np.dtype) -> np.ndarray:
    """(T, S): 1 where key s may be seen from query t (the lower triangle counted from the
    lower right corner, as TFAttention.causal_attention_mask), else 0."""
    return (np.arange(t)[:, None] >= np.arange(s)[None, :] - s + t).astype(dtype)


def gpt2_attention(
    x: np.ndarray,
    attention_mask: np.ndarray | None,
    weights: Mapping[str, np.ndarray],
    num_heads: int,
    scale: bool = True,
) -> np.ndarray:
    """GPT-2 causal self-attention, x (B, T, D) -> (B, T, D)."""
    d = weights["c_attn.kernel"].shape[-1] // 3
    if d % num_heads:
        raise LayerConfigError(f"width {d} is not a multiple of num_heads {num_heads}")
    qkv = dense(x, weights["c_attn.kernel"], weights["c_attn.bias"][0])  # (B, T, 3D)
    q, k, v = (split_heads(part, num_heads) for part in np.split(qkv, 3, axis=-1))
    w = contract("btnh,bsnh->bnts", q, k)  # (B, N, T, S)
    if scale:
        w = w / const(math.sqrt(d // num_heads), x.dtype)
    keep = causal_mask(w.shape[-2], w.shape[-1], x.dtype)  # (T, S)
    one, adder = const(1.0, x.dtype), const(GPT2_MASK_ADDER, x.dtype)
    w = w * keep + adder * (one - keep)
    if attention_mask is not None:
        pad = np.asarray(attention_mask).astype(x.dtype)[:, None, None, :]  # (B, 1, 1, S)
        w = w + (one - pad) * adder
    probs = softmax(w, axis=-1)
    ctx = contract("bnts,bsnh->btnh", probs, v)  # (B, T, N, H)
    ctx = ctx.reshape((*ctx.shape[:-2], d))  # (B, T, D)
    return dense(ctx, weights["c_proj.kernel"], weights["c_proj.bias"][0])


class GPT2AttentionKind(LayerKind):
    name = "GPT2Attention"
    summary = "GPT-2 causal self-attention, fused c_attn (D, 3D) split into query|key|value"
    call_kwargs = frozenset({"attention_mask"})

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["c_attn.kernel", "c_attn.bias", "c_proj.kernel", "c_proj.bias"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        d = input_shapes[0][-1]
        return {
            "c_attn.kernel": (d, 3 * d),
            "c_attn.bias": (1, 3 * d),
            "c_proj.kernel": (d, d),
            "c_proj.bias": (1, d),
        }

    def compute(self, config, weights, inputs, attention_mask=None, **call_kwargs):
        (x,) = inputs
        heads = require_int(config, "num_heads", self.name)
        scale = bool(config.get("scale", True))
        return gpt2_attention(x, attention_mask, weights, heads, scale)
