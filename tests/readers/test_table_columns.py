"""The numpy table reader finds exactly the entries the entry-by-entry reader finds,
or declines (None) and leaves the table to it."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest

from ckpt_tool.readers.bundle import FOOTER_SIZE, TABLE_MAGIC, _Corrupt, read_table
from ckpt_tool.readers.table_columns import table_columns
from tests import bundle_writer
from tests.bundle_writer import encode_table

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _pairs(data: bytes) -> list[tuple[bytes, bytes]] | None:
    table = table_columns(data, FOOTER_SIZE, TABLE_MAGIC)
    return None if table is None else [(k, table.value(i)) for i, k in enumerate(table.keys)]


def test_every_fixture_index_is_read_as_the_entry_by_entry_reader_reads_it():
    indexes = sorted(FIXTURES.rglob("*.index"))
    assert len(indexes) > 20
    for index in indexes:
        data = index.read_bytes()
        assert _pairs(data) == read_table(data), index


def _random_entries(rng: random.Random, n: int, long_keys: bool) -> list[tuple[bytes, bytes]]:
    stems = [b"layer_%d/" % i for i in range(20)] + [b"", b"\x00slice", b"\xff"]
    entries = {}
    while len(entries) < n:
        key = rng.choice(stems) + bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 6)))
        if long_keys and rng.random() < 0.1:
            key += b"k" * 200  # lengths above 127 take two varint bytes
        entries[key] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
    return [(b"", b"header"), *entries.items()]


@pytest.mark.parametrize("block_entries", [1, 3, 8, 300])
@pytest.mark.parametrize("long_keys", [False, True])
def test_random_tables(block_entries, long_keys):
    rng = random.Random(block_entries * 2 + long_keys)
    data = encode_table(_random_entries(rng, 1000, long_keys), block_entries)
    got = _pairs(data)
    if long_keys:
        assert got is None  # two-byte lengths: left to the entry-by-entry reader
    else:
        assert got == read_table(data)


def test_runs_longer_than_the_limit_are_left_to_the_entry_by_entry_reader(monkeypatch):
    rng = random.Random(5)
    entries = _random_entries(rng, 600, False)
    long_runs = functools.partial(bundle_writer.encode_block, restart_interval=500)
    monkeypatch.setattr(bundle_writer, "encode_block", long_runs)
    data = encode_table(entries, 600)
    assert _pairs(data) is None
    assert len(read_table(data)) == len(entries)


def test_a_damaged_table_is_left_to_the_entry_by_entry_reader():
    index = next(FIXTURES.rglob("bert_model.ckpt.index"))
    data = bytearray(index.read_bytes())
    data[100] ^= 0x40  # inside the first data block: its crc no longer matches
    assert _pairs(bytes(data)) is None
    with pytest.raises(_Corrupt, match="crc32c mismatch"):
        read_table(bytes(data))
