"""Layers, roles and wiring from a SavedModel's own serving graph (no TensorFlow).

`ckpt_tool.readers.function_graph` gives the flat op graph of the serving signature.
Here its data flow is read as Keras layers:

- a projection is a contraction (`MatMul`, `BatchMatMulV2`, `Einsum`) of a value with a
  variable (the kernel), optionally followed by an add of another variable (the bias);
- a `Softmax` whose scores contract two projections' outputs, and whose weights contract
  a third, is MultiHeadAttention: the score contraction's first operand is the query,
  its second the key, the softmax's partner the value, a projection multiplied into the
  result the gate, the projection of the result the output. `MatrixBandPart` among the
  mask's ops is the causal mask, a signature input among them an attention-mask input;
- the same softmax on weightless operands is Luong attention (`Attention`);
- `Rsqrt` of a variance plus a constant is LayerNormalization with that epsilon;
- other projections are Dense layers, with the activation op that follows them;
- between layers, `AddV2` of two layers' outputs is a residual `Add`.

Each layer's inputs are traced back to the signature's inputs or other layers' outputs,
which gives a Keras functional config for `build_graph`. Anything not understood raises
GraphTraceError with a one-line reason, and the caller keeps the other evidence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ckpt_tool.readers.base import WEIGHT, VariableInfo
from ckpt_tool.readers.function_graph import (
    FunctionGraphError,
    Op,
    Ref,
    ServingGraph,
    read_serving_graph,
)
from ckpt_tool.rolemap import GRAPH, Layer, RoleMap
from ckpt_tool.storage import as_path


class GraphTraceError(Exception):
    """The serving graph does not read as known layers; the message says why."""


CONTRACTIONS = frozenset({"MatMul", "BatchMatMulV2", "BatchMatMulV3", "BatchMatMul", "Einsum"})
# Ops that move or retype data without computing.
SHAPE_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Cast",
        "Identity",
        "ExpandDims",
        "Squeeze",
        "StopGradient",
        "Snapshot",
    }
)
BIAS_ADDS = frozenset({"BiasAdd", "AddV2", "Add"})
# Activation ops -> Keras activation names; composite ones are recognised in _activation.
ACTIVATION_OPS = {
    "Relu": "relu",
    "Relu6": "relu6",
    "Elu": "elu",
    "Selu": "selu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "Exp": "exponential",
    "LeakyRelu": "leaky_relu",
}
# Ops that read only their input's shape: data does not flow through them.
_SHAPE_ONLY = frozenset({"Shape", "ShapeN", "Size", "Rank", "OnesLike", "ZerosLike"})
_PASS_THROUGH = frozenset({"Identity", "Cast", "StopGradient", "Snapshot"})


@dataclass
class Traced:
    roles: RoleMap
    config: dict  # a Keras functional model config, for build_graph
    notes: list[str] = field(default_factory=list)


@dataclass
class _Projection:
    kernel: str
    bias: str | None
    contraction: Op
    data: Ref  # what the kernel multiplies
    output: Ref  # after the bias


@dataclass
class _Found:
    """One recognised layer: its class, config, weights and how it is called."""

    scope_ops: list[str]
    class_name: str
    config: dict
    weights: dict[str, str]
    output: Ref
    args: list[Ref | list[Ref]] = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)  # Refs or plain values
    notes: list[str] = field(default_factory=list)
    name: str = ""
    extra_outputs: dict = field(default_factory=dict)  # Ref -> output index (> 0)


# --------------------------------------------------------------------------- entry point


def trace_model(reader, infos: Sequence[VariableInfo]) -> Traced | None:
    """The traced model of a SavedModel reader; None for other files. Raises
    GraphTraceError when the graph cannot be read or understood."""
    saved_dir = getattr(reader, "saved_model_dir", None)
    if saved_dir is None:
        return None
    key_of_node: dict[int, str] = {}
    for info in infos:
        node = info.extra.get("node_id")
        if node is None:
            continue
        key = info.key if info.kind == WEIGHT else info.extra.get("duplicate_of")
        if key is not None:
            key_of_node.setdefault(int(node), key)
    shapes = {info.key: tuple(info.shape) for info in infos}
    try:
        graph = read_serving_graph(as_path(saved_dir) / "saved_model.pb", key_of_node)
        return _Tracer(graph, shapes).run(infos)
    except FunctionGraphError as exc:
        raise GraphTraceError(str(exc)) from None
    except GraphTraceError:
        raise
    except Exception as exc:  # the graph is extra evidence: never a crash
        # A graph of a shape nothing here expects (damaged or unusual): fall back.
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise GraphTraceError(
            f"unexpected graph structure ({type(exc).__name__} {detail})"
        ) from None


# --------------------------------------------------------------------------- tracing


class _Tracer:
    def __init__(self, graph: ServingGraph, shapes: dict[str, tuple]):
        self.g = graph
        self.ops = graph.ops
        self.shapes = shapes
        self.consumers: dict[str, list[Op]] = {}
        for op in self.ops.values():
            for ref in op.inputs:  # by producing op, or "arg" for the signature's inputs
                users = self.consumers.setdefault(ref[0], [])
                if not users or users[-1] is not op:
                    users.append(op)

    # ---- small helpers

    def op(self, ref: Ref) -> Op | None:
        return self.ops.get(ref[0])

    def back(self, ref: Ref, through: frozenset = SHAPE_OPS) -> Ref:
        """Follow a value back through data-moving ops to where it is computed."""
        seen = 0
        while (op := self.op(ref)) is not None and op.op in through and op.inputs and seen < 64:
            ref, seen = op.inputs[0], seen + 1
        return ref

    def variable(self, ref: Ref) -> str | None:
        """The checkpoint key a value reads, if it is a variable's value."""
        ref = self.back(ref)
        if ref[0] == "var":
            return ref[1]
        op = self.op(ref)
        if op is not None and op.op in ("ReadVariableOp", "Identity") and op.inputs:
            inner = self.back(op.inputs[0])
            if inner[0] == "var":
                return inner[1]
        return None

    def constant(self, ref: Ref) -> np.ndarray | None:
        op = self.op(self.back(ref))
        if op is not None and op.op == "Const":
            value = op.attrs.get("value")
            return None if value is None else np.asarray(value)
        return None

    def users(self, ref: Ref) -> list[Op]:
        return [op for op in self.consumers.get(ref[0], []) if ref in op.inputs]

    def forward(self, ref: Ref, through: frozenset = SHAPE_OPS) -> Ref:
        """Follow a value forward through single-consumer data-moving ops."""
        while True:
            users = self.users(ref)
            if len(users) != 1 or users[0].op not in through or users[0].inputs[0] != ref:
                return ref
            ref = self._out(users[0])

    def _out(self, op: Op) -> Ref:
        """The first output of an op, as its consumers spell it."""
        for user in self.consumers.get(op.name, []):
            for ref in user.inputs:
                if ref[0] == op.name:
                    return ref
        for ref in self.g.outputs.values():
            if ref[0] == op.name:
                return ref
        return (op.name, "output:0")

    def ancestors(self, ref: Ref, limit: int = 400) -> list[Op]:
        out, stack, seen = [], [ref], set()
        while stack and len(out) < limit:
            op = self.op(stack.pop())
            if op is None or op.name in seen:
                continue
            seen.add(op.name)
            out.append(op)
            stack.extend(op.inputs)
        return out

    def args_reached(self, *refs: Ref) -> set[str]:
        """The signature inputs whose values (not just shapes) reach any of `refs`."""
        names = set()
        stack, seen = list(refs), set()
        while stack:
            r = stack.pop()
            if r[0] == "arg":
                names.add(r[1])
                continue
            op = self.op(r)
            if op is None or op.name in seen or op.op in _SHAPE_ONLY:
                continue
            seen.add(op.name)
            stack.extend(op.inputs)
        return names

    # ---- layers

    def projections(self) -> dict[str, _Projection]:
        """Contractions with a variable, by contraction op name."""
        found = {}
        for op in self.ops.values():
            if op.op not in CONTRACTIONS or len(op.inputs) != 2:
                continue
            kernels = [self.variable(r) for r in op.inputs]
            if sum(k is not None for k in kernels) != 1:
                continue
            side = 0 if kernels[0] is not None else 1
            kernel, data = kernels[side], op.inputs[1 - side]
            # Reshapes of the product (EinsumDense, Dense's Tensordot), then the bias.
            chain = [self._out(op)]
            while True:
                users = self.users(chain[-1])
                if len(users) == 1 and users[0].op in BIAS_ADDS:
                    other = [r for r in users[0].inputs if r != chain[-1]]
                    key = self.variable(other[0]) if len(other) == 1 else None
                    if key is not None:
                        bias, chain = key, [*chain, self._out(users[0])]
                        break
                if len(users) != 1 or users[0].op not in ("Reshape", "Identity"):
                    bias = None
                    break
                chain.append(self._out(users[0]))
            out = chain[-1]
            if bias is None:  # the product's own reshapes may belong to the next layer
                out = chain[min(1, len(chain) - 1)] if op.op == "BatchMatMulV2" else chain[0]
                if op.name.endswith("Tensordot/MatMul") and len(chain) > 1:
                    out = chain[1]
            found[op.name] = _Projection(kernel, bias, op, data, out)
        return found

    def run(self, infos: Sequence[VariableInfo]) -> Traced:
        projections = self.projections()
        by_output = {p.output: p for p in projections.values()}
        used: set[str] = set()  # contraction names taken by a layer
        layers: list[_Found] = []
        for op in list(self.ops.values()):
            scores_in = self._softmax_input(op)
            if scores_in is not None:
                layers.append(self._attention(op, scores_in, projections, by_output, used))
        for op in list(self.ops.values()):
            if op.op == "Rsqrt":
                norm = self._layer_norm(op)
                if norm is not None:
                    layers.append(norm)
        for name, p in projections.items():
            if name in used:
                continue
            layers.append(self._dense(p))
        for op in self.ops.values():
            if op.op in ("GatherV2", "ResourceGather"):
                emb = self._embedding(op)
                if emb is not None:
                    layers.append(emb)
        return self._assemble(layers, infos)

    def _dense(self, p: _Projection) -> _Found:
        shape = self.shapes.get(p.kernel, ())
        if len(shape) != 2:
            raise GraphTraceError(
                f"a {len(shape)}-D kernel outside attention ({p.contraction.name}) is not "
                "understood yet"
            )
        output, activation = self._activation(p.output)
        weights = {"kernel": p.kernel} | ({"bias": p.bias} if p.bias else {})
        config = {"units": shape[1], "use_bias": p.bias is not None, "activation": activation}
        ops = [p.contraction.name, p.output[0]]
        notes = [f"activation {activation} from the graph"]
        return _Found(ops, "Dense", config, weights, output, [p.data], notes=notes)

    def _activation(self, ref: Ref) -> tuple[Ref, str]:
        """The activation applied right after a projection (by its ops), and its output."""
        users = self.users(ref)
        if len(users) == 1 and users[0].op in ACTIVATION_OPS:
            return self._out(users[0]), ACTIVATION_OPS[users[0].op]
        closed = self._closed_end(ref, window=16)
        if closed is None:
            return ref, "linear"
        end, ops = closed
        kinds = {o.op for o in ops}
        weightless = not any(self.variable(r) for o in ops for r in o.inputs)
        if not weightless or kinds & CONTRACTIONS:
            return ref, "linear"
        if kinds & {"Erf", "Erfc"}:
            return end, "gelu"
        if "Tanh" in kinds and kinds <= {"Tanh", "Mul", "AddV2", "Add", "Pow"}:
            return end, "gelu_approximate"
        if kinds == {"Sigmoid", "Mul"} and len(ops) <= 3:  # x * sigmoid([1 *] x)
            return end, "silu"
        return ref, "linear"

    def _closed_end(self, x: Ref, window: int, anchor: Op | None = None):
        """The first op (in graph order) after x such that the ops between x and it
        take in every use of x and are used nowhere else: the end of the layer (or
        element-wise composite) that starts at x, with the `anchor` op inside.
        Returns its output and the ops, or None."""
        names = list(self.ops)
        position = self._positions()
        starts = {op.name for op in self.users(x)}
        if not starts:
            return None
        first = min(position[s] for s in starts)
        begin = position[anchor.name] if anchor is not None else first
        for end in names[begin : begin + window]:
            region = self._region(x, end, starts)
            if anchor is None and not starts <= region:  # a composite takes every use
                continue
            if anchor is not None and anchor.name not in region:  # other layers share x
                continue
            if min(position[n] for n in region) < first:
                continue
            if all(u.name in region for n in region if n != end for u in self.consumers.get(n, [])):
                return self._out(self.ops[end]), [
                    self.ops[n] for n in sorted(region, key=position.get)
                ]
        return None

    def _positions(self) -> dict[str, int]:
        if not hasattr(self, "_position"):
            self._position = {n: i for i, n in enumerate(self.ops)}
        return self._position

    def _layer_norm(self, rsqrt: Op) -> _Found | None:
        add = self.op(rsqrt.inputs[0])
        if add is None or add.op not in ("AddV2", "Add"):
            return None
        eps = [self.constant(r) for r in add.inputs]
        eps_value = next((float(e.reshape(-1)[0]) for e in eps if e is not None and e.size), None)
        variance = self.op(next(r for r, e in zip(add.inputs, eps, strict=True) if e is None))
        if variance is None or variance.op != "Mean":
            return None
        diff = self.op(variance.inputs[0])
        if diff is None or diff.op != "SquaredDifference":
            return None
        x = diff.inputs[0]
        gamma = beta = None
        region = self._closed_end(x, window=64, anchor=rsqrt)
        if region is None:
            raise GraphTraceError(f"the layer normalization at {rsqrt.name} has no single output")
        output, ops = region
        for op in ops:
            for r in op.inputs:
                key = self.variable(r)
                if key is None:
                    continue
                if op.op == "Mul" and gamma is None:
                    gamma = key
                elif op.op in ("AddV2", "Add", "Sub") and beta is None:
                    beta = key
        weights = {"gamma": gamma} if gamma else {}
        if beta:
            weights["beta"] = beta
        config = {
            "axis": -1,
            "epsilon": eps_value if eps_value is not None else 1e-3,
            "center": beta is not None,
            "scale": gamma is not None,
        }
        notes = [f"epsilon {config['epsilon']:.3g} from the graph"]
        return _Found(
            [o.name for o in ops], "LayerNormalization", config, weights, output, [x], notes=notes
        )

    def _region(self, x: Ref, end: str, starts: set[str]) -> set[str]:
        """Ops on paths from x to `end` (ancestors of end that descend from x)."""
        region: set[str] = set()
        memo: dict[str, bool] = {}

        def reaches_x(name: str, depth: int = 0) -> bool:
            if name in memo:
                return memo[name]
            op = self.ops.get(name)
            memo[name] = False
            if op is None or depth > 80:
                return False
            hit = name in starts
            for r in op.inputs:
                if r == x or (r[0] in self.ops and reaches_x(r[0], depth + 1)):
                    hit = True
            memo[name] = hit
            return hit

        reaches_x(end)
        region = {n for n, v in memo.items() if v}
        return region

    def _embedding(self, op: Op) -> _Found | None:
        key = self.variable(op.inputs[0])
        if key is None:
            return None
        rows, dim = (self.shapes.get(key) or (0, 0))[:2]
        ids = self.back(op.inputs[1])
        wrap = self.op(ids)  # Keras wraps negative ids: where(ids < 0, ids + n, ids)
        if wrap is not None and wrap.op in ("SelectV2", "Select") and len(wrap.inputs) == 3:
            ids = self.back(wrap.inputs[2])
        mask_zero = any(
            u.op == "NotEqual"
            and (c := self.constant(r)) is not None
            and c.size == 1
            and c.item() == 0
            for u in self.users(ids)
            for r in u.inputs
            if r != ids
        )
        config = {"input_dim": rows, "output_dim": dim, "mask_zero": mask_zero}
        return _Found([op.name], "Embedding", config, {"embeddings": key}, self._out(op), [ids])

    # ---- attention

    def _softmax_input(self, op: Op) -> Ref | None:
        """The scores a softmax normalises: `Softmax(s)`, or over several axes
        `Exp(s - ReduceLogSumExp(s))` as Keras writes it."""
        if op.op == "Softmax":
            return op.inputs[0]
        if op.op != "Exp":
            return None
        sub = self.op(op.inputs[0])
        if sub is None or sub.op != "Sub":
            return None
        scores, norm = sub.inputs
        above = self.ancestors(norm, limit=40)
        if any(o.op == "Log" for o in above) and any(scores in o.inputs for o in above):
            return scores
        return None

    def _attention(
        self, softmax: Op, scores_in: Ref, projections, by_output, used: set[str]
    ) -> _Found:
        scores, masks, scale_key = self._scores(scores_in)
        if scores is not None and scores.op == "Sum":
            return self._additive(softmax, scores, masks, scale_key)
        if scores is None:
            raise GraphTraceError(f"the scores of {softmax.name} come from no contraction")
        partner = [u for u in self.users(self._weights(softmax)) if u.op in CONTRACTIONS]
        if len(partner) != 1:
            raise GraphTraceError(f"the weights of {softmax.name} multiply no values")
        weighted = partner[0]
        attention_weights = self._weights(softmax)
        value_ref = next(r for r in weighted.inputs if self.back(r) != attention_weights)
        q_ref, k_ref = scores.inputs[0], scores.inputs[1]
        if _query_second(scores.attrs.get("equation")):  # tf-keras: einsum(key, query)
            q_ref, k_ref = k_ref, q_ref
        elif "equation" not in scores.attrs and self._scaled(k_ref) and not self._scaled(q_ref):
            q_ref, k_ref = k_ref, q_ref  # matmul(key^T, query * scale), transposed after
        pq, pk, pv = (self._projection_of(r, by_output) for r in (q_ref, k_ref, value_ref))
        causal = self._causal(masks)
        if pq and pk and pv and len(self.shapes.get(pq.kernel, ())) >= 3:
            return self._mha(
                softmax, scores, weighted, pq, pk, pv, masks, causal, projections, used
            )
        # Weightless dot-product attention (Keras `Attention`) on the layers before it.
        weights = {"scale": scale_key} if scale_key else {}
        config = {"use_scale": scale_key is not None, "score_mode": "dot"}
        kwargs = {"use_causal_mask": True} if causal else {}
        notes = ["causal mask"] if causal else []
        args = [[self.back(q_ref), self.back(value_ref), self.back(k_ref, SHAPE_OPS)]]
        args = [[self._unscale(r) for r in args[0]]]
        found = _Found(
            [softmax.name, scores.name, weighted.name],
            "Attention",
            config,
            weights,
            self._past_query_mask(self._out(weighted)),
            args,
            kwargs,
            notes,
        )
        self._scores_output(softmax, found)
        return found

    def _causal(self, masks: list[Ref]) -> bool:
        """A causal band among the masks: `MatrixBandPart` (MultiHeadAttention), or
        `GreaterEqual` of two `Cumsum`s of ones with no input behind it (Attention)."""
        for mask in masks:
            for op in self.ancestors(mask):
                if op.op == "MatrixBandPart":
                    return True
                band = op.op == "GreaterEqual" and not self.args_reached(self._out(op))
                if band and any(o.op == "Cumsum" for o in self.ancestors(self._out(op), limit=12)):
                    return True
        return False

    def _sliding_window(self, masks: list[Ref]) -> int | None:
        """`abs(i - j) < w` among the masks: MultiHeadAttention(sliding_window=w)."""
        for mask in masks:
            for op in self.ancestors(mask):
                if op.op != "Less" or len(op.inputs) != 2:
                    continue
                left, w = self.op(op.inputs[0]), self.constant(op.inputs[1])
                if left is not None and left.op == "Abs" and w is not None and w.size == 1:
                    return int(w.reshape(-1)[0])
        return None

    def _past_query_mask(self, ref: Ref) -> Ref:
        """Keras's Attention zeroes masked query rows of its result: `where(mask, r, 0)`
        with the mask from `NotEqual` (a Keras mask): that is still the layer."""
        users = self.users(ref)
        if len(users) != 1 or users[0].op not in ("SelectV2", "Select"):
            return ref
        select = users[0]
        keras_mask = any(o.op == "NotEqual" for o in self.ancestors(select.inputs[0], limit=8))
        return self._out(select) if select.inputs[1] == ref and keras_mask else ref

    def _weights(self, softmax: Op) -> Ref:
        """The attention weights: the softmax, past a `where(mask, weights, 0)` that
        zeroes fully masked rows."""
        out = self._out(softmax)
        users = self.users(out)
        if len(users) == 1 and users[0].op in ("SelectV2", "Select") and users[0].inputs[1] == out:
            return self._out(users[0])
        return out

    def _scores_output(self, softmax: Op, found: _Found) -> None:
        """The attention weights as a second output (`return_attention_scores=True`)
        when the model returns them."""
        out = self._weights(softmax)
        if out in self.g.outputs.values():
            found.kwargs["return_attention_scores"] = True
            found.extra_outputs[out] = 1

    def _additive(self, softmax: Op, total: Op, masks: list[Ref], outer: str | None) -> _Found:
        """`sum(scale * tanh(q + k))` (AdditiveAttention) or
        `concat_score_weight * sum(tanh(scale * (q + k)))` (Attention, score_mode concat)."""
        ref, inner, seen_tanh, add = total.inputs[0], None, False, None
        additive_scale = None
        for _ in range(8):
            op = self.op(ref)
            if op is None:
                break
            if op.op == "Tanh":
                seen_tanh, ref = True, op.inputs[0]
            elif op.op == "Mul":
                keys = [self.variable(r) for r in op.inputs]
                key = next((k for k in keys if k), None)
                if seen_tanh:
                    inner = key
                else:
                    additive_scale = key
                live = [r for r, k in zip(op.inputs, keys, strict=True) if k is None]
                live = [r for r in live if self.constant(r) is None] or op.inputs[:1]
                ref = live[0]
            elif op.op in ("AddV2", "Add"):
                add = op
                break
            else:
                break
        partner = [u for u in self.users(self._weights(softmax)) if u.op in CONTRACTIONS]
        if add is None or not seen_tanh or len(partner) != 1:
            raise GraphTraceError(f"the additive scores of {softmax.name} are not understood")
        weighted = partner[0]
        attention_weights = self._weights(softmax)
        value_ref = next(r for r in weighted.inputs if self.back(r) != attention_weights)
        q_ref, k_ref = add.inputs
        axis = self.constant(self.op(k_ref).inputs[1]) if self.op(k_ref) else None
        if axis is not None and axis.size == 1 and int(axis.reshape(-1)[0]) == -2:
            q_ref, k_ref = k_ref, q_ref  # expand_dims(query, -2) + expand_dims(key, -3)
        if inner is not None or (outer is not None and additive_scale is None):
            class_name = "Attention"
            config = {"use_scale": inner is not None, "score_mode": "concat"}
            weights = {"scale": inner} if inner else {}
            if outer:
                weights["concat_score_weight"] = outer
        else:
            class_name = "AdditiveAttention"
            config = {"use_scale": additive_scale is not None}
            weights = {"scale": additive_scale} if additive_scale else {}
        causal = self._causal(masks)
        args = [[self.back(q_ref), self.back(value_ref), self.back(k_ref)]]
        found = _Found(
            [softmax.name, total.name, weighted.name],
            class_name,
            config,
            weights,
            self._past_query_mask(self._out(weighted)),
            args,
            {"use_causal_mask": True} if causal else {},
            ["causal mask"] if causal else [],
        )
        self._scores_output(softmax, found)
        return found

    def _scaled(self, ref: Ref) -> bool:
        """Whether a value is multiplied by a constant on its way (Keras scales the
        query, not the key, when it does not scale the scores)."""
        for _ in range(8):
            op = self.op(ref)
            if op is None:
                return False
            if op.op in ("Mul", "RealDiv") and any(self.constant(r) is not None for r in op.inputs):
                return True
            if op.op not in SHAPE_OPS:
                return False
            ref = op.inputs[0]
        return False

    def _unscale(self, ref: Ref) -> Ref:
        op = self.op(ref)
        if op is not None and op.op == "Transpose":
            return self.back(op.inputs[0])
        return ref

    def _scores(self, ref: Ref) -> tuple[Op | None, list[Ref], str | None]:
        """The contraction that makes the scores, the masks applied to them and a
        scale variable, walking back from the softmax's input."""
        masks: list[Ref] = []
        scale_key = None
        for _ in range(16):
            op = self.op(ref)
            if op is None:
                return None, masks, scale_key
            if op.op in CONTRACTIONS or (op.op == "Sum" and self._tanh_above(op)):
                return op, masks, scale_key
            if op.op in ("SelectV2", "Select"):
                masks.append(op.inputs[0])
                ref = op.inputs[1]
            elif op.op in ("Mul", "RealDiv", "AddV2", "Add", "Sub"):
                others = []
                for r in op.inputs:
                    if self.constant(r) is not None:
                        continue
                    key = self.variable(r)
                    if key is not None and op.op == "Mul":
                        scale_key = key
                        continue
                    others.append(r)
                scored = [r for r in others if self._leads_to_contraction(r)]
                if not scored:
                    return None, masks, scale_key
                masks += [r for r in others if r not in scored]
                ref = scored[0]
            elif op.op in SHAPE_OPS:
                ref = op.inputs[0]
            else:
                return None, masks, scale_key
        return None, masks, scale_key

    def _leads_to_contraction(self, ref: Ref, depth: int = 0) -> bool:
        """Whether a value comes from attention scores: a contraction of two computed
        values, or a sum of a tanh (additive), through element-wise ops."""
        op = self.op(ref)
        if op is None or depth > 12 or op.op in ("Const", "Fill", "Shape"):
            return False
        if op.op in CONTRACTIONS:
            return self.variable(op.inputs[0]) is None and self.variable(op.inputs[1]) is None
        if op.op == "Sum" and self._tanh_above(op):
            return True
        live = [r for r in op.inputs if self.constant(r) is None and self.variable(r) is None]
        return any(self._leads_to_contraction(r, depth + 1) for r in live[:2])

    def _tanh_above(self, op: Op) -> bool:
        return any(o.op == "Tanh" for o in self.ancestors(op.inputs[0], limit=6))

    def _projection_of(self, ref: Ref, by_output) -> _Projection | None:
        """The projection whose output reaches `ref` through data-moving ops (and a
        constant scale, as tf-keras scales the query)."""
        for _ in range(16):
            if ref in by_output:
                return by_output[ref]
            op = self.op(ref)
            if op is None:
                return None
            if op.op in SHAPE_OPS:
                ref = op.inputs[0]
            elif op.op in ("Mul", "RealDiv") and any(
                self.constant(r) is not None for r in op.inputs
            ):
                ref = next(r for r in op.inputs if self.constant(r) is None)
            else:
                return None
        return None

    def _mha(self, softmax, scores, weighted, pq, pk, pv, masks, causal, projections, used):
        # The output projection: the contraction that reads the weighted values.
        out_proj, gate = None, None
        frontier = [self._out(weighted)]
        for _ in range(12):
            ref = frontier.pop(0) if frontier else None
            if ref is None:
                break
            for user in self.users(ref):
                p = projections.get(user.name)
                if p is not None and p.kernel not in (pq.kernel, pk.kernel, pv.kernel):
                    out_proj = p
                    break
                if user.op == "Mul":  # the gate multiplies the attended values
                    for other in user.inputs:
                        if other == ref:
                            continue
                        g = self._projection_of(
                            self.back(other, SHAPE_OPS | {"Sigmoid"}),
                            {q.output: q for q in projections.values()},
                        )
                        if g is not None:
                            gate = g
                frontier.append(self._out(user))
            if out_proj is not None:
                break
        if out_proj is None:
            raise GraphTraceError(f"the attention at {softmax.name} has no output projection")
        parts = {"query": pq, "key": pk, "value": pv, "output": out_proj}
        if gate is not None:
            parts = {"query": pq, "key": pk, "gate": gate, "value": pv, "output": out_proj}
        weights: dict[str, str] = {}
        for role, p in parts.items():
            weights[f"{role}.kernel"] = p.kernel
            if p.bias:
                weights[f"{role}.bias"] = p.bias
        for p in parts.values():
            used.add(p.contraction.name)
        from ckpt_tool.roles import infer_config

        config = infer_config(
            "MultiHeadAttention", {role: self.shapes[key] for role, key in weights.items()}
        )
        axes = _attention_axes(scores.attrs.get("equation"))
        if axes is not None:
            config["attention_axes"] = axes
        value_in, key_in = (self.back(p.data) for p in (pv, pk))
        kwargs: dict = {}
        notes = []
        if causal:
            kwargs["use_causal_mask"] = True
            notes.append("causal mask before the softmax")
        window = self._sliding_window(masks)
        if window is not None:
            config["sliding_window"] = window
            notes.append(f"sliding window {window} from the graph")
        own = self.args_reached(pq.data, pk.data, pv.data)  # Keras masks travel with these
        for mask in masks:
            reached = self.args_reached(mask) - own
            for name in sorted(reached):
                kwargs["attention_mask"] = ("arg", name)
                notes.append(f"attention mask from input {name!r}")
        args: list = [pq.data, pv.data]
        if key_in != value_in:
            kwargs["key"] = pk.data
        found = _Found(
            [
                softmax.name,
                scores.name,
                weighted.name,
                *(p.contraction.name for p in parts.values()),
            ],
            "MultiHeadAttention",
            config,
            weights,
            out_proj.output,
            args,
            kwargs,
            notes,
        )
        self._scores_output(softmax, found)
        return found

    # ---- the model

    def _assemble(self, found: list[_Found], infos: Sequence[VariableInfo]) -> Traced:
        if not found:
            raise GraphTraceError("the serving graph holds no layer with weights")
        self.names_taken = set(self.g.inputs)
        for f in found:
            base = _layer_name(f, self.ops) or _snake(f.class_name)
            f.name, n = base, 0
            while f.name in self.names_taken:
                n += 1
                f.name = f"{base}_{n}"
            self.names_taken.add(f.name)
        by_output = {f.output: (f, 0) for f in found}
        for f in found:
            by_output.update({ref: (f, index) for ref, index in f.extra_outputs.items()})
        glue: dict[str, dict] = {}  # op name -> config layer entry

        def tensor(ref: Ref, depth: int = 0) -> dict:
            if depth > 200:
                raise GraphTraceError("the wiring between layers is too deep to follow")
            if ref in by_output:
                layer, index = by_output[ref]
                return _keras_tensor(layer.name, index)
            if ref[0] == "arg":
                return _keras_tensor(ref[1])
            op = self.op(ref)
            if op is None:
                raise GraphTraceError(f"a layer reads {ref[0]!r}, which is neither input nor layer")
            if op.op in _PASS_THROUGH:
                return tensor(op.inputs[0], depth + 1)
            if op.op in SHAPE_OPS and self._reaches_output(op.inputs[0], by_output):
                return tensor(op.inputs[0], depth + 1)
            if op.name not in glue:
                glue[op.name] = _glue_layer(self, op, tensor, depth)
            return _keras_tensor(glue[op.name]["name"])

        entries = []
        for f in found:
            call_args = [
                [tensor(r) for r in a] if isinstance(a, list) else tensor(a) for a in f.args
            ]
            kwargs = {k: tensor(v) if isinstance(v, tuple) else v for k, v in f.kwargs.items()}
            f.notes += _wiring_notes(f, call_args, kwargs, set(self.g.inputs))
            entries.append(
                {
                    "class_name": f.class_name,
                    "name": f.name,
                    "config": {"name": f.name, **f.config},
                    "inbound_nodes": [{"args": call_args, "kwargs": kwargs}],
                }
            )
        outputs = []
        out_names = sorted(self.g.outputs)
        for name in out_names:
            outputs.append(tensor(self.g.outputs[name])["config"]["keras_history"])
        inputs = [
            {"class_name": "InputLayer", "name": n, "config": {"name": n}, "inbound_nodes": []}
            for n in self.g.inputs
        ]
        layers_cfg = inputs + entries + list(glue.values())
        config = {
            "class_name": "Functional",
            "ckpt_tool_source": "SavedModel serving graph",
            "config": {
                "name": "serving_graph",
                "layers": layers_cfg,
                "input_layers": [[n, 0, 0] for n in self.g.inputs],
                "output_layers": outputs,
            },
        }
        return Traced(self._role_map(found, infos), config, [])

    def _reaches_output(self, ref: Ref, by_output: dict) -> bool:
        """Whether walking back through data-moving ops meets a layer output or input."""
        for _ in range(16):
            if ref in by_output or ref[0] == "arg":
                return True
            op = self.op(ref)
            if op is None or op.op not in SHAPE_OPS:
                return False
            ref = op.inputs[0]
        return False

    def _role_map(self, found: list[_Found], infos: Sequence[VariableInfo]) -> RoleMap:
        order = {info.key: info.order for info in infos}
        layers = []
        for f in found:
            layer = Layer(f.name, f.class_name, dict(f.config), dict(f.weights), GRAPH)
            layer.notes += f.notes
            layers.append(layer)
        layers.sort(
            key=lambda ly: min((order.get(k, 1 << 30) for k in ly.weights.values()), default=0)
        )
        taken = {key for layer in layers for key in layer.weights.values()}
        rest = [i for i in infos if i.kind == WEIGHT and i.key not in taken]
        return RoleMap(layers, sorted(rest, key=lambda i: i.order))


def _glue_layer(tracer: _Tracer, op: Op, tensor, depth: int) -> dict:
    """A weightless layer between layers: a residual Add, an Activation, a Multiply."""
    live = [r for r in op.inputs if tracer.constant(r) is None]
    scope = op.name.split("/")[-2] if op.name.count("/") >= 2 else ""
    base = re.sub(r"_\d+$", "", re.sub(r"[^A-Za-z0-9_]", "_", scope)) or _snake(op.op)
    name, n = base, 0
    while name in tracer.names_taken:
        n += 1
        name = f"{base}_{n}"
    tracer.names_taken.add(name)
    if op.op in ("AddV2", "Add") and len(live) == 2:
        return _entry("Add", name, {}, [[tensor(r, depth + 1) for r in live]])
    if op.op == "Mul" and len(live) == 2:
        return _entry("Multiply", name, {}, [[tensor(r, depth + 1) for r in live]])
    if op.op in ACTIVATION_OPS and len(live) == 1:
        return _entry(
            "Activation", name, {"activation": ACTIVATION_OPS[op.op]}, [tensor(live[0], depth + 1)]
        )
    raise GraphTraceError(f"op {op.op} ({op.name}) between layers is not understood")


def _entry(class_name: str, name: str, config: dict, args: list) -> dict:
    return {
        "class_name": class_name,
        "name": name,
        "config": {"name": name, **config},
        "inbound_nodes": [{"args": args, "kwargs": {}}],
    }


def _keras_tensor(layer: str, index: int = 0) -> dict:
    return {"class_name": "__keras_tensor__", "config": {"keras_history": [layer, 0, index]}}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _layer_name(found: _Found, ops: dict[str, Op]) -> str:
    """The name scope the layer's ops share (`functional_1/xattn_1/...` -> `xattn`)."""
    names = [n.split("/")[:-1] for n in found.scope_ops if n in ops]
    if not names:
        return ""
    common = names[0]
    for parts in names[1:]:
        k = 0
        while k < min(len(common), len(parts)) and common[k] == parts[k]:
            k += 1
        common = common[:k]
    skip = {"Tensordot", "StatefulPartitionedCall", "PartitionedCall", "einsum", "MatMul"}
    while common and (common[-1] in skip):
        common = common[:-1]
    if len(common) < 2:  # only the model's own scope: no layer name
        return ""
    return re.sub(r"_\d+$", "", common[-1])


def _wiring_notes(found: _Found, args: list, kwargs: dict, inputs: set[str]) -> list[str]:
    """Which model input or layer feeds each input of an attention layer."""

    def describe(tensor: dict) -> str:
        name = tensor["config"]["keras_history"][0]
        return f"input {name!r}" if name in inputs else f"layer {name!r}"

    if found.class_name == "MultiHeadAttention":
        query, value = args[:2]
        key = kwargs.get("key", value)
        parts = [f"query from {describe(query)}"]
        if key == value:
            parts.append(f"key and value from {describe(value)}")
        else:
            parts += [f"key from {describe(key)}", f"value from {describe(value)}"]
    elif found.class_name in ("Attention", "AdditiveAttention"):
        query, value, key = args[0]
        parts = [f"query from {describe(query)}", f"value from {describe(value)}"]
        parts.append(f"key from {describe(key)}")
    else:
        return []
    return ["graph wiring: " + ", ".join(parts)]


def _query_second(equation: str | None) -> bool:
    """Whether a score einsum takes the key first: the query's own letters (its
    attended axes) come before the key's in the output (`aecd,abcd->acbe`)."""
    if not equation or "->" not in equation or "," not in equation:
        return False
    lhs, out = equation.split("->")
    a, b = lhs.split(",")[:2]
    own_a = [out.index(c) for c in a if c not in b and c in out]
    own_b = [out.index(c) for c in b if c not in a and c in out]
    return bool(own_a and own_b) and min(own_b) < min(own_a)


def _attention_axes(equation: str | None) -> list[int] | None:
    """MultiHeadAttention's attention_axes from the score einsum (`BTNH,BSNH->BNTS`):
    the query's axes whose letters the key does not share. None when default."""
    if not equation or "->" not in equation or "," not in equation:
        return None
    lhs = equation.split("->")[0]
    q, k = lhs.split(",")[:2]
    if _query_second(equation):
        q, k = k, q
    axes = [i for i, c in enumerate(q) if c not in k]
    rank = len(q)  # projected query rank: input rank + 1 (heads)
    if axes == list(range(1, rank - 2)):
        return None
    return axes


def disagreements(before: RoleMap, traced: RoleMap) -> list[str]:
    """Where the graph overrules the names or shapes: one note per moved variable."""
    old = before.by_key()
    notes = []
    for layer in traced.layers:
        for role, key in layer.weights.items():
            was = old.get(key)
            if was is None or (was[1] == role and was[0].class_name == layer.class_name):
                continue
            notes.append(
                f"graph wins: {key} is {layer.name} {role}; {was[0].evidence} said "
                f"{was[0].class_name} {was[1]}"
            )
    return notes
