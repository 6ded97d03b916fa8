"""Many BundleEntryProto values decoded at once, column by column, with numpy.

An index can hold a million entries; a protobuf message per entry costs seconds.
This decoder reads the protobuf wire format of all entries together: step k reads the
k-th field of every entry still being read, so the Python loop runs once per field
(a few times), not once per entry.

It takes only the canonical form TensorFlow writes: single-byte tags of the known
fields (dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6), each at most once,
small varints, and a shape made only of dims with a size. Anything else (slices,
unknown or repeated fields, a negative number, a dim name, unknown_rank, a truncated
entry, a very long shape) is left to the protobuf parser: `fallback` marks those entries,
and their decoded columns are not to be used. So every value decoded here is what the
protobuf parser gives, and every error comes from the protobuf path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Wire-format tags, (field number << 3) | wire type, of the fields taken here.
_FIELD_TAGS = (0x08, 0x12, 0x18, 0x20, 0x28, 0x35)  # dtype, shape, shard_id, offset, size, crc32c
_DTYPE_FIELD, _SHAPE_FIELD, _SHARD_FIELD, _CRC_FIELD = 0, 1, 2, 5
_FIELD_OF_TAG = np.full(256, -1, np.int64)
_FIELD_OF_TAG[list(_FIELD_TAGS)] = range(len(_FIELD_TAGS))
_DIM, _DIM_SIZE = 0x12, 0x08  # TensorShapeProto.dim, TensorShapeProto.Dim.size
_SMALL_VARINT = 4  # bytes: below 2**28, an int32 field's value as it is
_LONG_VARINT = 9  # bytes: below 2**63, an int64 field's value as it is (10: negative)
MAX_FAST_RANK = 32  # longer shapes go to the protobuf parser
CHUNK = 1 << 17  # entries decoded together
PAD_BYTES = 16  # zero bytes after the data, so that reads past an entry stay in bounds


@dataclass
class EntryColumns:
    """Decoded fields of n entries; rows with `fallback` set are not decoded."""

    fallback: np.ndarray  # bool[n]
    dtype: np.ndarray  # int64[n]
    shard_id: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    crc32c: np.ndarray  # masked, as stored
    shape_ids: np.ndarray  # int64[n]: each row's shape in distinct_shapes (0: () for fallback rows)
    distinct_shapes: list[tuple[int, ...]]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Each row's shape (equal shapes are one tuple)."""
        return list(map(self.distinct_shapes.__getitem__, self.shape_ids.tolist()))


def varints(data: np.ndarray, pos: np.ndarray, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """The varints starting at each of `pos`: (values, lengths in bytes); length 0 where
    a varint is longer than `max_bytes` (max_bytes <= 9: the values fit an int64)."""
    values = data[pos].astype(np.int64)
    length = (values < 0x80).astype(np.int64)  # most varints are one byte
    values &= 0x7F
    going = np.flatnonzero(length == 0)  # rows whose varint goes on
    for k in range(1, max_bytes):  # byte k of the varints still going
        if not going.size:
            break
        byte = data[pos[going] + k].astype(np.int64)
        values[going] |= (byte & 0x7F) << (7 * k)
        ended = byte < 0x80
        length[going[ended]] = k + 1
        going = going[~ended]
    return values, length


def decode_entries(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> EntryColumns:
    """Decode the entries data[starts[i]:ends[i]] (data: uint8, followed by PAD_BYTES zeros),
    CHUNK entries at a time: the steps' temporary arrays stay small."""
    if len(starts) <= CHUNK:
        return _decode_chunk(data, starts, ends)
    n = len(starts)
    names = ("fallback", "dtype", "shard_id", "offset", "size", "crc32c", "shape_ids")
    out = [np.zeros(n, bool), *(np.zeros(n, np.int64) for _ in names[1:])]
    distinct: dict[tuple[int, ...], int] = {(): 0}  # shape -> its id in all chunks
    for first in range(0, n, CHUNK):
        part = _decode_chunk(data, starts[first : first + CHUNK], ends[first : first + CHUNK])
        ids = np.array([distinct.setdefault(s, len(distinct)) for s in part.distinct_shapes])
        part.shape_ids = ids[part.shape_ids]
        for column, name in zip(out, names, strict=True):
            column[first : first + CHUNK] = getattr(part, name)
    return EntryColumns(*out, list(distinct))


def _decode_chunk(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> EntryColumns:
    n = len(starts)
    # One row per field, in the order of _FIELD_TAGS; for the shape: where its bytes start.
    fields = np.zeros((len(_FIELD_TAGS), n), np.int64)
    seen = np.zeros((len(_FIELD_TAGS), n), bool)  # a repeated field goes to protobuf
    shape_end = np.zeros(n, np.int64)
    fallback = np.zeros(n, bool)
    pos = starts.astype(np.int64)
    rows = np.flatnonzero(pos < ends)
    while rows.size:
        p, end = pos[rows], ends[rows]
        field = _FIELD_OF_TAG[data[p]]  # -1: not a field taken here
        known = field >= 0
        field[~known] = 0
        bad = ~known | seen[field, rows]
        seen[field, rows] = True
        value, length = varints(data, p + 1, _LONG_VARINT)
        small = (length > 0) & (length <= _SMALL_VARINT)
        after = p + 1 + length  # the end of a varint field
        is_int, is_shape = (field == _DTYPE_FIELD) | (field == _SHARD_FIELD), field == _SHAPE_FIELD
        bad |= ((is_int | is_shape) & ~small) | (length == 0) & ~(field == _CRC_FIELD)
        is_crc = known & (field == _CRC_FIELD)  # fixed32: four little-endian bytes
        crc_at = p[is_crc]
        value[is_crc] = sum(data[crc_at + 1 + k].astype(np.int64) << (8 * k) for k in range(4))
        after[is_crc] = crc_at + 5
        shape_end[rows[is_shape]] = (after + value)[is_shape]
        value[is_shape], after[is_shape] = after[is_shape], (after + value)[is_shape]
        bad |= after > end
        ok = ~bad
        fields[field[ok], rows[ok]] = value[ok]
        fallback[rows[bad]] = True
        pos[rows[ok]] = after[ok]
        rows = rows[ok & (after < end)]
    dtype, shape_start, shard_id, offset, size, crc32c = fields
    shape_ids, distinct, shape_bad = _decode_shapes(
        data, shape_start, np.where(fallback, 0, shape_end)
    )
    return EntryColumns(
        fallback | shape_bad, dtype, shard_id, offset, size, crc32c, shape_ids, distinct
    )


def _decode_shapes(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, ...]], np.ndarray]:
    """TensorShapeProto bytes data[starts[i]:ends[i]] -> (shape id per row, the distinct
    shapes, bad); a shape that is not a plain list of dims with sizes is marked bad (and
    given (), id 0)."""
    n = len(starts)
    bad = np.zeros(n, bool)
    dims: list[np.ndarray] = []  # dims[k][i]: size of dim k of row i (where rank > k)
    rank = np.zeros(n, np.int64)
    pos = starts.copy()
    rows = np.flatnonzero(pos < ends)
    while rows.size:
        if len(dims) == MAX_FAST_RANK:
            bad[rows] = True
            break
        p, end = pos[rows], ends[rows]
        # one dim: tag, length, then nothing (size 0) or the size's tag and varint
        dim_len = data[p + 1].astype(np.int64)
        size, length = varints(data, p + 3, _LONG_VARINT)
        empty = dim_len == 0
        full = (data[p + 2] == _DIM_SIZE) & (length > 0) & (dim_len == 1 + length)
        row_bad = (data[p] != _DIM) | ~(empty | full) | (p + 2 + dim_len > end)
        column = np.zeros(n, np.int64)
        good = rows[~row_bad]
        column[good] = np.where(empty, 0, size)[~row_bad]
        dims.append(column)
        rank[good] += 1
        bad[rows[row_bad]] = True
        pos[good] = (p + 2 + dim_len)[~row_bad]
        rows = good[pos[good] < ends[good]]
    rank[bad] = 0
    return (*_shape_tuples(dims, rank), bad)


def _shape_tuples(
    dims: list[np.ndarray], rank: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """(shape id per row, distinct shapes): a checkpoint repeats a few shapes many
    times; they are found with numpy rank by rank. Id 0 is ()."""
    distinct: list[tuple[int, ...]] = [()]
    shape_id = np.zeros(len(rank), np.int64)  # index into `distinct`; rank 0: ()
    for r in range(1, len(dims) + 1):
        rows = np.flatnonzero(rank == r)
        if not rows.size:
            continue
        matrix = np.stack([d[rows] for d in dims[:r]], axis=1)
        unique, inverse = _unique_rows(matrix)
        shape_id[rows] = len(distinct) + inverse
        distinct += map(tuple, unique.tolist())
    return shape_id, distinct


def _unique_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(matrix, axis=0, return_inverse=True), by a lexsort of the columns
    (faster than sorting the rows as opaque bytes)."""
    order = np.lexsort(matrix.T[::-1])
    ordered = matrix[order]
    first = np.ones(len(order), bool)  # each distinct row's first place in the order
    first[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    inverse = np.empty(len(order), np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def pad(data: bytes) -> np.ndarray:
    """`data` as uint8 with PAD_BYTES zero bytes after it (decode_entries reads ahead)."""
    out = np.zeros(len(data) + PAD_BYTES, np.uint8)
    out[: len(data)] = np.frombuffer(data, np.uint8)
    return out


def unpad(array: np.ndarray) -> bytes:
    """The bytes `pad` was given."""
    return array[: len(array) - PAD_BYTES].tobytes()
