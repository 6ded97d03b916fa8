"""Export a weight file to .npz: meaningful names, a manifest, streamed and crash-safe.

The output is an ordinary .npz (a zip of .npy members) that `np.load(path,
allow_pickle=False)` opens, one member per tensor. The manifest, JSON describing every
array (see MANIFEST_SCHEMA and `manifest_entry`), is the member `__manifest__` (a 0-d
unicode array) in the `keras` layout. Layouts whose target has a standard loader
(STANDARD_LOADERS: `load_state_dict`, `flat_params_to_haiku`) take the archive's members
as parameters, so their manifest is written beside it as `<OUT>.manifest.json`.

Writing is streamed: one tensor is read from the source, written as one zip
member and dropped before the next is read. Everything goes to a hidden
temporary file next to the target, which is fsynced and renamed onto the
target only when complete (a manifest beside it first); on any failure (including a
full disk or Ctrl-C) the temporary files are removed and the targets are left as they were.

A *layout* (see `ckpt_tool.layouts`) decides the output names and arrays: from the
selected tensors and the role parser's layer and role for each, a list of
`ExportArray` (an output name, shape, dtype, sources and a producer of the array).
`keras` keeps every tensor as it is; `torch`, `torch-mha` and `haiku` rename, reshape
and pack them for those frameworks, or refuse (LayoutRefused) before anything is
written when the source cannot be expressed there.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ckpt_tool.errors import CkptToolError, NotFoundError, UsageError
from ckpt_tool.layouts import (
    LAYOUTS,
    STANDARD_LOADERS,
    ExportArray,
    LayoutInput,
    LayoutRefused,
    npz_name,
    numpy_dtype,
    unique_names,
)
from ckpt_tool.listing import build_listing
from ckpt_tool.readers.base import BOOKKEEPING, WEIGHT, Reader, VariableInfo
from ckpt_tool.readers.budget import check_variable_count
from ckpt_tool.readers.npz import manifest_beside
from ckpt_tool.readers.regular_file import special_kind
from ckpt_tool.rolemap import RoleMap
from ckpt_tool.storage import is_url, produce_ahead
from ckpt_tool.write_behind import WriteBehindFile
from ckpt_tool.zip_stored import StoredZip

if TYPE_CHECKING:
    from ckpt_tool.model import Model

__all__ = [
    "CAST_DTYPES",
    "LAYOUTS",
    "MANIFEST_KEY",
    "ExportArray",
    "ExportInterrupted",
    "ExportOptions",
    "ExportPlan",
    "ExportResult",
    "LayoutRefused",
    "export_npz",
    "manifest_beside",
    "npz_name",
    "plan_export",
    "select_variables",
    "source_roles",
    "unique_names",
    "write_npz",
]

MANIFEST_KEY = "__manifest__"
MANIFEST_SCHEMA = "ckpt-tool.npz-manifest/1"
CAST_DTYPES = ("float32", "float16")
_CHUNK_BYTES = 16 << 20  # bytes per write when casting a tensor chunk by chunk
# Bytes per write of an array's own memory: the zip writer takes each write's CRC-32, then
# writes it; a slice this small is still in the CPU's cache for the second pass.
_WRITE_BYTES = 256 << 10
_MAX_MEMBER_NAME = 0xFFFF  # bytes: the name's length is a 16-bit field of the zip headers


class ExportInterrupted(CkptToolError):
    """Ctrl-C during an export: nothing was written."""

    exit_code = 130


@dataclass
class ExportOptions:
    pattern: str | None = None  # glob over names, keys and aliases (as `list --filter`)
    include_optimizer: bool = False
    compress: bool = False
    dtype: str | None = None  # "float32" | "float16": cast floating tensors
    force: bool = False
    layout: str = "keras"  # a key of LAYOUTS
    roles_file: str | None = None  # role overrides (as `verify --roles`)
    config_file: str | None = None  # a Keras model config for files that hold none
    torch_prefix: str = ""  # before a model family's PyTorch names (`bert.`)


@dataclass
class ExportResult:
    path: Path
    arrays: int
    source_bytes: int  # the exported tensors' bytes as stored in the source (as `list`)
    file_bytes: int  # size of the written .npz
    manifest: dict = field(repr=False, default_factory=dict)
    manifest_path: Path | None = None  # the manifest beside the .npz; None: inside it


# --- selection and manifest ---------------------------------------------------------------


def select_variables(
    reader: Reader, *, pattern: str | None = None, include_optimizer: bool = False
) -> list[VariableInfo]:
    """The tensors `list` shows (byte-identical copies folded), in model order;
    optimizer state only on request, bookkeeping never."""
    kinds = {WEIGHT} | ({"optimizer"} if include_optimizer else set())
    listing = build_listing(reader, show_all=True, pattern=pattern)
    return [t.info for t in listing.tensors if t.info.kind in kinds and t.info.kind != BOOKKEEPING]


def stored_dtype(source_dtype: str, cast: str | None) -> tuple[str, np.dtype | None]:
    """(logical dtype of the exported array, numpy dtype it is stored as; None for strings).

    A cast applies to floating tensors only. Dtypes that .npy cannot describe
    (bfloat16, float8_*, int4 from ml_dtypes) are stored as their unsigned-int bit
    pattern of the same width; the manifest keeps the logical name."""
    if source_dtype == "string":
        return "string", None
    logical = cast if cast and _is_floating(source_dtype) else source_dtype
    dtype = numpy_dtype(logical)
    if not _npy_native(dtype):
        return logical, np.dtype(f"u{dtype.itemsize}")
    return logical, dtype


def manifest_entry(arr: ExportArray, position: int, dtype: str, stored: np.dtype | None) -> dict:
    """What the manifest says about one array (field names as the npz reader reads them).

    `name` is the array's name in the layout (the resolved source name for `keras`,
    unless that was anonymous); `source_key` and `aliases` only for an array that is one
    source tensor unchanged; `source_keys`/`source_names` list every tensor it was made
    from and `transform` how (null: unchanged)."""
    first = arr.source
    return {
        "key": arr.name,  # the array's key in the .npz
        "name": arr.label or arr.name,
        "source_key": first.key if arr.verbatim else None,
        "aliases": list(first.aliases) if arr.verbatim else [],
        "source_keys": [s.key for s in arr.sources],
        "source_names": [s.name for s in arr.sources],
        "dtype": dtype,
        "source_dtype": first.dtype if first else arr.dtype,
        "stored_dtype": "bytes" if stored is None else stored.name,
        "shape": list(arr.shape),
        "kind": first.kind if first else WEIGHT,
        "order": position,
        "role": arr.role,
        "transform": arr.transform,
    }


def source_roles(reader: Reader, options: ExportOptions) -> RoleMap:
    """The role parser's layers over all of the reader's variables. A model config that
    cannot be read only matters to ported layouts: `keras` then names by weights alone."""
    return source_model(reader, options).roles


def source_model(reader: Reader, options: ExportOptions) -> Model:
    """The opened model: roles, and the Keras config that says how layers are called."""
    from ckpt_tool.model import ModelOptions, open_model

    model_options = ModelOptions(
        config_file=options.config_file,
        roles_file=options.roles_file,
        lenient_config=options.layout == "keras",
    )
    return open_model(reader, model_options)


# --- export --------------------------------------------------------------------------------


def check_target(out: Path, source: Path, *, force: bool) -> None:
    """Refuse before writing anything: no directory, not writable, exists, or is the source.
    `out`'s manifest beside it (`manifest_beside`) counts as part of `out`."""
    parent = out.parent
    if not parent.is_dir():
        raise NotFoundError("output directory does not exist", parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError("output directory is not writable", parent)
    if out.is_dir():
        raise UsageError("output is a directory", out)
    if any(_same_file(out, f) for f in _source_files(source)):
        raise UsageError("output would overwrite the source", out)
    kind = _special_kind(out)
    if kind is not None:  # --force replaces files, never a FIFO or a device
        raise UsageError(f"is {kind}, not a regular file; refusing to replace it", out)
    if not force:
        for path in (out, manifest_beside(out)):
            if path.exists() or path.is_symlink():
                raise UsageError("already exists; use --force to overwrite", path)


@dataclass
class ExportPlan:
    """What will be written: the arrays in order, their dtypes, and the manifest."""

    source: Path
    arrays: list[ExportArray]
    dtypes: list[tuple[str, np.dtype | None]]  # (logical dtype, stored numpy dtype)
    manifest: dict
    compress: bool = False
    notes: list[str] = field(default_factory=list)  # what the layout kept, assumed, made
    manifest_beside: bool = False  # written as <OUT>.manifest.json instead of a member

    @property
    def source_bytes(self) -> int:
        """Bytes of the source tensors exported (each counted once), as `list` counts."""
        sources = {s.key: s.nbytes for arr in self.arrays for s in arr.sources}
        return sum(sources.values())


def plan_export(reader: Reader, options: ExportOptions) -> ExportPlan:
    """Select tensors, assign roles, name them through the layout and build the manifest.
    Reads no data, except to confirm that copies `list` folds are byte-identical and
    what a layout must check before refusing (the haiku layout's q/k/v biases)."""
    if options.dtype is not None and options.dtype not in CAST_DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(CAST_DTYPES)}")
    if options.layout not in LAYOUTS:
        raise UsageError(f"unknown layout {options.layout!r}; choose from {', '.join(LAYOUTS)}")
    claimed, largest = reader.claimed_variables()
    check_variable_count(reader.path, claimed, largest, "export")
    infos = select_variables(
        reader, pattern=options.pattern, include_optimizer=options.include_optimizer
    )
    check_variable_count(reader.path, claimed, largest, "export", selected=len(infos))
    if not infos:
        what = f"matching {options.pattern!r}" if options.pattern else "to export"
        raise UsageError(f"no tensors {what}", reader.path)
    model = source_model(reader, options)
    layout_input = LayoutInput(
        reader, infos, model.roles, torch_prefix=options.torch_prefix, model_config=model.config
    )
    arrays = LAYOUTS[options.layout](layout_input)
    dtypes = [stored_dtype(arr.dtype, options.dtype) for arr in arrays]
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "source": {"path": reader.path.name, "format": reader.format_name},
        "layout": options.layout,
        "cast": options.dtype,
        "variables": [
            manifest_entry(arr, i, dt, st)
            for i, (arr, (dt, st)) in enumerate(zip(arrays, dtypes, strict=True))
        ],
    }
    if options.layout != "keras":
        manifest["modules"] = layout_input.modules
    if layout_input.notes:
        manifest["notes"] = layout_input.notes
    return ExportPlan(
        reader.path,
        arrays,
        dtypes,
        manifest,
        options.compress,
        notes=layout_input.notes,
        manifest_beside=options.layout in STANDARD_LOADERS,
    )


def write_npz(
    plan: ExportPlan,
    out: str | Path,
    *,
    force: bool = False,
    on_array: Callable[[ExportArray], None] | None = None,
) -> ExportResult:
    """Write a plan to `out`, one tensor at a time, through a temporary file renamed into
    place at the end; a manifest beside `out` is renamed into place just before it (and a
    stale one from an earlier export removed when the manifest goes inside).
    on_array(array) is called after each member (for progress)."""
    out = Path(out)
    check_target(out, plan.source, force=force)
    check_member_names(plan)
    text = json.dumps(plan.manifest, sort_keys=True)
    beside = manifest_beside(out)
    with _AtomicTarget(out, force=force) as fh:
        with _archive(fh, plan.compress) as zf:
            if not plan.manifest_beside:
                write_member(zf, MANIFEST_KEY, np.array(text))
            produced = (
                produce_ahead(plan.arrays, _produce, _source_bytes)  # URLs: reads in flight
                if is_url(plan.source)
                else map(_produce, plan.arrays)
            )
            for arr, (dtype, stored) in zip(plan.arrays, plan.dtypes, strict=True):
                array = next(produced)
                write_member(zf, arr.name, _to_storable(array, dtype, stored, arr, plan.source))
                del array
                if on_array is not None:
                    on_array(arr)
        if plan.manifest_beside:
            with _AtomicTarget(beside, force=force) as side:
                side.write(text.encode("utf-8"))
    if not plan.manifest_beside and force:
        _remove_stale(beside)
    return ExportResult(
        out,
        len(plan.arrays),
        plan.source_bytes,
        out.stat().st_size,
        plan.manifest,
        beside if plan.manifest_beside else None,
    )


@contextmanager
def _archive(fh, compress: bool) -> Iterator[zipfile.ZipFile | StoredZip]:
    """The zip being written: zipfile's for deflated members, else stored members with a
    fast CRC-32 (the same bytes zipfile writes). Nothing is finished on an error: the
    temporary file is removed anyway."""
    if compress:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            yield zf
    else:
        archive = StoredZip(fh)
        yield archive
        archive.close()


def _produce(arr: ExportArray) -> np.ndarray:
    return arr.produce()


def _source_bytes(arr: ExportArray) -> int:
    return sum(info.nbytes for info in arr.sources)


def check_member_names(plan: ExportPlan) -> None:
    """Refuse names a zip cannot hold as given: zipfile cuts a name at its first NUL
    byte, so two names differing after it would become one member (a tensor lost); a
    name is UTF-8 (or ASCII) of at most 65535 bytes."""
    seen: dict[str, str] = {}
    for arr in plan.arrays:
        member = arr.name + ".npy"
        if zipfile.ZipInfo(member).filename != member:
            raise UsageError(
                f"tensor name {arr.name!r} cannot be a zip member name as it is "
                "(a NUL byte or a path separator it would lose)",
                plan.source,
            )
        try:
            size = len(member.encode("utf-8"))
        except UnicodeEncodeError:  # bytes of a name that were not UTF-8 (kept escaped)
            raise UsageError(
                f"tensor name {arr.name!r} is not UTF-8 text, which a zip member name must be; "
                "exclude it with --filter",
                plan.source,
            ) from None
        if size > _MAX_MEMBER_NAME:
            raise UsageError(
                f"tensor name {arr.name[:40]!r}... is {size} bytes long; a zip member name "
                f"holds at most {_MAX_MEMBER_NAME}",
                plan.source,
            )
        if member in seen:
            raise UsageError(f"two tensors would both be stored as {arr.name!r}", plan.source)
        seen[member] = arr.name


def export_npz(
    reader: Reader,
    out: str | Path,
    options: ExportOptions | None = None,
    *,
    on_array: Callable[[ExportArray], None] | None = None,
) -> ExportResult:
    """Export the reader's selected tensors to `out` (.npz with its manifest inside as
    `__manifest__`, or beside it as `<out>.manifest.json` for STANDARD_LOADERS layouts).
    Raises CkptToolError on every user-facing problem; `out` is never left half-written."""
    options = options or ExportOptions()
    check_target(Path(out), reader.path, force=options.force)  # refuse before reading
    plan = plan_export(reader, options)
    return write_npz(plan, out, force=options.force, on_array=on_array)


def write_member(zf: zipfile.ZipFile | StoredZip, name: str, array: np.ndarray | _Cast) -> None:
    """One .npy member, written straight into the zip (no temporary copy of the tensor)."""
    member = name + ".npy"
    opened = (
        zf.open(member) if isinstance(zf, StoredZip) else zf.open(member, "w", force_zip64=True)
    )
    with opened as fh:
        if isinstance(array, _Cast):
            array.write(fh)
        elif array.flags.c_contiguous or array.flags.f_contiguous:
            # What np.lib.format.write_array writes, minus its per-chunk tobytes() copy:
            # the header, then the array's own memory (mmap-backed or not) in slices.
            fortran = array.flags.f_contiguous and not array.flags.c_contiguous
            _write_header(fh, array.dtype, array.shape, fortran)
            data = memoryview(array.reshape(-1, order="F" if fortran else "C").view(np.uint8))
            for start in range(0, len(data), _WRITE_BYTES):
                fh.write(data[start : start + _WRITE_BYTES])
        else:
            np.lib.format.write_array(fh, array, allow_pickle=False)


def _write_header(fh, dtype: np.dtype, shape: tuple[int, ...], fortran: bool = False) -> None:
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": fortran,
        "shape": tuple(shape),
    }
    try:
        np.lib.format.write_array_header_1_0(fh, header)
    except ValueError:  # header longer than 64 KiB (huge rank)
        np.lib.format.write_array_header_2_0(fh, header)


@dataclass
class _Cast:
    """A float tensor cast chunk by chunk while writing, so the cast copy never exists whole."""

    array: np.ndarray
    dtype: np.dtype

    def write(self, fh) -> None:
        _write_header(fh, self.dtype, self.array.shape)
        flat = self.array.reshape(-1)  # a view for the C-contiguous arrays readers return
        step = max(1, _CHUNK_BYTES // max(1, flat.itemsize))
        for start in range(0, flat.size, step):
            chunk = np.asarray(flat[start : start + step]).astype(self.dtype)
            fh.write(memoryview(chunk.view(np.uint8)))


def _to_storable(
    array: np.ndarray, dtype: str, stored: np.dtype | None, arr: ExportArray, source: Path
) -> np.ndarray | _Cast:
    """The array as it goes into the .npy: unchanged, its bit pattern (bfloat16 & co),
    cast to the requested float type, or a bytes array for strings."""
    if tuple(array.shape) != tuple(arr.shape):
        what = arr.source.name if arr.verbatim else arr.name
        raise CkptToolError(
            f"tensor {what!r} has shape {array.shape}, expected {arr.shape}", source
        )
    if stored is None:
        return _string_array(array, arr, source)
    logical = numpy_dtype(dtype)
    if array.dtype != logical:  # an explicit --dtype cast (always to a .npy-native float)
        return _Cast(array, logical)
    if stored != logical:
        return array.view(stored)  # same width: the bit pattern
    return array


def _string_array(array: np.ndarray, arr: ExportArray, source: Path) -> np.ndarray:
    """A numpy bytes (`S`) array. `S` drops trailing NUL bytes, so strings ending in NUL
    are refused rather than silently changed."""
    if array.dtype.kind == "S":
        values = array.reshape(-1).tolist()
    else:
        values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.flat]
    if any(v.endswith(b"\x00") for v in values):
        raise CkptToolError(
            f"string tensor {arr.label or arr.name!r} has values ending in NUL bytes, which a "
            "numpy bytes array cannot hold; exclude it with --filter",
            source,
        )
    width = max((len(v) for v in values), default=0) or 1
    return np.array(values, dtype=f"S{width}").reshape(array.shape)


class _AtomicTarget:
    """A binary file handle on a hidden temporary file next to `out`; fsynced and moved
    onto `out` on success, removed on any error. Turns OSErrors into one-line
    CkptToolErrors and Ctrl-C into ExportInterrupted."""

    def __init__(self, out: Path, *, force: bool):
        self.out = out
        self.force = force
        self.tmp: Path | None = None
        self.fh = None

    def __enter__(self):
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent
            )
        except OSError as exc:
            raise _os_error(exc, self.out) from None
        self.tmp = Path(tmp)
        # fsynced at the end; its writeback starts early
        self.fh = WriteBehindFile(os.fdopen(fd, "wb", buffering=0))
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._commit()
                return False
            except BaseException as err:
                self._discard()
                if isinstance(err, OSError):
                    raise _os_error(err, self.out) from None
                raise
        self._discard()
        if issubclass(exc_type, KeyboardInterrupt):
            kept = " (the existing file is unchanged)" if self.out.exists() else ""
            raise ExportInterrupted(f"interrupted; nothing written{kept}", self.out) from None
        if issubclass(exc_type, OSError):
            raise _os_error(exc, self.out) from None
        return False

    def _commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.chmod(self.tmp, 0o666 & ~_umask())
        if self.force:
            os.replace(self.tmp, self.out)
        else:
            self._move_exclusive()
        _fsync_dir(self.out.parent)

    def _move_exclusive(self) -> None:
        """Without --force never replace a file that appeared while writing: a hard link
        fails if the target exists; filesystems without hard links fall back to rename."""
        try:
            os.link(self.tmp, self.out)
        except FileExistsError:
            raise UsageError("already exists; use --force to overwrite", self.out) from None
        except OSError:
            os.replace(self.tmp, self.out)
            return
        self.tmp.unlink()

    def _discard(self) -> None:
        try:
            if self.fh is not None and not self.fh.closed:
                self.fh.close()
        except OSError:
            pass  # closing a file on a full disk can fail again; it is removed below
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _remove_stale(path: Path) -> None:
    """A manifest beside `out` left by an earlier export in another layout (--force)."""
    if path.is_dir() and not path.is_symlink():
        return  # not a manifest: leave it
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise _os_error(exc, path) from None


def _special_kind(out: Path) -> str | None:
    """What `out` (through symlinks) is when it exists and is neither a file nor a dir."""
    try:
        return special_kind(os.stat(out).st_mode)
    except (OSError, ValueError):
        return None


def _os_error(exc: OSError, out: Path) -> CkptToolError:
    """One line for an OSError met while exporting: a full disk names the target."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CkptToolError("disk full; nothing written", out)
    reason = exc.strerror or str(exc)
    if exc.filename and Path(str(exc.filename)).name.startswith(f".{out.name}."):
        return CkptToolError(f"cannot write: {reason}", out)
    return CkptToolError(reason, exc.filename or out)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- helpers -------------------------------------------------------------------------------


def _source_files(source: Path) -> list[Path]:
    """Files the source consists of: the file itself, a directory's files, or a
    checkpoint prefix's .index and .data shards."""
    if is_url(source):
        return []  # a URL is never the local OUT
    if source.is_file():
        return [source]
    if source.is_dir():
        return [p for p in source.rglob("*") if p.is_file()]
    pattern = re.escape(source.name) + r"\.(index|data-\d+-of-\d+)$"
    parent = source.parent if source.parent.is_dir() else None
    return [p for p in parent.iterdir() if re.match(pattern, p.name)] if parent else []


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _is_floating(dtype: str) -> bool:
    return dtype.startswith("float") or dtype == "bfloat16"


def _npy_native(dtype: np.dtype) -> bool:
    """Whether a .npy header can describe the dtype (ml_dtypes' types it cannot)."""
    try:
        return np.dtype(np.lib.format.dtype_to_descr(dtype)) == dtype
    except (TypeError, ValueError):
        return False
