"""Google BERT's blocks (`modeling.py`), for TF1 name-based BERT checkpoints.

Letters: B batch, T length, D hidden size, N heads, H = D / N, V vocabulary.

BertEmbeddings, inputs input_ids (B, T), token_type_ids (B, T):

    x = word[input_ids] + token_type[token_type_ids] + position[:T]   # (B, T, D)
    y = LayerNorm(x), epsilon 1e-12 (contrib layer_norm)

BertSelfAttention, inputs hidden (B, T, D), attention_mask (B, T) (1 keep, 0 pad),
2-D kernels (D, D) whose columns are N heads of H:

    q = (x Wq + bq) as (B, T, N, H); k, v alike
    scores = einsum("btnh,bsnh->bnts", q, k) * 1/sqrt(H)              # (B, N, T, S)
    scores += (1 - mask[:, None, None, :]) * -10000
    ctx = softmax(scores) @ v -> (B, T, N*H)                          # (B, T, D)

BertPooler: tanh(x[:, 0] W + b), (B, D).

Weights: BertEmbeddings `word_embeddings` (V, D), `token_type_embeddings`
(types, D), `position_embeddings` (P, D), `LayerNorm.gamma`, `LayerNorm.beta`;
BertSelfAttention `{query,key,value}.{kernel,bias}`; BertPooler `kernel`, `bias`.
Config: `num_heads` (BertSelfAttention), `epsilon` (BertEmbeddings, default 1e-12).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import softmax, tanh
from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, const, require_int
from ckpt_tool.layers.contract import contract
from ckpt_tool.layers.op_dense import dense
from ckpt_tool.layers.op_embedding import embedding
from ckpt_tool.layers.op_layer_normalization import layer_normalization

BERT_LAYER_NORM_EPSILON = 1e-12
BERT_MASK_ADDER = -10000.0


def bert_embeddings(
    input_ids: np.ndarray,
    token_type_ids: np.ndarray | None,
    weights: Mapping[str, np.ndarray],
    epsilon: float = BERT_LAYER_NORM_EPSILON,
    position_padding_idx: int | None = None,
) -> np.ndarray:
    """Word + token type + position embeddings, then layer norm -> (B, T, D).

    With `position_padding_idx` (RoBERTa) positions count only non-padding tokens and
    start after the padding index: pos = cumsum(ids != pad) * (ids != pad) + pad."""
    x = embedding(input_ids, weights["word_embeddings"])  # (B, T, D)
    if "token_type_embeddings" in weights:
        types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = x + embedding(types, weights["token_type_embeddings"])
    t = x.shape[-2]
    positions = weights["position_embeddings"]
    if t > positions.shape[0]:
        raise LayerConfigError(
            f"BERT input length {t} exceeds max_position_embeddings {positions.shape[0]}"
        )
    if position_padding_idx is None:
        x = x + positions[:t]
    else:
        real = (input_ids != position_padding_idx).astype(np.int64)  # (B, T)
        ids = np.cumsum(real, axis=-1) * real + position_padding_idx  # (B, T)
        if ids.max() >= positions.shape[0]:
            raise LayerConfigError(
                f"input length {t} exceeds the {positions.shape[0]} position embeddings"
            )
        x = x + embedding(ids, positions)
    return layer_normalization(
        x, weights["LayerNorm.gamma"], weights["LayerNorm.beta"], (-1,), epsilon
    )


def split_heads_attention(
    x: np.ndarray,
    attention_mask: np.ndarray | None,
    weights: Mapping[str, np.ndarray],
    num_heads: int,
    projections: Sequence[str] = ("query", "key", "value"),
    mask_adder: float = BERT_MASK_ADDER,
    scale_queries: bool = False,
    width: str = "hidden size",
) -> np.ndarray:
    """Self-attention whose 2-D (D, D) kernels `projections` (query, key, value) hold N
    heads of H side by side -> context (B, T, D). Masked keys' scores get `mask_adder`;
    1/sqrt(H) scales the scores (BERT) or, with `scale_queries`, the queries
    (DistilBERT). `width`: what the error calls D."""
    query, key, value = projections
    d = weights[f"{query}.kernel"].shape[-1]
    if d % num_heads:
        raise LayerConfigError(f"{width} {d} is not a multiple of num_heads {num_heads}")
    h = d // num_heads

    def heads(role: str) -> np.ndarray:
        y = dense(x, weights[f"{role}.kernel"], weights[f"{role}.bias"])  # (B, T, D)
        return y.reshape((*y.shape[:-1], num_heads, h))  # (B, T, N, H)

    scale = const(1.0 / math.sqrt(h), x.dtype)
    q, k, v = heads(query), heads(key), heads(value)
    if scale_queries:
        q = q * scale
    scores = contract("btnh,bsnh->bnts", q, k)  # (B, N, T, S)
    if not scale_queries:
        scores = scores * scale
    if attention_mask is not None:
        keep = np.asarray(attention_mask).astype(x.dtype)[:, None, None, :]  # (B, 1, 1, S)
        scores = scores + (const(1.0, x.dtype) - keep) * const(mask_adder, x.dtype)
    probs = softmax(scores, axis=-1)
    ctx = contract("bnts,bsnh->btnh", probs, v)  # (B, T, N, H)
    return ctx.reshape((*ctx.shape[:-2], d))


def square_projection_shapes(names: Sequence[str], d: int | None) -> dict[str, Shape]:
    """(D, D) for each projection's kernel, (D,) for its bias."""
    return {name: (d, d) if name.endswith("kernel") else (d,) for name in names}


def bert_self_attention(
    x: np.ndarray,
    attention_mask: np.ndarray | None,
    weights: Mapping[str, np.ndarray],
    num_heads: int,
) -> np.ndarray:
    """BERT's attention_layer with 2-D kernels -> context (B, T, D)."""
    return split_heads_attention(x, attention_mask, weights, num_heads)


class BertEmbeddingsKind(LayerKind):
    name = "BertEmbeddings"
    summary = "LayerNorm(word[ids] + token_type[types] + position[:T]) (Google BERT)"
    min_inputs = 1
    max_inputs = 2

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        types = ["token_type_embeddings"] if config.get("type_vocab_size", 1) else []
        return [
            "word_embeddings",
            *types,
            "position_embeddings",
            "LayerNorm.gamma",
            "LayerNorm.beta",
        ]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, tuple[int | None, ...]]:
        d = config.get("hidden_size")
        shapes = {
            "word_embeddings": (config.get("vocab_size"), d),
            "token_type_embeddings": (config.get("type_vocab_size"), d),
            "position_embeddings": (config.get("max_position_embeddings"), d),
            "LayerNorm.gamma": (d,),
            "LayerNorm.beta": (d,),
        }
        return {k: shapes[k] for k in self.weight_names(config)}

    def compute(self, config, weights, inputs, **call_kwargs):
        ids = inputs[0]
        types = inputs[1] if len(inputs) > 1 else None
        eps = float(config.get("epsilon", BERT_LAYER_NORM_EPSILON))
        pad = config.get("position_padding_idx")
        return bert_embeddings(ids, types, weights, eps, None if pad is None else int(pad))


class BertSelfAttentionKind(LayerKind):
    name = "BertSelfAttention"
    summary = "BERT self-attention with 2-D (D, D) kernels split into num_heads"
    min_inputs = 1
    max_inputs = 2

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return [f"{p}.{w}" for p in ("query", "key", "value") for w in ("kernel", "bias")]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        return square_projection_shapes(self.weight_names(config), input_shapes[0][-1])

    def compute(self, config, weights, inputs, **call_kwargs):
        x = inputs[0]
        mask = inputs[1] if len(inputs) > 1 else None
        heads = require_int(config, "num_heads", self.name)
        return bert_self_attention(x, mask, weights, heads)


class BertPoolerKind(LayerKind):
    name = "BertPooler"
    summary = "tanh(x[:, 0] @ kernel + bias) (BERT's pooler)"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["kernel", "bias"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        d = input_shapes[0][-1]
        return {"kernel": (d, d), "bias": (d,)}

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        # first = (B, D): the first token of every sequence
        return dense(x[:, 0], weights["kernel"], weights["bias"], tanh)
