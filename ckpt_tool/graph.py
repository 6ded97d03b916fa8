"""The layer graph to run: from a Keras functional config when there is one, else a chain.

A graph is a list of nodes in topological order. Each node calls one layer on
tensors produced by earlier nodes (or on model inputs) and yields one or more
output tensors, referred to as `(layer name, node index, tensor index)` like
Keras's own `keras_history`.

Keras masks travel with the tensors as Keras propagates them: an
`Embedding(mask_zero=True)` emits `ids != 0`; layers that support masking (Dense,
LayerNormalization, Dropout, Activation) pass their first input's mask on; merge
layers OR their inputs' masks; attention layers receive their inputs' masks
(`mask=[query_mask, value_mask]` for Attention, `query_mask`/`value_mask`/`key_mask`
for MultiHeadAttention) and emit the query's mask on their first output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckpt_tool.errors import UnsupportedFormatError
from ckpt_tool.rolemap import RoleMap
from ckpt_tool.roles import plain_config

Ref = tuple[str, int, int]  # (layer name, node index, tensor index)

# Layers that are plumbing, not computation, in the graph.
_INPUT_CLASSES = ("InputLayer",)
_MODEL_CLASSES = ("Functional", "Model", "Sequential")


@dataclass
class Node:
    layer: str  # layer name, the key into RoleMap and the weights
    class_name: str
    config: dict
    node_index: int  # which call of the layer (a shared layer is called more than once)
    args: list[Any]  # positional inputs: Refs, or lists of Refs
    kwargs: dict[str, Any] = field(default_factory=dict)  # Refs or plain values


@dataclass
class Graph:
    inputs: list[Ref]
    nodes: list[Node]
    outputs: list[Ref]
    source: str  # "config" or "chain"
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] | None = None  # when the model names its outputs


# --------------------------------------------------------------------------- building


def build_graph(model_config: dict | None, role_map: RoleMap) -> Graph:
    """The graph of the model family whose names decided the roles, else of a Keras
    functional model config, else the chain of mapped layers."""
    from ckpt_tool.families import family_of

    family = family_of(role_map)
    graph = family.graph(role_map) if family is not None else None
    if graph is not None:
        return graph
    if model_config:
        inner = _functional_config(model_config)
        if inner is not None:
            graph = _from_functional(inner)
            graph.source = model_config.get("ckpt_tool_source", graph.source)  # graph_trace
            return graph
    return chain_graph(role_map)


def _functional_config(model_config: dict) -> dict | None:
    config = model_config.get("config", model_config)
    if isinstance(config, dict) and isinstance(config.get("layers"), list):
        if model_config.get("class_name") == "Sequential" or "input_layers" not in config:
            return _sequential_as_functional(config)
        return config
    return None


def _sequential_as_functional(config: dict) -> dict | None:
    layers = [layer for layer in config["layers"] if layer.get("class_name") not in _INPUT_CLASSES]
    if not layers:
        return None
    chained = [
        {
            "class_name": "InputLayer",
            "name": "input",
            "config": {"name": "input"},
            "inbound_nodes": [],
        }
    ]
    previous = "input"
    for layer in layers:
        name = layer.get("name") or layer["config"]["name"]
        chained.append({**layer, "name": name, "inbound_nodes": [[[previous, 0, 0, {}]]]})
        previous = name
    return {
        "layers": chained,
        "input_layers": [["input", 0, 0]],
        "output_layers": [[previous, 0, 0]],
    }


def _from_functional(config: dict) -> Graph:
    nodes: list[Node] = []
    inputs: list[Ref] = []
    for layer in config["layers"]:
        name = layer.get("name") or layer["config"]["name"]
        class_name = layer["class_name"]
        if class_name in _MODEL_CLASSES:
            raise UnsupportedFormatError(
                f"nested model {name!r} in the config is not supported yet"
            )
        if class_name in _INPUT_CLASSES:
            continue
        for index, inbound in enumerate(layer.get("inbound_nodes", [])):
            args, kwargs = _parse_inbound(inbound)
            nodes.append(Node(name, class_name, plain_config(layer["config"]), index, args, kwargs))
    inputs = _refs(config["input_layers"])
    outputs = _refs(config["output_layers"])
    ordered = _topological(nodes, set(inputs))
    return Graph(inputs, ordered, outputs, "config", [r[0] for r in inputs])


def _refs(value: Any) -> list[Ref]:
    """`["x", 0, 0]`, `[["x", 0, 0], ...]` or a dict of those (a model with named inputs
    or outputs, flattened in sorted key order as Keras does) -> list of Refs."""
    if isinstance(value, dict):
        return [r for key in sorted(value) for r in _refs(value[key])]
    if not isinstance(value, list):
        raise UnsupportedFormatError(f"unreadable input or output in the model config: {value!r}")
    if value and isinstance(value[0], str):
        return [(value[0], int(value[1]), int(value[2]))]
    return [r for v in value for r in _refs(v)]


def _parse_inbound(inbound: Any) -> tuple[list[Any], dict[str, Any]]:
    """One call of a layer, from either config spelling:
    Keras 3 `{"args": [...], "kwargs": {...}}` with `__keras_tensor__` entries, or
    tf-keras `[[layer, node, tensor, {kwargs}], ...]` (or `{name: [layer, ...], ...}` for
    a dict input: one argument, its tensors in sorted key order)."""
    if isinstance(inbound, dict) and not ("args" in inbound or "kwargs" in inbound):
        args, kwargs = _parse_inbound([inbound[key] for key in sorted(inbound)])
        return [args], kwargs
    if isinstance(inbound, dict):
        args = [_tensor_refs(a) for a in inbound.get("args", [])]
        kwargs = {k: _tensor_refs(v) for k, v in inbound.get("kwargs", {}).items()}
        return args, kwargs
    args, kwargs = [], {}
    for entry in inbound:
        args.append((entry[0], int(entry[1]), int(entry[2])))
        if len(entry) > 3 and isinstance(entry[3], dict):
            kwargs.update({k: _legacy_refs(v) for k, v in entry[3].items()})
    return args, kwargs


def _tensor_refs(value: Any) -> Any:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = value["config"]["keras_history"]
        return (history[0], int(history[1]), int(history[2]))
    if isinstance(value, list):
        return [_tensor_refs(v) for v in value]
    if isinstance(value, dict):  # a dict of tensors: flattened by sorted key, as Keras does
        refs = [_tensor_refs(value[key]) for key in sorted(value)]
        return refs if _refs_in(refs) else value
    return value


def _legacy_refs(value: Any) -> Any:
    is_ref = isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)
    if is_ref and isinstance(value[1], int) and isinstance(value[2], int):
        return (value[0], value[1], value[2])
    if isinstance(value, list):
        return [_legacy_refs(v) for v in value]
    return value


def _refs_in(value: Any) -> list[Ref]:
    if isinstance(value, tuple):
        return [value]
    if isinstance(value, list):
        return [r for v in value for r in _refs_in(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs_in(v)]
    return []


def _topological(nodes: list[Node], available_inputs: set[Ref]) -> list[Node]:
    """Order nodes so that every node comes after the nodes it reads."""
    produced = {(r[0], r[1]) for r in available_inputs}
    ordered: list[Node] = []
    pending = list(nodes)
    while pending:
        ready = [
            n
            for n in pending
            if all((r[0], r[1]) in produced for r in _refs_in([n.args, n.kwargs]))
        ]
        if not ready:
            names = ", ".join(n.layer for n in pending)
            raise UnsupportedFormatError(f"the model config's graph cannot be ordered (at {names})")
        for n in ready:
            ordered.append(n)
            produced.add((n.layer, n.node_index))
            pending.remove(n)
    return ordered


# How a chain without a config may wire residual connections around its layer norms.
RESIDUALS = ("none", "post-norm", "pre-norm")


def chain_graph(role_map: RoleMap, residual: str = "none") -> Graph:
    """No config: the mapped layers one after another, attention as self-attention.

    The weights cannot tell residual connections. `residual` says where to add them:
    "post-norm" `x = LN(x + f(x))` (BERT, the original Transformer), "pre-norm"
    `x = x + f(LN(x))` (GPT-2 style); verify tries each when the plain chain disagrees.
    """
    nodes: list[Node] = []
    x: Ref = ("input", 0, 0)
    segment_start = x  # the tensor the current residual branch started from
    norms_seen = 0

    def add_residual() -> Ref:
        name = f"residual_{len(nodes)}"
        nodes.append(Node(name, "Add", {"name": name}, 0, [[segment_start, x]]))
        return (name, 0, 0)

    for layer in role_map.layers:
        is_norm = layer.class_name == "LayerNormalization"
        if is_norm and residual == "post-norm":
            x = add_residual()
        if is_norm and residual == "pre-norm":
            if norms_seen:
                x = add_residual()
            segment_start = x
        args: list[Any] = [x]
        if layer.class_name == "MultiHeadAttention":
            args = [x, x]  # query = value = x
        elif layer.class_name in ("Attention", "AdditiveAttention"):
            args = [[x, x]]
        nodes.append(Node(layer.name, layer.class_name, layer.config, 0, args, {}))
        x = (layer.name, 0, 0)
        if is_norm:
            norms_seen += 1
            if residual == "post-norm":
                segment_start = x
    if residual == "pre-norm" and norms_seen:
        x = add_residual()
    source = "chain" if residual == "none" else f"chain, {residual} residuals"
    return Graph([("input", 0, 0)], nodes, [x], source, ["input"])


# --------------------------------------------------------------------------- running

# Call arguments that carry tensors into a layer, in the order of its inputs list.
_TENSOR_KWARGS = ("query", "value", "key")
# Layers whose call receives the Keras masks of its inputs.
_MASK_LIST_LAYERS = ("Attention", "AdditiveAttention")  # mask=[query_mask, value_mask, ...]
_MASK_ARG_LAYERS = ("MultiHeadAttention",)  # query_mask=, value_mask=, key_mask=
# Layers that pass their first input's mask on (Keras `supports_masking`).
_PASS_MASK_LAYERS = ("Dense", "LayerNormalization", "Dropout", "Activation")
_MERGE_LAYERS = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

Mask = np.ndarray | None


def run_graph(
    graph: Graph,
    weights: Mapping[str, Mapping[str, np.ndarray]],
    inputs: Sequence[np.ndarray],
    *,
    dtype: np.dtype | type = np.float64,
    configs: Mapping[str, dict] | None = None,
    keep_layers: bool = True,
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Run the graph in NumPy. Returns the model outputs and every node's first output
    (by layer name, for per-layer comparison). `configs` overrides node configs.
    keep_layers=False returns no per-layer outputs and frees each intermediate tensor
    after its last use, so memory stays that of a few layers, not of the whole model."""
    from ckpt_tool.layers import LayerConfigError, get_layer_kind

    freed_after = None if keep_layers else _last_uses(graph)

    values: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}
    masks: dict[tuple[str, int], tuple[Mask, ...]] = {}
    for ref, array in zip(graph.inputs, inputs, strict=True):
        values[(ref[0], ref[1])] = (np.asarray(array),)
        masks[(ref[0], ref[1])] = (None,)
    per_layer: dict[str, np.ndarray] = {}
    for position, node in enumerate(graph.nodes):
        kind = get_layer_kind(node.class_name)
        config = (configs or {}).get(node.layer, node.config)
        tensors, tensor_masks, call_kwargs = _call_arguments(node, values, masks)
        _add_input_masks(node, tensor_masks, call_kwargs)
        try:
            result = kind.apply(
                config, dict(weights.get(node.layer, {})), tensors, dtype=dtype, **call_kwargs
            )
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            # Structure the kernel did not expect (shapes, settings): a clear refusal.
            raise LayerConfigError(
                f"cannot compute layer {node.layer!r} ({node.class_name}) from the weights: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        outputs = result if isinstance(result, tuple) else (result,)
        values[(node.layer, node.node_index)] = outputs
        masks[(node.layer, node.node_index)] = _output_masks(
            node, config, tensors, tensor_masks, call_kwargs, len(outputs)
        )
        if freed_after is None:
            per_layer.setdefault(node.layer, outputs[0])
        else:
            del tensors, tensor_masks, call_kwargs, result, outputs
            for key in freed_after.get(position, ()):
                values.pop(key, None)
                masks.pop(key, None)
    model_outputs = [values[(r[0], r[1])][r[2]] for r in graph.outputs]
    return model_outputs, per_layer


def _last_uses(graph: Graph) -> dict[int, list[tuple[str, int]]]:
    """Node position -> the (layer, call) values no later node reads: free after it.
    The model's outputs are kept; a value nothing reads is freed right after it is made."""

    def refs(value: Any):
        if isinstance(value, tuple):
            yield (value[0], value[1])
        elif isinstance(value, list):
            for item in value:
                yield from refs(item)

    last: dict[tuple[str, int], int] = {}
    for position, node in enumerate(graph.nodes):
        last[(node.layer, node.node_index)] = position
        for value in [*node.args, *node.kwargs.values()]:
            for key in refs(value):
                last[key] = position
    for ref in graph.outputs:
        last.pop((ref[0], ref[1]), None)
    freed: dict[int, list[tuple[str, int]]] = {}
    for key, position in last.items():
        freed.setdefault(position, []).append(key)
    return freed


def _call_arguments(
    node: Node, values: dict, masks: dict
) -> tuple[list[np.ndarray], list[Mask], dict[str, Any]]:
    def resolve(value: Any, table: dict) -> Any:
        if isinstance(value, tuple):
            return table[(value[0], value[1])][value[2]]
        if isinstance(value, list):
            return [resolve(v, table) for v in value]
        return value

    tensors: list[np.ndarray] = []
    tensor_masks: list[Mask] = []
    for arg in node.args:
        resolved, mask = resolve(arg, values), resolve(arg, masks)
        tensors.extend(resolved if isinstance(resolved, list) else [resolved])
        tensor_masks.extend(mask if isinstance(mask, list) else [mask])
    kwargs = {}
    for name in _TENSOR_KWARGS:  # tensor keywords join the inputs in call order
        if name in node.kwargs and node.kwargs[name] is not None:
            tensors.append(resolve(node.kwargs[name], values))
            tensor_masks.append(resolve(node.kwargs[name], masks))
    for name, value in node.kwargs.items():
        if name in _TENSOR_KWARGS or name == "training" or value is None:
            continue
        kwargs[name] = resolve(value, values)
    return tensors, tensor_masks, kwargs


def _add_input_masks(node: Node, tensor_masks: list[Mask], kwargs: dict[str, Any]) -> None:
    """The mask arguments Keras fills in from the inputs' Keras masks."""
    if all(m is None for m in tensor_masks):
        return
    if node.class_name in _MASK_LIST_LAYERS and kwargs.get("mask") is None:
        kwargs["mask"] = list(tensor_masks)
    elif node.class_name in _MASK_ARG_LAYERS:
        for name, mask in zip(_TENSOR_KWARGS, tensor_masks, strict=False):
            if kwargs.get(f"{name}_mask") is None and mask is not None:
                kwargs[f"{name}_mask"] = mask
        if tensor_masks[0] is not None:  # MultiHeadAttention always uses the query's own
            kwargs["query_mask"] = tensor_masks[0]


def _output_masks(
    node: Node,
    config: dict,
    tensors: list[np.ndarray],
    tensor_masks: list[Mask],
    kwargs: dict[str, Any],
    n_outputs: int,
) -> tuple[Mask, ...]:
    """The Keras masks of a node's outputs (only the first output ever carries one)."""
    from ckpt_tool.layers.op_embedding import embedding_mask

    cls = node.class_name
    mask: Mask = None
    if cls == "Embedding":
        mask = embedding_mask(tensors[0], config)
    elif cls in _MASK_LIST_LAYERS:
        given = kwargs.get("mask")
        mask = given[0] if isinstance(given, list) and given else None
    elif cls in _MASK_ARG_LAYERS:
        mask = tensor_masks[0] if tensor_masks else None
    elif cls in _MERGE_LAYERS:
        if tensor_masks and all(m is not None for m in tensor_masks):
            mask = tensor_masks[0]
            for m in tensor_masks[1:]:
                mask = mask | m
    elif cls in _PASS_MASK_LAYERS:
        mask = tensor_masks[0] if tensor_masks else None
    if mask is not None:
        mask = np.asarray(mask) != 0 if np.asarray(mask).dtype != np.bool_ else np.asarray(mask)
    return (mask,) + (None,) * (n_outputs - 1)


def graph_input_kinds(
    graph: Graph, weights: Mapping[str, Mapping[str, np.ndarray]] | None = None
) -> dict[str, dict[str, Any]]:
    """What each model input feeds, for making inputs that exercise it: token ids
    (`{"kind": "ids", "vocab": V, "mask_zero": bool}`), token types
    (`{"kind": "types", "vocab": V}`), attention masks (`{"kind": "mask"}`)."""
    weights = weights or {}

    def rows(layer: str, role: str) -> int | None:
        table = weights.get(layer, {}).get(role)
        return None if table is None else int(table.shape[0])

    kinds: dict[str, dict[str, Any]] = {}
    for node in graph.nodes:
        refs = [a for a in node.args if isinstance(a, tuple)]
        if node.class_name == "Embedding" and refs:
            kinds[refs[0][0]] = {
                "kind": "ids",
                "vocab": rows(node.layer, "embeddings") or node.config.get("input_dim"),
                "mask_zero": bool(node.config.get("mask_zero")),
            }
        elif node.class_name == "BertEmbeddings" and refs:
            vocab = rows(node.layer, "word_embeddings")
            kinds[refs[0][0]] = {"kind": "ids", "vocab": vocab, "mask_zero": False}
            if len(refs) > 1:
                types = rows(node.layer, "token_type_embeddings")
                kinds[refs[1][0]] = {"kind": "types", "vocab": types}
        elif node.class_name == "BertSelfAttention" and len(refs) > 1:
            kinds[refs[1][0]] = {"kind": "mask"}
        for key in ("attention_mask", "key_mask"):
            mask = node.kwargs.get(key)
            if isinstance(mask, tuple):
                kinds[mask[0]] = {"kind": "mask"}
    return {name: kind for name, kind in kinds.items() if name in graph.input_names}
