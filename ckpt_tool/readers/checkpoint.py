"""TF checkpoints and SavedModels: the reader behind `ckpt-tool list PATH` for them.

Accepts a checkpoint prefix, its `.index` file or a `.data-*` shard, a directory
with a `checkpoint` state file, or a SavedModel directory. Tensors come from the
tensor bundle (bundle.py); names come from the object graph (objgraph.py) and,
for SavedModels, from saved_model.pb and keras_metadata.pb. No TensorFlow.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from itertools import repeat
from operator import attrgetter
from pathlib import Path

import numpy as np

from ckpt_tool.errors import CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.gc_pause import gc_paused
from ckpt_tool.memory_release import release_freed_memory
from ckpt_tool.readers.base import BOOKKEEPING, OPTIMIZER, WEIGHT, Reader, VariableInfo
from ckpt_tool.readers.bundle import (
    DT_STRING,
    TABLE_MAGIC,
    BundleEntry,
    BundleReader,
    decode_slice_key,
    dtype_name,
)
from ckpt_tool.readers.natural_order import natural_keys, natural_matrix
from ckpt_tool.readers.objgraph import (
    ANONYMOUS_EDGES,
    ATTRIBUTES,
    SLOT_MARKER,
    VARIABLE_VALUE,
    GraphVariable,
    KerasNode,
    ObjectGraph,
    SavedModelInfo,
    Signature,
    parse_object_graph,
    read_keras_metadata,
    read_meta_graph_order,
    read_saved_model,
    strip_key,
)
from ckpt_tool.readers.regular_file import read_small, refuse_special
from ckpt_tool.readers.variable_table import VariableTable, component_in, plain_keys
from ckpt_tool.storage import as_path, open_binary

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
MAX_STATE_FILE_BYTES = 16 << 20  # a `checkpoint` state file is a few lines of text
_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_LINE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', re.M)

# Path components that mark optimizer state or bookkeeping (not model weights).
_OPTIMIZER_PARTS = frozenset({"optimizer", "_optimizer", SLOT_MARKER})
_BOOKKEEPING_PARTS = frozenset(
    {
        "save_counter",
        "metrics",
        "_metrics",
        "layer_metrics",
        "compiled_metrics",
        "compiled_loss",
        "_compile_metrics",
        "_loss_tracker",
        "_metrics_container",
        "seed_generator",
        "_seed_generator",
        "_random_generator",
        OBJECT_GRAPH_KEY,
    }
)
# TF1 names (no object graph): optimizer slots and training counters.
_TF1_OPTIMIZER_LEAVES = frozenset(
    {
        "adam_m",
        "adam_v",
        "Adam",
        "Adam_1",
        "Momentum",
        "Adagrad",
        "RMSProp",
        "RMSProp_1",
        "Ftrl",
        "Ftrl_1",
        "AdamWeightDecayOptimizer",
        "AdamWeightDecayOptimizer_1",
        "LAMB",
        "LAMB_1",
        "ExponentialMovingAverage",
        "global_step",
        "beta1_power",
        "beta2_power",
        "learning_rate",
        "iterations",
    }
)


def _unescape_text_proto(s: str) -> str:
    return re.sub(
        r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), s
    )


def _state_file_prefix(directory: Path) -> Path | None:
    """The prefix named by `directory/checkpoint` (model_checkpoint_path), if any."""
    state = directory / "checkpoint"
    try:
        raw = read_small(state, MAX_STATE_FILE_BYTES, "the `checkpoint` state file")
    except OSError:
        return None
    text = raw.decode("utf-8", errors="replace")
    match = _STATE_LINE.search(text)
    if not match:
        return None
    target = Path(_unescape_text_proto(match.group(1)))
    prefix = target if target.is_absolute() else directory / target
    if (
        not as_path(f"{prefix}.index").is_file()
        and as_path(f"{directory / target.name}.index").is_file()
    ):
        prefix = directory / target.name  # the directory was moved after saving
    return prefix


def resolve(path: str | Path) -> tuple[Path | None, Path | None]:
    """(bundle prefix or None, SavedModel directory or None) for any accepted path.

    Raises NotFoundError/UnsupportedFormatError when the path is none of them.
    """
    path = as_path(path)
    if path.is_dir():
        # exists(), not is_file(): a FIFO or device in the place of a SavedModel's files
        # reaches the readers, which refuse it by name
        if (path / "saved_model.pb").exists():
            refuse_special(path / "saved_model.pb")
            prefix = path / "variables" / "variables"
            if as_path(f"{prefix}.index").exists():
                refuse_special(f"{prefix}.index")
                return prefix, path
            if any((path / "variables").glob("variables.data-*")):
                raise NotFoundError(
                    "the SavedModel's variables.index is missing", path / "variables"
                )
            return None, path
        prefix = _state_file_prefix(path)
        if prefix is not None:
            if not as_path(f"{prefix}.index").is_file():
                raise NotFoundError(
                    f"the `checkpoint` file names {prefix.name!r} but {prefix}.index does not exist",
                    path,
                )
            return prefix, None
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return as_path(str(indexes[0])[: -len(".index")]), None
        if len(indexes) > 1:
            raise UnsupportedFormatError(
                "directory holds several checkpoints and no `checkpoint` file; "
                f"name one prefix, e.g. {str(indexes[-1])[: -len('.index')]}",
                path,
            )
        raise UnsupportedFormatError(
            "directory holds no checkpoint (.index) and no saved_model.pb", path
        )
    name = path.name
    if name == "saved_model.pb" and path.is_file():
        return resolve(path.parent)
    if name == "checkpoint" and path.is_file():
        return resolve(path.parent)
    if name.endswith(".index") and path.is_file():
        return as_path(str(path)[: -len(".index")]), None
    if _DATA_SUFFIX.search(name):
        prefix = as_path(_DATA_SUFFIX.sub("", str(path)))
        if as_path(f"{prefix}.index").is_file():
            return prefix, None
        raise NotFoundError(f"data shard without its index {prefix.name}.index", path)
    if as_path(f"{path}.index").is_file():
        return path, None
    if not path.exists():
        raise NotFoundError("no such file, directory or checkpoint prefix", path)
    raise UnsupportedFormatError("not a TensorFlow checkpoint or SavedModel", path)


def _has_table_magic(index: Path) -> bool:
    """The file ends with the table magic, or exists but cannot be read (permission
    denied): then the reader, not format detection, says what is wrong."""
    try:
        with open_binary(index) as f:
            if f.seek(0, 2) < 48:
                return False
            f.seek(-8, 2)
            return int.from_bytes(f.read(8), "little") == TABLE_MAGIC
    except PermissionError:
        return index.is_file()
    except OSError:
        return False


_GROUP = {WEIGHT: 0, OPTIMIZER: 1, BOOKKEEPING: 2}


def _path_kind(parts: tuple[str, ...]) -> str:
    if not _BOOKKEEPING_PARTS.isdisjoint(parts):
        return BOOKKEEPING
    if not _OPTIMIZER_PARTS.isdisjoint(parts):
        return OPTIMIZER
    return WEIGHT


def _names_bookkeeping(name: str | None) -> bool:
    """A variable's own recorded name that marks it as bookkeeping: Keras 3 names the RNG
    state of a SeedGenerator `seed_generator[_N]/seed_generator_state`."""
    if not name:
        return False
    parts = name.split("/")
    return parts[-1] == "seed_generator_state" or not _BOOKKEEPING_PARTS.isdisjoint(parts)


def _tf1_kind(key: str) -> str:
    first = key.partition("/")[0]  # (no split of every key: an index may hold millions)
    if key == OBJECT_GRAPH_KEY or first in _BOOKKEEPING_PARTS:
        return BOOKKEEPING
    if (
        (SLOT_MARKER in key and SLOT_MARKER in key.split("/"))
        or key.rpartition("/")[2] in _TF1_OPTIMIZER_LEAVES
        or first in _OPTIMIZER_PARTS
    ):
        return OPTIMIZER
    return WEIGHT


def _entry_extra(shard_id: int, offset: int, crc: int, slices: tuple) -> dict:
    """Where the entry's bytes are; its crc32c (unmasked) or its slices."""
    if slices:
        return {
            "shard_id": shard_id,
            "offset": offset,
            "slices": [list(map(list, s)) for s in slices],
        }
    return {"shard_id": shard_id, "offset": offset, "crc32c": crc}


def _tf1_places(keys: list[str], meta_order: dict[str, int]) -> list[tuple]:
    """Where TF1 variables sort: by creation order when `<prefix>.meta` has it, else by
    their keys' natural order; as (tier, rank, sub, natural key)."""
    naturals = natural_keys(keys)
    if not meta_order:
        return [(8, (), "", natural) for natural in naturals]
    return [
        (7, (created,), "", natural)
        if (created := meta_order.get(key)) is not None
        else (8, (), "", natural)
        for key, natural in zip(keys, naturals, strict=True)
    ]


def _graph_kind(gv: GraphVariable) -> str:
    """WEIGHT if some path to the variable avoids optimizer and bookkeeping objects;
    otherwise OPTIMIZER if a path goes through an optimizer; else BOOKKEEPING."""
    if gv.slot_of is not None:
        return OPTIMIZER
    paths = gv.all_paths or ([gv.primary_path] if gv.primary_path is not None else [])
    if not paths:
        return _tf1_kind(gv.key)
    kinds = set()
    for p in paths:
        kind = _path_kind(p)
        if kind == WEIGHT:
            return WEIGHT
        kinds.add(kind)
    return OPTIMIZER if OPTIMIZER in kinds else BOOKKEEPING


class CheckpointReader(Reader):
    """A TF2/TF1 tensor-bundle checkpoint or a SavedModel's variables, read without TF."""

    format_name = "checkpoint"

    def __init__(self, path: str | Path, verify_crc: bool = True):
        super().__init__(path)
        self._verify_crc = verify_crc
        self.prefix, self.saved_model_dir = resolve(path)
        self.bundle: BundleReader | None = (
            BundleReader(self.prefix, verify_crc=verify_crc) if self.prefix is not None else None
        )
        self._variables: list[VariableInfo] | None = None
        self._lookup: dict[str, str] | None = None  # name or alias -> key
        self._saved: SavedModelInfo | None = None
        self._keras: dict[int, KerasNode] | None = None
        self._graph: ObjectGraph | None = None

    @classmethod
    def sniff(cls, path: Path) -> bool:
        """Cheap: looks at names and the index's 8-byte magic, parses nothing."""
        try:
            path = as_path(path)
            if path.is_dir():
                if (path / "saved_model.pb").is_file():
                    return True
                prefix = _state_file_prefix(path)
                if prefix is not None:
                    return _has_table_magic(as_path(f"{prefix}.index"))
                indexes = list(path.glob("*.index"))
                return len(indexes) == 1 and _has_table_magic(indexes[0])
            if path.name.endswith(".index"):
                return _has_table_magic(path)
            if path.name in ("saved_model.pb", "checkpoint") and path.is_file():
                return cls.sniff(path.parent)
            if _DATA_SUFFIX.search(path.name):
                return _has_table_magic(as_path(_DATA_SUFFIX.sub("", str(path)) + ".index"))
            return _has_table_magic(as_path(f"{path}.index"))
        except OSError:
            return False

    @property
    def verify_crc(self) -> bool:
        """Whether reads check each tensor's crc32c (`--no-crc` sets it False)."""
        return self._verify_crc

    @verify_crc.setter
    def verify_crc(self, value: bool) -> None:
        self._verify_crc = bool(value)
        if getattr(self, "bundle", None) is not None:
            self.bundle.verify_crc = self._verify_crc

    # -- metadata ----------------------------------------------------------------

    @property
    def is_saved_model(self) -> bool:
        return self.saved_model_dir is not None

    def saved_model(self) -> SavedModelInfo | None:
        """saved_model.pb's variables, identifiers and signatures (SavedModels only)."""
        if self._saved is None and self.saved_model_dir is not None:
            self._saved = read_saved_model(self.saved_model_dir / "saved_model.pb")
        return self._saved

    def keras_metadata(self) -> dict[int, KerasNode]:
        """Per-node tf-keras metadata from keras_metadata.pb ({} when absent)."""
        if self._keras is None:
            self._keras = {}
            if self.saved_model_dir is not None:
                meta = self.saved_model_dir / "keras_metadata.pb"
                if meta.is_file():
                    self._keras = read_keras_metadata(meta)
        return self._keras

    def object_graph(self) -> ObjectGraph | None:
        """The checkpoint's TrackableObjectGraph (None for TF1 checkpoints)."""
        if self._graph is None and self.bundle is not None:
            entry = self.bundle.entries.get(OBJECT_GRAPH_KEY)
            if entry is not None:
                if entry.dtype != DT_STRING or entry.shape != ():
                    raise CorruptFileError(
                        f"{OBJECT_GRAPH_KEY} is not a scalar string", self.bundle.index_path
                    )
                # A positioned read of just this entry: listing never maps a shard.
                data = self.bundle.read(OBJECT_GRAPH_KEY, mapped=False)[()]
                self._graph = parse_object_graph(data, self.bundle.index_path)
        return self._graph

    def model_config(self) -> dict | None:
        """The root model's {class_name, config} from keras_metadata.pb, if present."""
        root = self.keras_metadata().get(0)
        if root is None or "config" not in root.metadata:
            return None
        return {"class_name": root.metadata.get("class_name"), "config": root.metadata["config"]}

    def signatures(self) -> dict[str, Signature]:
        """A SavedModel's callable signatures (inputs/outputs: name, dtype, shape with
        None for unknown sizes); {} for plain checkpoints."""
        saved = self.saved_model()
        return dict(saved.signatures) if saved is not None else {}

    # -- variables ---------------------------------------------------------------

    def variables(self) -> list[VariableInfo]:
        if self._variables is None:
            with gc_paused():  # a million entries: see gc_pause
                self._variables = self._build_variables()
            self._lookup = None  # built when a read needs it
        return list(self._variables)

    def claimed_variables(self) -> tuple[int, int]:
        """The index's entry count and largest entry (a partitioned tensor: its slices
        summed), from its columns: no record per variable is made."""
        if self._variables is not None or self.bundle is None:
            return super().claimed_variables() if self.bundle is not None else (0, 0)
        entries = self.bundle.entries
        sizes = entries.fields.size[entries.rows.start : entries.rows.stop]
        largest = max(
            int(sizes.max(initial=0)),
            max((e.size for e in entries.parsed_rows.values()), default=0),
            max(self._slice_bytes().values(), default=0),
        )
        return len(entries.raw_keys), largest

    def variable_table(self) -> VariableTable | None:
        """The variables column by column, for a TF1 checkpoint (no object graph, no
        SavedModel, no `.meta` order) whose keys are plain names and whose entries the
        column decoder read, none partitioned; None otherwise. Its rows are what
        variables() gives, in the same order."""
        bundle = self.bundle
        if bundle is None or self.saved_model_dir is not None or bundle.slice_entries:
            return None
        entries = bundle.entries
        keys = entries.raw_keys
        if entries.parsed_rows or entries.has_key(OBJECT_GRAPH_KEY) or not plain_keys(keys):
            return None
        if as_path(f"{self.prefix}.meta").is_file():
            return None
        natural = natural_matrix(keys.matrix, keys.lengths)
        if natural is None:
            return None
        kinds = np.zeros(len(keys), np.int8)  # WEIGHT; as _tf1_kind, column-wise
        kinds[component_in(keys, last=False, words=_OPTIMIZER_PARTS)] = 1
        kinds[component_in(keys, last=True, words=_TF1_OPTIMIZER_LEAVES)] = 1
        kinds[component_in(keys, last=False, words=_BOOKKEEPING_PARTS)] = 2
        # variables() sorts by (kind, natural key), ties in key order
        words = natural.view(">u8")
        order = np.lexsort((*words.T[::-1], kinds))
        del natural, words
        fields, rows = entries.fields, slice(entries.rows.start, entries.rows.stop)
        dtype_numbers = fields.dtype[rows]
        table = VariableTable(
            keys,
            fields.shape_ids[rows],
            fields.distinct_shapes,
            dtype_numbers,
            {d: dtype_name(d) for d in np.unique(dtype_numbers).tolist()},
            kinds,
            fields.size[rows],
            order,
        )
        release_freed_memory()  # (the sort's temporaries: see memory_release)
        return table

    def _build_variables(self) -> list[VariableInfo]:
        if self.bundle is None:
            return []
        entries = self.bundle.entries
        graph = self.object_graph()
        saved = self.saved_model()
        keras = self.keras_metadata()
        gvars = graph.variables if graph is not None else {}
        saved_vars = saved.variables if saved is not None else {}
        if saved is not None and graph is not None and saved.num_nodes != graph.num_nodes:
            saved_vars = {}  # node ids would not line up; do not trust them

        slice_bytes = self._slice_bytes() if self.bundle.slice_entries else {}
        meta_order = self._tf1_order() if graph is None else {}
        # Column by column (an index may hold a million entries), as if no entry were in
        # the object graph; the graph's variables are then looked at one by one.
        fields = entries.columns()
        keys = fields.key
        dtype_names = {d: dtype_name(d) for d in set(fields.dtype)}
        nbytes = fields.size
        if any(fields.slices):
            nbytes = [
                slice_bytes.get(key, 0) if slices else size
                for key, slices, size in zip(keys, fields.slices, nbytes, strict=True)
            ]
        extras = map(_entry_extra, fields.shard_id, fields.offset, fields.crc32c, fields.slices)
        infos = list(
            map(
                VariableInfo,
                keys,
                map(strip_key, keys),
                fields.shape,
                map(dtype_names.__getitem__, fields.dtype),
                map(_tf1_kind, keys),
                repeat(()),
                repeat(0),
                nbytes,
                extras,
            )
        )
        places = _tf1_places(keys, meta_order)  # per info: (tier, rank, sub, natural key)
        own_names: dict[str, str] = {}  # key -> the variable's own recorded name
        for i, info in enumerate(infos) if gvars or OBJECT_GRAPH_KEY in entries else ():
            key = info.key
            gv = gvars.get(key)
            if key == OBJECT_GRAPH_KEY:
                info.kind = BOOKKEEPING
                places[i] = (9, (), "", ())
            elif gv is not None:
                info.kind = _graph_kind(gv)
                info.extra["node_id"] = gv.node_id
                own = gv.full_name
                sv = saved_vars.get(gv.node_id)
                if sv is not None and sv.dtype == info.dtype and sv.shape == info.shape:
                    info.extra["saved_variable_name"] = sv.name
                    info.extra["trainable"] = sv.trainable
                    own = sv.name or own
                if gv.full_name:
                    info.extra["full_name"] = gv.full_name
                if own:
                    own_names[key] = own
                if info.kind == WEIGHT and _names_bookkeeping(own):
                    info.kind = BOOKKEEPING  # e.g. a Keras 3 export's RNG seed state
                places[i] = (0, gv.rank, "", places[i][3])

        self._choose_names(infos, gvars, own_names)
        if gvars:  # copies are told apart by their object paths (none without a graph)
            self._mark_duplicates(infos, gvars, entries)
            places = self._slots_after_variables(infos, gvars, places)
        if keras:
            self._add_layer_facts(infos, gvars, graph, keras)
        # Kinds may have changed (duplicates): the group is taken last.
        groups = map(_GROUP.__getitem__, map(attrgetter("kind"), infos))
        sort_keys = list(zip(groups, places, strict=True))  # (group, place)
        infos = [infos[i] for i in sorted(range(len(infos)), key=sort_keys.__getitem__)]
        for i, info in enumerate(infos):
            info.order = i
        return infos

    @staticmethod
    def _slots_after_variables(
        infos: list[VariableInfo], gvars: dict[str, GraphVariable], places: list[tuple]
    ) -> list[tuple]:
        """Optimizer slots sort after their variable, in the variable's order."""
        rank_of_node = {gv.node_id: gv.rank for gv in gvars.values()}
        out = []
        for info, place in zip(infos, places, strict=True):
            gv = gvars.get(info.key)
            if gv is not None and gv.slot_of is not None and gv.slot_of in rank_of_node:
                place = (1, rank_of_node[gv.slot_of], gv.slot_name or "", place[3])
            out.append(place)
        return out

    def _tf1_order(self) -> dict[str, int]:
        """Creation order of TF1 variables from `<prefix>.meta`, when it is there."""
        meta = as_path(f"{self.prefix}.meta")
        return read_meta_graph_order(meta) if meta.is_file() else {}

    def _slice_bytes(self) -> dict[str, int]:
        """Bytes stored for each partitioned tensor, summed over its slice entries."""
        sizes: dict[str, int] = {}
        if self.bundle is None:
            return sizes
        for raw_key, part in self.bundle.slice_entries.items():
            try:
                name, _ = decode_slice_key(raw_key)
            except ValueError:
                continue
            sizes[name] = sizes.get(name, 0) + part.size
        return sizes

    def _choose_names(
        self, infos: list[VariableInfo], gvars: dict[str, GraphVariable], own: dict[str, str]
    ) -> None:
        """name: informative own name > named object path > stripped key; aliases: the rest."""
        owner = _own_name_owners(infos, gvars, own)
        by_node: dict[int, str] = {}
        for info in infos if gvars else ():  # (no graph: a million entries may pass here)
            gv = gvars.get(info.key)
            if gv is None:
                continue
            candidates: list[str] = []
            own_name = own.get(info.key, "")
            # tf-keras records informative, unique names ("model/dense/kernel"); old Keras 3
            # records "<model>/kernel" for every kernel, which the uniqueness test rejects.
            if own_name and "/" in own_name and owner.get(own_name) == info.key:
                candidates.append(own_name)
            suffix = "" if gv.attribute == VARIABLE_VALUE else f"/{ATTRIBUTES}/{gv.attribute}"
            named = ["/".join(p) + suffix for p in gv.named_paths if p]
            candidates.extend(named)
            info.name = candidates[0] if candidates else strip_key(info.key)
            by_node.setdefault(gv.node_id, info.name)
            aliases = [
                *named,
                strip_key(info.key),
                own_name,
                gv.full_name,
                *("/".join(p) + suffix for p in gv.all_paths if p),
            ]
            info.aliases = tuple(dict.fromkeys(a for a in aliases if a and a != info.name))
        # Optimizer slots of legacy optimizers hang off no path: name them after their
        # variable, as TensorFlow's own slot names do ("dense/kernel/m").
        own_values = set(own.values())
        for info in infos if gvars else ():
            gv = gvars.get(info.key)
            if gv is None or gv.slot_of is None or info.name in own_values:
                continue
            original = by_node.get(gv.slot_of)
            if original is not None:
                info.aliases = tuple(dict.fromkeys((info.name, *info.aliases)))
                info.name = f"{original}/{gv.slot_name}"
        # Names must be unique: fall back to the stripped key, then the key itself.
        names = [v.name for v in infos]
        if len(set(names)) != len(names):
            seen = Counter(names)
            for info in infos:
                if seen[info.name] > 1:
                    info.aliases = tuple(dict.fromkeys((info.name, *info.aliases)))
                    info.name = strip_key(info.key)
            names = [v.name for v in infos]
            if len(set(names)) != len(names):
                for info in infos:
                    info.name = info.key
        if not gvars:
            return
        key_of_node = {}
        for info in infos:
            gv = gvars.get(info.key)
            if gv is not None:
                key_of_node.setdefault(gv.node_id, info.key)
        for info in infos:
            gv = gvars.get(info.key)
            if gv is not None and gv.slot_of is not None:
                info.extra["slot_name"] = gv.slot_name
                if gv.slot_of in key_of_node:
                    info.extra["slot_of"] = key_of_node[gv.slot_of]

    @staticmethod
    def _mark_duplicates(
        infos: list[VariableInfo],
        gvars: dict[str, GraphVariable],
        entries: dict[str, BundleEntry],
    ) -> None:
        """Keras 3 `model.export()` stores each weight twice (`variables/N` and
        `_all_variables/M`, as separate objects). A second copy reachable only through
        `_all_variables` whose dtype, shape and crc32c equal a `variables/N` entry is
        marked BOOKKEEPING with extra["duplicate_of"]; no tensor bytes are read."""
        firsts: dict[tuple, list[str]] = {}
        for info in infos:
            gv = gvars.get(info.key)
            e = entries[info.key]
            if gv is None or info.kind != WEIGHT or e.slices or gv.named_paths:
                continue
            if gv.primary_path and gv.primary_path[0] == "variables":
                firsts.setdefault((e.dtype, e.shape, e.size, e.crc32c), []).append(info.key)
        for info in infos:
            gv = gvars.get(info.key)
            e = entries[info.key]
            if gv is None or info.kind != WEIGHT or gv.named_paths or not gv.primary_path:
                continue
            if gv.primary_path[0] != "_all_variables":
                continue
            twins = firsts.get((e.dtype, e.shape, e.size, e.crc32c))
            if twins:
                info.kind = BOOKKEEPING
                info.extra["duplicate_of"] = twins[0]

    @staticmethod
    def _add_layer_facts(
        infos: list[VariableInfo],
        gvars: dict[str, GraphVariable],
        graph: ObjectGraph | None,
        keras: dict[int, KerasNode],
    ) -> None:
        """extra["layer_class"/"layer_name"/"layer_path"] from keras_metadata.pb: the
        nearest Keras layer on the variable's first named path."""
        if graph is None:
            return
        for info in infos:
            gv = gvars.get(info.key)
            if gv is None or not gv.named_paths:
                continue
            path, chain = gv.named_paths[0], gv.named_nodes
            for depth in range(len(chain) - 1, -1, -1):
                meta = keras.get(chain[depth])
                if meta is not None and meta.class_name and depth < len(chain) - 1:
                    info.extra["layer_class"] = meta.class_name
                    info.extra["layer_name"] = meta.metadata.get("name")
                    info.extra["layer_path"] = "/".join(path[:depth])
                    break

    @staticmethod
    def _build_lookup(infos: list[VariableInfo]) -> dict[str, str]:
        """key and name always resolve; an alias resolves when only one variable has it."""
        lookup: dict[str, str] = {}
        ambiguous: set[str] = set()
        for info in infos:
            for alias in info.aliases:
                if alias in lookup and lookup[alias] != info.key:
                    ambiguous.add(alias)
                lookup.setdefault(alias, info.key)
        for alias in ambiguous:
            del lookup[alias]
        for info in infos:
            lookup[info.name] = info.key
        for info in infos:
            lookup[info.key] = info.key
        return lookup

    # -- tensors -----------------------------------------------------------------

    def read(self, key: str) -> np.ndarray:
        """The tensor under `key` (also accepts its name or an unambiguous alias).

        Returns a new native-endian array that owns its memory; DT_STRING tensors
        come back as object arrays of bytes.
        """
        bundle, real = self._locate(key)
        return bundle.read(real)

    def read_pieces(self, key: str, elements: int) -> Iterator[np.ndarray]:
        """Reader.read_pieces, from the bundle (a numeric tensor without a whole copy)."""
        bundle, real = self._locate(key)
        return bundle.read_pieces(real, elements)

    def _locate(self, key: str) -> tuple[BundleReader, str]:
        """The bundle and the entry key of `key` (also a name or unambiguous alias)."""
        if self.bundle is None:
            raise NotFoundError(f"no tensor {key!r}: the SavedModel has no variables", self.path)
        if key in self.bundle.entries:
            return self.bundle, key
        variables = self.variables()
        if self._lookup is None:
            with gc_paused():
                self._lookup = self._build_lookup(variables)
        real = self._lookup.get(key)
        if real is None:
            raise NotFoundError(f"no tensor {key!r} in checkpoint", self.bundle.index_path)
        return self.bundle, real

    def close(self) -> None:
        if self.bundle is not None:
            self.bundle.close()


__all__ = ["ANONYMOUS_EDGES", "CheckpointReader", "resolve"]


def _own_name_owners(
    infos: list[VariableInfo], gvars: dict[str, GraphVariable], own: dict[str, str]
) -> dict[str, str]:
    """Own name -> the key that may take it as its name: the name's only variable, or,
    when every tensor recorded under the name is a copy of one variable (a Keras 3
    `model.export()` stores each as `variables/N` and `_all_variables/M`, equal dtype,
    shape and crc32c), the copy under `variables/` (else the first). Names that distinct
    variables share have no owner."""
    members: dict[str, list[VariableInfo]] = {}
    for info in infos if own else ():
        if own.get(info.key):
            members.setdefault(own[info.key], []).append(info)

    def content(info: VariableInfo) -> tuple:
        crc = info.extra.get("crc32c")
        return (info.dtype, info.shape, crc) if crc is not None else (info.key,)

    def primary(info: VariableInfo) -> bool:
        path = gvars[info.key].primary_path if info.key in gvars else None
        return bool(path) and path[0] == "variables"

    owners: dict[str, str] = {}
    for name, group in members.items():
        if len({content(info) for info in group}) == 1:
            owners[name] = next((i for i in group if primary(i)), group[0]).key
    return owners
