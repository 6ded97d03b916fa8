"""The `torch` and `torch-mha` layouts: PyTorch `state_dict` names and shapes.

`torch` (one `nn.Linear` per projection):
    Dense                 kernel (I,O)      -> <layer>.weight (O,I), <layer>.bias (O,)
    LayerNormalization    gamma, beta       -> <layer>.weight, <layer>.bias
    Embedding             embeddings (V,D)  -> <layer>.weight (V,D)
    MultiHeadAttention    query.kernel (Dq,N,H) -> <layer>.q_proj.weight (N*H, Dq),
                          query.bias (N,H)      -> <layer>.q_proj.bias (N*H,);
                          likewise k_proj, v_proj (N*Hv, Dv), gate_proj (N*Hv, Dq);
                          output.kernel (N,Hv,Dout) -> <layer>.out_proj.weight (Dout, N*Hv)
Flattening (N,H) to N*H keeps head n in rows n*H ... n*H+H-1, which is what
`x.unflatten(-1, (N, H))` undoes on the PyTorch side.

`torch-mha` (`nn.MultiheadAttention(E, N, bias, kdim, vdim, batch_first=True)`):
    <layer>.in_proj_weight (3E,E) = rows [Wq; Wk; Wv], or <layer>.q_proj_weight (E,E),
    <layer>.k_proj_weight (E,kdim), <layer>.v_proj_weight (E,vdim) when kdim or vdim != E;
    <layer>.in_proj_bias (3E,), <layer>.out_proj.weight (E,E), <layer>.out_proj.bias (E,).
nn.MultiheadAttention has embed_dim E = num_heads * head_dim for the query, the
heads and the output alike, one head_dim for keys and values, no gate, one bias
switch. A Keras layer that does not fit is refused with the reason.

Layer names become module paths: `/` turns into `.`.
"""

from __future__ import annotations

import numpy as np

from ckpt_tool.families import Family, family_of
from ckpt_tool.layouts.base import (
    ExportArray,
    LayerTensors,
    LayoutInput,
    LayoutRefused,
    derived,
    flat,
    role_dict,
    verbatim,
)
from ckpt_tool.layouts.common import MHA_PARTS, module_entry, port, require_whole
from ckpt_tool.rolemap import Layer

_PROJ = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "gate": "gate_proj"}


def torch_layout(inp: LayoutInput) -> list[ExportArray]:
    handlers, fallback = _handlers(_mha_linears), _by_role
    family = family_of(inp.roles)
    if family is not None:
        handlers = {cls: _family_first(family, h) for cls, h in handlers.items()}
        fallback = _family_first(family, fallback)
        note = family.torch_note()
        if note:
            inp.notes.append(note)
    return port(inp, "torch", handlers, fallback, _dotted)


def torch_mha_layout(inp: LayoutInput) -> list[ExportArray]:
    return port(inp, "torch-mha", _handlers(_mha_packed), _by_role, _dotted)


def _handlers(mha):
    return {
        "MultiHeadAttention": mha,
        "Dense": _linear,
        "LayerNormalization": _layer_norm,
        "Embedding": _embedding,
    }


def _dotted(name: str) -> str:
    return name.replace("/", ".")


def prefix(layer: Layer) -> str:
    return _dotted(layer.name)


# --- shapes and transforms -------------------------------------------------------------------


def in_kernel(kernel: np.ndarray) -> np.ndarray:
    """(D, N, H) or (D, N*H) -> (N*H, D): an input projection as a Linear weight."""
    return kernel.reshape(kernel.shape[0], -1).T


def in_kernel_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return (flat(shape[1:]), shape[0])


def out_kernel(kernel: np.ndarray) -> np.ndarray:
    """(N, Hv, *out) -> (prod(out), N*Hv); a 2-D (in, out) kernel is transposed."""
    if kernel.ndim < 3:
        return kernel.T
    return kernel.reshape(kernel.shape[0] * kernel.shape[1], -1).T


def out_kernel_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 3:
        return (shape[1], shape[0])
    return (flat(shape[2:]), shape[0] * shape[1])


def _flatten(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1)


def _flat_bias(inp: LayoutInput, name: str, info) -> ExportArray:
    if len(info.shape) == 1:
        return verbatim(inp, name, info)
    return derived(inp, name, [info], _flatten, (flat(info.shape),), "flatten")


# --- layers ------------------------------------------------------------------------------------


def _linear(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    kernel, bias = lt.tensors.get("kernel"), lt.tensors.get("bias")
    if kernel is not None and len(kernel.shape) != 2:
        return _by_role(inp, lt)
    p = prefix(lt.layer)
    arrays = []
    if kernel is not None:
        shape = (kernel.shape[1], kernel.shape[0])
        arrays.append(derived(inp, f"{p}.weight", [kernel], np.transpose, shape, "transpose"))
        inp.modules.append(
            module_entry(
                lt.layer,
                p,
                "torch.nn.Linear",
                {
                    "in_features": kernel.shape[0],
                    "out_features": kernel.shape[1],
                    "bias": bias is not None,
                    "activation": lt.layer.config.get("activation", "linear"),
                },
            )
        )
    if bias is not None:
        arrays.append(verbatim(inp, f"{p}.bias", bias))
    return arrays


def _layer_norm(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    p = prefix(lt.layer)
    gamma, beta = lt.tensors.get("gamma"), lt.tensors.get("beta")
    arrays = []
    if gamma is not None:
        arrays.append(verbatim(inp, f"{p}.weight", gamma))
    if beta is not None:
        arrays.append(verbatim(inp, f"{p}.bias", beta))
    if gamma is None and beta is None:
        return []
    shape = (gamma if gamma is not None else beta).shape
    inp.modules.append(
        module_entry(
            lt.layer,
            p,
            "torch.nn.LayerNorm",
            {
                "normalized_shape": list(shape),
                "eps": lt.layer.config.get("epsilon", 1e-3),
                "elementwise_affine": gamma is not None,
                "bias": beta is not None,
            },
        )
    )
    return arrays


def _embedding(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    table = lt.tensors.get("embeddings")
    if table is None or len(table.shape) != 2:
        return _by_role(inp, lt)
    p = prefix(lt.layer)
    inp.modules.append(
        module_entry(
            lt.layer,
            p,
            "torch.nn.Embedding",
            {"num_embeddings": table.shape[0], "embedding_dim": table.shape[1]},
        )
    )
    return [verbatim(inp, f"{p}.weight", table)]


def _by_role(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    """Layers PyTorch has no module for: `<layer>.<role>`, values unchanged."""
    p = prefix(lt.layer)
    inp.notes.append(
        f"{lt.layer.name!r} ({lt.layer.class_name}) has no PyTorch module here: "
        f"kept as {p}.<role>, values unchanged"
    )
    return [verbatim(inp, f"{p}.{role}", info) for role, info in _in_order(lt)]


def _in_order(lt: LayerTensors):
    return sorted(lt.tensors.items(), key=lambda item: item[1].order)


# --- model families --------------------------------------------------------------------------


def _family_first(family: Family, handler):
    """A handler that names a layer as the model family's PyTorch port does, and leaves
    layers the family does not name to `handler`. `inp.torch_prefix` goes before every
    family name (`bert.` for BertForPreTraining's state_dict)."""

    def handle(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
        arrays = family.torch_arrays(inp, lt)
        if arrays is None:
            return handler(inp, lt)
        for arr in arrays:
            arr.name = inp.torch_prefix + arr.name
        return arrays

    return handle


# --- MultiHeadAttention --------------------------------------------------------------------


def _mha_linears(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    """q_proj, k_proj, v_proj, [gate_proj], out_proj as separate Linear layers."""
    p = prefix(lt.layer)
    t = lt.tensors
    arrays = []
    for part in MHA_PARTS:
        kernel, bias = t.get(f"{part}.kernel"), t.get(f"{part}.bias")
        name = f"{p}.{_PROJ.get(part, 'out_proj')}"
        if kernel is not None:
            if part == "output":
                fn, shape, how = out_kernel, out_kernel_shape(kernel.shape), "out-kernel"
            else:
                fn, shape, how = in_kernel, in_kernel_shape(kernel.shape), "in-kernel"
            arrays.append(derived(inp, f"{name}.weight", [kernel], fn, shape, TRANSFORMS[how]))
        if bias is not None:
            arrays.append(_flat_bias(inp, f"{name}.bias", bias))
    inp.modules.append(module_entry(lt.layer, p, "Linear projections", _heads(lt)))
    return arrays


TRANSFORMS = {
    "in-kernel": "reshape (D,N,H) -> (D,N*H), transpose",
    "out-kernel": "reshape (N,Hv,Dout) -> (N*Hv,Dout), transpose",
    "pack": "rows [query; key; value]",
}


def _heads(lt: LayerTensors) -> dict:
    """Head counts and sizes as the weights (or the config) tell."""
    t, config = lt.tensors, lt.layer.config
    q = t.get("query.kernel")
    v = t.get("value.kernel")
    args = {
        "num_heads": config.get("num_heads"),
        "head_dim": config.get("key_dim"),
        "value_head_dim": config.get("value_dim") or config.get("key_dim"),
        "bias": "query.bias" in t,
        "gate": "gate.kernel" in t,
    }
    if q is not None and len(q.shape) == 3:
        args["num_heads"], args["head_dim"] = q.shape[1], q.shape[2]
    if v is not None and len(v.shape) == 3:
        args["value_head_dim"] = v.shape[2]
    return args


def mha_misfit(lt: LayerTensors) -> str | None:
    """Why the layer cannot be a torch.nn.MultiheadAttention, or None if it can."""
    t, config = lt.tensors, lt.layer.config
    if "gate.kernel" in t:
        return "it has a gate (use_gate=True), which nn.MultiheadAttention lacks"
    q, k, v, o = (t.get(f"{p}.kernel") for p in ("query", "key", "value", "output"))
    if q is None or k is None or v is None:
        return "it lacks a query, key or value projection"
    if o is None:
        return "it has no output projection"
    embed = flat(q.shape[1:])
    heads = "x".join(str(d) for d in q.shape[1:])
    if q.shape[0] != embed:
        return (
            f"its query dim {q.shape[0]} is not num_heads x key_dim = {heads} = {embed}, "
            "and nn.MultiheadAttention projects the query from embed_dim to embed_dim"
        )
    if flat(v.shape[1:]) != embed:
        return (
            f"its value heads ({'x'.join(str(d) for d in v.shape[1:])}) differ from its "
            f"key heads ({heads}); nn.MultiheadAttention has one head_dim"
        )
    out_dims = o.shape[2:] if len(o.shape) >= 3 else o.shape[1:]
    if flat(out_dims) != embed or len(out_dims) != 1:
        return (
            f"its output shape {list(out_dims)} is not [embed_dim] = [{embed}] "
            "(output_shape must be unset)"
        )
    biased = [p for p in ("query", "key", "value", "output") if f"{p}.bias" in t]
    if biased and len(biased) != 4:
        return (
            f"only some projections have biases ({', '.join(biased)}); "
            "nn.MultiheadAttention has one bias switch"
        )
    axes = config.get("attention_axes")
    if axes is not None and (axes if isinstance(axes, list) else [axes]) not in ([1], [-2]):
        return f"it attends over axes {axes}; nn.MultiheadAttention over one sequence axis"
    return None


def _mha_packed(inp: LayoutInput, lt: LayerTensors) -> list[ExportArray]:
    """One nn.MultiheadAttention: in_proj_weight (or q/k/v_proj_weight), in_proj_bias,
    out_proj."""
    require_whole(inp, lt, "torch-mha", "nn.MultiheadAttention packs q, k and v together")
    why = mha_misfit(lt)
    if why:
        raise LayoutRefused(
            f"--layout torch-mha: layer {lt.layer.name!r} cannot be an "
            f"nn.MultiheadAttention: {why}; use --layout torch (separate q_proj, k_proj, "
            "v_proj, out_proj)",
            inp.path,
        )
    p = prefix(lt.layer)
    t = lt.tensors
    q, k, v, o = (t[f"{part}.kernel"] for part in ("query", "key", "value", "output"))
    embed = q.shape[0]
    packed = k.shape[0] == embed and v.shape[0] == embed
    layer = lt.layer
    arrays = []
    if packed:
        role = role_dict(layer, "query.kernel+key.kernel+value.kernel")
        arrays.append(
            derived(
                inp,
                f"{p}.in_proj_weight",
                [q, k, v],
                lambda *ws: np.concatenate([in_kernel(w) for w in ws], axis=0),
                (3 * embed, embed),
                f"{TRANSFORMS['in-kernel']}; {TRANSFORMS['pack']}",
                role=role,
            )
        )
    else:
        for info, short in ((q, "q"), (k, "k"), (v, "v")):
            shape = in_kernel_shape(info.shape)
            name = f"{p}.{short}_proj_weight"
            arrays.append(derived(inp, name, [info], in_kernel, shape, TRANSFORMS["in-kernel"]))
    biases = [t.get(f"{part}.bias") for part in ("query", "key", "value")]
    if all(b is not None for b in biases):
        arrays.append(
            derived(
                inp,
                f"{p}.in_proj_bias",
                biases,
                lambda *bs: np.concatenate([b.reshape(-1) for b in bs]),
                (3 * embed,),
                f"flatten; {TRANSFORMS['pack']}",
                role=role_dict(layer, "query.bias+key.bias+value.bias"),
            )
        )
    shape = out_kernel_shape(o.shape)
    arrays.append(
        derived(inp, f"{p}.out_proj.weight", [o], out_kernel, shape, TRANSFORMS["out-kernel"])
    )
    if "output.bias" in t:
        arrays.append(_flat_bias(inp, f"{p}.out_proj.bias", t["output.bias"]))
    args = {
        "embed_dim": embed,
        "num_heads": _heads(lt)["num_heads"],
        "bias": "query.bias" in t,
        "batch_first": True,
    }
    if not packed:
        args |= {"kdim": k.shape[0], "vdim": v.shape[0]}
    inp.modules.append(module_entry(layer, p, "torch.nn.MultiheadAttention", args))
    return arrays
