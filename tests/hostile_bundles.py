"""Tensor bundles written from scratch, shaped the way a hostile file's author would.

`write_bundle` writes a `.index` and one `.data-00000-of-00001` shard from a list
of entries: real table blocks and crcs (bundle_writer), so only the structure is
hostile. The builders below are used by test_bad_inputs (one file each) and by the
fuzzer's structure-aware strategies (many shapes of the same attack).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np

from ckpt_tool.readers import protos
from ckpt_tool.readers.bundle import encode_slice_key
from tests.bundle_writer import (
    block_with_trailer,
    encode_table,
    finish_table,
    mask,
    varint,
)

DT_FLOAT, DT_STRING = 1, 7
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclass
class Entry:
    """One index entry: its key, and either bytes to append to the shard or a place in it."""

    key: bytes
    dtype: int
    shape: tuple[int, ...]
    data: bytes | None = None  # appended to the shard; offset/size/crc filled in
    offset: int = 0
    size: int = 0
    crc: int = 0
    slices: list[tuple[tuple[int, int], ...]] = field(default_factory=list)
    same_bytes_as: Entry | None = None  # no bytes of its own: points at another's


def float_entry(key: str, values: np.ndarray) -> Entry:
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return Entry(key.encode(), DT_FLOAT, tuple(values.shape), data)


def string_scalar_entry(key: str, value: bytes) -> Entry:
    """A DT_STRING scalar as TensorFlow writes it: varint length, masked crc of the
    length (as uint32), then the bytes; the entry crc covers all of it."""
    length_crc = google_crc32c.value(struct.pack("<I", len(value)))
    data = varint(len(value)) + struct.pack("<I", mask(length_crc)) + value
    return Entry(key.encode(), DT_STRING, (), data)


def write_bundle(prefix: Path, entries: list[Entry]) -> Path:
    """Write `prefix.index` and its single data shard; returns the prefix."""
    shard = bytearray()
    table = []
    header = protos.BundleHeaderProto(num_shards=1, endianness=0)
    header.version.producer = 1
    table.append((b"", header.SerializeToString()))
    for e in entries:
        proto = protos.BundleEntryProto(dtype=e.dtype)
        for d in e.shape:
            proto.shape.dim.add(size=d)
        if e.same_bytes_as is not None:
            e.offset, e.size, e.crc = (
                e.same_bytes_as.offset,
                e.same_bytes_as.size,
                e.same_bytes_as.crc,
            )
        elif e.data is not None:
            e.offset, e.size = len(shard), len(e.data)
            e.crc = (
                _string_crc(e.data) if e.dtype == DT_STRING else mask(google_crc32c.value(e.data))
            )
            shard += e.data
        proto.offset, proto.size, proto.crc32c = e.offset, e.size, e.crc
        for extents in e.slices:
            s = proto.slices.add()
            for start, length in extents:
                ext = s.extent.add(start=start)
                if length != -1:
                    ext.length = length
        table.append((e.key, proto.SerializeToString()))
    Path(f"{prefix}.index").write_bytes(encode_table(table))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(shard))
    return prefix


def _string_crc(data: bytes) -> int:
    """Entry crc of a one-element string tensor: crc of the uint32 length, extended
    over the stored length crc and the string bytes (see BundleReader)."""
    length, pos = _read_varint(data)
    crc = google_crc32c.value(struct.pack("<I", length))
    crc = google_crc32c.extend(crc, data[pos:])
    return mask(crc)


def _read_varint(data: bytes) -> tuple[int, int]:
    value = shift = pos = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


# --------------------------------------------------------------------------
# Object graphs


def object_graph(children: list[list[tuple[str, int]]], variables: dict[int, str]) -> bytes:
    """A serialized TrackableObjectGraph: node i has `children[i]` (name, child id) and,
    if in `variables`, a VARIABLE_VALUE attribute stored under that checkpoint key."""
    graph = protos.TrackableObjectGraph()
    for i, kids in enumerate(children):
        node = graph.nodes.add()
        for name, child in kids:
            node.children.add(node_id=child, local_name=name)
        if i in variables:
            node.attributes.add(
                name="VARIABLE_VALUE", full_name=f"v{i}", checkpoint_key=variables[i]
            )
    return graph.SerializeToString()


def graph_checkpoint(
    prefix: Path, children: list[list[tuple[str, int]]], variable_nodes: list[int]
) -> Path:
    """A TF2-style checkpoint: one float32[2] variable per node in `variable_nodes`,
    named `var<i>/.ATTRIBUTES/VARIABLE_VALUE`, and the object graph."""
    keys = {n: f"var{n}/.ATTRIBUTES/VARIABLE_VALUE" for n in variable_nodes}
    entries = [float_entry(k, np.array([n, -n], np.float32)) for n, k in keys.items()]
    entries.append(string_scalar_entry(OBJECT_GRAPH_KEY, object_graph(children, keys)))
    return write_bundle(prefix, entries)


def chain_graph(length: int, variables_every: int = 0) -> tuple[list, list[int]]:
    """A root followed by `length` nodes each the only child of the one before; a
    variable on the last node (and on every `variables_every`-th, if > 0)."""
    children = [[(f"c{i}", i + 1)] for i in range(length)] + [[]]
    nodes = [length]
    if variables_every:
        nodes = sorted(set(range(variables_every, length + 1, variables_every)) | {length})
    return children, nodes


# --------------------------------------------------------------------------
# Partitioned tensors


def partitioned_checkpoint(
    prefix: Path,
    rows: int,
    row_width: int,
    parts: int,
    shared: bool,
) -> Path:
    """A float32 tensor `w` of shape (rows, row_width) saved as `parts` slices along
    dim 0. shared=True: every slice entry points at the first slice's bytes (the
    attack); shared=False: each slice has its own bytes (what TensorFlow writes)."""
    assert rows % parts == 0
    step = rows // parts
    full = np.arange(rows * row_width, dtype=np.float32).reshape(rows, row_width)
    extents = [((i * step, step), (0, -1)) for i in range(parts)]
    whole = Entry(b"w", DT_FLOAT, (rows, row_width), slices=extents)
    entries = [whole]
    first: Entry | None = None
    for i, ext in enumerate(extents):
        e = float_entry("w", full[i * step : (i + 1) * step])
        e.key = encode_slice_key("w", ext)
        if shared and first is not None:
            e.data, e.same_bytes_as = None, first
        entries.append(e)
        first = first or e
    return write_bundle(prefix, entries)


# --------------------------------------------------------------------------
# Very many entries


def many_entries_bundle(prefix: Path, count: int) -> Path:
    """A TF1-style bundle of `count` float32[1] variables (`layer_<i>/w<j>`, a few bytes of
    index each) that all point at the same 4 shard bytes: the shape of a small file
    claiming a huge number of variables. Written block by block, with a restart at every
    entry (no prefix sharing), in well under a second for 100,000 entries."""
    data = np.zeros(1, "<f4").tobytes()
    proto = protos.BundleEntryProto(dtype=DT_FLOAT, offset=0, size=len(data))
    proto.crc32c = mask(google_crc32c.value(data))
    proto.shape.dim.add(size=1)
    value = proto.SerializeToString()
    header = protos.BundleHeaderProto(num_shards=1, endianness=0)
    header.version.producer = 1
    keys = sorted(f"layer_{i // 10}/w{i % 10}".encode() for i in range(count))
    rows = [(b"", header.SerializeToString())] + [(key, value) for key in keys]
    out, index = bytearray(), []
    for start in range(0, len(rows), 4096):
        chunk = rows[start : start + 4096]
        records = [varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in chunk]
        restarts = np.cumsum([0] + [len(r) for r in records[:-1]], dtype="<u4")
        block = b"".join(records) + restarts.tobytes() + struct.pack("<I", len(records))
        index.append((chunk[-1][0], varint(len(out)) + varint(len(block))))
        out += block_with_trailer(block)
    Path(f"{prefix}.index").write_bytes(finish_table(out, index))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)
    return prefix
