"""TensorFlow tensor bundle (TF2 checkpoints, SavedModel variables) without TensorFlow.

A bundle with prefix P is P.index (a LevelDB-format table: key -> BundleEntryProto)
plus data shards P.data-%05d-of-%05d. Opening reads only the .index file; a data
shard is memory-mapped the first time a tensor stored in it is read.

Every number read from the files is checked before it is used (block handles,
offsets, sizes, shapes, varints); a failed check raises CorruptFileError naming
the file and, when there is one, the tensor.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import ml_dtypes
import numpy as np
from google.protobuf.message import DecodeError

from ckpt_tool.errors import CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.gc_pause import gc_paused
from ckpt_tool.memory_release import release_freed_memory
from ckpt_tool.readers import protos
from ckpt_tool.readers.base import split_flat
from ckpt_tool.readers.entry_columns import EntryColumns, decode_entries, pad, unpad
from ckpt_tool.readers.key_column import KeyColumn
from ckpt_tool.readers.regular_file import read_regular_bytes, refuse_special
from ckpt_tool.readers.span_reads import ShortRead, read_span
from ckpt_tool.readers.table_columns import TableColumns, from_pairs, table_columns
from ckpt_tool.storage import RemotePath, as_path, open_binary

TABLE_MAGIC = 0xDB4775248B80FB57
LARGE_INDEX = 16 << 20  # bytes: after reading an index this large, memory is given back
FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + fixed32 masked crc32c
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1

# TensorFlow DataType number -> numpy dtype (None: not a plain array of bytes).
DT_STRING, DT_RESOURCE, DT_VARIANT = 7, 20, 21
_NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int8),
    8: np.dtype(np.complex64),
    9: np.dtype(np.int64),
    10: np.dtype(np.bool_),
    11: np.dtype(np.int8),  # qint8: stored as its integer type
    12: np.dtype(np.uint8),  # quint8
    13: np.dtype(np.int32),  # qint32
    14: np.dtype(ml_dtypes.bfloat16),
    15: np.dtype(np.int16),  # qint16
    16: np.dtype(np.uint16),  # quint16
    17: np.dtype(np.uint16),
    18: np.dtype(np.complex128),
    19: np.dtype(np.float16),
    22: np.dtype(np.uint32),
    23: np.dtype(np.uint64),
    24: np.dtype(ml_dtypes.float8_e5m2),
    25: np.dtype(ml_dtypes.float8_e4m3fn),
    26: np.dtype(ml_dtypes.float8_e4m3fnuz),
    27: np.dtype(ml_dtypes.float8_e4m3b11fnuz),
    28: np.dtype(ml_dtypes.float8_e5m2fnuz),
    29: np.dtype(ml_dtypes.int4),  # one value per byte, as TensorFlow stores them
    30: np.dtype(ml_dtypes.uint4),
    31: np.dtype(ml_dtypes.int2),
    32: np.dtype(ml_dtypes.uint2),
    33: np.dtype(ml_dtypes.float4_e2m1fn),
}
# Names TensorFlow gives the dtypes that are not plain numpy types.
_TF_ONLY_NAMES = {
    DT_STRING: "string",
    DT_RESOURCE: "resource",
    DT_VARIANT: "variant",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
}


_DTYPE_NAMES = {**{k: v.name for k, v in _NUMPY_DTYPES.items()}, **_TF_ONLY_NAMES}


def dtype_name(dtype: int) -> str:
    """The name of a TensorFlow DataType number: a numpy dtype name, 'string', 'qint8', ..."""
    name = _DTYPE_NAMES.get(dtype)
    return name if name is not None else f"dtype_{dtype}"


def numpy_dtype(dtype: int) -> np.dtype | None:
    """The numpy dtype of a TensorFlow DataType number (None for string/resource/variant)."""
    return _NUMPY_DTYPES.get(dtype)


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow crc masking: rotate right by 15 bits and add a constant."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def crc32c(data, crc: int = 0) -> int:
    """crc32c of bytes or a contiguous numpy uint8 array, optionally extending `crc`."""
    return google_crc32c.extend(crc, data) if crc else google_crc32c.value(data)


class _Corrupt(ValueError):
    """Internal: a structural problem; turned into CorruptFileError with the file name."""


def _varint(buf: bytes, pos: int, end: int, max_bits: int = 64) -> tuple[int, int]:
    """Decode a LEB128 varint at buf[pos:end]; return (value, next position)."""
    if pos >= end:
        raise _Corrupt(f"truncated varint at byte {pos}")
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= end:
            raise _Corrupt(f"varint that never ends at byte {pos}")
        if shift >= max_bits:
            raise _Corrupt(f"varint longer than {max_bits} bits at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >> max_bits:
                raise _Corrupt(f"varint wider than {max_bits} bits at byte {pos}")
            return result, pos
        shift += 7


# --- OrderedCode: the keys of partitioned-variable slices ---------------------------


def _ordered_num(value: int) -> bytes:
    """OrderedCode::WriteNumIncreasing: a length byte, then big-endian bytes."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(raw)]) + raw


def _ordered_signed(value: int) -> bytes:
    """OrderedCode::WriteSignedNumIncreasing: sign bit, unary length bits, payload."""
    x = ~value if value < 0 else value
    if x < 64:
        return bytes([(0x80 ^ value) & 0xFF])
    bits = x.bit_length() + 1  # payload plus sign bit
    length = min(10, (bits + 6) // 7)  # n bytes hold 7n-1 payload bits
    buf = (value & ((1 << (8 * length)) - 1)).to_bytes(length, "big")
    header = _SIGNED_HEADER[length]
    out = bytearray(buf)
    out[0] ^= header[0]
    if length > 1:
        out[1] ^= header[1]
    return bytes(out)


_SIGNED_HEADER = [
    (0, 0),
    (0x80, 0),
    (0xC0, 0),
    (0xE0, 0),
    (0xF0, 0),
    (0xF8, 0),
    (0xFC, 0),
    (0xFE, 0),
    (0xFF, 0),
    (0xFF, 0x80),
    (0xFF, 0xC0),
]
_SIGNED_LENGTH_MASK = [
    0,
    0x80,
    0xC000,
    0xE00000,
    0xF0000000,
    0xF800000000,
    0xFC0000000000,
    0xFE000000000000,
    0xFF00000000000000,
    0x8000000000000000,
    0,
]


def _read_ordered_signed(buf: bytes, pos: int) -> tuple[int, int]:
    """OrderedCode::ReadSignedNumIncreasing; returns (value, next position)."""
    if pos >= len(buf):
        raise _Corrupt("truncated signed number in slice key")
    xor = 0 if buf[pos] & 0x80 else 0xFF
    first = buf[pos] ^ xor
    if first != 0xFF:
        length = 8 - (first ^ 0xFF).bit_length()  # leading one bits count extra bytes
    else:
        if pos + 8 > len(buf):
            raise _Corrupt("truncated signed number in slice key")
        second = buf[pos + 1] ^ xor
        length = 8
        if second >= 0x80:
            if second < 0xC0:
                length = 9
            elif second == 0xC0 and pos + 2 < len(buf) and (buf[pos + 2] ^ xor) < 0x80:
                length = 10
            else:
                raise _Corrupt("signed number too long in slice key")
    if pos + length > len(buf):
        raise _Corrupt("truncated signed number in slice key")
    raw = int.from_bytes(buf[pos : pos + length], "big")
    if xor:  # negative: sign-extend to 64 bits
        raw |= _U64 ^ ((1 << (8 * length)) - 1) if length < 8 else 0
    x = (raw & _U64) ^ _SIGNED_LENGTH_MASK[length]
    if x >> 63:
        x -= 1 << 64
    return x, pos + length


def encode_slice_key(name: str, extents: tuple[tuple[int, int], ...]) -> bytes:
    """The bundle key of one slice of a partitioned tensor (EncodeTensorNameSlice).

    `extents` holds (start, length) per dimension, length -1 for the whole dimension.
    """
    escaped = b"".join(
        b"\x00\xff" if c == 0 else b"\xff\x00" if c == 0xFF else bytes([c])
        for c in name.encode("utf-8")
    )
    parts = [b"\x00", escaped, b"\x00\x01", _ordered_num(len(extents))]
    for start, length in extents:
        parts.append(_ordered_signed(start))
        parts.append(_ordered_signed(length))
    return b"".join(parts)


def decode_slice_key(key: bytes) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Inverse of encode_slice_key: (tensor name, ((start, length or -1), ...))."""
    if not key or key[0] != 0:
        raise _Corrupt("slice key does not start with byte 0")
    pos = 1
    name = bytearray()
    while True:
        if pos + 1 >= len(key):
            raise _Corrupt("slice key: tensor name never ends")
        c = key[pos]
        if c == 0x00:
            nxt = key[pos + 1]
            if nxt == 0x01:
                pos += 2
                break
            if nxt != 0xFF:
                raise _Corrupt("slice key: bad escape in tensor name")
            name.append(0)
            pos += 2
        elif c == 0xFF:
            if key[pos + 1] != 0x00:
                raise _Corrupt("slice key: bad escape in tensor name")
            name.append(0xFF)
            pos += 2
        else:
            name.append(c)
            pos += 1
    if pos >= len(key):
        raise _Corrupt("slice key: missing rank")
    nlen = key[pos]
    if nlen > 8 or pos + 1 + nlen > len(key):
        raise _Corrupt("slice key: bad rank")
    rank = int.from_bytes(key[pos + 1 : pos + 1 + nlen], "big")
    pos += 1 + nlen
    if rank == 0 or rank > 64:
        raise _Corrupt(f"slice key: rank {rank} out of range")
    extents = []
    for _ in range(rank):
        start, pos = _read_ordered_signed(key, pos)
        length, pos = _read_ordered_signed(key, pos)
        extents.append((start, length) if length >= 0 else (0, -1))
    if pos != len(key):
        raise _Corrupt("slice key: trailing bytes")
    return name.decode("utf-8", "backslashreplace"), tuple(extents)


# --- The .index table ---------------------------------------------------------------


def _block_handle(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, end)
    size, pos = _varint(buf, pos, end)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, limit: int, what: str) -> bytes:
    """The contents of the block at `offset`, its trailer's crc checked."""
    if offset + size + BLOCK_TRAILER_SIZE > limit:
        raise _Corrupt(f"{what} block handle (offset {offset}, size {size}) points past the end")
    ctype = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    actual = crc32c(data[offset : offset + size + 1])
    if unmask_crc(stored) != actual:
        raise _Corrupt(f"{what} block at offset {offset}: crc32c mismatch")
    if ctype == 1:
        raise UnsupportedFormatError(
            "index uses snappy-compressed blocks (written by TensorFlow before 1.1); "
            "snappy is not supported: re-save the checkpoint with a newer TensorFlow"
        )
    if ctype != 0:
        raise _Corrupt(f"{what} block at offset {offset}: unknown compression type {ctype}")
    return data[offset : offset + size]


def _block_entries(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of one table block, prefix compression undone."""
    n = len(block)
    if n < 4:
        raise _Corrupt(f"{what} block too short")
    (num_restarts,) = struct.unpack_from("<I", block, n - 4)
    limit = n - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise _Corrupt(f"{what} block: bad restart count {num_restarts}")
    out = []
    pos = 0
    key = b""
    while pos < limit:
        # The three lengths are almost always one byte each: read those inline.
        if pos + 3 <= limit and block[pos] | block[pos + 1] | block[pos + 2] < 0x80:
            shared, non_shared, value_len = block[pos], block[pos + 1], block[pos + 2]
            pos += 3
        else:
            shared, pos = _varint(block, pos, limit, 32)
            non_shared, pos = _varint(block, pos, limit, 32)
            value_len, pos = _varint(block, pos, limit, 32)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise _Corrupt(f"{what} block: entry at byte {pos} runs past its block")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        out.append((key, block[pos : pos + value_len]))
        pos += value_len
    return out


def read_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-format table, in key order."""
    if len(data) < FOOTER_SIZE:
        raise _Corrupt(f"file is {len(data)} bytes, shorter than a table footer")
    footer = len(data) - FOOTER_SIZE
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != TABLE_MAGIC:
        raise _Corrupt("bad table magic: not a TensorFlow checkpoint index, or a truncated one")
    _, _, pos = _block_handle(data, footer, footer + 40)  # metaindex: unused
    index_offset, index_size, _ = _block_handle(data, pos, footer + 40)
    index = _block_entries(_read_block(data, index_offset, index_size, footer, "index"), "index")
    entries: list[tuple[bytes, bytes]] = []
    for _, handle in index:
        offset, size, _ = _block_handle(handle, 0, len(handle))
        block = _read_block(data, offset, size, footer, "data")
        entries.extend(_block_entries(block, "data"))
    keys = [key for key, _ in entries]
    if not all(map(bytes.__lt__, keys, itertools.islice(keys, 1, None))):  # (at C speed)
        for i in range(1, len(keys)):
            if keys[i - 1] >= keys[i]:
                raise _Corrupt(f"keys out of order near {keys[i]!r}")
    return entries


# --- Bundle entries -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One tensor's BundleEntryProto, decoded and checked."""

    key: str
    dtype: int  # TensorFlow DataType number
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    slices: tuple[tuple[tuple[int, int], ...], ...] = ()  # (start, length or -1) per dim

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def num_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _parse_entry(key: str, value: bytes) -> BundleEntry:
    proto = protos.BundleEntryProto()
    try:
        proto.ParseFromString(value)
    except DecodeError as e:
        raise _Corrupt(f"entry {key!r} is not a valid BundleEntryProto: {e}") from None
    shape_proto = proto.shape  # (each field read once: an index can hold a million entries)
    if shape_proto.unknown_rank:
        raise _Corrupt(f"entry {key!r} has a shape of unknown rank")
    shape = tuple([d.size for d in shape_proto.dim])
    if shape and min(shape) < 0:
        raise _Corrupt(f"entry {key!r} has a negative dimension {shape}")
    shard_id, offset, size = proto.shard_id, proto.offset, proto.size
    if shard_id < 0 or offset < 0 or size < 0:
        raise _Corrupt(f"entry {key!r} has a negative shard id, offset or size")
    slices = ()  # (checked without a generator: an index can hold a million entries)
    if proto.slices:
        slices = tuple(
            tuple((e.start, e.length if e.HasField("length") else -1) for e in s.extent)
            for s in proto.slices
        )
    return BundleEntry(key, proto.dtype, shape, shard_id, offset, size, proto.crc32c, slices)


def data_filename(prefix: str | Path, shard_id: int, num_shards: int) -> Path:
    return as_path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}")


class EntryTable(Mapping[str, BundleEntry]):
    """key -> BundleEntry for every key but slice keys, in key order.

    The fields are kept as columns and a BundleEntry is made when one is asked for:
    an index can hold a million entries. `columns()` gives all fields as lists; the
    key -> row dict is made on the first lookup (a column-wise listing makes none).
    """

    def __init__(self, raw_keys: KeyColumn, rows: range, columns: EntryColumns, parsed: dict):
        self.raw_keys = raw_keys  # the keys' bytes, one per row of `rows`
        self.rows = rows  # the rows of `columns` these keys have
        self._columns = columns
        self._parsed: dict[int, BundleEntry] = parsed  # rows the protobuf parser read
        self._rows_by_key: dict[str, int] | None = None
        self.slice_entries: dict[bytes, BundleEntry] = {}

    @property
    def _row(self) -> dict[str, int]:
        if self._rows_by_key is None:
            keys = [raw_key.decode("utf-8", "backslashreplace") for raw_key in self.raw_keys]
            self._rows_by_key = dict(zip(keys, self.rows, strict=True))  # repeated: the last
        return self._rows_by_key

    @property
    def fields(self) -> EntryColumns:
        """The decoded columns (index them by `rows`); rows in `parsed_rows` were read
        by the protobuf parser and their columns are not to be used."""
        return self._columns

    @property
    def parsed_rows(self) -> dict[int, BundleEntry]:
        return self._parsed

    def has_key(self, key: str) -> bool:
        """`key in self`, without making the key dict when it is not made yet."""
        if self._rows_by_key is not None or self.raw_keys.matrix is None:
            return key in self._row
        raw = key.encode("utf-8", "surrogateescape")
        keys = self.raw_keys
        if b"\\" in raw or not key.isascii():
            return key in self._row  # (as the dict decodes: a backslash may stand for a byte)
        if len(raw) > keys.matrix.shape[1]:
            return False
        same = keys.lengths == len(raw)
        for j, byte in enumerate(raw):
            same &= keys.matrix[:, j] == byte
        return bool(same.any())

    def __getitem__(self, key: str) -> BundleEntry:
        row = self._row[key]
        parsed = self._parsed.get(row)
        if parsed is not None:
            return parsed
        return _column_entry(self._columns, row, key)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    def __iter__(self) -> Iterator[str]:
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)

    def columns(self) -> EntryFields:
        """Every entry's fields as lists, in key order, without a BundleEntry per entry."""
        c, rows = self._columns, np.fromiter(self._row.values(), np.int64, len(self._row))
        rotated = (c.crc32c[rows] - _MASK_DELTA) & _U32  # unmask_crc, column-wise
        fields = EntryFields(
            list(self._row),
            c.dtype[rows].tolist(),
            list(map(c.distinct_shapes.__getitem__, c.shape_ids[rows].tolist())),
            c.shard_id[rows].tolist(),
            c.offset[rows].tolist(),
            c.size[rows].tolist(),
            (((rotated >> 17) | (rotated << 15)) & _U32).tolist(),
            [()] * len(rows),
        )
        for i, row in enumerate(rows.tolist()) if self._parsed else ():
            e = self._parsed.get(row)
            if e is not None:  # read by the protobuf parser: its fields replace the columns'
                fields.dtype[i], fields.shape[i], fields.slices[i] = e.dtype, e.shape, e.slices
                fields.shard_id[i], fields.offset[i], fields.size[i] = e.shard_id, e.offset, e.size
                fields.crc32c[i] = unmask_crc(e.crc32c)
        return fields


@dataclass
class EntryFields:
    """The fields of all entries of an EntryTable, one list per field, in key order."""

    key: list[str]
    dtype: list[int]
    shape: list[tuple[int, ...]]
    shard_id: list[int]
    offset: list[int]
    size: list[int]
    crc32c: list[int]  # unmasked
    slices: list[tuple]


def _entry_table(table: TableColumns) -> EntryTable:
    """The entries of an index (its first entry, the header, left out), decoded column-wise;
    the entries the column decoder leaves aside (slices, unusual or damaged ones) go
    through the protobuf parser, in key order, so the first damaged entry is the one
    reported."""
    raw_keys = table.keys[1:]
    columns = decode_entries(table.data, table.starts[1:], table.ends[1:])
    # Slice keys start with byte 0, so in key order they come first.
    slices = _slice_key_count(raw_keys)
    parsed: dict[int, BundleEntry] = {}
    for row in np.flatnonzero(columns.fallback).tolist():
        raw_key, value = raw_keys[row], table.value(row + 1)
        parsed[row] = _parse_entry(repr(raw_key) if row < slices else _key_text(raw_key), value)
    entries = EntryTable(raw_keys[slices:], range(slices, len(raw_keys)), columns, parsed)
    for row in range(slices):
        raw_key = raw_keys[row]
        entries.slice_entries[raw_key] = parsed.get(row) or _column_entry(
            columns, row, repr(raw_key)
        )
    return entries


def _slice_key_count(raw_keys: KeyColumn) -> int:
    """How many keys (in key order, the first ones) start with byte 0: slice keys."""
    if raw_keys.matrix is None:
        return next((row for row, key in enumerate(raw_keys) if key[:1] != b"\x00"), len(raw_keys))
    first = raw_keys.matrix[:, 0] if raw_keys.matrix.shape[1] else np.zeros(len(raw_keys))
    others = np.flatnonzero((first != 0) | (raw_keys.lengths == 0))
    return int(others[0]) if others.size else len(raw_keys)


def _key_text(raw_key: bytes) -> str:
    return raw_key.decode("utf-8", "backslashreplace")


def _column_entry(columns: EntryColumns, row: int, name: str) -> BundleEntry:
    """The entry of `row` as the column decoder read it (one without slices of its own)."""
    return BundleEntry(
        name,
        int(columns.dtype[row]),
        columns.distinct_shapes[columns.shape_ids[row]],
        int(columns.shard_id[row]),
        int(columns.offset[row]),
        int(columns.size[row]),
        int(columns.crc32c[row]),
    )


class BundleReader:
    """The tensors of one TensorFlow tensor bundle, read without TensorFlow.

    `entries` maps every key except slice keys to its BundleEntry, in key order.
    `read(key)` returns a new, writable, native-endian numpy array that owns its
    memory (never a view into the file), or an object array of `bytes` for strings.
    """

    def __init__(self, prefix: str | Path, verify_crc: bool = True):
        self.prefix = as_path(prefix)
        self.index_path = as_path(f"{self.prefix}.index")
        self.verify_crc = verify_crc
        self._shards: dict[int, tuple[object, mmap.mmap | bytes]] = {}
        try:
            data = pad(read_regular_bytes(self.index_path))  # (one copy of the file)
        except FileNotFoundError:
            raise NotFoundError("checkpoint index not found", self.index_path) from None
        except IsADirectoryError:
            raise UnsupportedFormatError(
                "is a directory, not a checkpoint index", self.index_path
            ) from None
        except OSError as e:
            raise NotFoundError(
                f"cannot read checkpoint index: {e.strerror}", self.index_path
            ) from None
        try:
            with gc_paused():  # a million entries: see gc_pause
                # numpy reads a table in the usual form; read_table reads any other
                # (and says what is wrong with it)
                table = table_columns(data, FOOTER_SIZE, TABLE_MAGIC)
                self._load(table or from_pairs(read_table(unpad(data))))
            large, data, table = len(data) >= LARGE_INDEX, None, None
            if large:
                release_freed_memory()  # the reading's temporaries: see memory_release
        except _Corrupt as e:
            raise CorruptFileError(str(e), self.index_path) from None

    def _load(self, table: TableColumns) -> None:
        if not table.keys or table.keys[0] != b"":
            raise _Corrupt("no bundle header entry (the empty key) in the index")
        header = protos.BundleHeaderProto()
        try:
            header.ParseFromString(table.value(0))
        except DecodeError as e:
            raise _Corrupt(f"bundle header is not a valid BundleHeaderProto: {e}") from None
        if header.num_shards < 1:
            raise _Corrupt(f"bundle header says {header.num_shards} data shards")
        if header.endianness not in (protos.LITTLE, protos.BIG):
            raise _Corrupt(f"bundle header has unknown endianness {header.endianness}")
        if header.version.min_consumer > 1:
            raise UnsupportedFormatError(
                f"tensor bundle version needs a reader of version {header.version.min_consumer}; "
                "it was written by a newer TensorFlow than ckpt-tool understands",
                self.index_path,
            )
        self.num_shards: int = header.num_shards
        self.big_endian: bool = header.endianness == protos.BIG
        self.version: tuple[int, int] = (header.version.producer, header.version.min_consumer)
        self.entries: EntryTable = _entry_table(table)
        self.slice_entries: dict[bytes, BundleEntry] = self.entries.slice_entries

    # -- shards --

    @property
    def mapped_shards(self) -> tuple[int, ...]:
        """Ids of the data shards opened so far (a shard opens on its first read)."""
        return tuple(sorted(self._shards))

    def shard_path(self, shard_id: int) -> Path:
        return data_filename(self.prefix, shard_id, self.num_shards)

    def _shard(self, shard_id: int, key: str) -> mmap.mmap | bytes:
        if shard_id in self._shards:
            return self._shards[shard_id][1]
        if not 0 <= shard_id < self.num_shards:
            raise CorruptFileError(
                f"tensor {key!r} is in shard {shard_id} but the bundle has {self.num_shards}",
                self.index_path,
            )
        path = self.shard_path(shard_id)
        try:
            f = open_binary(path)
        except FileNotFoundError:
            raise NotFoundError(f"data shard of tensor {key!r} is missing", path) from None
        except OSError as e:
            raise NotFoundError(f"cannot open data shard: {e.strerror}", path) from None
        try:
            size = f.seek(0, 2)
            mm: mmap.mmap | bytes = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            )
        except (OSError, ValueError) as e:
            f.close()
            raise CorruptFileError(f"cannot map data shard: {e}", path) from None
        self._shards[shard_id] = (f, mm)
        return mm

    def close(self) -> None:
        shards, self._shards = self._shards, {}
        for f, mm in shards.values():
            if isinstance(mm, mmap.mmap):
                # BufferError: an array view is still alive; the mapping goes with it
                with contextlib.suppress(BufferError):
                    mm.close()
            f.close()  # type: ignore[attr-defined]

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- tensors --

    def entry(self, key: str) -> BundleEntry:
        try:
            return self.entries[key]
        except KeyError:
            raise NotFoundError(f"no tensor {key!r} in checkpoint", self.index_path) from None

    def read(self, key: str, mapped: bool = False) -> np.ndarray:
        """The tensor stored under `key` (partitioned tensors reassembled).

        Numeric tensors are read with a positioned read of just their bytes into the
        returned array; `mapped=True` maps the shard instead (strings are parsed from
        a mapping or a positioned read of their bytes).
        """
        entry = self.entry(key)
        if entry.slices:
            return self._read_partitioned(entry)
        return self._read_entry(entry, key, mapped)

    def read_pieces(self, key: str, elements: int) -> Iterator[np.ndarray]:
        """Reader.read_pieces. A plain numeric tensor in a local shard is read piece by
        piece into one reused buffer, its crc32c extended over each piece while it is
        in the CPU cache and checked after the last; anything else is read whole, here.
        The entry's size and bounds are checked here, before the first piece."""
        entry = self.entry(key)
        dt = _NUMPY_DTYPES.get(entry.dtype)
        if (
            entry.slices
            or dt is None
            or entry.dtype == DT_STRING
            or (self.big_endian and dt.itemsize > 1)
            or isinstance(self.shard_path(0), RemotePath)
        ):
            return split_flat(self.read(key), elements)
        self._check_size(entry, key)
        self._check_bounds(entry, key)
        return self._stream(entry, key, dt, elements)

    def _stream(
        self, entry: BundleEntry, key: str, dt: np.dtype, elements: int
    ) -> Iterator[np.ndarray]:
        if not entry.size:
            yield np.empty(0, dt)
        crc = 0
        path = self.shard_path(entry.shard_id)
        try:
            with open_binary(path) as f:
                for raw in read_span(f, entry.offset, entry.size, elements * dt.itemsize):
                    if self.verify_crc:
                        crc = crc32c(raw, crc)
                    yield raw.view(dt)
        except ShortRead:
            raise self._corrupt(f"tensor {key!r}: the shard ended early", entry.shard_id) from None
        except FileNotFoundError:
            raise NotFoundError(f"data shard of tensor {key!r} is missing", path) from None
        except OSError as e:
            raise NotFoundError(f"cannot read data shard: {e.strerror}", path) from None
        if self.verify_crc:
            self._check_crc(entry, key, crc)

    def _corrupt(self, msg: str, shard_id: int | None = None) -> CorruptFileError:
        path = self.index_path if shard_id is None else self.shard_path(shard_id)
        return CorruptFileError(msg, path)

    def _stored_bytes(
        self, entry: BundleEntry, key: str, mapped: bool = True
    ) -> tuple[np.ndarray, mmap.mmap | bytes, int]:
        """The entry's bytes, after checking that the size fits the dtype and shape
        and that the bytes lie inside the shard.

        Returns (read-only uint8 array of the bytes, the buffer holding them, the
        entry's offset in that buffer). `mapped=False` reads just these bytes with
        a positioned read instead of mapping the shard.
        """
        self._check_size(entry, key)
        if mapped or entry.shard_id in self._shards:
            buf = self._shard(entry.shard_id, key)
            size, base = len(buf), entry.offset
        else:
            buf, size = self._pread(entry, key)
            base = 0
        if entry.offset + entry.size > size:
            raise self._corrupt(
                f"tensor {key!r}: bytes {entry.offset}..{entry.offset + entry.size} lie past "
                f"the end of the shard ({size} bytes)",
                entry.shard_id,
            )
        if entry.size == 0:
            return np.zeros(0, np.uint8), buf, base
        return np.frombuffer(buf, np.uint8, entry.size, base), buf, base

    def _check_size(self, entry: BundleEntry, key: str) -> None:
        """The stored size must fit the dtype and shape (before any byte is read)."""
        n = entry.num_elements
        if entry.dtype == DT_STRING:
            # every element needs at least one length byte, plus the 4-byte length crc
            if (n and entry.size < n + 4) or (not n and entry.size):
                raise self._corrupt(
                    f"string tensor {key!r}: {n} elements do not fit {entry.size} bytes"
                )
        else:
            dt = _NUMPY_DTYPES.get(entry.dtype)
            if dt is None:
                what = {DT_RESOURCE: "resource", DT_VARIANT: "variant"}.get(entry.dtype)
                raise UnsupportedFormatError(
                    f"tensor {key!r} has dtype {what}, which holds no plain values"
                    if what
                    else f"tensor {key!r} has unknown dtype number {entry.dtype}",
                    self.index_path,
                )
            if entry.size != n * dt.itemsize:
                raise self._corrupt(
                    f"tensor {key!r}: stored size {entry.size} bytes does not match shape "
                    f"{entry.shape} of {dt.name} ({n * dt.itemsize} bytes)"
                )

    def _check_bounds(self, entry: BundleEntry, key: str) -> None:
        """The entry's bytes lie inside its shard (a stat, no read)."""
        if not 0 <= entry.shard_id < self.num_shards:
            raise self._corrupt(
                f"tensor {key!r} is in shard {entry.shard_id} but the bundle has {self.num_shards}"
            )
        path = self.shard_path(entry.shard_id)
        refuse_special(path)  # a FIFO or device has no size to check against
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"data shard of tensor {key!r} is missing", path) from None
        except OSError as e:
            raise NotFoundError(f"cannot read data shard: {e.strerror}", path) from None
        if entry.offset + entry.size > size:
            raise self._corrupt(
                f"tensor {key!r}: bytes {entry.offset}..{entry.offset + entry.size} lie past "
                f"the end of the shard ({size} bytes)",
                entry.shard_id,
            )

    def _pread(self, entry: BundleEntry, key: str) -> tuple[bytes, int]:
        """Just the entry's bytes and the shard's size, without mapping the shard."""
        if not 0 <= entry.shard_id < self.num_shards:
            raise self._corrupt(
                f"tensor {key!r} is in shard {entry.shard_id} but the bundle has {self.num_shards}"
            )
        path = self.shard_path(entry.shard_id)
        try:
            with open_binary(path) as f:
                size = f.seek(0, 2)
                if entry.offset + entry.size > size:
                    return b"", size
                f.seek(entry.offset)
                return f.read(entry.size), size
        except FileNotFoundError:
            raise NotFoundError(f"data shard of tensor {key!r} is missing", path) from None
        except OSError as e:
            raise NotFoundError(f"cannot read data shard: {e.strerror}", path) from None

    def _check_crc(self, entry: BundleEntry, key: str, actual: int) -> None:
        if unmask_crc(entry.crc32c) != actual:
            raise self._corrupt(
                f"tensor {key!r}: crc32c mismatch (stored {unmask_crc(entry.crc32c):08x}, "
                f"computed {actual:08x}); the data is damaged",
                entry.shard_id,
            )

    def _read_numeric(self, entry: BundleEntry, key: str) -> np.ndarray:
        """A positioned read straight into the array returned: the shard is not
        mapped, so reading a whole checkpoint tensor by tensor keeps memory flat."""
        self._check_size(entry, key)
        self._check_bounds(entry, key)  # before allocating: sizes can be absurd
        dt = _NUMPY_DTYPES[entry.dtype]
        out = np.empty(entry.shape, dt)
        raw = out.reshape(-1).view(np.uint8)
        if not 0 <= entry.shard_id < self.num_shards:
            raise self._corrupt(
                f"tensor {key!r} is in shard {entry.shard_id} but the bundle has {self.num_shards}"
            )
        path = self.shard_path(entry.shard_id)
        try:
            with open_binary(path) as f:
                size = f.seek(0, 2)
                if entry.offset + entry.size > size:
                    raise self._corrupt(
                        f"tensor {key!r}: bytes {entry.offset}..{entry.offset + entry.size} lie "
                        f"past the end of the shard ({size} bytes)",
                        entry.shard_id,
                    )
                f.seek(entry.offset)
                got = f.readinto(raw) if entry.size else 0
        except FileNotFoundError:
            raise NotFoundError(f"data shard of tensor {key!r} is missing", path) from None
        except OSError as e:
            raise NotFoundError(f"cannot read data shard: {e.strerror}", path) from None
        if got != entry.size:
            raise self._corrupt(f"tensor {key!r}: the shard ended early", entry.shard_id)
        if self.verify_crc:
            self._check_crc(entry, key, crc32c(raw))
        if self.big_endian and dt.itemsize > 1:
            return _from_big_endian(raw, dt).reshape(entry.shape)
        return out

    def _read_entry(self, entry: BundleEntry, key: str, mapped: bool = False) -> np.ndarray:
        if entry.dtype != DT_STRING and not mapped:
            return self._read_numeric(entry, key)
        raw, buf, base = self._stored_bytes(entry, key, mapped)
        if entry.dtype == DT_STRING:
            return self._decode_strings(entry, key, raw, buf, base)
        dt = _NUMPY_DTYPES[entry.dtype]
        if self.verify_crc:
            self._check_crc(entry, key, crc32c(raw))
        if self.big_endian and dt.itemsize > 1:
            return _from_big_endian(raw, dt).reshape(entry.shape)
        return raw.view(dt).reshape(entry.shape).copy()

    def _decode_strings(
        self, entry: BundleEntry, key: str, raw: np.ndarray, buf: mmap.mmap | bytes, base: int
    ) -> np.ndarray:
        """[varint64 length] * n, fixed32 masked crc32c of the lengths, then the bytes.

        The lengths' crc covers each length as uint32 (uint64 if it does not fit) in
        the writer's byte order; the entry crc covers those, the 4 stored crc bytes
        and all string bytes.
        """
        n = entry.num_elements
        if n == 0:
            return np.empty(entry.shape, dtype=object)
        start, end = base, base + entry.size
        lengths = []
        pos = start
        try:
            for _ in range(n):
                length, pos = _varint(buf, pos, end)
                lengths.append(length)
        except _Corrupt as e:
            raise self._corrupt(f"string tensor {key!r}: {e}", entry.shard_id) from None
        if pos + 4 + sum(lengths) != end:
            raise self._corrupt(
                f"string tensor {key!r}: lengths and strings take "
                f"{pos + 4 + sum(lengths) - start} bytes but the entry has {entry.size}",
                entry.shard_id,
            )
        if self.verify_crc:
            order = ">" if self.big_endian else "<"
            if max(lengths) <= _U32:
                packed = np.asarray(lengths, dtype=f"{order}u4").tobytes()
            else:
                packed = b"".join(
                    struct.pack(f"{order}I" if v <= _U32 else f"{order}Q", v) for v in lengths
                )
            length_crc = crc32c(packed)
            (stored,) = struct.unpack_from(f"{order}I", buf, pos)
            if unmask_crc(stored) != length_crc:
                raise self._corrupt(
                    f"string tensor {key!r}: crc32c of the string lengths does not match",
                    entry.shard_id,
                )
            self._check_crc(entry, key, crc32c(raw[pos - start :], length_crc))
        pos += 4
        out = np.empty(n, dtype=object)
        for i, length in enumerate(lengths):
            out[i] = bytes(buf[pos : pos + length])
            pos += length
        return out.reshape(entry.shape)

    def _read_partitioned(self, entry: BundleEntry) -> np.ndarray:
        """Reassemble a partitioned tensor from its slice entries (keys starting 0x00),
        found the way TensorFlow finds them: by encoding (name, slice) as a key."""
        key = entry.key
        rank = len(entry.shape)
        covered = 0
        pieces = []
        for extents in entry.slices:
            if len(extents) != rank:
                raise self._corrupt(f"tensor {key!r}: slice of rank {len(extents)}, not {rank}")
            index = []
            for (start, length), dim in zip(extents, entry.shape, strict=True):
                stop = dim if length == -1 else start + length
                if length == -1:
                    start = 0
                if start < 0 or stop > dim or stop < start:
                    raise self._corrupt(
                        f"tensor {key!r}: slice {extents} lies outside shape {entry.shape}"
                    )
                index.append(slice(start, stop))
            part = self.slice_entries.get(encode_slice_key(key, extents))
            if part is None:
                raise self._corrupt(f"tensor {key!r}: slice {extents} has no entry in the index")
            want = tuple(s.stop - s.start for s in index)
            if part.shape != want or part.dtype != entry.dtype:
                raise self._corrupt(
                    f"tensor {key!r}: slice {extents} is stored as {part.dtype_name} "
                    f"{part.shape}, expected {entry.dtype_name} {want}"
                )
            self._check_size(part, key)  # sizes and bounds checked before allocating
            self._check_bounds(part, key)
            covered += part.num_elements
            pieces.append((tuple(index), part))
        if covered != entry.num_elements:
            raise self._corrupt(
                f"tensor {key!r}: its slices hold {covered} elements, "
                f"its shape {entry.shape} has {entry.num_elements}"
            )
        self._check_distinct_bytes(key, [part for _, part in pieces])
        dt = _NUMPY_DTYPES.get(entry.dtype)
        out = np.empty(entry.shape, dtype=dt if dt is not None else object)
        filled = np.zeros(entry.shape, dtype=bool)
        for index, part in pieces:
            if filled[index].any():
                raise self._corrupt(f"tensor {key!r}: its slices overlap")
            out[index] = self._read_entry(part, key)
            filled[index] = True
        return out

    def _check_distinct_bytes(self, key: str, parts: list[BundleEntry]) -> None:
        """Slices must each have bytes of their own: slice entries that point at the
        same shard bytes would let a small shard claim a tensor of any size (TensorFlow
        writes every slice once). Checked before the whole tensor is allocated."""
        spans = sorted((p.shard_id, p.offset, p.offset + p.size) for p in parts if p.size)
        for (shard_a, _, end_a), (shard_b, start_b, _) in itertools.pairwise(spans):
            if shard_a == shard_b and start_b < end_a:
                raise self._corrupt(
                    f"tensor {key!r}: two of its slices point at the same bytes {start_b}..{end_a} "
                    f"of shard {shard_a}"
                )


def _from_big_endian(raw: np.ndarray, dt: np.dtype) -> np.ndarray:
    """A native-endian copy of big-endian bytes `raw` holding values of dtype `dt`."""
    if dt.isbuiltin == 1:  # numpy's own types (complex: each component swapped)
        return raw.view(dt.newbyteorder(">")).astype(dt.newbyteorder("="))
    # ml_dtypes (bfloat16, float8, ...): swap as unsigned integers of the same width
    big = np.dtype(f">u{dt.itemsize}")
    return raw.view(big).astype(big.newbyteorder("=")).view(dt)
