"""The entries of a LevelDB-format table (a checkpoint .index) found with numpy.

A table block holds entries `shared, non_shared, value_length` (varints), the key's
new bytes, the value; then restart offsets (uint32 each) and their count. Entries
between two restart points follow each other, so the block is read from every
restart point at once: step k reads the k-th entry after every restart point.

Only the usual form is taken: single-byte lengths, restart points that split the
block exactly into runs of entries, a valid crc and no compression, keys in order.
`table_columns` returns None for anything else, and then the entry-by-entry reader
(bundle.read_table) reads the table and reports what is wrong, as it always has.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import google_crc32c
import numpy as np

from ckpt_tool.readers.entry_columns import PAD_BYTES, pad, varints
from ckpt_tool.readers.key_column import KeyColumn, rebuild_keys

MAX_RUN = 256  # entries from one restart point to the next (LevelDB writes 16)


@dataclass
class TableColumns:
    """keys[i] and its value data[starts[i]:ends[i]]; data has zero bytes after it."""

    keys: KeyColumn
    data: np.ndarray  # uint8
    starts: np.ndarray
    ends: np.ndarray

    def value(self, i: int) -> bytes:
        return self.data[self.starts[i] : self.ends[i]].tobytes()


def from_pairs(pairs: list[tuple[bytes, bytes]]) -> TableColumns:
    """TableColumns of (key, value) pairs (as bundle.read_table gives them)."""
    lengths = np.fromiter((len(v) for _, v in pairs), np.int64, len(pairs))
    ends = np.cumsum(lengths)
    return TableColumns(
        KeyColumn.from_list([k for k, _ in pairs]),
        pad(b"".join(v for _, v in pairs)),
        ends - lengths,
        ends,
    )


def table_columns(data: bytes | np.ndarray, footer_size: int, magic: int) -> TableColumns | None:
    """Every entry of the table in `data` (bytes, or the array `pad` made of them), or
    None when it is not in the usual form."""
    from ckpt_tool.readers import bundle  # (the entry-by-entry reader, for the index block)

    array = data if isinstance(data, np.ndarray) else pad(data)
    data = memoryview(array)[: len(array) - PAD_BYTES]  # the file's bytes, not copied
    if len(data) < footer_size or struct.unpack_from("<Q", data, len(data) - 8)[0] != magic:
        return None
    footer = len(data) - footer_size
    try:
        _, _, pos = bundle._block_handle(data, footer, footer + 40)
        index_offset, index_size, _ = bundle._block_handle(data, pos, footer + 40)
    except bundle._Corrupt:
        return None
    handles = _block_handles(array, data, index_offset, index_size, footer)
    blocks = None if handles is None else _data_blocks(array, data, *handles, footer)
    found = None if blocks is None else _entries(array, *blocks)
    if found is None:
        return None
    shared, key_starts, key_ends, value_starts, value_ends = found
    del found
    keys = rebuild_keys(array, shared, key_starts, key_ends)
    if keys is None:
        keys = _keys(data, shared, key_starts, key_ends)
    if keys is None:
        return None
    return TableColumns(keys, array, value_starts, value_ends)


def _block_handles(
    array: np.ndarray, data: memoryview, offset: int, size: int, footer: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(offsets, sizes) of the data blocks, from the index block's values."""
    if offset > footer or size > footer:
        return None
    index = _data_blocks(array, data, np.array([offset]), np.array([size]), footer)
    found = None if index is None else _entries(array, *index)
    if found is None:
        return None
    _, _, _, starts, ends = found
    offsets, first = varints(array, starts, 9)
    sizes, second = varints(array, starts + first, 9)
    if ((first == 0) | (second == 0) | (starts + first + second > ends)).any():
        return None
    return offsets, sizes


def _data_blocks(
    array: np.ndarray, data: memoryview, offsets: np.ndarray, sizes: np.ndarray, footer: int
):
    """(block starts, entry limits, restart arrays' starts, restart counts), each block's
    bounds, trailer crc and type checked (all blocks at once but the crcs); None if one
    fails."""
    if ((offsets > footer) | (sizes > footer) | (sizes < 4)).any():
        return None
    ends = offsets + sizes  # where the block's trailer starts: type byte, masked crc
    if (ends + 5 > footer).any() or array[ends].any():  # (type 0: not compressed)
        return None
    stored = _uint32(array, ends + 1)
    rotated = (stored - 0xA282EAD8) & 0xFFFFFFFF  # unmask the crc
    expected = ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
    actual = np.fromiter(
        map(_crc, [data] * len(offsets), offsets.tolist(), (ends + 1).tolist()),
        np.int64,
        len(offsets),
    )
    if (expected != actual).any():
        return None
    counts = _uint32(array, ends - 4)
    limits = ends - 4 - 4 * counts
    if ((counts == 0) | (limits < offsets)).any():
        return None
    return offsets, limits, limits, counts


def _uint32(array: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The little-endian uint32 at each of `at`, as int64."""
    return sum(array[at + k].astype(np.int64) << (8 * k) for k in range(4))


def _crc(data: memoryview, start: int, end: int) -> int:
    return google_crc32c.value(bytes(data[start:end]))


def _entries(data: np.ndarray, block_starts, limits, restart_starts, counts):
    """(shared, key starts, key ends, value starts, value ends) of every entry, walked
    from every restart point at once; None if a run does not end at the next restart
    point or a length takes more than one byte."""
    block = np.repeat(np.arange(len(counts)), counts)  # the block of each restart point
    first = np.cumsum(counts) - counts  # each block's first restart point
    within = np.arange(len(block)) - first[block]
    at = restart_starts[block] + 4 * within
    offsets = _uint32(data, at)
    run_starts = block_starts[block] + offsets
    is_last = within == counts[block] - 1
    run_ends = np.where(is_last, limits[block], np.roll(run_starts, -1))
    if (within == 0).any() and (offsets[within == 0] != 0).any():
        return None
    if (run_ends < run_starts).any() or ((run_ends == run_starts) & ~is_last).any():
        return None
    found = []  # per step: (run, step, where the entry starts)
    pos, runs = run_starts.copy(), np.flatnonzero(run_starts < run_ends)
    for step in range(MAX_RUN + 1):
        if not runs.size:
            break
        if step == MAX_RUN:
            return None
        p = pos[runs]
        shared, non_shared, value_len = (data[p + k].astype(np.int64) for k in range(3))
        if ((shared | non_shared | value_len) >= 0x80).any():
            return None
        key_end = p + 3 + non_shared
        value_end = key_end + value_len
        if (value_end > run_ends[runs]).any():
            return None
        found.append((runs.astype(np.int32), np.full(len(runs), step, np.int16), p))
        pos[runs] = value_end
        runs = runs[value_end < run_ends[runs]]
    if not found:
        return (np.zeros(0, np.int64),) * 5
    run, step, p = (np.concatenate(x) for x in zip(*found, strict=True))
    del found
    order = np.lexsort((step, run))  # entries in file order
    run, p = run[order], p[order]
    del step, order
    shared = data[p].astype(np.int64)
    key_starts = p + 3
    key_ends = key_starts + data[p + 1]
    value_starts, value_ends = key_ends, key_ends + data[p + 2]
    del p
    # A block's first entry shares nothing; every entry shares at most the key before it.
    block_first = np.zeros(len(shared), bool)
    entry_block = block[run]
    block_first[0] = True
    block_first[1:] = entry_block[1:] != entry_block[:-1]
    lengths = shared + (key_ends - key_starts)
    if (shared[block_first] != 0).any() or (shared[1:] > lengths[:-1])[~block_first[1:]].any():
        return None
    return shared, key_starts, key_ends, value_starts, value_ends


def _keys(data: bytes, shared, key_starts, key_ends) -> KeyColumn | None:
    """The keys, prefix compression undone one by one (for keys too unlike in length
    for a matrix); None unless they are in strictly increasing order."""
    keys = []
    key = b""
    for n, start, end in zip(shared.tolist(), key_starts.tolist(), key_ends.tolist(), strict=True):
        key = key[:n] + data[start:end]
        keys.append(key)
    if not all(map(bytes.__lt__, keys, keys[1:])):
        return None
    return KeyColumn.from_list(keys)
