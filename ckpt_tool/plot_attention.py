"""Attention maps of the original and of the NumPy rebuild, for `verify --plot`.

The rebuild's map: the graph is run again with `return_attention_scores=True` on each
MultiHeadAttention node and the scores added as extra graph outputs (B, N, T, S). The
original's map: the original Keras layer itself, called with `return_attention_scores=True`
on the inputs the original model gives that layer (its own intermediate outputs, read
with the same probe `--per-layer` uses). Where that cannot be done faithfully the map is
missing and `why_missing` says why: a SavedModel does not expose its attention
probabilities, and a layer whose inputs carry masks cannot be re-called alone without
losing them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ckpt_tool.graph import Node, run_graph

ATTENTION_CLASSES = ("MultiHeadAttention",)
_MASK_KWARGS = ("attention_mask", "query_mask", "value_mask", "key_mask")
_TENSOR_KWARGS = ("query", "value", "key")


@dataclass
class AttentionMaps:
    """One attention layer's probabilities for one example and head, (T, S) each."""

    layer: str
    example: int
    head: int
    rebuild: np.ndarray | None  # None: no (T, S) map to draw (see why_missing)
    original: np.ndarray | None
    why_missing: str | None = None  # why `original` (or `rebuild`) is None

    @property
    def max_difference(self) -> float | None:
        if self.original is None or self.rebuild is None:
            return None
        return float(np.max(np.abs(self.original - self.rebuild)))


def attention_nodes(nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.class_name in ATTENTION_CLASSES and n.node_index == 0]


def attention_maps(arrays: Any, limit: int = 4) -> list[AttentionMaps]:
    """Maps for the first `limit` attention layers (arrays: verify's RunArrays), for
    example 0 and the head where the two maps differ most (head 0 without an original)."""
    nodes = attention_nodes(arrays.graph.nodes)[:limit]
    if not nodes:
        return []
    ours = _rebuild_scores(arrays, nodes)
    theirs = _original_scores(arrays, nodes)
    maps = []
    for node in nodes:
        scores = ours[node.layer]
        original, why = theirs.get(node.layer, (None, "not computed"))
        if scores.ndim != 4:  # custom attention_axes: (B, ..., N, T..., S...)
            why = f"scores of shape {scores.shape} (attention_axes): no single (T, S) map"
            maps.append(AttentionMaps(node.layer, 0, 0, None, None, why))
            continue
        if original is not None and original.shape != scores.shape:
            original, why = None, f"the original's scores have shape {original.shape}"
        example = 0
        if original is not None:
            diff = np.abs(original[example] - scores[example]).reshape(scores.shape[1], -1)
            head = int(np.argmax(diff.max(axis=1)))
        else:
            head = 0
        maps.append(
            AttentionMaps(
                node.layer,
                example,
                head,
                np.asarray(scores[example, head], dtype=np.float64),
                None if original is None else np.asarray(original[example, head], np.float64),
                None if original is not None else why,
            )
        )
    return maps


def _rebuild_scores(arrays: Any, nodes: list[Node]) -> dict[str, np.ndarray]:
    """Run the rebuilt graph once more with each node also returning its scores."""
    wanted = {node.layer for node in nodes}
    new_nodes = [
        replace(n, kwargs={**n.kwargs, "return_attention_scores": True})
        if n.layer in wanted and n.node_index == 0
        else n
        for n in arrays.graph.nodes
    ]
    extra = [(node.layer, 0, 1) for node in nodes]
    graph = replace(arrays.graph, nodes=new_nodes, outputs=[*arrays.graph.outputs, *extra])
    ours = [arrays.inputs[i] for i in arrays.order]
    outputs, _ = run_graph(graph, arrays.weights, ours, dtype=arrays.dtype, configs=arrays.configs)
    scores = outputs[len(arrays.graph.outputs) :]
    return {node.layer: np.asarray(s) for node, s in zip(nodes, scores, strict=True)}


def _original_scores(
    arrays: Any, nodes: list[Node]
) -> dict[str, tuple[np.ndarray | None, str | None]]:
    """(scores, why missing) per layer, from the original model's own layers."""
    model = getattr(arrays.original, "keras_model", None)
    if model is None:
        why = (
            f"{arrays.original.description} does not expose its attention probabilities "
            "(only Keras models can be asked for them)"
        )
        return {node.layer: (None, why) for node in nodes}
    masked = any(
        n.class_name == "Embedding" and n.config.get("mask_zero") for n in arrays.graph.nodes
    )
    reference = arrays.original.layer_outputs(arrays.inputs, [n.layer for n in nodes]) or {}
    graph_inputs = {(r[0], r[1]): i for i, r in enumerate(arrays.graph.inputs)}
    ours = [arrays.inputs[i] for i in arrays.order]
    out: dict[str, tuple[np.ndarray | None, str | None]] = {}
    for node in nodes:
        if masked or any(node.kwargs.get(k) is not None for k in _MASK_KWARGS):
            out[node.layer] = (None, "the layer's inputs carry masks that re-calling it would drop")
            continue
        tensors = []
        refs = [*_flat(node.args), *(node.kwargs[k] for k in _TENSOR_KWARGS if k in node.kwargs)]
        for ref in refs:
            if not isinstance(ref, tuple):
                continue
            if (ref[0], ref[1]) in graph_inputs:
                tensors.append(ours[graph_inputs[(ref[0], ref[1])]])
            elif ref[2] == 0 and ref[0] in reference:
                tensors.append(np.asarray(reference[ref[0]]))
            else:
                tensors = []
                break
        if len(tensors) < 2:
            out[node.layer] = (None, "its inputs in the original could not be read")
            continue
        try:
            layer = model.get_layer(node.layer)
            _, scores = layer(
                *tensors[:3],
                return_attention_scores=True,
                use_causal_mask=bool(node.kwargs.get("use_causal_mask", False)),
                training=False,
            )
        except Exception as exc:  # the original's own code: any failure only loses the map
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            out[node.layer] = (None, f"the original layer refused: {first}")
            continue
        out[node.layer] = (np.asarray(scores), None)
    return out


def _flat(values: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [v])
    return flat
