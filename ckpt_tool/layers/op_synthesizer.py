"""Synthesizer attention (Tay et al. 2020, "Synthesizer: Rethinking
Self-Attention in Transformer Models"): attention weights made without
query-key dot products. Keras has no such layer; the weight roles are ours.

Input x (B, T, D), single head, value width U (config `units`, default D),
maximum length L (config `seq_len`, default: from the weights), T <= L.

Dense Synthesizer, per position F(x_i) = W2 relu(W1 x_i + b1) + b2:

    h = relu(x @ W1 + b1)              # (B, T, D)     w1.kernel (D, D), w1.bias (D,)
    logits = (h @ W2 + b2)[..., :T]    # (B, T, T)     w2.kernel (D, L), w2.bias (L,)
    g = x @ Wv + bv                    # (B, T, U)     value.kernel (D, U), value.bias (U,)
    y = softmax(logits) @ g            # (B, T, U)

Random Synthesizer, a learned logits matrix shared by all inputs:

    logits = R[:T, :T]                 # (T, T)        random.logits (L, L)
    y = softmax(logits) @ g            # (B, T, U)

Config: `units` (None: D), `use_bias` (True: every bias present), `seq_len`.
`use_causal_mask=True` masks j > i as the Keras Softmax layer does (logits
replaced by -1e9, masked probabilities 0). `return_attention_scores=True`
returns (y, probabilities).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import relu
from ckpt_tool.layers.base import (
    LayerConfigError,
    LayerKind,
    Shape,
    WeightShape,
    get_bool,
    get_int,
)
from ckpt_tool.layers.contract import contract
from ckpt_tool.layers.nn import keras_masked_softmax
from ckpt_tool.layers.op_dense import dense
from ckpt_tool.layers.shape_match import equal_shape_permutations, shape_at, shape_layer


def _synthesized(
    logits: np.ndarray, g: np.ndarray, use_causal_mask: bool
) -> tuple[np.ndarray, np.ndarray]:
    t = logits.shape[-1]
    mask = (np.arange(t)[:, None] >= np.arange(t)[None, :]) if use_causal_mask else None
    probs = keras_masked_softmax(logits, mask, (-1,))
    # y = (B, T, U); a shared (T, T) matrix broadcasts over the batch
    if probs.ndim < g.ndim:
        probs_b = np.broadcast_to(probs, (*g.shape[:-2], *probs.shape))
    else:
        probs_b = probs
    return contract("...ts,...su->...tu", np.ascontiguousarray(probs_b), g), probs


def _check_len(t: int, length: int, what: str) -> None:
    if t > length:
        raise LayerConfigError(
            f"{what}: input length {t} exceeds the synthesizer's length {length}"
        )


def dense_synthesizer(
    x: np.ndarray,
    weights: Mapping[str, np.ndarray],
    *,
    use_causal_mask: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense Synthesizer: returns (output (B, T, U), probabilities (B, T, T))."""
    t = x.shape[-2]
    length = weights["w2.kernel"].shape[-1]
    _check_len(t, length, "DenseSynthesizer")
    # h = (B, T, D); logits = (B, T, L) -> first T columns
    h = dense(x, weights["w1.kernel"], weights.get("w1.bias"), relu)
    logits = dense(h, weights["w2.kernel"], weights.get("w2.bias"))[..., :t]
    # g = (B, T, U)
    g = dense(x, weights["value.kernel"], weights.get("value.bias"))
    return _synthesized(logits, g, use_causal_mask)


def random_synthesizer(
    x: np.ndarray,
    weights: Mapping[str, np.ndarray],
    *,
    use_causal_mask: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Random Synthesizer: returns (output (B, T, U), probabilities (T, T))."""
    t = x.shape[-2]
    r = weights["random.logits"]
    _check_len(t, r.shape[0], "RandomSynthesizer")
    g = dense(x, weights["value.kernel"], weights.get("value.bias"))
    return _synthesized(np.ascontiguousarray(r[:t, :t]), g, use_causal_mask)


def _length(config: Mapping[str, Any]) -> int | None:
    """The synthesizer's length L from `seq_len` (None: unknown, any L >= T fits)."""
    return get_int(config, "seq_len")


class _SynthesizerKind(LayerKind):
    call_kwargs = frozenset({"use_causal_mask", "return_attention_scores"})
    _roles: tuple[str, ...] = ()

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        bias = get_bool(config, "use_bias", True)
        return [r for r in self._roles if bias or not r.endswith(".bias")]

    def _value_shapes(self, config: Mapping[str, Any], d: int) -> dict[str, Shape]:
        u = get_int(config, "units") or d
        return {"value.kernel": (d, u), "value.bias": (u,)}

    def _run(self, fn, weights, inputs, use_causal_mask, return_attention_scores):
        if inputs[0].ndim < 2:
            raise LayerConfigError(f"{self.name} input must be (..., T, D)")
        y, probs = fn(inputs[0], weights, use_causal_mask=use_causal_mask)
        return (y, probs) if return_attention_scores else y


class DenseSynthesizerKind(_SynthesizerKind):
    name = "DenseSynthesizer"
    summary = "softmax(W2 relu(W1 x + b1) + b2) @ (x Wv + bv) (Tay et al. 2020)"
    _roles = ("w1.kernel", "w1.bias", "w2.kernel", "w2.bias", "value.kernel", "value.bias")

    shape_match_rank = 30

    def match_shapes(self, infos, i):
        """w1 (D,D) [(D,)], w2 (D,L) [(L,)], value (D,U) [(U,)], with L != D: a chain of
        three Dense layers could not take (D,U) after an output of width L."""
        k1 = shape_at(infos, i)
        if k1 is None or len(k1) != 2 or k1[0] != k1[1]:
            return None
        d = k1[0]
        use_bias = shape_at(infos, i + 1) == (d,)
        step = 2 if use_bias else 1
        k2, kv = shape_at(infos, i + step), shape_at(infos, i + 2 * step)
        if k2 is None or kv is None or len(k2) != 2 or len(kv) != 2:
            return None
        if k2[0] != d or kv[0] != d or k2[1] == d:
            return None
        parts = ["w1", "w2", "value"]
        shapes = {"w1.kernel": k1, "w2.kernel": k2, "value.kernel": kv}
        if use_bias:
            shapes.update({"w1.bias": (d,), "w2.bias": (k2[1],), "value.bias": (kv[1],)})
            for k, part in enumerate(parts):
                if shape_at(infos, i + 2 * k + 1) != shapes[f"{part}.bias"]:
                    return None
        weights = {}
        for k, part in enumerate(parts):
            weights[f"{part}.kernel"] = infos[i + k * step].key
            if use_bias:
                weights[f"{part}.bias"] = infos[i + k * step + 1].key
        layer = shape_layer("dense_synthesizer", self, weights, shapes)
        layer.alternatives = equal_shape_permutations(weights, shapes, ["w1", "value"])
        if layer.alternatives:
            layer.notes.append("w1 and value have the same shape: creation order says w1 first")
        return layer, 3 * step

    def infer_config(self, shapes):
        return {
            "seq_len": shapes["w2.kernel"][-1],
            "units": shapes["value.kernel"][-1],
            "use_bias": "w1.bias" in shapes,
        }

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, WeightShape]:
        d = input_shapes[0][-1]
        n = _length(config)
        shapes = {"w1.kernel": (d, d), "w1.bias": (d,), "w2.kernel": (d, n), "w2.bias": (n,)}
        shapes.update(self._value_shapes(config, d))
        return {k: shapes[k] for k in self.weight_names(config)}

    def compute(
        self, config, weights, inputs, *, use_causal_mask=False, return_attention_scores=False
    ):
        return self._run(
            dense_synthesizer, weights, inputs, use_causal_mask, return_attention_scores
        )


class RandomSynthesizerKind(_SynthesizerKind):
    name = "RandomSynthesizer"
    summary = "softmax(R) @ (x Wv + bv), R a learned (L, L) matrix (Tay et al. 2020)"
    _roles = ("random.logits", "value.kernel", "value.bias")

    shape_match_rank = 40

    def match_shapes(self, infos, i):
        """random (L,L) with no bias, then value (D,U) [(U,)] with D != L (a Dense (L,L)
        would hand width L to the next layer)."""
        r, kv = shape_at(infos, i), shape_at(infos, i + 1)
        if r is None or kv is None or len(r) != 2 or r[0] != r[1] or len(kv) != 2:
            return None
        if kv[0] == r[0]:
            return None
        shapes = {"random.logits": r, "value.kernel": kv}
        weights = {"random.logits": infos[i].key, "value.kernel": infos[i + 1].key}
        if shape_at(infos, i + 2) == (kv[1],):
            shapes["value.bias"] = (kv[1],)
            weights["value.bias"] = infos[i + 2].key
        return shape_layer("random_synthesizer", self, weights, shapes), len(weights)

    def infer_config(self, shapes):
        return {
            "seq_len": shapes["random.logits"][0],
            "units": shapes["value.kernel"][-1],
            "use_bias": "value.bias" in shapes,
        }

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, WeightShape]:
        n = _length(config)
        shapes = {"random.logits": (n, n)}
        shapes.update(self._value_shapes(config, input_shapes[0][-1]))
        return {k: shapes[k] for k in self.weight_names(config)}

    def compute(
        self, config, weights, inputs, *, use_causal_mask=False, return_attention_scores=False
    ):
        return self._run(
            random_synthesizer, weights, inputs, use_causal_mask, return_attention_scores
        )
