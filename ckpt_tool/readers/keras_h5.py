"""Keras weight files: `.weights.h5`, `.keras` (zip, read in memory) and legacy `.h5`.

Keras 3 `.weights.h5` keeps each layer's weights as `<object path>/vars/<i>`:
the index `i` is all the file says, so names come from the layer's class and
config (see keras_weight_names). Legacy `.h5` files name every weight
(`weight_names` attributes) and need no such resolution.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import ml_dtypes
import numpy as np

from ckpt_tool.errors import CkptToolError, CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.readers import keras_weight_names as kwn
from ckpt_tool.readers.base import (
    BOOKKEEPING,
    OPTIMIZER,
    WEIGHT,
    Reader,
    VariableInfo,
    split_flat,
)
from ckpt_tool.readers.budget import allowance
from ckpt_tool.readers.hdf5_guard import (
    StoredDataset,
    check_global_heaps,
    check_self_contained,
    outside_reference,
    scan,
)
from ckpt_tool.readers.regular_file import open_regular
from ckpt_tool.readers.span_reads import ShortRead, read_span
from ckpt_tool.readers.zip_member import (
    FileSlice,
    MemberFile,
    MiB,
    check_archive_inflation,
    is_zip,
    open_zip,
    read_member,
    reason,
)
from ckpt_tool.safe_json import loads_json
from ckpt_tool.storage import RemotePath, as_path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
WEIGHTS_MEMBER = "model.weights.h5"
CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
MAX_JSON_BYTES = 64 * MiB

# Groups that hold a Functional/Sequential model's layer list; dropped from
# human names. `_layer_checkpoint_dependencies` is the Keras 2.13 spelling.
_LAYER_CONTAINERS = ("layers", "_layer_checkpoint_dependencies")
# Variable names of MultiHeadAttention's sublayers, for files whose `vars`
# groups carry no `name` attribute (tf-keras).
_MHA_SUBLAYER_NAMES = {
    "query_dense": "query",
    "key_dense": "key",
    "value_dense": "value",
    "output_dense": "attention_output",
    "gate_dense": "gate",
}
_NUMERIC_KINDS = "biufc"
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


# --------------------------------------------------------------------------
# Shared HDF5 helpers


@contextlib.contextmanager
def hdf5_errors(path: Path, doing: str):
    """Any HDF5 error inside the block (a damaged file can fail on every access)
    becomes one CorruptFileError line naming the file."""
    try:
        yield
    except CkptToolError:
        raise
    except _H5_ERRORS as e:
        raise CorruptFileError(f"{doing} ({reason(e)})", path) from None


def has_hdf5_magic(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            return f.read(len(HDF5_MAGIC)) == HDF5_MAGIC
    except OSError:
        return False


def open_h5(source: Any, path: Path, what: str = "file") -> h5py.File:
    """Open an HDF5 file (a path or a file object) read-only, or raise CorruptFileError."""
    try:
        f = h5py.File(source, "r")
    except FileNotFoundError:
        raise NotFoundError("no such file", path) from None
    except _H5_ERRORS as e:
        raise CorruptFileError(
            f"{what} is not a readable HDF5 file (truncated? {reason(e)})", path
        ) from None
    try:
        check_global_heaps(f, source, path)  # before any string attribute is read
        check_self_contained(f, path)  # no byte read from any other file
    except BaseException:
        f.close()
        raise
    return f


def h5_source(path: Path) -> Any:
    """What h5py opens: a local path as it is; for a URL, a seekable file over its
    bytes (HDF5's small metadata reads come from the URL's pages)."""
    if isinstance(path, RemotePath):
        return FileSlice(path, 0, path.size())
    return path


def _h5_layout(path: Path) -> str | None:
    """'legacy', 'weights', 'other' or 'unreadable' for an HDF5 file; None if not HDF5."""
    if not has_hdf5_magic(path):
        return None
    source = None
    try:
        source = h5_source(path)
        with h5py.File(source, "r") as f:
            layout = _root_layout(f)
            if layout in ("legacy", "weights"):  # its reader refuses outside references
                return layout
            if outside_reference(f) is not None:  # checking the layout would follow it
                return "weights" if path.name.endswith(".weights.h5") else "legacy"
            if layout == "other":
                return layout
            if _is_legacy_layout(f):
                return "legacy"
            if _is_weights_layout(f):
                return "weights"
            return "other"
    except Exception:  # sniffing never raises
        return "unreadable"
    finally:
        if source is not None and source is not path:
            source.close()


def _root_layout(f: h5py.File) -> str | None:
    """_h5_layout from the root's own hard links and attributes, following no link (so
    without walking the file for outside references first); None when a link that
    decides it is soft or external."""
    groups = set()
    for name in ("model_weights", "vars", *_LAYER_CONTAINERS):
        key = name.encode()
        if not f.id.links.exists(key):
            continue
        if f.id.links.get_info(key).type != h5py.h5l.TYPE_HARD:
            return None
        if h5py.h5o.get_info(f.id, key).type == h5py.h5o.TYPE_GROUP:
            groups.add(name)
    if "model_weights" in groups or _has_list_attr(f, "layer_names"):
        return "legacy"
    return "weights" if groups else "other"


def _is_legacy_layout(f: h5py.Group) -> bool:
    return isinstance(f.get("model_weights"), h5py.Group) or _has_list_attr(f, "layer_names")


def _is_weights_layout(f: h5py.Group) -> bool:
    return any(isinstance(f.get(name), h5py.Group) for name in ("vars", *_LAYER_CONTAINERS))


def _has_list_attr(obj: h5py.HLObject, name: str) -> bool:
    return name in obj.attrs or f"{name}0" in obj.attrs


def _decode(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8")
    return str(value)


def _string_attr(obj: h5py.HLObject, name: str) -> Any:
    """The value of a string attribute (scalar or array). Other types are refused
    unread: HDF5 crashes converting a damaged variable-length type, and Keras
    writes these attributes as strings only. Raises ValueError (a damaged file)."""
    attr = h5py.h5a.open(obj.id, name.encode())
    if attr.get_type().get_class() != h5py.h5t.STRING:
        if attr.shape is not None and 0 in attr.shape:
            return np.array([])  # an empty list, written by NumPy as float64[0]
        raise ValueError(f"attribute {name!r} of {obj.name!r} is not a string")
    return obj.attrs[name]


def _str_list_attr(obj: h5py.HLObject, name: str) -> list[str]:
    """A list-of-strings attribute, joining Keras' split form `name0`, `name1`, ..."""
    if name in obj.attrs:
        chunks = [_string_attr(obj, name)]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in obj.attrs:
            chunks.append(_string_attr(obj, f"{name}{len(chunks)}"))
    out: list[str] = []
    for chunk in chunks:
        out.extend(_decode(v) for v in np.atleast_1d(np.asarray(chunk)).tolist())
    return out


def _logical_dtype(ds: h5py.Dataset, path: Path) -> np.dtype:
    """The dtype a weight really has. ml_dtypes types are stored as opaque bytes.

    Keras 3 marks bfloat16 datasets with attr `dtype="bfloat16"`; its legacy
    `.h5` writer does not, leaving a bare 2-byte opaque type, which can only
    be bfloat16 (float16 has a native HDF5 type).
    """
    stored = ds.dtype
    tag = _string_attr(ds, "dtype") if "dtype" in ds.attrs else None
    if tag is not None:
        tag_name = _decode(tag)
        ml_type = getattr(ml_dtypes, tag_name, None)
        if ml_type is not None and np.dtype(ml_type).itemsize == stored.itemsize:
            return np.dtype(ml_type)
    if stored.kind in _NUMERIC_KINDS:
        return stored
    if stored.kind == "V" and stored.fields is None and stored.itemsize == 2:
        return np.dtype(ml_dtypes.bfloat16)
    raise UnsupportedFormatError(
        f"dataset {ds.name!r} has dtype {stored} (object, string, compound or "
        "variable-length data); Keras weights are numeric",
        path,
    )


def _dataset_shape(ds: h5py.Dataset, path: Path) -> tuple[int, ...]:
    if ds.shape is None:
        raise CorruptFileError(f"dataset {ds.name!r} has no data space", path)
    return tuple(int(d) for d in ds.shape)


# Deflate inflates at most ~1032x; a filtered dataset claiming more is not real data.
_MAX_FILTER_RATIO = 1100


def _check_stored_size(ds: h5py.Dataset, path: Path) -> None:
    """Refuse, before allocating, a dataset whose shape claims far more bytes than the
    file stores for it: chunks never written read back as fill values, so a tiny
    file could otherwise ask for terabytes."""
    nbytes = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize if ds.shape else 0
    stored = ds.id.get_storage_size()
    filtered = ds.id.get_create_plist().get_nfilters() > 0
    limit = stored * _MAX_FILTER_RATIO + (1 << 20) if filtered else stored
    if nbytes > limit:
        raise CorruptFileError(
            f"dataset {ds.name!r} declares {nbytes} bytes ({ds.shape} of {ds.dtype}) "
            f"but the file stores {stored} for it",
            path,
        )
    chunks = ds.chunks
    if chunks:
        # HDF5 inflates a whole chunk to read any element of it, and chunks may be far
        # larger than the dataset (a resizable one): bound them before reading.
        chunk_bytes = int(np.prod(chunks, dtype=object)) * ds.dtype.itemsize
        if chunk_bytes > allowance(nbytes):
            raise CorruptFileError(
                f"dataset {ds.name!r} holds {nbytes} bytes in chunks of {chunk_bytes} bytes "
                f"each (more than the {allowance(nbytes)} allowed to read it)",
                path,
            )


def _read_dataset(ds: h5py.Dataset, dtype: np.dtype, path: Path) -> np.ndarray:
    _check_stored_size(ds, path)
    try:
        arr = np.asarray(ds[()])
    except _H5_ERRORS as e:
        raise CorruptFileError(f"cannot read dataset {ds.name!r} ({reason(e)})", path) from None
    if arr.dtype != dtype:
        if arr.dtype.newbyteorder("=") == dtype.newbyteorder("="):
            return arr.astype(dtype)  # a scalar comes back in native order: same value
        arr = arr.view(dtype)  # opaque bytes -> bfloat16: same bits
    return arr


def _object_addresses(f: h5py.File) -> dict[str, int]:
    """For every group, the lowest object-header address of a dataset below it.

    Keras creates neither groups nor files with `track_order`, so h5py lists
    members alphabetically (`dense_10` before `dense_2`). Datasets are written
    once, in save order, and their headers are allocated one after another,
    so their addresses recover the order Keras saved the layers in. Groups
    are no good for this: their headers move when they grow.
    """
    best: dict[str, int] = {}
    for name, addr in dataset_addresses(f):
        parts = name.split("/")
        for i in range(len(parts)):
            key = "/".join(parts[:i])
            if key not in best or addr < best[key]:
                best[key] = addr
    return best


def dataset_addresses(f: h5py.File) -> list[tuple[str, int]]:
    """(path, object-header address) of every dataset, from the file's one walk inside
    HDF5 (hdf5_guard.scan: no h5py object made per member)."""
    return [(d.name, d.address) for d in scan(f).datasets.values()]


def _parse_json(raw: bytes | str, what: str, path: Path) -> dict:
    try:
        value = loads_json(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise CorruptFileError(f"{what} is not valid JSON ({reason(e)})", path) from None
    if not isinstance(value, dict):
        raise CorruptFileError(f"{what} is not a JSON object", path)
    return value


def _make_names_unique(infos: list[VariableInfo]) -> list[VariableInfo]:
    """A later tensor whose human name is taken keeps its raw key as name."""
    seen: set[str] = set()
    out = []
    for info in infos:
        if info.name in seen:
            info = replace(info, name=info.key, aliases=(info.name, *info.aliases))
        seen.add(info.name)
        out.append(info)
    return out


class _H5Reader(Reader):
    """Common part: an open h5py file, a lazily built listing, read(key)."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._h5: h5py.File | None = None
        self._source: Any = None  # a URL's file under self._h5, closed with it
        self._listing: list[VariableInfo] | None = None
        self._dtypes: dict[str, np.dtype] = {}
        self._stored_by_key: dict[str, StoredDataset] | None = None

    def _build(self) -> list[tuple[VariableInfo, np.dtype]]:
        raise NotImplementedError

    def variables(self) -> list[VariableInfo]:
        if self._listing is None:
            with hdf5_errors(self.path, "cannot list the HDF5 file"):
                built = self._build()
            self._dtypes = {info.key: dtype for info, dtype in built}
            self._listing = _make_names_unique([info for info, _ in built])
        return list(self._listing)

    def read(self, key: str) -> np.ndarray:
        self.variables()
        if key not in self._dtypes or self._h5 is None:
            raise NotFoundError(f"no variable {key!r} in this file", self.path)
        with hdf5_errors(self.path, f"cannot read dataset {key!r}"):
            # opened by HDF5 itself: the key is a listed dataset's path
            dataset = h5py.Dataset(
                h5py.h5d.open(self._h5.id, key.encode("utf-8", "surrogateescape"))
            )
            in_place = self._read_in_place(key, dataset, self._dtypes[key])
            if in_place is not None:
                return in_place
            return _read_dataset(dataset, self._dtypes[key], self.path)

    def read_pieces(self, key: str, elements: int) -> Iterator[np.ndarray]:
        """Reader.read_pieces: a dataset that `read` would read in place is read piece by
        piece into one reused buffer (no HDF5 call after this returns); any other is
        read whole, here."""
        self.variables()
        if key not in self._dtypes or self._h5 is None:
            raise NotFoundError(f"no variable {key!r} in this file", self.path)
        dtype = self._dtypes[key]
        with hdf5_errors(self.path, f"cannot read dataset {key!r}"):
            # HDF5's own handle, not an h5py.Dataset: only its type and shape are needed,
            # and no array of the tensor's size is allocated here (pieces of at most
            # `elements` values), so the stored-size check of `read` has nothing to guard
            dataset = h5py.h5d.open(self._h5.id, key.encode("utf-8", "surrogateescape"))
            span = self._span(key, dataset.dtype, dataset.shape, dtype)
        if span is None:
            return split_flat(self.read(key), elements)
        return self._stream(key, *span, dtype, elements)

    def _stream(
        self, key: str, path: Path, offset: int, nbytes: int, dtype: np.dtype, elements: int
    ) -> Iterator[np.ndarray]:
        if not nbytes:
            yield np.empty(0, dtype)
        try:
            with open_regular(path) as f:
                for raw in read_span(f, offset, nbytes, elements * dtype.itemsize):
                    yield raw.view(dtype)
        except ShortRead:
            raise CorruptFileError(f"dataset {key!r}: the file ended early", self.path) from None
        except OSError as e:
            raise CorruptFileError(
                f"cannot read dataset {key!r} ({e.strerror})", self.path
            ) from None

    def _image(self) -> tuple[Path, int, int] | None:
        """(local file, first byte, size) of the HDF5 image, when it lies as it is in a
        local file (a plain file, or a stored member of a .keras); else None."""
        return (self.path, 0, self.path.stat().st_size) if self._source is None else None

    def _read_in_place(self, key: str, ds: h5py.Dataset, dtype: np.dtype) -> np.ndarray | None:
        """A dataset stored in one piece, unfiltered and in the native byte order,
        read with one positioned read of its bytes (what HDF5 does for it, without its
        per-read machinery); None where that does not apply, for h5py to read it."""
        span = self._in_place_span(key, ds, dtype)
        if span is None:
            return None
        path, offset, _ = span
        out = np.empty(ds.shape, ds.dtype)
        raw = out.reshape(-1).view(np.uint8)
        with open_regular(path) as f:
            f.seek(offset)
            if f.readinto(raw) != raw.size:
                return None
        return out if out.dtype == dtype else out.view(dtype)

    def _in_place_span(
        self, key: str, ds: h5py.Dataset, dtype: np.dtype
    ) -> tuple[Path, int, int] | None:
        """(local file, first byte, size) of a dataset's values when they can be read in
        place (see _read_in_place), after the stored-size checks; else None."""
        span = self._span(key, ds.dtype, ds.shape, dtype)
        if span is not None:
            _check_stored_size(ds, self.path)  # the same checks before allocating
        return span

    def _span(
        self, key: str, file_type: np.dtype, shape: tuple[int, ...] | None, dtype: np.dtype
    ) -> tuple[Path, int, int] | None:
        """(local file, first byte, size) of a dataset stored in one piece, unfiltered, in
        the native byte order, whose stored size is exactly its values'; else None."""
        image = self._image()
        stored = None if image is None else self._stored().get(key)
        if (
            stored is None
            or stored.offset is None
            or stored.layout != h5py.h5d.CONTIGUOUS
            or stored.filters
            or stored.external_count
            or file_type.fields is not None
            or file_type.kind not in "biufcV"
            or not file_type.isnative
            or file_type.itemsize != dtype.itemsize
            or shape is None
        ):
            return None
        path, start, size = image
        nbytes = math.prod(shape) * file_type.itemsize
        if stored.storage_size != nbytes or stored.offset + nbytes > size:
            return None
        return path, start + stored.offset, nbytes

    def _stored(self) -> dict[str, StoredDataset]:
        """Each dataset's storage facts (from the file's one walk), by key."""
        if self._stored_by_key is None:
            assert self._h5 is not None
            self._stored_by_key = {d.name: d for d in scan(self._h5).datasets.values()}
        return self._stored_by_key

    def _open_h5(self) -> h5py.File:
        source = h5_source(self.path)
        if source is not self.path:
            self._source = source
        return open_h5(source, self.path)

    def close(self) -> None:
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
            self._h5 = None
        if getattr(self, "_source", None) is not None:
            self._source.close()
            self._source = None


def _info(
    ds: h5py.Dataset,
    path: Path,
    *,
    name: str,
    kind: str,
    order: int,
    aliases: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> tuple[VariableInfo, np.dtype]:
    dtype = _logical_dtype(ds, path)
    shape = _dataset_shape(ds, path)
    info = VariableInfo(
        key=_path(ds),
        name=name,
        shape=shape,
        dtype=dtype.name,
        kind=kind,
        aliases=tuple(a for a in aliases if a and a != name),
        order=order,
        nbytes=int(np.prod(shape, dtype=np.int64)) * dtype.itemsize,
        extra=extra or {},
    )
    return info, dtype


# --------------------------------------------------------------------------
# Keras 3 `.weights.h5` (also inside `.keras`)


@dataclass
class _Node:
    """One group of a `.weights.h5` file, with what is known about it."""

    group: h5py.Group
    parts: tuple[str, ...]  # path from the root, e.g. ("layers", "dense")
    kind: str = WEIGHT
    class_name: str | None = None  # built-in Keras class, when known
    config: Mapping[str, Any] | None = None  # the layer's own config dict
    layer_name: str | None = None  # the layer's `name` (vars attr or config)
    keras_path: tuple[str, ...] | None = ()  # layer names, as in Keras' `variable.path`
    model_layers: list[Mapping[str, Any]] | None = None  # config entries, if a model
    sequential: bool = False
    is_container: bool = False  # a list of saveables (a model's `layers`): no vars


def _entry_name(entry: Mapping[str, Any]) -> str | None:
    cfg = entry.get("config")
    name = entry.get("name") or (cfg.get("name") if isinstance(cfg, Mapping) else None)
    return name if isinstance(name, str) else None


def _builtin_class(entry: Mapping[str, Any]) -> str | None:
    """The entry's class name if it is a built-in Keras layer, else None."""
    class_name = entry.get("class_name")
    if not isinstance(class_name, str):
        return None
    module = entry.get("module")
    if isinstance(module, str) and not module.startswith(("keras", "tf_keras")):
        return None
    registered = entry.get("registered_name")
    if isinstance(registered, str) and registered not in (class_name, f"keras>{class_name}"):
        return None
    return class_name


def _model_layers(entry: Mapping[str, Any] | None) -> list[Mapping[str, Any]] | None:
    cfg = entry.get("config") if entry else None
    layers = cfg.get("layers") if isinstance(cfg, Mapping) else None
    if isinstance(layers, list):
        return [e for e in layers if isinstance(e, Mapping)]
    return None


def _entry_config(entry: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    cfg = entry.get("config") if entry else None
    return cfg if isinstance(cfg, Mapping) else None


def _path(obj: h5py.HLObject) -> str:
    """The object's path without the leading `/`. h5py gives bytes for a name that is not
    UTF-8; it is kept with its bytes escaped, as the HDF5 guard's walk keeps it."""
    name = obj.name
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    return name.lstrip("/")


def _members(group: h5py.Group) -> dict[str, h5py.HLObject]:
    """group.items() as a dict, each member opened by HDF5 itself (h5py's own lookup
    resolves every name again from the file's root). Only for files that passed
    hdf5_guard.check_self_contained: no link here leads outside the file."""
    out: dict[str, h5py.HLObject] = {}
    for raw in group.id:  # names as stored; one that is not UTF-8 keeps its bytes escaped
        name = raw.decode("utf-8", "surrogateescape")
        oid = h5py.h5o.open(group.id, raw)
        if isinstance(oid, h5py.h5g.GroupID):
            out[name] = h5py.Group(oid)
        elif isinstance(oid, h5py.h5d.DatasetID):
            out[name] = h5py.Dataset(oid)
        else:
            out[name] = h5py.Datatype(oid)
    return out


def _vars_name(vars_group: h5py.HLObject | None) -> str | None:
    if isinstance(vars_group, h5py.Group) and "name" in vars_group.attrs:
        return _decode(_string_attr(vars_group, "name"))
    return None


def _extend(path: tuple[str, ...] | None, name: str | None) -> tuple[str, ...] | None:
    return (*path, name) if path is not None and name else None


def _rank(found: tuple[int, str | None] | None) -> int | None:
    return found[0] if found is not None else None


class _WeightsH5Lister:
    """Walks a `.weights.h5` tree in model order and names every dataset.

    Keras saves an object's own weights as `vars/<i>`, then its children: a
    Functional/Sequential model's `layers` list first (groups named by
    snake_case class plus a counter), then other attributes. Lists have no
    `vars` group of their own.
    """

    def __init__(self, h5: h5py.File, config: Mapping[str, Any] | None, path: Path):
        self.h5 = h5
        self.config = config
        self.path = path
        self.addresses = _object_addresses(h5)
        self.out: list[tuple[VariableInfo, np.dtype]] = []
        # Keras' `variable.path` of each dataset whose names are all known: tensors are
        # named by it (`token_embedding/embeddings`, `mha/query/kernel`), their file path
        # (`reversible_embedding/vars/0`, `mha/query_dense/kernel`) kept as an alias.
        self.keras_names: dict[str, str] = {}
        self._opened: dict[int, dict[str, h5py.HLObject]] = {}  # id(group) -> members

    def _members(self, group: h5py.Group) -> dict[str, h5py.HLObject]:
        """_members of a group, opened once per walk."""
        found = self._opened.get(id(group))  # the groups live in self._opened or are self.h5
        if found is None:
            found = self._opened[id(group)] = _members(group)
        return found

    def run(self) -> list[tuple[VariableInfo, np.dtype]]:
        cfg = self.config
        root = _Node(
            group=self.h5,
            parts=(),
            class_name=_builtin_class(cfg) if cfg else None,
            config=_entry_config(cfg),
            model_layers=_model_layers(cfg),
            sequential=bool(cfg) and cfg.get("class_name") == "Sequential",
        )
        self._walk(root)
        if self.keras_names:
            return [(self._keras_named(info), dtype) for info, dtype in self.out]
        return self.out

    def _keras_named(self, info: VariableInfo) -> VariableInfo:
        """The tensor under Keras' own `variable.path`, its file path as an alias."""
        keras_name = self.keras_names.get(info.key)
        if keras_name is None or keras_name == info.name:
            return info
        aliases = (info.name, *(a for a in info.aliases if a != keras_name))
        return replace(info, name=keras_name, aliases=aliases)

    def _walk(self, node: _Node) -> None:
        self._emit_vars(node)
        for child in self._children(node):
            self._walk(child)

    def _emit_vars(self, node: _Node) -> None:
        vars_group = self._members(node.group).get("vars")
        if node.is_container or not isinstance(vars_group, h5py.Group):
            return
        items = [(k, v) for k, v in _members(vars_group).items() if isinstance(v, h5py.Dataset)]
        items.sort(key=lambda kv: (0, int(kv[0]), "") if kv[0].isdigit() else (1, 0, kv[0]))
        contiguous = [k for k, _ in items] == [str(i) for i in range(len(items))]
        names = None
        if node.kind == WEIGHT and contiguous:
            names = kwn.weight_names(node.class_name, node.config, len(items))
        base = [p for p in node.parts if p not in _LAYER_CONTAINERS]
        for i, (index, ds) in enumerate(items):
            weight = names[i] if names else index
            file_name = "/".join((*base, weight))
            keras_name = "/".join((*node.keras_path, weight)) if names and node.keras_path else None
            if keras_name:
                self.keras_names[_path(ds)] = keras_name
            extra: dict[str, Any] = {"index": int(index) if index.isdigit() else index}
            if node.class_name:
                extra["class_name"] = node.class_name
            if node.layer_name:  # `vars` attr `name`: a layer's, or the optimizer's
                extra["layer_name" if node.kind == WEIGHT else "object_name"] = node.layer_name
            self.out.append(
                _info(
                    ds,
                    self.path,
                    name=file_name,
                    kind=node.kind,
                    order=len(self.out),
                    aliases=(keras_name,) if keras_name else (),
                    extra=extra,
                )
            )

    # -- children, in model order

    def _children(self, node: _Node) -> list[_Node]:
        groups = [
            (k, g)
            for k, g in self._members(node.group).items()
            if k != "vars" and isinstance(g, h5py.Group)
        ]
        if node.is_container:
            ranks = self._config_ranks(node)
            children = [self._layer_child(node, k, g) for k, g in groups]
            return self._sorted(children, lambda c: ranks.get(c.layer_name or ""))
        children = [self._attr_child(node, k, g) for k, g in groups]
        if node.class_name in kwn.SUBLAYERS:  # a composite layer: its creation order
            return self._sorted(
                children, lambda c: _rank(kwn.sublayer(node.class_name, c.parts[-1]))
            )
        if node.class_name in kwn.MHA_CLASSES:
            ranks = {name: i for i, name in enumerate(kwn.MHA_SUBLAYERS)}
            return self._sorted(children, lambda c: ranks.get(kwn.mha_sublayer(c.parts[-1]) or ""))
        if not node.parts:  # the root: layers, other attributes, metrics, optimizer
            last = {"metrics": 1, "optimizer": 2}
            return self._sorted(
                children,
                lambda c: 0 if c.parts[-1] in _LAYER_CONTAINERS else None,
                tail=lambda c: last.get(c.parts[-1], 0),
            )
        return self._sorted(children, lambda c: 0 if c.parts[-1] in _LAYER_CONTAINERS else None)

    def _sorted(
        self,
        children: list[_Node],
        rank: Callable[[_Node], int | None],
        tail: Callable[[_Node], int] = lambda c: 0,
    ) -> list[_Node]:
        """Known ranks first, then the order Keras saved them (dataset addresses), then name."""

        def key(c: _Node) -> tuple:
            r = rank(c)
            addr = self.addresses.get("/".join(c.parts), 1 << 62)
            return (tail(c), r is None, r or 0, addr, c.parts[-1])

        return sorted(children, key=key)

    def _attr_child(self, node: _Node, key: str, group: h5py.Group) -> _Node:
        """A child reached through an attribute of a layer, model or optimizer."""
        parts = (*node.parts, key)
        kind = node.kind
        if not node.parts and key == "optimizer":
            kind = OPTIMIZER
        elif (not node.parts and key == "metrics") or key.endswith("seed_generator"):
            kind = BOOKKEEPING
        if "vars" not in self._members(group):  # a list or dict of saveables
            model_layers = node.model_layers if key in _LAYER_CONTAINERS else None
            return _Node(
                group,
                parts,
                kind=kind,
                keras_path=node.keras_path if kind == WEIGHT else None,
                model_layers=model_layers,
                sequential=node.sequential,
                is_container=True,
            )
        class_name = config = None
        name = _vars_name(self._members(group).get("vars"))
        sublayer = kwn.mha_sublayer(key) if node.class_name in kwn.MHA_CLASSES else None
        if sublayer:
            class_name = "EinsumDense"
            config = kwn.mha_sublayer_config(node.config)
            name = name or _MHA_SUBLAYER_NAMES[sublayer]
        elif kwn.sublayer(node.class_name, key) is not None:
            class_name = kwn.sublayer(node.class_name, key)[1]
        keras_path = _extend(node.keras_path, name) if kind == WEIGHT else None
        return _Node(
            group,
            parts,
            kind=kind,
            class_name=class_name,
            config=config,
            layer_name=name,
            keras_path=keras_path,
        )

    def _layer_child(self, container: _Node, key: str, group: h5py.Group) -> _Node:
        """An element of a list of saveables, matched to its config entry if any."""
        if "vars" not in self._members(group):
            return self._attr_child(container, key, group)  # a nested list
        entry = self._match_entry(container, key, group)
        name = _vars_name(self._members(group).get("vars")) or (
            _entry_name(entry) if entry else None
        )
        if entry is not None:
            class_name, config = _builtin_class(entry), _entry_config(entry)
        elif container.kind == WEIGHT:  # no config: the group name is the class name
            class_name, config = kwn.class_from_group_name(key), None
        else:
            class_name = config = None
        return _Node(
            group,
            (*container.parts, key),
            kind=container.kind,
            class_name=class_name,
            config=config,
            layer_name=name,
            keras_path=_extend(container.keras_path, name),
            model_layers=_model_layers(entry),
            sequential=bool(entry) and entry.get("class_name") == "Sequential",
        )

    def _match_entry(
        self, container: _Node, key: str, group: h5py.Group
    ) -> Mapping[str, Any] | None:
        if not container.model_layers:
            return None
        name = _vars_name(self._members(group).get("vars"))
        if name is not None:
            for entry in container.model_layers:
                if _entry_name(entry) == name:
                    return entry
        return self._file_names(container).get(key)

    @staticmethod
    def _file_names(container: _Node) -> dict[str, Mapping[str, Any]]:
        """Keras' group names for a model's layers: snake_case class name + `_k` counter."""
        used: dict[str, int] = {}
        out = {}
        for entry in container.model_layers or []:
            if container.sequential and entry.get("class_name") == "InputLayer":
                continue  # Sequential.layers leaves the input layer out
            base = kwn.to_snake_case(str(entry.get("class_name", "")))
            if base in used:
                used[base] += 1
                out[f"{base}_{used[base]}"] = entry
            else:
                used[base] = 0
                out[base] = entry
        return out

    @staticmethod
    def _config_ranks(container: _Node) -> dict[str, int]:
        ranks: dict[str, int] = {}
        for i, entry in enumerate(container.model_layers or []):
            name = _entry_name(entry)
            if name is not None:
                ranks.setdefault(name, i)
        return ranks


class WeightsH5Reader(_H5Reader):
    """Keras 3 `*.weights.h5` (`model.save_weights`)."""

    format_name = "weights-h5"

    def __init__(self, path: str | Path):
        super().__init__(path)
        if not self.path.is_file():
            raise NotFoundError("no such file", self.path)
        self._h5 = self._open_h5()
        try:
            with hdf5_errors(self.path, "cannot read the HDF5 file's groups"):
                if not _is_weights_layout(self._h5):
                    legacy = _is_legacy_layout(self._h5)
                    hint = " (a legacy Keras .h5: use format h5)" if legacy else ""
                    raise UnsupportedFormatError(
                        f"HDF5 file holds no Keras 3 weights (no 'vars' or 'layers' groups){hint}",
                        self.path,
                    )
        except BaseException:
            self.close()
            raise

    @classmethod
    def sniff(cls, path: Path) -> bool:
        layout = _h5_layout(as_path(path))
        if layout == "unreadable":  # let the reader report the corrupt file
            return as_path(path).name.endswith(".weights.h5")
        return layout == "weights"

    def _build(self) -> list[tuple[VariableInfo, np.dtype]]:
        assert self._h5 is not None
        return _WeightsH5Lister(self._h5, None, self.path).run()


class KerasArchiveReader(_H5Reader):
    """Keras 3 `.keras` zip: config.json, metadata.json and model.weights.h5, read in memory."""

    format_name = "keras"

    def __init__(self, path: str | Path):
        super().__init__(path)
        if not self.path.is_file():
            raise NotFoundError("no such file", self.path)
        self._zip = open_zip(self.path)
        self._member: MemberFile | None = None
        try:
            check_archive_inflation(self._zip, self.path)
            names = set(self._zip.namelist())
            if WEIGHTS_MEMBER not in names:
                if "model.weights.npz" in names:
                    raise UnsupportedFormatError(
                        "weights are stored as model.weights.npz, which Keras writes as "
                        "pickled dictionaries; ckpt-tool refuses pickles (re-save with h5 weights)",
                        self.path,
                    )
                raise CorruptFileError(
                    f"the archive has no {WEIGHTS_MEMBER!r} member: not a Keras 3 .keras file",
                    self.path,
                )
            self._config = _parse_json(
                read_member(self._zip, CONFIG_MEMBER, self.path, MAX_JSON_BYTES),
                CONFIG_MEMBER,
                self.path,
            )
            self.metadata: dict = {}
            if METADATA_MEMBER in names:
                self.metadata = _parse_json(
                    read_member(self._zip, METADATA_MEMBER, self.path, MAX_JSON_BYTES),
                    METADATA_MEMBER,
                    self.path,
                )
            self._member = MemberFile(self._zip, WEIGHTS_MEMBER, self.path)
            self._h5 = open_h5(self._member.file, self.path, what=WEIGHTS_MEMBER)
        except BaseException:
            self.close()
            raise

    def _image(self) -> tuple[Path, int, int] | None:
        file = self._member.file if self._member is not None else None
        if isinstance(file, FileSlice) and not isinstance(file.span()[0], RemotePath):
            return file.span()  # a stored member, read in place in the archive
        return None

    @classmethod
    def sniff(cls, path: Path) -> bool:
        path = as_path(path)
        if not is_zip(path):
            return False
        if path.suffix == ".keras":
            return True  # even a broken one: the reader says what is wrong
        try:
            with open_zip(path) as zf:
                names = set(zf.namelist())
        except Exception:
            return False
        return WEIGHTS_MEMBER in names or CONFIG_MEMBER in names

    def model_config(self) -> dict | None:
        return self._config

    def _build(self) -> list[tuple[VariableInfo, np.dtype]]:
        assert self._h5 is not None
        return _WeightsH5Lister(self._h5, self._config, self.path).run()

    def close(self) -> None:
        super().close()
        if getattr(self, "_member", None) is not None:
            self._member.close()
            self._member = None
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
            self._zip = None


# --------------------------------------------------------------------------
# Legacy `.h5` (tf-keras / Keras 2 `model.save("x.h5")`, and `save_weights("x.h5")`)

_TENSOR_SUFFIX = re.compile(r":\d+$")


class LegacyH5Reader(_H5Reader):
    """Legacy Keras HDF5: `model_weights` + `layer_names`/`weight_names` attributes."""

    format_name = "h5"

    def __init__(self, path: str | Path):
        super().__init__(path)
        if not self.path.is_file():
            raise NotFoundError("no such file", self.path)
        self._h5 = self._open_h5()
        self._config: dict | None = None
        try:
            with hdf5_errors(self.path, "cannot read the HDF5 file's groups"):
                self._open_legacy(self._h5)
        except BaseException:
            self.close()
            raise

    def _open_legacy(self, f: h5py.File) -> None:
        if isinstance(f.get("model_weights"), h5py.Group):
            self._weights_group: h5py.Group = f["model_weights"]
        elif _has_list_attr(f, "layer_names"):
            self._weights_group = f  # save_weights("x.h5"): layers at the root
        else:
            hint = " (Keras 3 .weights.h5: use format weights-h5)" if _is_weights_layout(f) else ""
            raise UnsupportedFormatError(
                "HDF5 file holds no Keras weights (no 'model_weights' group or "
                f"'layer_names' attribute){hint}",
                self.path,
            )
        if "model_config" in f.attrs:
            with hdf5_errors(self.path, "unreadable model_config attribute"):
                raw = _decode(_string_attr(f, "model_config"))
            self._config = _parse_json(raw, "the model_config attribute", self.path)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        layout = _h5_layout(as_path(path))
        if layout == "unreadable":
            return not as_path(path).name.endswith(".weights.h5")
        return layout in ("legacy", "other")  # "other": the reader says what is missing

    def model_config(self) -> dict | None:
        return self._config

    def _layer_classes(self) -> dict[str, str]:
        out: dict[str, str] = {}

        def visit(entries: list[Mapping[str, Any]] | None) -> None:
            for entry in entries or []:
                name, cls = _entry_name(entry), entry.get("class_name")
                if name and isinstance(cls, str):
                    out.setdefault(name, cls)

        visit(_model_layers(self._config))
        return out

    def _build(self) -> list[tuple[VariableInfo, np.dtype]]:
        group = self._weights_group
        classes = self._layer_classes()
        out: list[tuple[VariableInfo, np.dtype]] = []
        layer_names = _str_list_attr(group, "layer_names")
        if "top_level_model_weights" in group and "top_level_model_weights" not in layer_names:
            layer_names.append("top_level_model_weights")
        for layer in layer_names:
            layer_group = group.get(layer)
            if not isinstance(layer_group, h5py.Group):
                raise CorruptFileError(f"layer {layer!r} is listed but has no group", self.path)
            extra = {"layer_name": layer}
            if layer in classes:
                extra["class_name"] = classes[layer]
            self._add_weights(out, layer_group, WEIGHT, extra)
        optimizer = self._h5.get("optimizer_weights") if self._h5 is not None else None
        if isinstance(optimizer, h5py.Group):
            self._add_weights(out, optimizer, OPTIMIZER, {})
        return out

    def _add_weights(
        self,
        out: list[tuple[VariableInfo, np.dtype]],
        group: h5py.Group,
        kind: str,
        extra: dict[str, Any],
    ) -> None:
        for weight_name in _str_list_attr(group, "weight_names"):
            ds = group.get(weight_name)
            if not isinstance(ds, h5py.Dataset):
                raise CorruptFileError(
                    f"weight {weight_name!r} is listed in {group.name!r} but has no dataset",
                    self.path,
                )
            name = _TENSOR_SUFFIX.sub("", weight_name)
            out.append(
                _info(
                    ds,
                    self.path,
                    name=name,
                    kind=kind,
                    order=len(out),
                    aliases=(weight_name,),
                    extra={**extra, "weight_name": weight_name},
                )
            )
