"""Test helpers that write tensor bundles: a LevelDB-format table writer and a
rewriter that copies a real bundle with edits (big-endian bytes, damaged entries).

They use TensorFlow's own protobuf classes for the entries, so a bundle they write
can be checked against TensorFlow's reader as well as ours.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
from tensorflow.core.protobuf import tensor_bundle_pb2

from tests.bundle_writer import copy_bundle, decode_table, encode_table, mask, read_varint


def write_table(
    path: Path, entries: list[tuple[bytes, bytes]], block_entries: int = 8, compression: int = 0
) -> None:
    """Write sorted (key, value) pairs as a LevelDB-format table of several data blocks."""
    path.write_bytes(encode_table(entries, block_entries, compression))


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a table (no checks: the code under test does those)."""
    return decode_table(path.read_bytes())


# --- bundles ---------------------------------------------------------------------------

_SWAP_WIDTH = {  # DataType -> bytes per swapped unit (complex: per component)
    1: 4,
    2: 8,
    3: 4,
    5: 2,
    8: 4,
    9: 8,
    14: 2,
    17: 2,
    18: 8,
    19: 2,
    22: 4,
    23: 8,
}


def shard_name(prefix: Path, shard: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


def _big_endian_tensor(entry: tensor_bundle_pb2.BundleEntryProto, data: bytes) -> tuple[bytes, int]:
    """The tensor's bytes as a big-endian machine writes them, and their masked crc."""
    if entry.dtype == 7:  # DT_STRING: varint lengths, masked crc of lengths, bytes
        n = int(np.prod([d.size for d in entry.shape.dim])) if entry.shape.dim else 1
        pos, lengths = 0, []
        for _ in range(n):
            length, pos = read_varint(data, pos)
            lengths.append(length)
        length_crc = google_crc32c.value(struct.pack(f">{n}I", *lengths))
        stored = struct.pack(">I", mask(length_crc))
        new = data[:pos] + stored + data[pos + 4 :]
        crc = google_crc32c.extend(length_crc, stored + data[pos + 4 :])
        return new, mask(crc)
    width = _SWAP_WIDTH.get(entry.dtype, 1)
    new = np.frombuffer(data, dtype=f"<u{width}").astype(f">u{width}").tobytes() if data else b""
    return new, mask(google_crc32c.value(new))


def rewrite_bundle(
    src: Path,
    dst: Path,
    *,
    big_endian: bool = False,
    edit_entry: Callable[[bytes, tensor_bundle_pb2.BundleEntryProto], None] | None = None,
    edit_header: Callable[[tensor_bundle_pb2.BundleHeaderProto], None] | None = None,
) -> Path:
    """Copy the bundle with prefix `src` to prefix `dst`, optionally as big-endian
    (header says BIG, tensor bytes swapped, crcs recomputed) and with entries edited.
    Returns `dst`."""
    table = read_table(Path(f"{src}.index"))
    header = tensor_bundle_pb2.BundleHeaderProto.FromString(table[0][1])
    num_shards = header.num_shards
    shards = {i: bytearray(shard_name(src, i, num_shards).read_bytes()) for i in range(num_shards)}
    out_entries = []
    for key, value in table[1:]:
        entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
        if big_endian and not entry.slices:
            raw = bytes(shards[entry.shard_id][entry.offset : entry.offset + entry.size])
            new, crc = _big_endian_tensor(entry, raw)
            shards[entry.shard_id][entry.offset : entry.offset + entry.size] = new
            entry.crc32c = crc
        if edit_entry is not None:
            edit_entry(key, entry)
        out_entries.append((key, entry.SerializeToString()))
    if big_endian:
        header.endianness = tensor_bundle_pb2.BundleHeaderProto.BIG
    if edit_header is not None:
        edit_header(header)
    write_table(Path(f"{dst}.index"), [(b"", header.SerializeToString()), *out_entries])
    for i, data in shards.items():
        shard_name(dst, i, header.num_shards or num_shards).write_bytes(bytes(data))
    return dst


__all__ = ["copy_bundle", "read_table", "rewrite_bundle", "write_table"]
