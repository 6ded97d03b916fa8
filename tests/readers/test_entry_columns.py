"""The column-wise BundleEntryProto decoder gives what the protobuf parser gives.

Every entry it decodes must equal the protobuf parse of the same bytes; entries it
cannot decode (`fallback`) are left to that parser. Checked on the entries of every
TensorFlow-written index in fixtures/ and on random and damaged entries.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from ckpt_tool.errors import CorruptFileError
from ckpt_tool.readers import protos
from ckpt_tool.readers.bundle import BundleReader, _parse_entry, read_table
from ckpt_tool.readers.entry_columns import decode_entries, pad
from tests.bundle_writer import encode_table

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _decode(values: list[bytes]):
    ends = np.cumsum([len(v) for v in values], dtype=np.int64)
    starts = ends - np.array([len(v) for v in values], np.int64)
    return decode_entries(pad(b"".join(values)), starts, ends)


def _check_against_protobuf(values: list[bytes]) -> int:
    """Assert equality for every decoded entry; return how many were decoded."""
    columns = _decode(values)
    decoded = 0
    for i, value in enumerate(values):
        if columns.fallback[i]:
            continue
        entry = _parse_entry("k", value)  # raises if protobuf finds the bytes bad
        assert entry.slices == ()
        got = (
            int(columns.dtype[i]),
            columns.shapes[i],
            int(columns.shard_id[i]),
            int(columns.offset[i]),
            int(columns.size[i]),
            int(columns.crc32c[i]),
        )
        assert got == (
            entry.dtype,
            entry.shape,
            entry.shard_id,
            entry.offset,
            entry.size,
            entry.crc32c,
        ), value
        decoded += 1
    return decoded


def test_every_fixture_index_decodes_as_protobuf_parses_it():
    indexes = sorted(FIXTURES.rglob("*.index"))
    assert len(indexes) > 20
    total = decoded = 0
    for index in indexes:
        values = [v for k, v in read_table(index.read_bytes())[1:]]
        total += len(values)
        decoded += _check_against_protobuf(values)
    assert decoded > 0.9 * total  # TensorFlow's own entries take the column path


def _random_entry(rng: random.Random) -> bytes:
    proto = protos.BundleEntryProto()
    proto.dtype = rng.choice([0, 1, 3, 7, 14, 200, 1 << 27, 1 << 30, -1])
    for _ in range(rng.choice([0, 1, 2, 3, 5, 40])):
        proto.shape.dim.add(size=rng.choice([0, 1, 7, 300, 1 << 40, (1 << 63) - 1, -3]))
    proto.shard_id = rng.choice([0, 0, 1, 5, 1 << 29, -1])
    proto.offset = rng.choice([0, 4, 1 << 40, (1 << 63) - 1, -1])
    proto.size = rng.choice([0, 4, 1 << 33, -5])
    proto.crc32c = rng.getrandbits(32)
    if rng.random() < 0.05:
        proto.shape.unknown_rank = True
    if rng.random() < 0.05:
        proto.shape.dim.add(size=3, name="x")
    if rng.random() < 0.05:
        proto.slices.add().extent.add(start=1, length=2)
    value = proto.SerializeToString()
    cut = rng.random()
    if cut < 0.1:  # truncated
        value = value[: rng.randrange(len(value) + 1)]
    elif cut < 0.15:  # fields repeated
        value += value[: rng.randrange(len(value) + 1)]
    elif cut < 0.25 and value:  # one byte changed
        i = rng.randrange(len(value))
        value = value[:i] + bytes([rng.getrandbits(8)]) + value[i + 1 :]
    return value


@pytest.mark.parametrize("seed", range(3))
def test_random_and_damaged_entries_decode_as_protobuf_parses_them(seed):
    rng = random.Random(seed)
    values = [_random_entry(rng) for _ in range(3000)] + [b""]
    decoded = _check_against_protobuf(values)
    assert 0 < decoded < len(values)


def test_a_damaged_entry_is_reported_as_before(tmp_path):
    src = next(FIXTURES.rglob("bert_model.ckpt.index"))
    table = read_table(src.read_bytes())
    key = table[5][0]
    proto = protos.BundleEntryProto()
    proto.ParseFromString(table[5][1])
    proto.shape.dim.add(size=-2)
    table[5] = (key, proto.SerializeToString())
    (tmp_path / "bad.index").write_bytes(encode_table(table))
    with pytest.raises(CorruptFileError, match="negative dimension") as caught:
        BundleReader(tmp_path / "bad")
    assert key.decode() in str(caught.value)
