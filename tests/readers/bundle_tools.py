"""Test helpers that write tensor bundles: a LevelDB-format table writer and a
rewriter that copies a real bundle with edits (big-endian bytes, damaged entries).

They use TensorFlow's own protobuf classes for the entries, so a bundle they write
can be checked against TensorFlow's reader as well as ours.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
from tensorflow.core.protobuf import tensor_bundle_pb2

TABLE_MAGIC = 0xDB4775248B80FB57


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 4) -> bytes:
    """A table block with prefix compression, a restart every `restart_interval`."""
    out = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        if i % restart_interval == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value))
        out += key[shared:] + value
        prev = key
    if not restarts:
        restarts = [0]
    for r in restarts:
        out += struct.pack("<I", r)
    out += struct.pack("<I", len(restarts))
    return bytes(out)


def _append_block(out: bytearray, contents: bytes, compression: int = 0) -> bytes:
    """Append block + trailer; return its BlockHandle encoding."""
    handle = varint(len(out)) + varint(len(contents))
    ctype = bytes([compression])
    out += contents + ctype + struct.pack("<I", mask(google_crc32c.value(contents + ctype)))
    return handle


def write_table(
    path: Path, entries: list[tuple[bytes, bytes]], block_entries: int = 8, compression: int = 0
) -> None:
    """Write sorted (key, value) pairs as a LevelDB-format table of several data blocks."""
    entries = sorted(entries)
    out = bytearray()
    index = []
    for start in range(0, max(len(entries), 1), block_entries):
        chunk = entries[start : start + block_entries]
        if not chunk:
            break
        handle = _append_block(out, _block(chunk), compression)
        index.append((chunk[-1][0], handle))
    meta_handle = _append_block(out, _block([]))
    index_handle = _append_block(out, _block(index, restart_interval=1))
    footer = (meta_handle + index_handle).ljust(40, b"\x00")
    out += footer + struct.pack("<Q", TABLE_MAGIC)
    path.write_bytes(bytes(out))


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a table (no checks: the code under test does those)."""
    data = path.read_bytes()
    footer = len(data) - 48
    _, pos = read_varint(data, footer)
    _, pos = read_varint(data, pos)
    index_off, pos = read_varint(data, pos)
    index_size, _ = read_varint(data, pos)

    def block_entries(off: int, size: int):
        block = data[off : off + size]
        (n,) = struct.unpack_from("<I", block, len(block) - 4)
        limit = len(block) - 4 - 4 * n
        pos, key, out = 0, b"", []
        while pos < limit:
            shared, pos = read_varint(block, pos)
            non_shared, pos = read_varint(block, pos)
            vlen, pos = read_varint(block, pos)
            key = key[:shared] + block[pos : pos + non_shared]
            pos += non_shared
            out.append((key, block[pos : pos + vlen]))
            pos += vlen
        return out

    entries = []
    for _, handle in block_entries(index_off, index_size):
        off, p = read_varint(handle, 0)
        size, _ = read_varint(handle, p)
        entries.extend(block_entries(off, size))
    return entries


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


def copy_bundle(src: Path, dst: Path) -> Path:
    """A byte-for-byte copy of a bundle under a new prefix."""
    for f in Path(src).parent.glob(Path(src).name + ".*"):
        if f.name.endswith(".index") or ".data-" in f.name:
            shutil.copyfile(f, Path(str(dst) + f.name[len(Path(src).name) :]))
    return dst
