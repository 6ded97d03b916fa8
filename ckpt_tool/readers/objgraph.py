"""Object graphs: from checkpoint keys like `variables/0/...` to human paths and names.

A TF2 checkpoint stores a TrackableObjectGraph under `_CHECKPOINTABLE_OBJECT_GRAPH`.
Its nodes are Python objects (models, layers, lists, variables); edges are
attribute names. TensorFlow names each tensor after the first path a breadth-first
walk from node 0 finds, so the same variable is often reachable by several paths
(aliases): a tf-keras SavedModel lists `variables` before its layers, giving keys
like `variables/0/.ATTRIBUTES/VARIABLE_VALUE` for what is also
`layer_with_weights-0/_query_dense/kernel`.

A SavedModel's `saved_model.pb` has a SavedObjectGraph with the same node ids
(SavedVariable name, dtype, shape), and tf-keras adds `keras_metadata.pb` with the
class name and config of every layer.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from ckpt_tool.errors import CorruptFileError
from ckpt_tool.readers import protos
from ckpt_tool.readers.bundle import dtype_name
from ckpt_tool.readers.regular_file import NotRegularFileError, read_regular_bytes
from ckpt_tool.safe_json import loads_json
from ckpt_tool.storage import as_path

# Edges that lead into anonymous lists (or a second view of the same object):
# a path through them says nothing about what a variable is.
ANONYMOUS_EDGES = frozenset(
    {
        "variables",
        "_all_variables",
        "trainable_variables",
        "non_trainable_variables",
        "trainable_weights",
        "non_trainable_weights",
        "weights",
        "keras_api",
        "_variables",
        "_trainable_variables",
        "layers",
        "_layers",
        "_self_tracked_trackables",
    }
)

ATTRIBUTES = ".ATTRIBUTES"
VARIABLE_VALUE = "VARIABLE_VALUE"
SLOT_MARKER = ".OPTIMIZER_SLOT"
MAX_PATHS_PER_NODE = 16  # aliases kept per node; nested models double them per level
# A hostile graph (a chain of 40,000 objects) must not cost memory quadratic in its size:
# paths longer than these are not spelled out, and all spelled-out paths share one
# budget of characters; a variable left without a path is named by its key.
MAX_PATH_DEPTH = 128
MAX_PATH_CHARS = 4096
PATH_CHARS_BUDGET = 16 << 20


def escape_local_name(name: str) -> str:
    """How a path component appears in a checkpoint key ('.' -> '..', '/' -> '.S')."""
    return name.replace(".", "..").replace("/", ".S")


def unescape_local_name(name: str) -> str:
    if "." not in name:
        return name
    out = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "." and i + 1 < len(name):
            nxt = name[i + 1]
            out.append("." if nxt == "." else "/" if nxt == "S" else "." + nxt)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


_VALUE_SUFFIX = f"/{ATTRIBUTES}/{VARIABLE_VALUE}"


def strip_key(key: str) -> str:
    """A checkpoint key as a path: `a/b/.ATTRIBUTES/VARIABLE_VALUE` -> `a/b`.

    Other attributes stay visible (`table/.ATTRIBUTES/table-keys`); components are
    unescaped.
    """
    key = key.removesuffix(_VALUE_SUFFIX)
    if ".." not in key and ".S" not in key:
        return key  # nothing escaped (the common case)
    parts = key.split("/")
    return "/".join(p if p.startswith(".") else unescape_local_name(p) for p in parts)


@dataclass
class GraphVariable:
    """One checkpoint key owned by a node of the object graph."""

    key: str
    node_id: int
    attribute: str  # "VARIABLE_VALUE" for variables
    full_name: str  # the variable's own name as TensorFlow recorded it (may be "")
    primary_path: tuple[str, ...] | None  # TensorFlow's BFS path (None: unreachable)
    named_paths: list[tuple[str, ...]] = field(default_factory=list)  # avoid anonymous edges
    named_nodes: tuple[int, ...] = ()  # node ids along named_paths[0], from node 0
    all_paths: list[tuple[str, ...]] = field(default_factory=list)  # every path found
    slot_of: int | None = None  # original variable's node id, for optimizer slots
    slot_name: str | None = None
    optimizer_node: int | None = None
    rank: tuple[int, int] = (9, 0)  # (pass, position): the model's own order


class ObjectGraph:
    """A decoded TrackableObjectGraph with every key's paths and aliases."""

    def __init__(self, nodes: list[list[tuple[str, int]]], attributes, slot_refs):
        n = len(nodes)
        # node id -> [(local name, child id)] in listed order; dangling ids dropped
        self.children = [[(name, c) for name, c in kids if 0 <= c < n] for kids in nodes]
        self.variables: dict[str, GraphVariable] = {}
        self.slots: dict[int, tuple[int, str, int]] = {}  # slot node -> (var, name, opt)
        for opt_id, refs in slot_refs.items():
            for original, slot_name, slot_node in refs:
                self.slots[slot_node] = (original, slot_name, opt_id)
        self._attribute_nodes = set(attributes)
        self._chars_left = PATH_CHARS_BUDGET
        primary = self._bfs_paths(self._attribute_nodes)
        useful = self._reaching(self._attribute_nodes)
        all_paths = self._all_paths(useful, named_only=False)
        named = self._all_paths(useful, named_only=True)
        ranks = self._ranks(useful)
        for node_id, attrs in attributes.items():
            named_here = named.get(node_id, [])
            for attr_name, full_name, key in attrs:
                var = GraphVariable(
                    key=key,
                    node_id=node_id,
                    attribute=attr_name,
                    full_name=full_name,
                    primary_path=primary.get(node_id),
                    named_paths=[p for p, _ in named_here],
                    named_nodes=named_here[0][1] if named_here else (),
                    all_paths=[p for p, _ in all_paths.get(node_id, [])],
                    rank=ranks.get(node_id, (3, node_id)),
                )
                if node_id in self.slots:
                    var.slot_of, var.slot_name, var.optimizer_node = self.slots[node_id]
                self.variables[key] = var

    @property
    def num_nodes(self) -> int:
        return len(self.children)

    def _reaching(self, targets: set[int]) -> set[int]:
        """Nodes from which some node in `targets` can be reached (targets included)."""
        parents: dict[int, list[int]] = {}
        for parent, kids in enumerate(self.children):
            for _, child in kids:
                parents.setdefault(child, []).append(parent)
        seen = {t for t in targets if 0 <= t < len(self.children)}
        stack = list(seen)
        while stack:
            for p in parents.get(stack.pop(), ()):
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def _bfs_paths(self, wanted: set[int]) -> dict[int, tuple[str, ...]]:
        """TensorFlow's naming walk: breadth first from node 0, children in listed order.

        Each node keeps only its parent; the paths of the `wanted` nodes are spelled
        out at the end, and only those within MAX_PATH_DEPTH components and
        MAX_PATH_CHARS characters (a deeper variable is named by its key), so a long
        chain of objects costs memory in proportion to its length, not its square."""
        if not self.children:
            return {}
        parent: dict[int, tuple[int, str, int]] = {0: (-1, "", 0)}  # (parent, name, depth)
        queue = deque([0])
        while queue:
            node = queue.popleft()
            depth = parent[node][2] + 1
            for name, child in self.children[node]:
                if child not in parent:
                    parent[child] = (node, name, depth)
                    queue.append(child)
        paths: dict[int, tuple[str, ...]] = {}
        for target in wanted:
            if target not in parent or parent[target][2] > MAX_PATH_DEPTH:
                continue
            names: list[str] = []
            node = target
            while node != 0:
                node, name, _ = parent[node]
                names.append(name)
            chars = sum(map(len, names))
            if chars <= min(MAX_PATH_CHARS, self._chars_left):
                self._chars_left -= chars
                paths[target] = tuple(reversed(names))
        return paths

    def _all_paths(
        self, useful: set[int], named_only: bool
    ) -> dict[int, list[tuple[tuple[str, ...], tuple[int, ...]]]]:
        """Up to MAX_PATHS_PER_NODE simple paths (names, node ids) to each node that
        leads to a variable, shortest first.

        Breadth first over paths (not nodes), so each node's first path is the one
        TensorFlow's walk gives it; cycles are cut, a node whose quota is full is not
        expanded through new paths, and branches that reach no variable are skipped.
        Paths are kept as links to their parent path while walking and are no longer
        than MAX_PATH_DEPTH / MAX_PATH_CHARS; only the paths of nodes that hold
        variables are spelled out, while PATH_CHARS_BUDGET lasts.
        """
        if not self.children or 0 not in useful:
            return {}
        # A step: (node, local name, parent step, depth, characters so far).
        root: tuple = (0, "", None, 0, 0)
        found: dict[int, list[tuple]] = {0: [root]}
        queue = deque([root])
        children = self.children
        while queue:
            step = queue.popleft()
            node, _, _, depth, chars = step
            if depth >= MAX_PATH_DEPTH:
                continue
            for name, child in children[node]:
                if child not in useful or _on_path(step, child):
                    continue
                if named_only and name in ANONYMOUS_EDGES:
                    continue
                if chars + len(name) > MAX_PATH_CHARS:
                    continue
                lst = found.setdefault(child, [])
                if len(lst) >= MAX_PATHS_PER_NODE:
                    continue
                item = (child, name, step, depth + 1, chars + len(name))
                lst.append(item)
                queue.append(item)
        out: dict[int, list[tuple[tuple[str, ...], tuple[int, ...]]]] = {}
        for node in sorted(self._attribute_nodes & found.keys()):
            spelled = []
            for step in found[node]:
                if step[4] > self._chars_left:
                    break
                self._chars_left -= step[4]
                spelled.append(_spell(step))
            out[node] = spelled
        return out

    def _ranks(self, useful: set[int]) -> dict[int, tuple[int, int]]:
        """The model's own order: index N in the root's `variables` list first, then
        depth-first preorder over named edges, then over all edges (both walks only
        through nodes that lead to a variable)."""
        ranks: dict[int, tuple[int, int]] = {}
        if not self.children:
            return ranks
        for name, child in self.children[0]:
            if name == "variables":
                for item, var in self.children[child]:
                    if item.isdigit() and var not in ranks:
                        ranks[var] = (0, int(item))
        for pass_no, named_only in ((1, True), (2, False)):
            seen = {0}
            stack = [0]
            position = 0
            while stack:
                node = stack.pop()
                ranks.setdefault(node, (pass_no, position))
                position += 1
                kids = [
                    c
                    for name, c in self.children[node]
                    if c in useful
                    and c not in seen
                    and not (named_only and name in ANONYMOUS_EDGES)
                ]
                for c in kids:
                    seen.add(c)
                stack.extend(reversed(kids))
        return ranks


def _on_path(step: tuple, node: int) -> bool:
    """Whether `node` is already on the path ending at `step` (a cycle)."""
    while step is not None:
        if step[0] == node:
            return True
        step = step[2]
    return False


def _spell(step: tuple) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(local names from the root, node ids from the root) of a linked path."""
    names: list[str] = []
    nodes: list[int] = []
    while step is not None:
        nodes.append(step[0])
        if step[2] is not None:
            names.append(step[1])
        step = step[2]
    return tuple(reversed(names)), tuple(reversed(nodes))


def parse_object_graph(data: bytes, path: str | Path | None = None) -> ObjectGraph:
    """Decode a serialized TrackableObjectGraph (the `_CHECKPOINTABLE_OBJECT_GRAPH` value)."""
    graph = protos.TrackableObjectGraph()
    try:
        graph.ParseFromString(data)
    except DecodeError as e:
        raise CorruptFileError(f"the checkpoint's object graph does not parse: {e}", path) from None
    nodes = []
    attributes: dict[int, list[tuple[str, str, str]]] = {}
    slot_refs: dict[int, list[tuple[int, str, int]]] = {}
    for i, node in enumerate(graph.nodes):
        nodes.append([(c.local_name, c.node_id) for c in node.children])
        if node.attributes:
            attributes[i] = [(a.name, a.full_name, a.checkpoint_key) for a in node.attributes]
        if node.slot_variables:
            slot_refs[i] = [
                (s.original_variable_node_id, s.slot_name, s.slot_variable_node_id)
                for s in node.slot_variables
            ]
    return ObjectGraph(nodes, attributes, slot_refs)


# --- SavedModel: saved_model.pb and keras_metadata.pb --------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a SavedModel signature."""

    name: str  # the signature's key for it, e.g. "input_1"
    tensor: str  # the graph tensor, e.g. "serving_default_input_1:0"
    dtype: str
    shape: tuple[int | None, ...] | None  # None: unknown rank; None dims: unknown size


@dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    inputs: tuple[TensorSpec, ...]  # sorted by name
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class SavedVariableInfo:
    node_id: int
    name: str
    dtype: str
    shape: tuple[int | None, ...] | None
    trainable: bool


@dataclass
class SavedModelInfo:
    variables: dict[int, SavedVariableInfo]  # node id -> SavedVariable
    identifiers: dict[int, str]  # node id -> user_object identifier (_tf_keras_layer, ...)
    signatures: dict[str, Signature]
    num_nodes: int


def _shape(proto) -> tuple[int | None, ...] | None:
    if proto.unknown_rank:
        return None
    return tuple(d.size if d.size >= 0 else None for d in proto.dim)


def _spec(name: str, info) -> TensorSpec:
    return TensorSpec(
        name=name,
        tensor=info.name,
        dtype=dtype_name(info.dtype),
        shape=_shape(info.tensor_shape) if info.HasField("tensor_shape") else None,
    )


def read_saved_model(path: str | Path) -> SavedModelInfo:
    """Variables, object identifiers and signatures of a `saved_model.pb`."""
    path = as_path(path)
    model = protos.SavedModel()
    try:
        model.ParseFromString(read_regular_bytes(path))
    except DecodeError as e:
        raise CorruptFileError(f"saved_model.pb does not parse: {e}", path) from None
    except OSError as e:
        raise CorruptFileError(f"cannot read: {e.strerror}", path) from None
    if not model.meta_graphs:
        raise CorruptFileError("saved_model.pb holds no MetaGraphDef", path)
    meta = model.meta_graphs[0]
    variables: dict[int, SavedVariableInfo] = {}
    identifiers: dict[int, str] = {}
    nodes = meta.object_graph_def.nodes
    for i, node in enumerate(nodes):
        kind = node.WhichOneof("kind")
        if kind == "variable":
            v = node.variable
            variables[i] = SavedVariableInfo(
                i,
                v.name,
                dtype_name(v.dtype),
                _shape(v.shape) if v.HasField("shape") else None,
                v.trainable,
            )
        elif kind == "user_object":
            identifiers[i] = node.user_object.identifier
    signatures = {}
    for sig_name in sorted(meta.signature_def):
        if sig_name.startswith("__"):  # __saved_model_init_op: not callable
            continue
        sig = meta.signature_def[sig_name]
        signatures[sig_name] = Signature(
            name=sig_name,
            method_name=sig.method_name,
            inputs=tuple(_spec(k, sig.inputs[k]) for k in sorted(sig.inputs)),
            outputs=tuple(_spec(k, sig.outputs[k]) for k in sorted(sig.outputs)),
        )
    return SavedModelInfo(variables, identifiers, signatures, len(nodes))


_VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp", "AutoReloadVariable"})
_PARTITION_SUFFIX = re.compile(r"/part_\d+$")
MAX_META_BYTES = 1 << 30  # a TF1 .meta larger than this is not parsed for order


def read_meta_graph_order(path: str | Path) -> dict[str, int]:
    """Variable name -> creation index from a TF1 `.meta` file's graph (nodes are
    stored in creation order). Partitions `v/part_N` count as `v`. {} if unreadable:
    the order is a nicety, never a reason to fail."""
    path = as_path(path)
    try:
        if path.stat().st_size > MAX_META_BYTES:
            return {}
        meta = protos.MetaGraphDef()
        meta.ParseFromString(read_regular_bytes(path))
    except (OSError, DecodeError, NotRegularFileError):
        return {}
    order: dict[str, int] = {}
    for node in meta.graph_def.node:
        if node.op in _VARIABLE_OPS:
            order.setdefault(_PARTITION_SUFFIX.sub("", node.name), len(order))
    return order


@dataclass(frozen=True)
class KerasNode:
    """One object of a tf-keras SavedModel's keras_metadata.pb."""

    node_id: int
    node_path: str  # "root.layer_with_weights-0._query_dense"
    identifier: str  # "_tf_keras_layer", "_tf_keras_network", ...
    metadata: dict  # class_name, config, name, ...

    @property
    def class_name(self) -> str | None:
        return self.metadata.get("class_name")


def read_keras_metadata(path: str | Path) -> dict[int, KerasNode]:
    """Per-node Keras metadata (class_name, config) from a tf-keras keras_metadata.pb."""
    path = as_path(path)
    saved = protos.SavedMetadata()
    try:
        saved.ParseFromString(read_regular_bytes(path))
    except DecodeError as e:
        raise CorruptFileError(f"keras_metadata.pb does not parse: {e}", path) from None
    except OSError as e:
        raise CorruptFileError(f"cannot read: {e.strerror}", path) from None
    out = {}
    for node in saved.nodes:
        try:
            meta = loads_json(node.metadata) if node.metadata else {}
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
            raise CorruptFileError(
                f"keras_metadata.pb: metadata of {node.node_path!r} is not JSON: {e}", path
            ) from None
        if not isinstance(meta, dict):
            meta = {}
        out[node.node_id] = KerasNode(node.node_id, node.node_path, node.identifier, meta)
    return out
