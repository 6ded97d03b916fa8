"""Attention (Luong) and AdditiveAttention (Bahdanau), as Keras 3 computes them.

Inputs `[query, value]` or `[query, value, key]` (key defaults to value):
query (B, Tq, D), value (B, Tv, Dv), key (B, Tv, D).

    Attention, score_mode="dot":     scores = (q @ k^T) * scale          # (B, Tq, Tv)
    Attention, score_mode="concat":  scores = c * sum_d tanh(scale * (q_i + k_j))
    AdditiveAttention:               scores = sum_d scale_d * tanh(q_i + k_j)
    scores -= 1e9 where masked (subtracted, not replaced)
    probs = softmax(scores)                                              # (B, Tq, Tv)
    out = probs @ v, rows of a masked query set to 0                    # (B, Tq, Dv)

Masks (`mask=[query_mask, value_mask]`, each (B, T) bool, either None): the
value mask hides keys; `use_causal_mask` ANDs a (1, Tq, Tv) lower triangle;
the query mask zeroes output rows. Probabilities are not zeroed, so the
returned scores of a fully masked row are uniform.

Weights: Attention `scale` () if use_scale, then `concat_score_weight` () if
score_mode="concat"; AdditiveAttention `scale` (D,) if use_scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import softmax
from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape, as_mask, const, get_bool
from ckpt_tool.layers.contract import contract
from ckpt_tool.layers.shape_match import shape_at, shape_layer

_MASK_OFFSET = 1.0e9  # Keras: 65504 for float16 scores, else 1e9


def dot_scores(query: np.ndarray, key: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """(B, Tq, D), (B, Tv, D) -> (B, Tq, Tv): q @ k^T, times `scale` if given."""
    s = contract("...qd,...kd->...qk", query, key)
    return s if scale is None else s * scale


def concat_scores(
    query: np.ndarray, key: np.ndarray, scale: np.ndarray | None, weight: np.ndarray
) -> np.ndarray:
    """weight * sum_d tanh(scale * (q_i + k_j)) -> (B, Tq, Tv)."""
    # qk = (B, Tq, Tv, D)
    qk = np.expand_dims(query, -2) + np.expand_dims(key, -3)
    if scale is not None:
        qk = scale * qk
    return weight * np.sum(np.tanh(qk), axis=-1)


def additive_scores(query: np.ndarray, key: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """sum_d scale_d * tanh(q_id + k_jd) -> (B, Tq, Tv); scale (D,) or 1."""
    # t = (B, Tq, Tv, D)
    t = np.tanh(np.expand_dims(query, -2) + np.expand_dims(key, -3))
    s = const(1.0, query.dtype) if scale is None else scale
    return np.sum(s * t, axis=-1)


def apply_scores(
    scores: np.ndarray,
    value: np.ndarray,
    query_mask: np.ndarray | None,
    value_mask: np.ndarray | None,
    use_causal_mask: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask, softmax over keys, weight the values; returns (output, probabilities)."""
    mask = None if value_mask is None else np.expand_dims(value_mask, -2)  # (B, 1, Tv)
    if use_causal_mask:
        tq, tv = scores.shape[-2:]
        causal = (np.arange(tq)[:, None] >= np.arange(tv)[None, :])[None]  # (1, Tq, Tv)
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = np.where(mask, scores, scores - const(_MASK_OFFSET, scores.dtype))
    probs = softmax(scores, axis=-1)
    # out = (B, Tq, Dv)
    out = contract("...qk,...kd->...qd", probs, value)
    if query_mask is not None:
        out = np.where(np.expand_dims(query_mask, -1), out, const(0.0, out.dtype))
    return out, probs


def _masks(mask: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    if mask is None:
        return None, None
    if not isinstance(mask, (list, tuple)) or not 2 <= len(mask) <= 3:
        raise LayerConfigError(
            "attention mask must be a list [query_mask, value_mask] (each may be None)"
        )
    return as_mask(mask[0], what="query_mask"), as_mask(mask[1], what="value_mask")


def attention(
    query: np.ndarray,
    value: np.ndarray,
    key: np.ndarray | None = None,
    *,
    score_mode: str = "dot",
    scale: np.ndarray | None = None,
    concat_score_weight: np.ndarray | None = None,
    query_mask: np.ndarray | None = None,
    value_mask: np.ndarray | None = None,
    use_causal_mask: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """keras.layers.Attention: returns (output, attention probabilities)."""
    key = value if key is None else key
    if score_mode == "dot":
        scores = dot_scores(query, key, scale)
    elif score_mode == "concat":
        if concat_score_weight is None:
            raise LayerConfigError("Attention score_mode='concat' needs concat_score_weight")
        scores = concat_scores(query, key, scale, concat_score_weight)
    else:
        raise LayerConfigError(f"Attention score_mode={score_mode!r}; expected 'dot' or 'concat'")
    return apply_scores(scores, value, query_mask, value_mask, use_causal_mask)


def additive_attention(
    query: np.ndarray,
    value: np.ndarray,
    key: np.ndarray | None = None,
    *,
    scale: np.ndarray | None = None,
    query_mask: np.ndarray | None = None,
    value_mask: np.ndarray | None = None,
    use_causal_mask: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """keras.layers.AdditiveAttention: returns (output, attention probabilities)."""
    key = value if key is None else key
    scores = additive_scores(query, key, scale)
    return apply_scores(scores, value, query_mask, value_mask, use_causal_mask)


_CALL_KWARGS = frozenset({"mask", "use_causal_mask", "return_attention_scores"})


def _finish(result: tuple[np.ndarray, np.ndarray], return_attention_scores: bool):
    return result if return_attention_scores else result[0]


class AttentionKind(LayerKind):
    name = "Attention"
    summary = "Luong dot-product / concat attention (inputs: query, value[, key])"
    min_inputs = 2
    max_inputs = 3
    call_kwargs = _CALL_KWARGS

    shape_match_rank = 60

    def match_shapes(self, infos, i):
        """Luong Attention: scalar scale and/or scalar concat_score_weight."""
        if shape_at(infos, i) != ():
            return None
        if shape_at(infos, i + 1) == ():
            weights = {"scale": infos[i].key, "concat_score_weight": infos[i + 1].key}
        else:
            # A lone scalar is `scale` with score_mode "dot", or `concat_score_weight`
            # with use_scale=False; verify tries the other reading.
            weights = {"scale": infos[i].key}
        layer = shape_layer("attention", self, weights, {role: () for role in weights})
        if len(weights) == 1:
            layer.config_alternatives.append({"use_scale": False, "score_mode": "concat"})
            layer.notes.append("a lone scalar: `scale` (dot scores) or `concat_score_weight`")
        return layer, len(weights)

    def infer_config(self, shapes):
        return {
            "use_scale": "scale" in shapes,
            "score_mode": "concat" if "concat_score_weight" in shapes else "dot",
        }

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        names = ["scale"] if get_bool(config, "use_scale", False) else []
        if config.get("score_mode", "dot") == "concat":
            names.append("concat_score_weight")
        return names

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        return dict.fromkeys(self.weight_names(config), ())

    def compute(
        self,
        config,
        weights,
        inputs,
        *,
        mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
    ):
        qm, vm = _masks(mask)
        result = attention(
            *inputs,
            score_mode=config.get("score_mode", "dot"),
            scale=weights.get("scale"),
            concat_score_weight=weights.get("concat_score_weight"),
            query_mask=qm,
            value_mask=vm,
            use_causal_mask=use_causal_mask,
        )
        return _finish(result, return_attention_scores)


class AdditiveAttentionKind(LayerKind):
    name = "AdditiveAttention"
    summary = "Bahdanau additive attention (inputs: query, value[, key])"
    min_inputs = 2
    max_inputs = 3
    call_kwargs = _CALL_KWARGS

    shape_match_rank = 70

    def match_shapes(self, infos, i):
        """AdditiveAttention: scale (dim,)."""
        s = shape_at(infos, i)
        if s is None or len(s) != 1:
            return None
        return shape_layer("additive_attention", self, {"scale": infos[i].key}, {"scale": s}), 1

    def infer_config(self, shapes):
        return {"use_scale": "scale" in shapes}

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["scale"] if get_bool(config, "use_scale", True) else []

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        if not get_bool(config, "use_scale", True):
            return {}
        return {"scale": (input_shapes[0][-1],)}

    def compute(
        self,
        config,
        weights,
        inputs,
        *,
        mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
    ):
        qm, vm = _masks(mask)
        result = additive_attention(
            *inputs,
            scale=weights.get("scale"),
            query_mask=qm,
            value_mask=vm,
            use_causal_mask=use_causal_mask,
        )
        return _finish(result, return_attention_scores)
