"""The numpy table reader finds exactly the entries the entry-by-entry reader finds,
or declines (None) and leaves the table to it."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import pytest

from ckpt_tool.readers import key_column
from ckpt_tool.readers.bundle import FOOTER_SIZE, TABLE_MAGIC, _Corrupt, read_table
from ckpt_tool.readers.entry_columns import pad
from ckpt_tool.readers.key_column import rebuild_keys
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


def test_keys_too_unlike_in_length_for_a_matrix_are_rebuilt_one_by_one(monkeypatch):
    """A key matrix much larger than the keys (one long key among short ones) is not
    made; the keys come out the same, one by one."""
    rng = random.Random(7)
    entries = [*_random_entries(rng, 300, False), (b"layer_1/" + b"z" * 100, b"v")]
    data = encode_table(entries, 8)
    assert _pairs(data) == read_table(data)
    monkeypatch.setattr(key_column, "_SMALL", 0)  # the guard, without a large table
    table = table_columns(data, FOOTER_SIZE, TABLE_MAGIC)
    assert table.keys.matrix is None  # rebuilt one by one
    assert [(k, table.value(i)) for i, k in enumerate(table.keys)] == read_table(data)


@pytest.mark.parametrize(
    ("keys", "in_order"),
    [
        ([b"a", b"b"], True),
        ([b"a", b"a\x00"], True),  # a trailing zero byte: after the key without it
        ([b"b", b"a"], False),
        ([b"a", b"a"], False),
        ([b"a\x00", b"a"], False),
        ([b"abcdefgh1", b"abcdefgh0"], False),  # the difference in the second word
    ],
)
def test_rebuilt_keys_must_be_in_strictly_increasing_order(keys, in_order):
    data = pad(b"".join(keys))
    lengths = np.array([len(k) for k in keys])
    ends = np.cumsum(lengths)
    rebuilt = rebuild_keys(data, np.zeros(len(keys), np.int64), ends - lengths, ends)
    assert (rebuilt is not None) == in_order
    if in_order:
        assert rebuilt.tolist() == keys
