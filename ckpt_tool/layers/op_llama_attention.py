"""LlamaAttention, as keras-hub 0.32's `LlamaAttention` computes it on the TensorFlow
backend: grouped-query attention with rotary position embeddings, no biases.

Letters: B batch, T query length, S key length, D width, N query heads, K key/value
heads (N % K == 0), H head size.

    q = rope(einsum("bqm,muh->bquh", x, Wq))      # (B, T, N, H)
    k = rope(einsum("bkm,mvh->bkvh", x, Wk))      # (B, S, K, H)
    v = einsum("bkm,mvh->bkvh", x, Wv)            # (B, S, K, H)
    k, v = repeat(k, N // K, axis=2), repeat(v, ...)  # (B, S, N, H): head i uses i // (N/K)
    scores = einsum("bquh,bkuh->buqk", q, k) * float32(1/sqrt(H))   # (B, N, T, S)
    probs = Softmax(scores, mask)                 # -1e9 where masked, masked probs 0
    out = einsum("bquh,uhm->bqm", einsum("buqk,bkuh->bquh", probs, v), Wo)  # (B, T, D)

Masks: the padding mask on the keys (B, 1, S) and the causal lower triangle, ANDed.

Rotary (`LlamaRotaryEmbedding`, computed in float32 like keras-hub): inverse
frequencies 1 / max_wavelength ** (arange(0, H, 2) / H) (Llama 3.1 smoothing when
`rope_low_freq_factor` etc. are set), angles = position * inv_freq repeated as
[f, f], out = x * cos + concat(-x2, x1) * sin. keras-hub 0.32 hands
`rope_position_scaling_factor` to the base class, whose scaling its Llama subclass
overrides: the factor has no effect, here as there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, as_mask, const, require_int
from ckpt_tool.layers.contract import contract
from ckpt_tool.layers.nn import keras_masked_softmax
from ckpt_tool.layers.op_multi_head_attention import compute_attention_mask

_LLAMA3 = ("rope_frequency_adjustment_factor", "rope_low_freq_factor", "rope_high_freq_factor")


def rope_inverse_freq(head_dim: int, config: Mapping[str, Any]) -> np.ndarray:
    """(H/2,) float32 inverse frequencies of LlamaRotaryEmbedding."""
    f32 = np.float32
    wavelength = f32(config.get("rope_max_wavelength") or 10000)
    freq_range = np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim)
    inv = f32(1.0) / np.power(wavelength, freq_range)
    low = config.get("rope_low_freq_factor")
    if low is None:
        return inv
    high = f32(config["rope_high_freq_factor"])
    adjust = f32(config["rope_frequency_adjustment_factor"])
    length = f32(config["rope_pretraining_sequence_length"])
    low = f32(low)
    wavelen = f32(2 * math.pi) / inv
    inv = np.where(wavelen > length / low, inv / adjust, inv)
    smooth = (length / wavelen - low) / (high - low)
    smoothed = (f32(1) - smooth) * (inv / adjust) + smooth * inv
    medium = (wavelen >= length / high) & (wavelen <= length / low)
    return np.where(medium, smoothed, inv).astype(f32)


def rotary(x: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotary embedding of x (B, T, heads, H) at positions 0..T-1."""
    positions = np.arange(x.shape[1], dtype=np.float32)
    # angles = (T, H/2) -> (T, H) as [f, f]; cos, sin = (1, T, 1, H)
    angles = np.einsum("i,j->ij", positions, inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    cos = np.cos(angles).astype(x.dtype)[None, :, None, :]
    sin = np.sin(angles).astype(x.dtype)[None, :, None, :]
    x1, x2 = np.split(x, 2, axis=-1)
    return x * cos + np.concatenate([-x2, x1], axis=-1) * sin


def llama_attention(
    x: np.ndarray,
    weights: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    key_mask: np.ndarray | None = None,
    use_causal_mask: bool = True,
) -> np.ndarray:
    """x (B, T, D) -> (B, T, D); see the module docstring."""
    n, h = weights["query.kernel"].shape[1:]
    k_heads = weights["key.kernel"].shape[1]
    if n % k_heads:
        raise LayerConfigError(f"LlamaAttention: {n} query heads are not a multiple of {k_heads}")
    inv_freq = rope_inverse_freq(h, config)
    # q = (B, T, N, H); k, v = (B, S, K, H)
    q = rotary(contract("bqm,muh->bquh", x, weights["query.kernel"]), inv_freq)
    k = rotary(contract("bkm,mvh->bkvh", x, weights["key.kernel"]), inv_freq)
    v = contract("bkm,mvh->bkvh", x, weights["value.kernel"])
    # k, v = (B, S, N, H)
    k = np.repeat(k, n // k_heads, axis=2)
    v = np.repeat(v, n // k_heads, axis=2)
    # scores = (B, N, T, S)
    scores = contract("bquh,bkuh->buqk", q, k) * const(float(np.float32(1 / math.sqrt(h))), x.dtype)
    mask = compute_attention_mask(
        x.shape[1],
        x.shape[1],
        key_mask=as_mask(key_mask, what="key_mask"),
        use_causal_mask=use_causal_mask,
    )
    probs = keras_masked_softmax(scores, None if mask is None else mask[:, None])
    # ctx = (B, T, N, H) -> out = (B, T, D)
    ctx = contract("buqk,bkuh->bquh", probs, v)
    return contract("bquh,uhm->bqm", ctx, weights["output.kernel"])


class LlamaAttentionKind(LayerKind):
    name = "LlamaAttention"
    summary = "grouped-query self-attention with rotary positions (keras-hub Llama)"
    call_kwargs = frozenset({"key_mask", "use_causal_mask"})

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["query.kernel", "key.kernel", "value.kernel", "output.kernel"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, tuple[int | None, ...]]:
        d = input_shapes[0][-1]
        n = config.get("num_query_heads") or require_int(config, "num_heads", self.name)
        k = config.get("num_key_value_heads") or n
        return {
            "query.kernel": (d, n, None),
            "key.kernel": (d, k, None),
            "value.kernel": (d, k, None),
            "output.kernel": (n, None, d),
        }

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        return llama_attention(x, weights, config, **call_kwargs)
