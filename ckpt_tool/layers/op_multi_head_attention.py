"""MultiHeadAttention, as `keras.layers.MultiHeadAttention` (Keras 3.15) computes it.

Letters in shape comments: B batch, T query length, S key/value length,
Dq/Dk/Dv input widths, N heads, H key_dim, Hv value_dim, O output width.

    q = einsum("abc,cde->abde", query, Wq) + bq      # (B, T, N, H)
    k = einsum("abc,cde->abde", key, Wk) + bk        # (B, S, N, H)
    v = einsum("abc,cde->abde", value, Wv) + bv      # (B, S, N, Hv)
    scores = einsum("aecd,abcd->acbe", k, q / sqrt(H))  # (B, N, T, S)
    probs = softmax over S (masked)                  # (B, N, T, S)
    ctx = einsum("acbe,aecd->abcd", probs, v)        # (B, T, N, Hv)
    ctx *= sigmoid(einsum("abc,cde->abde", query, Wg) + bg)   # use_gate only
    out = einsum("abcd,cde->abe", ctx, Wo) + bo      # (B, T, O)

The equations are built as Keras builds them (`_build_proj_equation`,
`_build_attention_equation`), so `attention_axes` and higher-rank inputs
follow the same generalisation.

Keras 3.15 takes one of two routes for the attention itself, and they differ:

Both routes scale by float32(1/sqrt(H)): Keras's `ops.cast` of the Python
float goes through a float32 tensor, in float64 layers too.

- fast route (`ops.dot_product_attention`), taken when `dropout == 0`, the
  scores are not returned and the projected query has rank 4 (the default
  axes on (B, T, D) inputs): logits = einsum(q, k) * (1/sqrt(H)) (scaled
  *after* the product), masked logits replaced by -0.7 * 3.38953e38,
  softmax, no zeroing: a query row with every key masked attends uniformly.
- scores route (everything else): q scaled first, the `Softmax` layer with a
  mask: -1e9, softmax, masked probabilities set to 0: a fully masked row gives
  a zero context (the output is then the output bias, times the gate).

Masks (`_compute_attention_mask`) are ANDed: query mask (B, T, 1), value and
key masks (B, 1, S), causal (1, T, S) lower-triangular, sliding window
|i - j| < w, and an explicit `attention_mask` (B, T, S). In Keras the query
mask is only ever the Keras mask attached to the query tensor (an explicit
`query_mask=` argument is overwritten in `call`); here `query_mask` stands
for that attached mask.

`flavor="tf_keras"` follows tf-keras 2.x instead (legacy `.h5` and tf-keras
SavedModels): the scores route always, 1/sqrt(H) exact in the layer's dtype,
and its Softmax masking: masked scores get -1e9 *added* (a fully masked row
stays the softmax of its shifted scores) or, with the config's
`softmax_robust_masking=True`, replaced by -1e9; probabilities never zeroed.
The default flavor is "tf_keras" for a config carrying
`softmax_robust_masking` (a key only tf-keras writes), else "keras".
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import logsumexp, sigmoid, softmax
from ckpt_tool.layers.base import (
    LayerConfigError,
    LayerKind,
    Shape,
    as_mask,
    const,
    get_bool,
    get_int,
    get_int_tuple,
    require_int,
)
from ckpt_tool.layers.contract import contract
from ckpt_tool.layers.nn import (
    SOFTMAX_LAYER_MASK_VALUE,
    check_broadcastable,
    dot_product_attention_softmax,
    keras_masked_softmax,
)
from ckpt_tool.layers.shape_match import equal_shape_permutations, shape_at, shape_layer

# -- equations, built as Keras builds them --------------------------------------


def build_proj_equation(free_dims: int, bound_dims: int, output_dims: int) -> tuple[str, str, int]:
    """(equation, bias axes, output rank) of a projection, e.g. (2, 1, 2) -> "abc,cde->abde"."""
    letters = string.ascii_lowercase
    free = letters[:free_dims]
    bound = letters[free_dims : free_dims + bound_dims]
    outs = letters[free_dims + bound_dims : free_dims + bound_dims + output_dims]
    return f"{free}{bound},{bound}{outs}->{free}{outs}", outs, free_dims + output_dims


def build_attention_equation(rank: int, attn_axes: tuple[int, ...]) -> tuple[str, str, int]:
    """(dot-product equation, combine equation, scores rank) for projected tensors.

    Projected q/k/v are (batch dims..., attention dims..., N, channels); the
    head axis counts as a batch dim. For rank 4 and axes (1,):
    "aecd,abcd->acbe" and "acbe,aecd->abcd".
    """
    letters = string.ascii_lowercase
    target = letters[:rank]
    batch_dims = tuple(i for i in range(rank) if i not in attn_axes and i != rank - 1)
    source = ""
    offset = rank
    for i in range(rank):
        if i in batch_dims or i == rank - 1:
            source += target[i]
        else:
            source += letters[offset]
            offset += 1
    product = (
        "".join(target[i] for i in batch_dims)
        + "".join(target[i] for i in attn_axes)
        + "".join(source[i] for i in attn_axes)
    )
    return f"{source},{target}->{product}", f"{product},{source}->{target}", len(product)


def normalize_attention_axes(axes: tuple[int, ...] | None, proj_rank: int) -> tuple[int, ...]:
    """Keras `_build_attention`: default all axes but batch, heads, channels;
    a negative axis counts from `proj_rank - 1` (the projected rank less one)."""
    if axes is None:
        return tuple(range(1, proj_rank - 2))
    return tuple(a if a >= 0 else (proj_rank - 1) + a for a in axes)


# -- config ---------------------------------------------------------------------


@dataclass(frozen=True)
class MHAConfig:
    num_heads: int
    key_dim: int
    value_dim: int
    use_bias: bool = True
    use_gate: bool = False
    output_shape: tuple[int, ...] | None = None
    attention_axes: tuple[int, ...] | None = None
    sliding_window: int | None = None
    dropout: float = 0.0
    softmax_robust_masking: bool | None = None  # tf-keras only (None: not in the config)

    @classmethod
    def from_keras(cls, config: Mapping[str, Any]) -> MHAConfig:
        """From a Keras MultiHeadAttention config dict (defaults as Keras's)."""
        name = "MultiHeadAttention"
        key_dim = require_int(config, "key_dim", name)
        value_dim = get_int(config, "value_dim") or key_dim
        dropout = config.get("dropout", 0.0) or 0.0
        if not isinstance(dropout, (int, float)):
            raise LayerConfigError(f"{name} config dropout={dropout!r} is not a number")
        window = get_int(config, "sliding_window")
        if window is not None and window <= 0:
            raise LayerConfigError(f"{name} config sliding_window={window} must be positive")
        return cls(
            num_heads=require_int(config, "num_heads", name),
            key_dim=key_dim,
            value_dim=value_dim,
            use_bias=get_bool(config, "use_bias", True),
            use_gate=get_bool(config, "use_gate", False),
            output_shape=get_int_tuple(config, "output_shape"),
            attention_axes=get_int_tuple(config, "attention_axes"),
            sliding_window=window,
            dropout=float(dropout),
            softmax_robust_masking=(
                get_bool(config, "softmax_robust_masking", False)
                if "softmax_robust_masking" in config
                else None
            ),
        )


def mha_weight_names(cfg: MHAConfig) -> list[str]:
    """Keras creation order: query, key, [gate], value, output; kernel before bias."""
    denses = ["query", "key", *(["gate"] if cfg.use_gate else []), "value", "output"]
    parts = ["kernel", "bias"] if cfg.use_bias else ["kernel"]
    return [f"{d}.{p}" for d in denses for p in parts]


def mha_weight_shapes(
    cfg: MHAConfig, query_shape: Shape, value_shape: Shape, key_shape: Shape | None = None
) -> dict[str, Shape]:
    key_shape = value_shape if key_shape is None else key_shape
    n, h, hv = cfg.num_heads, cfg.key_dim, cfg.value_dim
    out = cfg.output_shape or (query_shape[-1],)
    shapes: dict[str, Shape] = {
        "query.kernel": (query_shape[-1], n, h),
        "query.bias": (n, h),
        "key.kernel": (key_shape[-1], n, h),
        "key.bias": (n, h),
        "gate.kernel": (query_shape[-1], n, hv),
        "gate.bias": (n, hv),
        "value.kernel": (value_shape[-1], n, hv),
        "value.bias": (n, hv),
        "output.kernel": (n, hv, *out),
        "output.bias": tuple(out),
    }
    return {k: shapes[k] for k in mha_weight_names(cfg)}


FLAVORS = ("keras", "tf_keras")


def tf_keras_masked_softmax(
    x: np.ndarray, mask: np.ndarray | None, axes: tuple[int, ...], robust: bool
) -> np.ndarray:
    """tf-keras's `Softmax` layer with a mask: -1e9 added (or, robust, put in place)."""
    if mask is not None:
        check_broadcastable(mask, x.shape, "attention mask")
        big = np.asarray(SOFTMAX_LAYER_MASK_VALUE, dtype=x.dtype)
        if robust:
            x = np.where(mask, x, big)
        else:
            # adder = (1 - mask) * -1e9: -0.0 where kept, -1e9 where masked
            x = x + (np.asarray(1.0, x.dtype) - mask.astype(x.dtype)) * big
    if len(axes) > 1:
        return np.exp(x - logsumexp(x, axis=axes, keepdims=True))
    return softmax(x, axis=axes[0])


# -- masks ----------------------------------------------------------------------


def causal_mask(t: int, s: int) -> np.ndarray:
    """(1, T, S) lower-triangular: query i sees keys j <= i."""
    return (np.arange(t)[:, None] >= np.arange(s)[None, :])[None]


def sliding_window_mask(t: int, s: int, window: int) -> np.ndarray:
    """(1, T, S) band |i - j| < window."""
    return (np.abs(np.arange(t)[:, None] - np.arange(s)[None, :]) < window)[None]


def compute_attention_mask(
    t: int,
    s: int,
    *,
    query_mask: np.ndarray | None = None,
    value_mask: np.ndarray | None = None,
    key_mask: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    use_causal_mask: bool = False,
    sliding_window: int | None = None,
) -> np.ndarray | None:
    """Keras `_compute_attention_mask`: every mask given, ANDed; None if none.

    `t`, `s` are the sizes of axis 1 of query and value (Keras uses shape[1]).
    """
    auto = None

    def both(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
        return b if a is None else a & b

    if query_mask is not None:
        auto = np.expand_dims(query_mask, -1)  # (B, T, 1)
    if value_mask is not None:
        auto = both(auto, np.expand_dims(value_mask, -2))  # (B, 1, S)
    if key_mask is not None:
        auto = both(auto, np.expand_dims(key_mask, -2))  # (B, 1, S)
    if use_causal_mask:
        auto = both(auto, causal_mask(t, s))  # (1, T, S)
    if sliding_window is not None:
        auto = both(auto, sliding_window_mask(t, s, sliding_window))  # (1, T, S)
    if auto is None:
        return attention_mask
    return auto if attention_mask is None else attention_mask & auto


def _expand_mask(mask: np.ndarray, scores_rank: int, n_attn_axes: int) -> np.ndarray:
    """Insert the head axis (and other missing batch axes) as Keras's `_masked_softmax`."""
    axis = -n_attn_axes * 2 - 1
    while mask.ndim < scores_rank:
        mask = np.expand_dims(mask, axis)
    return mask


# -- the kernel -----------------------------------------------------------------


def _add_bias(y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y + b, in place when the sum keeps y's dtype and shape (`contract`'s result is new)."""
    if np.result_type(y, b) == y.dtype and np.broadcast_shapes(y.shape, b.shape) == y.shape:
        y += b
        return y
    return y + b


def multi_head_attention(
    query: np.ndarray,
    value: np.ndarray,
    key: np.ndarray | None,
    weights: Mapping[str, np.ndarray],
    cfg: MHAConfig,
    *,
    attention_mask: np.ndarray | None = None,
    query_mask: np.ndarray | None = None,
    value_mask: np.ndarray | None = None,
    key_mask: np.ndarray | None = None,
    use_causal_mask: bool = False,
    return_attention_scores: bool = False,
    flavor: str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The MultiHeadAttention forward pass; see the module docstring."""
    if flavor is None:
        flavor = "keras" if cfg.softmax_robust_masking is None else "tf_keras"
    if flavor not in FLAVORS:
        raise LayerConfigError(f"MultiHeadAttention flavor {flavor!r}; expected one of {FLAVORS}")
    tf_keras = flavor == "tf_keras"
    if tf_keras and (cfg.use_gate or cfg.sliding_window is not None):
        raise LayerConfigError("tf-keras MultiHeadAttention has no use_gate or sliding_window")
    key = value if key is None else key
    dt = query.dtype
    if value.shape[1:-1] != key.shape[1:-1]:
        raise LayerConfigError(
            f"MultiHeadAttention: value {value.shape} and key {key.shape} must agree "
            "on every dimension but the last"
        )
    w = weights
    bias = cfg.use_bias

    def project(x: np.ndarray, role: str) -> np.ndarray:
        eq, _, _ = build_proj_equation(x.ndim - 1, bound_dims=1, output_dims=2)
        y = contract(eq, x, w[f"{role}.kernel"])
        return _add_bias(y, w[f"{role}.bias"]) if bias else y

    masks = dict(
        query_mask=as_mask(query_mask, what="query_mask"),
        value_mask=as_mask(value_mask, what="value_mask"),
        key_mask=as_mask(key_mask, what="key_mask"),
        attention_mask=as_mask(attention_mask, what="attention_mask"),
    )
    # (Keras hands a causal-only mask to its fused kernel as is_causal=True:
    # the same lower triangle, applied the same way.)
    mask = compute_attention_mask(
        query.shape[1],
        value.shape[1],
        **masks,
        use_causal_mask=use_causal_mask,
        sliding_window=cfg.sliding_window,
    )

    # gate = (B, T, N, Hv), sigmoid of a projection of the *input* query
    gate = sigmoid(project(query, "gate")) if cfg.use_gate else None
    # q = (B, T, N, H); k = (B, S, N, H); v = (B, S, N, Hv)
    q = project(query, "query")
    k = project(key, "key")
    v = project(value, "value")

    proj_rank = q.ndim
    axes = normalize_attention_axes(cfg.attention_axes, proj_rank)
    if any(a < 1 or a >= proj_rank - 1 for a in axes):
        raise LayerConfigError(
            f"MultiHeadAttention attention_axes {cfg.attention_axes} do not fit inputs "
            f"of rank {query.ndim}"
        )
    dot_eq, combine_eq, scores_rank = build_attention_equation(proj_rank, axes)
    # Keras casts the Python float 1/sqrt(H) with tf.cast, which goes through a
    # float32 constant: the scale is float32-rounded even in a float64 layer.
    # (tf-keras multiplies by the Python float: exact in the layer's dtype.)
    inv_sqrt_h = 1.0 / math.sqrt(float(cfg.key_dim))
    inv_sqrt = const(inv_sqrt_h if tf_keras else float(np.float32(inv_sqrt_h)), dt)
    if mask is not None:
        mask = _expand_mask(mask, scores_rank, len(axes))

    fast = not tf_keras and cfg.dropout == 0.0 and not return_attention_scores and proj_rank == 4
    if fast:
        # ops.dot_product_attention: logits = (B, N, T, S), scaled after the product
        logits = contract("BTNH,BSNH->BNTS", q, k)
        logits *= inv_sqrt
        probs = dot_product_attention_softmax(logits, mask)
        # ctx = (B, T, N, Hv)
        ctx = contract("BNTS,BSNH->BTNH", probs, v)
        scores = None
    else:
        # scores = (B, N, T, S) = einsum("aecd,abcd->acbe", k, q * 1/sqrt(H))
        scores = contract(dot_eq, k, q * inv_sqrt)
        norm_axes = tuple(range(scores_rank - len(axes), scores_rank))
        if tf_keras:
            robust = bool(cfg.softmax_robust_masking)
            scores = tf_keras_masked_softmax(scores, mask, norm_axes, robust)
        else:
            scores = keras_masked_softmax(scores, mask, norm_axes)
        # ctx = (B, T, N, Hv) = einsum("acbe,aecd->abcd", probs, v)
        ctx = contract(combine_eq, scores, v)

    if gate is not None:
        ctx = ctx * gate
    # out = (B, T, *output_shape)
    n_out = len(w["output.kernel"].shape) - 2
    eq, _, _ = build_proj_equation(query.ndim - 1, bound_dims=2, output_dims=n_out)
    out = contract(eq, ctx, w["output.kernel"])
    if bias:
        out = _add_bias(out, w["output.bias"])
    if return_attention_scores:
        return out, scores
    return out


class MultiHeadAttentionKind(LayerKind):
    name = "MultiHeadAttention"
    summary = "multi-head dot-product attention (inputs: query, value[, key])"
    min_inputs = 2
    max_inputs = 3
    call_kwargs = frozenset(
        {
            "attention_mask",
            "query_mask",
            "value_mask",
            "key_mask",
            "use_causal_mask",
            "return_attention_scores",
            "flavor",
        }
    )

    shape_match_rank = 10

    def match_shapes(self, infos, i):
        """query (Dq,N,H) [bias (N,H)], key (Dk,N,H) [bias], [gate (Dq,N,Hv) [bias]],
        value (Dv,N,Hv) [bias], output (N,Hv,Dout) [bias (Dout,)]."""
        q = shape_at(infos, i)
        if q is None or len(q) != 3:
            return None
        _, n, h = q
        use_bias = shape_at(infos, i + 1) == (n, h)
        step = 2 if use_bias else 1
        for use_gate in (True, False):
            parts = ["query", "key", *(["gate"] if use_gate else []), "value", "output"]
            shapes = [shape_at(infos, i + k * step) for k in range(len(parts))]
            if any(s is None or len(s) != 3 for s in shapes):
                continue
            by_part = dict(zip(parts, shapes, strict=True))
            hv, dout = by_part["value"][2], by_part["output"][2]
            expected = {
                "query": (q[0], n, h),
                "key": (by_part["key"][0], n, h),
                "gate": (q[0], n, hv),
                "value": (by_part["value"][0], n, hv),
                "output": (n, hv, dout),
            }
            if any(by_part[p] != expected[p] for p in parts):
                continue
            weights: dict[str, str] = {}
            roles: dict[str, tuple[int, ...]] = {}
            for k, part in enumerate(parts):
                weights[f"{part}.kernel"] = infos[i + k * step].key
                roles[f"{part}.kernel"] = expected[part]
                if use_bias:
                    bias_shape = (dout,) if part == "output" else expected[part][1:]
                    if shape_at(infos, i + k * step + 1) != bias_shape:
                        break
                    weights[f"{part}.bias"] = infos[i + k * step + 1].key
                    roles[f"{part}.bias"] = bias_shape
            else:
                layer = shape_layer("multi_head_attention", self, weights, roles)
                movable = [p for p in parts if p != "output"]
                layer.alternatives = equal_shape_permutations(weights, roles, movable)
                if layer.alternatives:
                    layer.notes.append(
                        "roles of equally shaped projections follow Keras's creation order; "
                        f"{len(layer.alternatives)} other orders are possible"
                    )
                return layer, len(parts) * step
        return None

    def infer_config(self, shapes):
        qk = shapes["query.kernel"]
        out = shapes.get("output.kernel")
        config = {
            "num_heads": qk[-2],
            "key_dim": qk[-1],
            "value_dim": shapes.get("value.kernel", qk)[-1],
            "use_bias": "query.bias" in shapes,
            "use_gate": "gate.kernel" in shapes,
            "output_shape": None,
        }
        if len(qk) == 3 and out is not None and out[-1] != qk[0]:
            config["output_shape"] = out[-1]
        return config

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return mha_weight_names(MHAConfig.from_keras(config))

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        return mha_weight_shapes(MHAConfig.from_keras(config), *input_shapes[:3])

    def compute(self, config, weights, inputs, **call_kwargs):
        query, value, *rest = inputs
        key = rest[0] if rest else None
        return multi_head_attention(
            query, value, key, weights, MHAConfig.from_keras(config), **call_kwargs
        )
