"""The `haiku` layout: AlphaFold 2.0's Haiku parameter names (alphafold 2.0.0,
alphafold/model/modules.py and common_modules.py).

Keys are `<scope>//<param>`, the flat form AlphaFold's parameter files use and
`alphafold.model.utils.flat_params_to_haiku` splits on `//` (every key of the archive
must have one: the manifest lies beside the archive, see `export`):

    MultiHeadAttention -> modules.Attention: <layer>//query_w (Dq,N,H), key_w (Dm,N,H),
                          value_w (Dm,N,Hv), [gating_w (Dq,N,Hv), gating_b (N,Hv)],
                          output_w (N,Hv,Dout), output_b (Dout,)
    Dense              -> common_modules.Linear: <layer>//weights (I,O), <layer>//bias
    LayerNormalization -> haiku.LayerNorm (as AlphaFold uses it): <layer>//scale, offset
    Embedding          -> haiku.Embed: <layer>//embeddings

AlphaFold's Attention has the Keras einsums with three differences the layout
checks: no query/key/value biases (refused unless they are all zero), keys and
values projected from the same memory `m_data` (refused when the model calls the
layer with a key tensor of its own, or key and value widths differ), and a gate
with a bias whenever `gating` is on. A Keras layer without a gate exports without
gating_w/gating_b: AlphaFold's Attention with `config.gating=False` (the manifest's
`modules` says so). A missing gate or output bias (use_bias=False) is written as
zeros, which computes the same. The manifest's `modules` give each module's
constructor arguments as AlphaFold 2.0 takes them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ckpt_tool.layouts.base import (
    ExportArray,
    LayerTensors,
    LayoutInput,
    LayoutRefused,
    role_dict,
    verbatim,
    zeros,
)
from ckpt_tool.layouts.calls import AttentionCall
from ckpt_tool.layouts.common import module_entry, port
from ckpt_tool.rolemap import Layer

SEP = "//"
_INSTEAD = "use --layout torch (or keras) instead"
_QKV_BIASES = ("query.bias", "key.bias", "value.bias")  # checked to be zero, never written


def haiku_layout(inp: LayoutInput) -> list[ExportArray]:
    handlers = {
        "MultiHeadAttention": _attention,
        "Dense": _linear,
        "LayerNormalization": _layer_norm,
        "Embedding": _embedding,
    }
    return port(inp, "haiku", handlers, _by_role, _loose_name)


def scope(layer: Layer) -> str:
    return layer.name


def _key(layer: Layer, param: str) -> str:
    return f"{scope(layer)}{SEP}{param}"


def _loose_name(name: str) -> str:
    """A tensor without a role: its last path part becomes the parameter name."""
    parent, _, leaf = name.rpartition("/")
    return f"{parent}{SEP}{leaf}" if parent else name


def _rename(inp: LayoutInput, lt: LayerTensors, names: dict[str, str]) -> list[ExportArray]:
    return [
        verbatim(inp, _key(lt.layer, names[role]), info)
        for role, info in sorted(lt.tensors.items(), key=lambda item: item[1].order)
        if role in names
    ]


def _linear(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    kernel = lt.tensors.get("kernel")
    if kernel is not None:
        entry = module_entry(
            lt.layer,
            scope(lt.layer),
            "alphafold.model.common_modules.Linear",
            {"num_output": kernel.shape[-1], "use_bias": "bias" in lt.tensors},
        )
        # Linear has no activation: the Keras layer's is applied after it
        entry["activation"] = lt.layer.config.get("activation", "linear")
        inp.modules.append(entry)
    return _rename(inp, lt, {"kernel": "weights", "bias": "bias"})


def _layer_norm(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    if lt.layer.config.get("rms_scaling"):
        raise LayoutRefused(
            f"--layout haiku: layer {lt.layer.name!r} is an RMS norm (rms_scaling=True), "
            f"which haiku.LayerNorm does not compute; {_INSTEAD}",
            inp.path,
        )
    inp.modules.append(
        module_entry(
            lt.layer,
            scope(lt.layer),
            "haiku.LayerNorm",
            {
                "axis": [-1],
                "create_scale": "gamma" in lt.tensors,
                "create_offset": "beta" in lt.tensors,
                "eps": lt.layer.config.get("epsilon", 1e-3),
            },
        )
    )
    return _rename(inp, lt, {"gamma": "scale", "beta": "offset"})


def _embedding(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    table = lt.tensors.get("embeddings")
    if table is not None and len(table.shape) == 2:
        args = {"vocab_size": table.shape[0], "embed_dim": table.shape[1]}
        inp.modules.append(module_entry(lt.layer, scope(lt.layer), "haiku.Embed", args))
    return _rename(inp, lt, {"embeddings": "embeddings"})


def _by_role(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    inp.notes.append(
        f"{lt.layer.name!r} ({lt.layer.class_name}) has no AlphaFold module here: "
        f"kept as {scope(lt.layer)}{SEP}<role>, values unchanged"
    )
    return _rename(inp, lt, {role: role for role in lt.tensors})


# --- Attention -------------------------------------------------------------------------------


def _attention(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    layer, t = lt.layer, lt.tensors
    full = {role: key for role, key in layer.weights.items()}
    _check_attention(inp, lt, full)
    arrays = [
        verbatim(inp, _key(layer, "query_w"), t["query.kernel"]),
        verbatim(inp, _key(layer, "key_w"), t["key.kernel"]),
        verbatim(inp, _key(layer, "value_w"), t["value.kernel"]),
    ]
    gated = "gate.kernel" in t
    if gated:
        arrays.append(verbatim(inp, _key(layer, "gating_w"), t["gate.kernel"]))
        if "gate.bias" in t:
            arrays.append(verbatim(inp, _key(layer, "gating_b"), t["gate.bias"]))
        else:
            shape = t["gate.kernel"].shape[1:]
            why = "the Keras gate has no bias"
            arrays.append(
                zeros(
                    _key(layer, "gating_b"),
                    shape,
                    t["gate.kernel"].dtype,
                    _role(layer, "gate.bias"),
                    why,
                )
            )
    output = t["output.kernel"]
    arrays.append(verbatim(inp, _key(layer, "output_w"), output))
    if "output.bias" in t:
        arrays.append(verbatim(inp, _key(layer, "output_b"), t["output.bias"]))
    else:
        why = "the Keras output projection has no bias"
        arrays.append(
            zeros(
                _key(layer, "output_b"),
                output.shape[2:],
                output.dtype,
                _role(layer, "output.bias"),
                why,
            )
        )
    q, v = t["query.kernel"].shape, t["value.kernel"].shape
    dropped = [r for r in _QKV_BIASES if r in full]
    inp.dropped.update(full[r] for r in dropped)
    if dropped:
        inp.notes.append(
            f"{layer.name!r}: {', '.join(dropped)} are all zero and left out "
            "(AlphaFold's Attention has no query/key/value biases)"
        )
    inp.modules.append(
        module_entry(
            layer,
            scope(layer),
            "alphafold.model.modules.Attention",
            {  # Attention(config, global_config, output_dim, name=prefix)
                "config": {
                    "num_head": q[1],
                    "key_dim": q[1] * q[2],  # AlphaFold's config gives totals over heads
                    "value_dim": v[1] * v[2],
                    "gating": gated,
                },
                "global_config": {"zero_init": True},  # initializers only; AlphaFold's default
                "output_dim": output.shape[2],
            },
        )
    )
    return arrays


def _role(layer: Layer, role: str) -> dict:
    return role_dict(layer, role)


def _check_attention(inp: LayoutInput, lt: LayerTensors, full: dict[str, str]) -> None:
    """Refuse what AlphaFold's Attention cannot compute."""
    layer, t = lt.layer, lt.tensors
    name = layer.name

    def refuse(why: str) -> None:
        raise LayoutRefused(f"--layout haiku: layer {name!r} {why}; {_INSTEAD}", inp.path)

    for role in ("query.kernel", "key.kernel", "value.kernel", "output.kernel"):
        if role not in full:
            refuse(f"has no {role.split('.')[0]} projection, which AlphaFold's Attention needs")
    missing = [role for role in full if role not in t and role not in _QKV_BIASES]
    if missing:
        refuse(f"is only partly selected by --filter (not {', '.join(missing)})")
    kernels = {
        p: t[f"{p}.kernel"].shape
        for p in ("query", "key", "value", "gate", "output")
        if f"{p}.kernel" in t
    }
    if any(len(s) != 3 for p, s in kernels.items() if p != "output") or len(kernels["output"]) != 3:
        shapes = ", ".join(f"{p} {list(s)}" for p, s in kernels.items())
        refuse(
            f"has kernels of shapes {shapes}; AlphaFold's Attention needs (D, heads, head_dim) "
            "projections and a (heads, head_dim, output_dim) output"
        )
    if kernels["key"][0] != kernels["value"][0]:
        refuse(
            f"projects keys from dim {kernels['key'][0]} and values from dim "
            f"{kernels['value'][0]}; AlphaFold's Attention projects both from one m_data"
        )
    _check_calls(inp, layer, refuse)
    _refuse_nonzero_biases(inp, layer, full)


def _check_calls(inp: LayoutInput, layer: Layer, refuse: Callable[[str], None]) -> None:
    """AlphaFold's Attention has no key input: refuse a layer the model calls with one."""
    calls = inp.calls(layer)
    if calls is None:
        inp.notes.append(
            f"{layer.name!r}: no model config tells how it is called; AlphaFold's Attention "
            "computes keys from its m_data (Keras's value), so the port holds only if the "
            "layer was called without a separate key"
        )
        return
    _mask_notes(inp, layer, calls)
    for call in calls:
        if call.separate_key:
            refuse(
                f"is called with a key tensor of its own (key from {_source(call.key)}, "
                f"value from {_source(call.value)}); AlphaFold's Attention computes keys "
                "from its value input m_data"
            )


def _mask_notes(inp: LayoutInput, layer: Layer, calls: list[AttentionCall]) -> None:
    """Masking and axes the Keras layer applies by itself, which AlphaFold's Attention
    takes from its caller (an additive bias; inputs shaped (batch, N, channels))."""
    masks = []
    if any(call.options.get("use_causal_mask") for call in calls):
        masks.append("the causal mask (use_causal_mask=True)")
    window = layer.config.get("sliding_window")
    if window:
        masks.append(f"the band of sliding_window={window}")
    if masks:
        inp.notes.append(
            f"{layer.name!r}: pass {' and '.join(masks)} to AlphaFold's Attention as its "
            "bias, 1e9 * (mask - 1)"
        )
    axes = layer.config.get("attention_axes")
    if axes is not None:
        shown = list(axes) if isinstance(axes, (list, tuple)) else [axes]
        inp.notes.append(
            f"{layer.name!r} attends over axes {shown}: "
            "AlphaFold's Attention attends over axis 1 of (batch, N, channels); put those "
            "axes there (flattened) and the others into the batch"
        )


def _source(ref: object) -> str:
    """The layer a `(layer, node, tensor)` ref comes from, quoted."""
    return repr(ref[0]) if isinstance(ref, tuple) and ref else repr(ref)


def _refuse_nonzero_biases(inp: LayoutInput, layer: Layer, full: dict[str, str]) -> None:
    """Read the query/key/value biases (small) and refuse unless every one is zero."""
    worst: tuple[float, str] | None = None
    for role in _QKV_BIASES:
        key = full.get(role)
        if key is None:
            continue
        values = np.asarray(inp.read(key), dtype=np.float64)
        peak = float(np.max(np.abs(values), initial=0.0))
        if np.isnan(values).any():
            peak = float("nan")
        if peak != 0 and (worst is None or not peak <= worst[0]):
            worst = (peak, role)
    if worst is not None:
        peak, role = worst
        raise LayoutRefused(
            f"--layout haiku: layer {layer.name!r} has a non-zero {role} (max |b| = {peak:.4g}); "
            f"AlphaFold's Attention has no query/key/value biases; {_INSTEAD}",
            inp.path,
        )
