"""`.safetensors` files: the format PyTorch (and Hugging Face) users save and load.

Layout: an unsigned little-endian 64-bit header length N, N bytes of UTF-8 JSON, then
the tensor bytes. The JSON maps each tensor name to `{"dtype": "F32", "shape": [...],
"data_offsets": [begin, end]}` (offsets relative to the end of the header) and may hold
`__metadata__`, a mapping of strings to strings. An export by ckpt-tool keeps its
manifest (names, roles, source keys, model order) there under `__manifest__`.

The header is read with strict checks before anything else (its length against the
file, every entry's dtype, shape, byte range and size, no overlaps), so a hostile file
is one error line, never a large allocation. Tensors are read-only memory maps. No
code runs on load and no torch is imported.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from ckpt_tool.errors import CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.readers.base import BOOKKEEPING, WEIGHT, Reader, VariableInfo
from ckpt_tool.readers.npz import MANIFEST_KEY, ManifestEntry, parse_manifest
from ckpt_tool.storage import RemotePath, as_path, read_into

# numpy dtype name -> safetensors dtype code (those both sides can hold).
DTYPE_CODES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",  # torch.float8_e4m3fn is stored as F8_E4M3
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
}
_NUMPY_OF_CODE = {code: name for name, code in DTYPE_CODES.items()}

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_HEADER_LEN = struct.Struct("<Q")
METADATA_KEY = "__metadata__"


def numpy_dtype_of(code: str) -> np.dtype | None:
    """The little-endian numpy dtype of a safetensors dtype code; None if unknown."""
    name = _NUMPY_OF_CODE.get(code)
    if name is None:
        return None
    ml_type = getattr(ml_dtypes, name, None)
    dtype = np.dtype(ml_type) if ml_type is not None else np.dtype(name)
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


@dataclass(frozen=True)
class _Entry:
    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    nbytes: int


def _open(path: Path):
    """The file; for a URL, one whose small reads come from the URL's pages."""
    return path.open_paged() if isinstance(path, RemotePath) else open(path, "rb")


def _header_length(path: Path) -> tuple[int, int] | None:
    """(header length, file size) when the file starts like a safetensors file."""
    try:
        with _open(path) as f:
            head = f.read(_HEADER_LEN.size + 1)
        size = path.stat().st_size
    except OSError:
        return None
    if len(head) < _HEADER_LEN.size + 1:
        return None
    (n,) = _HEADER_LEN.unpack(head[: _HEADER_LEN.size])
    if n < 2 or head[-1:] != b"{":
        return None
    return n, size


class SafetensorsReader(Reader):
    """A `.safetensors` file, with the manifest of a ckpt-tool export when it has one."""

    format_name = "safetensors"

    def __init__(self, path: str | Path):
        super().__init__(path)
        if not self.path.is_file():
            raise NotFoundError("no such file", self.path)
        self.metadata: dict[str, str] = {}
        self._entries: dict[str, _Entry] = {}
        self._manifest: dict[str, ManifestEntry] = {}
        self._listing: list[VariableInfo] | None = None
        self._parse()

    @classmethod
    def sniff(cls, path: Path) -> bool:
        path = as_path(path)
        if path.suffix == ".safetensors" and path.is_file():
            return True  # even a broken one: the reader says what is wrong
        found = _header_length(path) if path.is_file() else None
        if found is None or _HEADER_LEN.size + found[0] > found[1]:
            return False
        try:  # without the suffix, a header that starts like one: {"name": or {"__metadata__":
            with _open(path) as f:
                f.seek(_HEADER_LEN.size)
                return f.read(2) == b'{"'
        except OSError:
            return False

    # -- the header

    def _parse(self) -> None:
        found = _header_length(self.path)
        try:
            size = self.path.stat().st_size
        except OSError as e:
            raise CorruptFileError(f"cannot read: {e.strerror or e}", self.path) from None
        if size < _HEADER_LEN.size:
            raise CorruptFileError("too short for a safetensors header", self.path)
        if found is None:
            raise CorruptFileError("not a safetensors file (no JSON header)", self.path)
        n, size = found
        data_start = _HEADER_LEN.size + n
        if n > MAX_HEADER_BYTES:
            raise CorruptFileError(
                f"header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes", self.path
            )
        if data_start > size:
            raise CorruptFileError(
                f"header length {n} runs past the end of the file ({size} bytes; truncated?)",
                self.path,
            )
        with _open(self.path) as f:
            f.seek(_HEADER_LEN.size)
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorruptFileError(f"header is not valid JSON ({reason})", self.path) from None
        if not isinstance(header, dict):
            raise CorruptFileError("header is not a JSON object", self.path)
        self._read_metadata(header.pop(METADATA_KEY, None))
        data_size = size - data_start
        for key, value in header.items():
            self._entries[key] = self._entry(key, value, data_start, data_size)
        self._check_overlaps()
        if MANIFEST_KEY in self.metadata:
            self._manifest = parse_manifest(np.array(self.metadata[MANIFEST_KEY]), self.path)

    def _read_metadata(self, metadata: Any) -> None:
        if metadata is None:
            return
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise CorruptFileError(f"{METADATA_KEY} is not a mapping of strings", self.path)
        self.metadata = metadata

    def _entry(self, key: str, value: Any, data_start: int, data_size: int) -> _Entry:
        what = f"tensor {key!r}"
        if not isinstance(value, dict):
            raise CorruptFileError(f"{what}: header entry is not an object", self.path)
        code, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
        dtype = numpy_dtype_of(code) if isinstance(code, str) else None
        if dtype is None:
            raise UnsupportedFormatError(f"{what}: unsupported dtype {code!r}", self.path)
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise CorruptFileError(f"{what}: shape {shape!r} is not a list of sizes", self.path)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise CorruptFileError(f"{what}: bad data_offsets {offsets!r}", self.path)
        begin, end = offsets
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != end - begin:
            raise CorruptFileError(
                f"{what}: shape {shape} of {code} needs {count * dtype.itemsize} bytes but "
                f"data_offsets span {end - begin}",
                self.path,
            )
        if end > data_size:
            raise CorruptFileError(
                f"{what}: data_offsets end at {end}, past the {data_size} data bytes (truncated?)",
                self.path,
            )
        return _Entry(key, dtype, tuple(shape), data_start + begin, end - begin)

    def _check_overlaps(self) -> None:
        spans = sorted((e.begin, e.begin + e.nbytes, e.key) for e in self._entries.values())
        for (_, end, a), (begin, _, b) in pairwise(spans):
            if begin < end:
                raise CorruptFileError(f"tensors {a!r} and {b!r} overlap", self.path)

    # -- Reader protocol

    def variables(self) -> list[VariableInfo]:
        if self._listing is None:
            ranked = []
            by_offset = sorted(self._entries.values(), key=lambda e: (e.begin, e.key))
            for position, e in enumerate(by_offset):
                ranked.append(self._info(e, position))
            ranked.sort(key=lambda pair: pair[0])
            self._listing = [replace(info, order=i) for i, (_, info) in enumerate(ranked)]
        return list(self._listing)

    def _info(self, e: _Entry, position: int) -> tuple[tuple[int, int], VariableInfo]:
        entry = self._manifest.get(e.key)
        kind = BOOKKEEPING if e.key.startswith("__") else WEIGHT
        extra: dict[str, Any] = {}
        name, aliases = e.key, ()
        rank = (1, position)  # without a manifest: file order
        if entry is not None:
            kind = entry.kind or kind
            name = entry.name or e.key
            if entry.role is not None:
                extra["role"] = entry.role
            if entry.source_key:
                extra["source_key"] = entry.source_key
                aliases = (entry.source_key,) if entry.source_key != e.key else ()
            extra.update(entry.other)
            if entry.order is not None:
                rank = (0, entry.order)
        info = VariableInfo(
            key=e.key,
            name=name,
            shape=e.shape,
            dtype=e.dtype.name,
            kind=kind,
            aliases=aliases,
            nbytes=e.nbytes,
            extra=extra,
        )
        return rank, info

    def read(self, key: str) -> np.ndarray:
        e = self._entries.get(key)
        if e is None:
            raise NotFoundError(f"no tensor {key!r} in this file", self.path)
        if e.nbytes == 0:
            return np.zeros(e.shape, dtype=e.dtype)
        if isinstance(self.path, RemotePath):  # range reads straight into the array
            out = np.empty(e.shape, e.dtype)
            read_into(self.path, e.begin, memoryview(out.reshape(-1).view(np.uint8)))
            return out
        try:
            return np.memmap(self.path, dtype=e.dtype, mode="r", offset=e.begin, shape=e.shape)
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"cannot read tensor {key!r} ({exc})", self.path) from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
