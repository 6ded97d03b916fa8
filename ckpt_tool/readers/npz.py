"""NumPy `.npz` archives and single `.npy` files, never unpickling anything.

An `.npz` is a zip of `<key>.npy` members. Stored (uncompressed) members are
memory-mapped straight out of the archive; compressed ones are inflated on
read. Arrays whose dtype holds Python objects are pickles and are refused.

An archive written by `ckpt-tool export` carries a JSON manifest (see
`parse_manifest`): it restores dtypes NumPy cannot store (bfloat16 is saved as its
uint16 bits), human names, roles and source keys. The `keras` layout keeps it in the
archive as the array `__manifest__`; layouts whose target has its own loader
(`load_state_dict`, AlphaFold's `flat_params_to_haiku`) write it beside the archive as
`<archive>.manifest.json` (`manifest_beside`), so that the archive holds nothing but
parameters. Every key starting with `__` is bookkeeping, not a weight.
"""

from __future__ import annotations

import tokenize
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

from ckpt_tool.errors import CkptToolError, CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.readers.base import BOOKKEEPING, OPTIMIZER, WEIGHT, Reader, VariableInfo
from ckpt_tool.readers.regular_file import open_regular
from ckpt_tool.readers.zip_member import (
    MAX_MEMBER_BYTES,
    MEMBER_READ_ERRORS,
    check_archive_inflation,
    check_member,
    is_zip,
    open_zip,
    reason,
    stored_data_offset,
)
from ckpt_tool.safe_json import loads_json
from ckpt_tool.storage import RemotePath, as_path, read_into

NPY_MAGIC = b"\x93NUMPY"
MANIFEST_KEY = "__manifest__"
MANIFEST_SUFFIX = ".manifest.json"  # the manifest beside an archive: <archive>.manifest.json
BOOKKEEPING_PREFIX = "__"
MAX_MANIFEST_BYTES = 64 << 20
_KINDS = (WEIGHT, OPTIMIZER, BOOKKEEPING)
# np.lib.format parses headers with ast/tokenize: malformed ones raise TokenError or
# SyntaxError (a dtype string such as '<f4,') besides ValueError.
_NP_ERRORS = (*MEMBER_READ_ERRORS, KeyError, TypeError, tokenize.TokenError, SyntaxError)
_READ_ERRORS = (*_NP_ERRORS, NotImplementedError, RuntimeError)


# --------------------------------------------------------------------------
# The manifest: one place to change when the export format changes.

# Manifest field -> the JSON keys accepted for it, first match wins.
MANIFEST_FIELDS: dict[str, tuple[str, ...]] = {
    "key": ("key", "array"),
    "name": ("name",),
    "dtype": ("dtype",),
    "role": ("role",),
    "source_key": ("source_key", "original_key", "source"),
    "kind": ("kind",),
    "order": ("order",),
}


@dataclass(frozen=True)
class ManifestEntry:
    """What the manifest says about one array of the archive."""

    key: str
    name: str | None = None
    dtype: str | None = None  # the logical dtype, e.g. "bfloat16" for uint16 bits
    role: Any = None
    source_key: str | None = None
    kind: str | None = None
    order: int | None = None
    other: dict[str, Any] = field(default_factory=dict)  # fields we do not interpret


def manifest_beside(path: str | Path) -> Path:
    """Where the manifest of an archive whose layout keeps it outside the archive lies."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        return path.parent / (path.name + MANIFEST_SUFFIX)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def parse_manifest(raw: np.ndarray, path: Path) -> dict[str, ManifestEntry]:
    """Decode the `__manifest__` array: JSON text as uint8 bytes or a str array."""
    return parse_manifest_text(_manifest_text(raw, path), path)


def parse_manifest_text(
    text: str, path: Path, what: str = MANIFEST_KEY
) -> dict[str, ManifestEntry]:
    """Decode a manifest's JSON text (`what` names it in errors).

    Accepted layout: {"variables": [{"key": ..., "name": ..., "dtype": ...,
    "role": ..., "source_key": ...}, ...]} or "variables" as a mapping from
    key to entry; a bare list of entries is accepted too.
    """
    try:
        doc = loads_json(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise CorruptFileError(f"{what} is not valid JSON ({reason(e)})", path) from None
    variables = doc.get("variables") if isinstance(doc, dict) else doc
    if isinstance(variables, dict):
        items = [{"key": k, **v} for k, v in variables.items() if isinstance(v, dict)]
    elif isinstance(variables, list):
        items = [v for v in variables if isinstance(v, dict)]
    else:
        raise CorruptFileError(f"{what} has no 'variables' list", path)
    out: dict[str, ManifestEntry] = {}
    for item in items:
        values = {
            fname: next((item[k] for k in keys if k in item), None)
            for fname, keys in MANIFEST_FIELDS.items()
        }
        if not isinstance(values["key"], str):
            raise CorruptFileError(f"{what} has an entry without a 'key'", path)
        used = {k for keys in MANIFEST_FIELDS.values() for k in keys}
        order = values["order"]
        out[values["key"]] = ManifestEntry(
            key=values["key"],
            name=_opt_str(values["name"]),
            dtype=_opt_str(values["dtype"]),
            role=values["role"],
            source_key=_opt_str(values["source_key"]),
            kind=values["kind"] if values["kind"] in _KINDS else None,
            order=order if isinstance(order, int) and not isinstance(order, bool) else None,
            other={k: v for k, v in item.items() if k not in used},
        )
    return out


def _manifest_text(raw: np.ndarray, path: Path) -> str:
    try:
        if raw.dtype.kind == "U":
            return "".join(str(s) for s in raw.reshape(-1).tolist())
        if raw.dtype.kind in "SuiV":
            return raw.tobytes().decode("utf-8").rstrip("\x00")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{MANIFEST_KEY} is not UTF-8 text ({reason(e)})", path) from None
    raise CorruptFileError(f"{MANIFEST_KEY} has dtype {raw.dtype}; expected bytes or text", path)


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _named_dtype(name: str) -> np.dtype | None:
    """The ml_dtypes type a manifest names (bfloat16, float8_*, int4, ...), else None.

    Only these are stored as bit containers; any other name (`O`, `V8`, `M8`, `U2`,
    `c8`, even `float32`) never reinterprets the stored bytes."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        return None
    ml_type = getattr(ml_dtypes, name, None)
    if not isinstance(ml_type, type):
        return None
    try:
        dtype = np.dtype(ml_type)
    except (TypeError, ValueError):
        return None
    return dtype if dtype.kind == "V" and dtype.fields is None and dtype.subdtype is None else None


# --------------------------------------------------------------------------
# Arrays and their headers


@dataclass
class _Member:
    """One array of the archive: where it is and how it is stored."""

    key: str
    member: str | None  # zip member name; None for a lone .npy file
    shape: tuple[int, ...]
    stored_dtype: np.dtype
    fortran_order: bool
    data_offset: int | None  # absolute offset of the raw data when mmap-able


def _read_header(fp: IO[bytes], what: str, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """shape, fortran_order, dtype from a .npy header (no pickle involved)."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except _NP_ERRORS as e:
        raise CorruptFileError(f"{what}: not a valid .npy header ({reason(e)})", path) from None
    if dtype.hasobject:
        raise UnsupportedFormatError(
            f"{what} holds Python objects (a pickled array); ckpt-tool refuses pickles",
            path,
        )
    if dtype.fields is not None:
        raise UnsupportedFormatError(
            f"{what} is a structured array ({dtype}); weights are plain", path
        )
    if dtype.kind in "mM" or (dtype.kind == "V" and dtype.itemsize not in (1, 2)):
        raise UnsupportedFormatError(
            f"{what} has dtype {dtype} (dates, times or opaque records); weights are numbers",
            path,
        )
    if any(d < 0 for d in shape):
        raise CorruptFileError(f"{what}: negative dimension in shape {tuple(shape)}", path)
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _logical(stored: np.dtype, entry: ManifestEntry | None) -> tuple[np.dtype, bool]:
    """The dtype to return, and whether it was inferred rather than recorded.

    NumPy saves ml_dtypes types as raw bytes (bfloat16 as `|V2`); export
    stores them as unsigned ints of the same width and names the real type in
    the manifest. Only such bit containers are reinterpreted.
    """
    if entry is not None and entry.dtype:
        wanted = _named_dtype(entry.dtype)
        bits_container = stored.kind in "uV"  # unsigned ints or raw bytes
        same_width = wanted is not None and wanted.itemsize == stored.itemsize
        if bits_container and same_width and wanted != stored:
            return wanted, False
    if stored.kind == "V" and stored.itemsize == 2:
        return np.dtype(ml_dtypes.bfloat16), True  # the only common 2-byte opaque type
    return stored, False


def _dtype_name(dtype: np.dtype) -> str:
    return "string" if dtype.kind in "US" else dtype.name


class NpzReader(Reader):
    """`.npz` archives (np.savez / savez_compressed) and single `.npy` files."""

    format_name = "npz"

    def __init__(self, path: str | Path):
        super().__init__(path)
        if not self.path.is_file():
            raise NotFoundError("no such file", self.path)
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, _Member] = {}
        self._manifest: dict[str, ManifestEntry] = {}
        self._listing: list[VariableInfo] | None = None
        try:
            if self._is_npy(self.path):
                self._open_npy()
            else:
                self._open_npz()
            if MANIFEST_KEY in self._members:
                raw = self._read_stored(self._members[MANIFEST_KEY])
                self._manifest = parse_manifest(raw, self.path)
            elif self._zip is not None:
                self._manifest = self._manifest_beside()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _is_npy(path: Path) -> bool:
        try:
            with open_regular(path) as f:
                return f.read(len(NPY_MAGIC)) == NPY_MAGIC
        except OSError:
            return False

    @classmethod
    def sniff(cls, path: Path) -> bool:
        path = as_path(path)
        if cls._is_npy(path):
            return True
        if not is_zip(path):
            return False
        if path.suffix == ".npz":
            return True  # even a broken one: the reader says what is wrong
        try:
            with open_zip(path) as zf:
                names = zf.namelist()
        except Exception:
            return False
        return bool(names) and all(n.endswith(".npy") for n in names)

    # -- opening

    def _open_npy(self) -> None:
        remote = isinstance(self.path, RemotePath)
        with self.path.open_paged() if remote else open_regular(self.path) as f:
            shape, fortran, dtype = _read_header(f, "the .npy file", self.path)
            offset = f.tell()
        size = self.path.stat().st_size
        if offset + _nbytes(shape, dtype) > size:
            raise CorruptFileError(
                "the .npy data is shorter than its header says (truncated?)", self.path
            )
        key = self.path.stem
        self._members[key] = _Member(key, None, shape, dtype, fortran, offset)

    def _open_npz(self) -> None:
        self._zip = open_zip(self.path)
        check_archive_inflation(self._zip, self.path)
        file_size = self.path.stat().st_size
        for info in self._zip.infolist():
            if not info.filename.endswith(".npy") or info.is_dir():
                continue  # np.savez writes only .npy members
            key = info.filename[: -len(".npy")]
            check_member(self._zip, info, self.path, MAX_MEMBER_BYTES)
            what = f"array {key!r}"
            try:
                with self._zip.open(info) as fp:
                    shape, fortran, dtype = _read_header(fp, what, self.path)
                    header_len = fp.tell()
            except CkptToolError:
                raise
            except _READ_ERRORS as e:
                raise CorruptFileError(
                    f"{what}: unreadable zip member ({reason(e)})", self.path
                ) from None
            if header_len + _nbytes(shape, dtype) != info.file_size:
                raise CorruptFileError(
                    f"{what}: header declares {_nbytes(shape, dtype)} data bytes but the member "
                    f"holds {info.file_size - header_len}",
                    self.path,
                )
            start = stored_data_offset(self._zip, info, self.path, file_size)
            offset = None if start is None else start + header_len
            self._members[key] = _Member(key, info.filename, shape, dtype, fortran, offset)
        if not self._members:
            raise UnsupportedFormatError("the zip archive holds no .npy arrays", self.path)

    def _manifest_beside(self) -> dict[str, ManifestEntry]:
        """The manifest written beside the archive, if there is one; it must name exactly
        the archive's arrays (a manifest left from another export is refused)."""
        side = manifest_beside(self.path)
        if not side.is_file():
            return {}
        try:
            if side.stat().st_size > MAX_MANIFEST_BYTES:
                raise CorruptFileError(f"larger than {MAX_MANIFEST_BYTES} bytes", side)
            text = side.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CorruptFileError(f"not UTF-8 text ({reason(e)})", side) from None
        except OSError as e:
            raise CorruptFileError(f"cannot read the manifest ({reason(e)})", side) from None
        entries = parse_manifest_text(text, side, "the manifest")
        extra = sorted(set(entries) - set(self._members))
        missing = sorted(set(self._members) - set(entries))
        if extra or missing:
            if extra:
                why = f"names {extra[0]!r}, which {self.path.name} does not hold"
            else:
                why = f"does not name {missing[0]!r}, which {self.path.name} holds"
            raise CorruptFileError(
                f"the manifest {why}: it belongs to another export; remove it or export again",
                side,
            )
        return entries

    # -- Reader protocol

    def variables(self) -> list[VariableInfo]:
        if self._listing is None:
            ranked: list[tuple[tuple[int, int, int], VariableInfo]] = []
            for position, m in enumerate(self._members.values()):
                entry = self._manifest.get(m.key)
                dtype, inferred = _logical(m.stored_dtype, entry)
                kind = BOOKKEEPING if m.key.startswith(BOOKKEEPING_PREFIX) else WEIGHT
                extra: dict[str, Any] = {}
                if entry is not None:
                    kind = entry.kind or kind
                    if entry.role is not None:
                        extra["role"] = entry.role
                    if entry.source_key:
                        extra["source_key"] = entry.source_key
                    extra.update(entry.other)
                if dtype != m.stored_dtype:
                    extra["stored_dtype"] = m.stored_dtype.name
                if inferred:
                    extra["dtype_inferred"] = True
                aliases = (entry.source_key,) if entry and entry.source_key else ()
                # Manifest order first (export's model order), then archive order.
                if entry is not None and entry.order is not None:
                    rank: tuple[int, int, int] = (0, entry.order, position)
                else:
                    rank = (1, position, 0)
                ranked.append(
                    (
                        rank,
                        VariableInfo(
                            key=m.key,
                            name=(entry.name if entry and entry.name else m.key),
                            shape=m.shape,
                            dtype=_dtype_name(dtype),
                            kind=kind,
                            aliases=tuple(a for a in aliases if a != m.key),
                            order=0,  # numbered below
                            nbytes=_nbytes(m.shape, m.stored_dtype),
                            extra=extra,
                        ),
                    )
                )
            ranked.sort(key=lambda pair: pair[0])
            self._listing = [replace(info, order=i) for i, (_, info) in enumerate(ranked)]
        return list(self._listing)

    def read(self, key: str) -> np.ndarray:
        if key not in self._members:
            raise NotFoundError(f"no array {key!r} in this file", self.path)
        m = self._members[key]
        arr = self._read_stored(m)
        dtype, _ = _logical(m.stored_dtype, self._manifest.get(key))
        return arr.view(dtype) if dtype != arr.dtype else arr

    def _read_stored(self, m: _Member) -> np.ndarray:
        """The array as stored: a read-only memory map when the bytes lie uncompressed."""
        nbytes = _nbytes(m.shape, m.stored_dtype)
        if m.key == MANIFEST_KEY and nbytes > MAX_MANIFEST_BYTES:
            raise CorruptFileError(
                f"{MANIFEST_KEY} is larger than {MAX_MANIFEST_BYTES} bytes", self.path
            )
        try:
            if m.data_offset is not None and isinstance(self.path, RemotePath):
                return _read_range(self.path, m, nbytes)
            if m.data_offset is not None and nbytes > 0:
                return np.memmap(
                    self.path,
                    dtype=m.stored_dtype,
                    mode="r",
                    offset=m.data_offset,
                    shape=m.shape,
                    order="F" if m.fortran_order else "C",
                )
            if m.member is None:
                return np.load(self.path, allow_pickle=False)
            if self._zip is None:
                raise NotFoundError("the archive is closed", self.path)
            with self._zip.open(m.member) as fp:
                return np.lib.format.read_array(fp, allow_pickle=False)
        except CkptToolError:
            raise
        except _READ_ERRORS as e:
            raise CorruptFileError(
                f"cannot read array {m.key!r} ({reason(e)})", self.path
            ) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def _read_range(path: RemotePath, m: _Member, nbytes: int) -> np.ndarray:
    """A stored array at a URL: its bytes in range reads, straight into the array."""
    flat = np.empty(nbytes // max(m.stored_dtype.itemsize, 1), m.stored_dtype)
    read_into(path, m.data_offset or 0, memoryview(flat.view(np.uint8)))
    return flat.reshape(m.shape, order="F" if m.fortran_order else "C")


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * dtype.itemsize
