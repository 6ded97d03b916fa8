"""Write and rewrite tensor-bundle `.index` tables in tests, without TensorFlow.

tests/readers/bundle_tools.py does the same with TensorFlow's own protobuf
classes (and is checked against TensorFlow there); this module uses ckpt-tool's
descriptor-only messages instead, so the bad-input and fuzz tests can build
damaged bundles in processes that never import TensorFlow. The table layout is
LevelDB's: blocks of prefix-compressed entries with restarts, a trailer of
compression type and masked crc32c, an index block and a 48-byte footer.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import google_crc32c

from ckpt_tool.readers import protos

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def encode_block(entries: list[tuple[bytes, bytes]], restart_interval: int = 4) -> bytes:
    """Block contents: prefix-compressed entries, restart offsets, restart count."""
    out = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value))
        out += key[shared:] + value
        prev = key
    for r in restarts or [0]:
        out += struct.pack("<I", r)
    out += struct.pack("<I", len(restarts or [0]))
    return bytes(out)


def block_with_trailer(contents: bytes, compression: int = 0) -> bytes:
    """Block contents followed by its 5-byte trailer (type byte, masked crc32c)."""
    ctype = bytes([compression])
    return contents + ctype + struct.pack("<I", mask(google_crc32c.value(contents + ctype)))


def encode_table(
    entries: list[tuple[bytes, bytes]], block_entries: int = 8, compression: int = 0
) -> bytes:
    """A whole table: data blocks of `block_entries` sorted entries (trailer type byte
    `compression`), metaindex, index, footer."""
    entries = sorted(entries)
    out = bytearray()
    index = []
    for start in range(0, len(entries), block_entries):
        chunk = entries[start : start + block_entries]
        handle = varint(len(out)) + varint(len(encode_block(chunk)))
        out += block_with_trailer(encode_block(chunk), compression)
        index.append((chunk[-1][0], handle))
    return finish_table(out, index)


def finish_table(out: bytearray, index: list[tuple[bytes, bytes]]) -> bytes:
    """The data blocks in `out`, then an empty metaindex, the index of (last key of a
    block, its handle) and the footer."""
    meta = encode_block([])
    meta_handle = varint(len(out)) + varint(len(meta))
    out += block_with_trailer(meta)
    index_block = encode_block(index, restart_interval=1)
    index_handle = varint(len(out)) + varint(len(index_block))
    out += block_with_trailer(index_block)
    out += (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out)


def footer_handles(data: bytes) -> tuple[tuple[int, int], tuple[int, int]]:
    """((metaindex offset, size), (index offset, size)) from a table's footer."""
    pos = len(data) - FOOTER_SIZE
    meta_off, pos = read_varint(data, pos)
    meta_size, pos = read_varint(data, pos)
    index_off, pos = read_varint(data, pos)
    index_size, _ = read_varint(data, pos)
    return (meta_off, meta_size), (index_off, index_size)


def decode_block(block: bytes) -> list[tuple[bytes, bytes]]:
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


def data_block_handles(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every data block, from the index block."""
    _, (index_off, index_size) = footer_handles(data)
    handles = []
    for _, handle in decode_block(data[index_off : index_off + index_size]):
        off, pos = read_varint(handle, 0)
        size, _ = read_varint(handle, pos)
        handles.append((off, size))
    return handles


def decode_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a well-formed table (no checks)."""
    entries = []
    for off, size in data_block_handles(data):
        entries.extend(decode_block(data[off : off + size]))
    return entries


# --- bundles ---------------------------------------------------------------------------


def bundle_files(prefix: Path) -> list[Path]:
    """The `.index` and `.data-*` files of the bundle with this prefix."""
    prefix = Path(prefix)
    return sorted(
        f
        for f in prefix.parent.iterdir()
        if f.name.startswith(prefix.name + ".")
        and (f.name.endswith(".index") or ".data-" in f.name[len(prefix.name) :])
    )


def copy_bundle(src: Path, dst: Path) -> Path:
    """A byte-for-byte copy of the bundle `src` under the prefix `dst`; returns `dst`."""
    for f in bundle_files(src):
        shutil.copyfile(f, Path(str(dst) + f.name[len(Path(src).name) :]))
    return Path(dst)


def rewrite_index(
    prefix: Path,
    edit_entry: Callable[[bytes, object], None] | None = None,
    edit_header: Callable[[object], None] | None = None,
    extra_entries: list[tuple[bytes, bytes]] = (),
) -> None:
    """Re-encode `prefix.index` in place after editing its entries (BundleEntryProto)
    and header (BundleHeaderProto); every block crc comes out right."""
    index = Path(f"{prefix}.index")
    table = decode_table(index.read_bytes())
    header = protos.BundleHeaderProto.FromString(table[0][1])
    if edit_header is not None:
        edit_header(header)
    out = [(b"", header.SerializeToString())]
    for key, value in table[1:]:
        entry = protos.BundleEntryProto.FromString(value)
        if edit_entry is not None:
            edit_entry(key, entry)
        out.append((key, entry.SerializeToString()))
    index.write_bytes(encode_table([*out, *extra_entries]))


def entry_of(prefix: Path, key: str):
    """The BundleEntryProto stored under `key`."""
    for k, value in decode_table(Path(f"{prefix}.index").read_bytes()):
        if k == key.encode():
            return protos.BundleEntryProto.FromString(value)
    raise KeyError(key)
