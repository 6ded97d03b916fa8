"""A SavedModel's serving function graph, read without TensorFlow.

`saved_model.pb` holds, besides the object graph, the MetaGraph's GraphDef: its
`library` of FunctionDefs is what `model.export()` and `tf.saved_model.save()` traced.
The serving signature's output names a call node of the GraphDef; that node calls the
signature wrapper, which calls the model's function, which (tf-keras) calls one
function per layer. `read_serving_graph` inlines every call into one flat list of ops
whose inputs are the signature's inputs, the captured variables (bound to checkpoint
keys through `SavedConcreteFunction.bound_inputs`) and constants. A TF1 SavedModel has
its ops directly in `graph_def.node`.

The messages are declared here with only the fields read (field numbers of
TensorFlow's meta_graph.proto, graph.proto, function.proto, op_def.proto,
node_def.proto, attr_value.proto, tensor.proto, saved_object_graph.proto), in a pool
of their own so that plain listing never pays for parsing function bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ckpt_tool.errors import CkptToolError
from ckpt_tool.readers.regular_file import read_regular_bytes
from ckpt_tool.storage import as_path

_PACKAGE = "ckpt_tool_private.tf_functions"
_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_T = {
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

# (message, [(field, number, type or message name, repeated?, oneof index?)], map entry?)
_MESSAGES = [
    ("TensorShapeProto.Dim", [("size", 1, "int64", False)], False),
    ("TensorShapeProto", [("dim", 2, "TensorShapeProto.Dim", True)], False),
    (
        "TensorProto",
        [
            ("dtype", 1, "int32", False),
            ("tensor_shape", 2, "TensorShapeProto", False),
            ("tensor_content", 4, "bytes", False),
            ("float_val", 5, "float", True),
            ("double_val", 6, "double", True),
            ("int_val", 7, "int32", True),
            ("int64_val", 10, "int64", True),
            ("bool_val", 11, "bool", True),
        ],
        False,
    ),
    ("NameAttrList", [("name", 1, "string", False)], False),
    (
        "ListValue",
        [("s", 2, "bytes", True), ("i", 3, "int64", True), ("f", 4, "float", True)],
        False,
    ),
    (
        "AttrValue",
        [
            ("list", 1, "ListValue", False, 0),
            ("s", 2, "bytes", False, 0),
            ("i", 3, "int64", False, 0),
            ("f", 4, "float", False, 0),
            ("b", 5, "bool", False, 0),
            ("type", 6, "int32", False, 0),
            ("tensor", 8, "TensorProto", False, 0),
            ("func", 10, "NameAttrList", False, 0),
        ],
        False,
    ),
    ("NodeDef.AttrEntry", [("key", 1, "string", False), ("value", 2, "AttrValue", False)], True),
    (
        "NodeDef",
        [
            ("name", 1, "string", False),
            ("op", 2, "string", False),
            ("input", 3, "string", True),
            ("attr", 5, "NodeDef.AttrEntry", True),
        ],
        False,
    ),
    ("ArgDef", [("name", 1, "string", False)], False),
    (
        "OpDef",
        [
            ("name", 1, "string", False),
            ("input_arg", 2, "ArgDef", True),
            ("output_arg", 3, "ArgDef", True),
        ],
        False,
    ),
    ("FunctionDef.RetEntry", [("key", 1, "string", False), ("value", 2, "string", False)], True),
    (
        "FunctionDef",
        [
            ("signature", 1, "OpDef", False),
            ("node_def", 3, "NodeDef", True),
            ("ret", 4, "FunctionDef.RetEntry", True),
        ],
        False,
    ),
    ("FunctionDefLibrary", [("function", 1, "FunctionDef", True)], False),
    (
        "GraphDef",
        [("node", 1, "NodeDef", True), ("library", 2, "FunctionDefLibrary", False)],
        False,
    ),
    ("TensorInfo", [("name", 1, "string", False)], False),
    (
        "SignatureDef.InputsEntry",
        [("key", 1, "string", False), ("value", 2, "TensorInfo", False)],
        True,
    ),
    (
        "SignatureDef.OutputsEntry",
        [("key", 1, "string", False), ("value", 2, "TensorInfo", False)],
        True,
    ),
    (
        "SignatureDef",
        [
            ("inputs", 1, "SignatureDef.InputsEntry", True),
            ("outputs", 2, "SignatureDef.OutputsEntry", True),
        ],
        False,
    ),
    ("SavedConcreteFunction", [("bound_inputs", 2, "int32", True)], False),
    (
        "SavedObjectGraph.ConcreteFunctionsEntry",
        [("key", 1, "string", False), ("value", 2, "SavedConcreteFunction", False)],
        True,
    ),
    (
        "SavedObjectGraph",
        [("concrete_functions", 2, "SavedObjectGraph.ConcreteFunctionsEntry", True)],
        False,
    ),
    (
        "MetaGraphDef.SignatureDefEntry",
        [("key", 1, "string", False), ("value", 2, "SignatureDef", False)],
        True,
    ),
    (
        "MetaGraphDef",
        [
            ("graph_def", 2, "GraphDef", False),
            ("signature_def", 5, "MetaGraphDef.SignatureDefEntry", True),
            ("object_graph_def", 7, "SavedObjectGraph", False),
        ],
        False,
    ),
    ("SavedModel", [("meta_graphs", 2, "MetaGraphDef", True)], False),
]


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="ckpt_tool_private/tf_functions.proto", package=_PACKAGE, syntax="proto3"
    )
    made: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full, fields, is_map in _MESSAGES:
        outer, _, inner = full.partition(".")
        d = descriptor_pb2.DescriptorProto(name=inner or outer)
        for spec in fields:
            fname, number, ftype, repeated = spec[:4]
            f = d.field.add(name=fname, number=number, label=_REP if repeated else _OPT)
            if ftype in _T:
                f.type = _T[ftype]
            else:
                f.type, f.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{ftype}"
            if len(spec) > 4:
                f.oneof_index = spec[4]
        if any(len(s) > 4 for s in fields):
            d.oneof_decl.add(name="value")
        if is_map:
            d.options.map_entry = True
        made[full] = d
    for full, d in made.items():  # nest inner messages, then add the outer ones
        outer, _, inner = full.partition(".")
        if inner:
            made[outer].nested_type.append(d)
    for full, d in made.items():
        if "." not in full:
            fd.message_type.append(d)
    return fd


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
_SavedModel = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.SavedModel"))

CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
# DataType numbers (types.proto) of the constants we decode.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_, 19: np.float16}


class FunctionGraphError(Exception):
    """The serving graph cannot be read; the message says why (one line)."""


Ref = tuple[str, str]  # (op name, output port) or ("arg", input name) or ("var", key)


@dataclass
class Op:
    name: str
    op: str
    inputs: list[Ref]
    attrs: dict = field(default_factory=dict)  # only the attributes we read, decoded

    @property
    def scope(self) -> str:
        return self.name.rpartition("/")[0]


@dataclass
class ServingGraph:
    """The serving signature's computation, every call inlined, ops in topological order."""

    ops: dict[str, Op]  # by name, in topological order
    inputs: list[str]  # signature input names, in the order the model's function takes them
    outputs: dict[str, Ref]  # signature output name -> the value it returns
    variables: set[str]  # checkpoint keys of the variables the ops read
    signature: str = ""


def read_serving_graph(path: str | Path, key_of_node: dict[int, str]) -> ServingGraph:
    """The serving function graph of a SavedModel's `saved_model.pb`. `key_of_node` maps
    object-graph node ids of variables to their checkpoint keys."""
    model = _SavedModel()
    try:
        model.ParseFromString(read_regular_bytes(as_path(path)))  # never a FIFO
    except (OSError, CkptToolError, DecodeError) as exc:
        raise FunctionGraphError(f"saved_model.pb does not parse: {exc}") from None
    if not model.meta_graphs:
        raise FunctionGraphError("saved_model.pb holds no MetaGraphDef")
    meta = model.meta_graphs[0]
    names = [n for n in ("serving_default", "serve") if n in meta.signature_def]
    names += sorted(n for n in meta.signature_def if not n.startswith("__") and n not in names)
    if not names:
        raise FunctionGraphError("the SavedModel has no serving signature")
    signature = meta.signature_def[names[0]]
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    bound = {
        name: list(cf.bound_inputs) for name, cf in meta.object_graph_def.concrete_functions.items()
    }
    graph = _Inliner(library, bound, key_of_node)
    nodes = {n.name: n for n in meta.graph_def.node}
    placeholders = {}
    for name, info in signature.inputs.items():
        placeholders[info.name.split(":")[0]] = name
    outputs: dict[str, Ref] = {}
    wanted = [info.name.partition(":")[0] for info in signature.outputs.values()]
    for node in _topological(_ancestors(wanted, nodes)):  # inputs first: no deep recursion
        if node.name not in placeholders and node.op not in _VARIABLE_OPS:
            graph.graph_value(node, 0, nodes, placeholders)
    for out_name, info in signature.outputs.items():
        node_name, _, index = info.name.partition(":")
        node = nodes.get(node_name)
        if node is None:
            raise FunctionGraphError(f"the signature's output {info.name!r} names no graph node")
        outputs[out_name] = graph.graph_value(node, int(index or 0), nodes, placeholders)
    return ServingGraph(
        graph.ops, graph.input_order or sorted(signature.inputs), outputs, graph.variables, names[0]
    )


class _Inliner:
    def __init__(self, library: dict, bound: dict[str, list[int]], key_of_node: dict[int, str]):
        self.library, self.bound, self.key_of_node = library, bound, key_of_node
        self.ops: dict[str, Op] = {}
        self.variables: set[str] = set()
        self.input_order: list[str] = []
        self._graph_values: dict[tuple[str, int], Ref] = {}
        self._call_rets: dict[str, list[Ref]] = {}

    # ---- TF1 graphs and the GraphDef's call nodes

    def graph_value(self, node, index: int, nodes: dict, placeholders: dict[str, str]) -> Ref:
        """The value of `node:index` of the GraphDef (inlining calls)."""
        key = (node.name, index)
        if key in self._graph_values:
            return self._graph_values[key]
        if node.name in placeholders:
            value: Ref = ("arg", placeholders[node.name])
        elif node.op in CALL_OPS:
            fn_name = _attr_func(node)
            args = []
            for i, text in enumerate(node.input):
                if text.startswith("^"):
                    continue
                src, _, idx = text.partition(":")
                if src in placeholders:
                    args.append(("arg", placeholders[src]))
                elif src in nodes and nodes[src].op in _VARIABLE_OPS:
                    args.append(("handle", str(i)))  # bound below through bound_inputs
                else:
                    args.append(self.graph_value(nodes[src], int(idx or 0), nodes, placeholders))
            if node.name not in self._call_rets:
                self._call_rets[node.name] = self.call(fn_name, args, prefix="")
            rets = self._call_rets[node.name]
            if index >= len(rets):
                raise FunctionGraphError(f"{node.name}:{index}: the call has no such output")
            value = rets[index]
        else:
            value = self._graph_op(node, nodes, placeholders)
            value = (value[0], f"{index}")
        self._graph_values[key] = value
        return value

    def _graph_op(self, node, nodes: dict, placeholders: dict[str, str]) -> Ref:
        if node.name not in self.ops:
            inputs: list[Ref] = []
            for text in node.input:
                if text.startswith("^"):
                    continue
                src, _, idx = text.partition(":")
                if src not in nodes:
                    raise FunctionGraphError(f"graph node {node.name!r} reads unknown {src!r}")
                if nodes[src].op in _VARIABLE_OPS:
                    key = src
                    self.variables.add(key)
                    inputs.append(("var", key))
                else:
                    inputs.append(self.graph_value(nodes[src], int(idx or 0), nodes, placeholders))
            self.ops[node.name] = Op(node.name, node.op, inputs, _attrs(node))
        return (node.name, "0")

    # ---- functions

    def call(self, fn_name: str, args: list[Ref], prefix: str, depth: int = 0) -> list[Ref]:
        fn = self.library.get(fn_name)
        if depth > 32:
            raise FunctionGraphError(f"calls nest deeper than 32 functions (at {fn_name!r})")
        if fn is None:
            raise FunctionGraphError(f"the graph calls {fn_name!r}, which the library lacks")
        input_args = [a.name for a in fn.signature.input_arg]
        bound = self.bound.get(fn_name, [])
        n_plain = len(input_args) - len(bound)
        env: dict[str, Ref] = {}
        for i, (arg_name, value) in enumerate(zip(input_args, args, strict=False)):
            if value[0] == "handle":
                if i < n_plain or i - n_plain >= len(bound):
                    raise FunctionGraphError(f"{fn_name}: a captured input has no bound variable")
                key = self.key_of_node.get(bound[i - n_plain])
                if key is None:
                    raise FunctionGraphError(
                        f"{fn_name}: captured object {bound[i - n_plain]} is not a variable"
                    )
                self.variables.add(key)
                value = ("var", key)
            env[arg_name] = value
        if depth == 1 and not self.input_order:  # the model function's own argument order
            self.input_order = [v[1] for v in args if v[0] == "arg"]
        local: dict[str, Ref] = {}

        def resolve(text: str) -> Ref:
            parts = text.split(":")
            if len(parts) == 1:
                if text not in env:
                    raise FunctionGraphError(f"{fn_name}: unknown input {text!r}")
                return env[text]
            src, port = parts[0], ":".join(parts[1:])
            return local.get(text) or (prefix + src, port)

        for node in _topological(fn.node_def):
            inputs = [resolve(t) for t in node.input if not t.startswith("^")]
            callee = _attr_func(node) if node.op in CALL_OPS else None
            if callee is not None:
                rets = self.call(callee, inputs, prefix + node.name + "/", depth + 1)
                for i, value in enumerate(rets):
                    local[f"{node.name}:output:{i}"] = value
                continue
            if node.op in ("Identity", "IdentityN") and inputs:  # pass-through
                for i, value in enumerate(inputs):  # IdentityN: tf.custom_gradient's wrapper
                    local[f"{node.name}:output:{i}"] = value
                continue
            self.ops[prefix + node.name] = Op(prefix + node.name, node.op, inputs, _attrs(node))
        out_names = [a.name for a in fn.signature.output_arg]
        ret = {r: fn.ret[r] for r in fn.ret}
        return [resolve(ret[name]) for name in out_names]


_VARIABLE_OPS = frozenset({"VariableV2", "VarHandleOp", "Variable"})


def _ancestors(names: list[str], nodes: dict) -> list:
    """The GraphDef nodes the named ones read, themselves included."""
    seen: dict[str, object] = {}
    stack = [n for n in names if n in nodes]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen[name] = nodes[name]
        for text in nodes[name].input:
            src = text.lstrip("^").split(":")[0]
            if src in nodes and src not in seen:
                stack.append(src)
    return list(seen.values())


def _attr_func(node) -> str | None:
    attr = node.attr.get("f") if "f" in node.attr else None
    return attr.func.name if attr is not None and attr.HasField("func") else None


def _topological(nodes) -> list:
    """FunctionDef nodes need not come in order: inputs first."""
    by_name = {n.name: n for n in nodes}
    done: set[str] = set()
    order = []
    for start in nodes:
        stack = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if node.name in done:
                continue
            if expanded:
                done.add(node.name)
                order.append(node)
                continue
            stack.append((node, True))
            for text in node.input:
                src = text.lstrip("^").split(":")[0]
                if src in by_name and src not in done:
                    stack.append((by_name[src], False))
    return order


_READ_ATTRS = (
    "equation",
    "value",
    "epsilon",
    "transpose_a",
    "transpose_b",
    "adj_x",
    "adj_y",
    "alpha",
)


def _attrs(node) -> dict:
    out = {}
    for name in _READ_ATTRS:
        if name not in node.attr:
            continue
        attr = node.attr[name]
        kind = attr.WhichOneof("value")
        if kind == "s":
            out[name] = attr.s.decode("utf-8", "replace")
        elif kind == "tensor":
            out[name] = tensor_value(attr.tensor)
        elif kind in ("f", "i", "b"):
            out[name] = getattr(attr, kind)
    return out


def tensor_value(tensor) -> np.ndarray | None:
    """A small constant TensorProto as an array (None when its dtype is not numeric)."""
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        return None
    shape = tuple(d.size for d in tensor.tensor_shape.dim)
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape)
    values = {
        np.float32: tensor.float_val,
        np.float16: tensor.float_val,
        np.float64: tensor.double_val,
        np.int32: tensor.int_val,
        np.int64: tensor.int64_val,
        np.bool_: tensor.bool_val,
    }[dtype]
    array = np.array(list(values), dtype=dtype)
    size = int(np.prod(shape)) if shape else 1
    if array.size == size:
        return array.reshape(shape)
    if array.size == 1:  # one value repeated over the shape
        return np.full(shape, array[0], dtype=dtype)
    return np.zeros(shape, dtype) if array.size == 0 else None
