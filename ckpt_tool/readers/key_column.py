"""The keys of a table as one numpy matrix: a row of bytes per key, zero-padded.

A table stores each key as the bytes it shares with the key before it plus its own new
bytes. Rebuilt one key at a time, a million keys take a second and a bytes object each;
here they are rebuilt column by column: byte j of key i comes from the last key at or
before i that wrote byte j itself (shared <= j), found with a running maximum.

`KeyColumn` gives the keys as a sequence of bytes (made on demand), and the matrix to
those who work on all keys at once (the column-wise listing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# A matrix larger than this many times the keys' own bytes (one long key among many short
# ones) is not made: the keys are rebuilt one by one instead.
MAX_PADDING_RATIO = 4
_SMALL = 1 << 20  # bytes: a matrix this small is always fine


class KeyColumn(Sequence[bytes]):
    """Keys as rows of `matrix` (uint8, zero-padded to a multiple of 8 bytes), each
    `lengths[i]` long; or, when made from a list, that list (`matrix` is then None)."""

    def __init__(self, matrix: np.ndarray | None, lengths: np.ndarray, listed=None):
        self.matrix = matrix
        self.lengths = lengths
        self._listed: list[bytes] | None = listed

    @classmethod
    def from_list(cls, keys: list[bytes]) -> KeyColumn:
        return cls(None, np.fromiter(map(len, keys), np.int64, len(keys)), keys)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            listed = None if self._listed is None else self._listed[i]
            matrix = None if self.matrix is None else self.matrix[i]
            return KeyColumn(matrix, self.lengths[i], listed)
        if self._listed is not None:
            return self._listed[i]
        return self.matrix[i, : self.lengths[i]].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.tolist())

    def tolist(self) -> list[bytes]:
        """The keys as bytes objects (made anew for a matrix: they are not kept)."""
        if self._listed is not None:
            return self._listed
        n, width = self.matrix.shape
        if not width:
            return [b""] * n
        if self._no_zero_inside():
            # numpy's fixed-width bytes drop the padding zeros (and only those)
            return self.matrix.view(f"S{width}")[:, 0].tolist()
        flat = self.matrix.tobytes()
        starts = range(0, len(flat), width)
        return list(map(_cut, [flat] * n, starts, self.lengths.tolist()))

    def _no_zero_inside(self) -> bool:
        """No key holds a zero byte (a zero is padding only)."""
        inside = np.arange(self.matrix.shape[1]) < self.lengths[:, None]
        return not ((self.matrix == 0) & inside).any()

    def is_ascii_text(self) -> bool:
        """Whether every key is printable ASCII (space to '~'), so that a key shows as
        it is and its text is its bytes (no NUL inside: padding and key tell apart)."""
        if self.matrix is None:
            return False
        inside = np.arange(self.matrix.shape[1]) < self.lengths[:, None]
        m = self.matrix
        return bool(((m >= 0x20) & (m < 0x7F) | ~inside).all())


def _cut(flat: bytes, start: int, length: int) -> bytes:
    return flat[start : start + length]


def rebuild_keys(
    data: np.ndarray, shared: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> KeyColumn | None:
    """The keys of entries in table order: key i is key i-1's first shared[i] bytes,
    then data[starts[i]:ends[i]]. shared[i] is at most key i-1's length, and 0 where a
    block starts (the caller checked both). None when they are not in strictly
    increasing order, or when the matrix would be much larger than the keys."""
    n = len(shared)
    lengths = shared + (ends - starts)
    width = int(lengths.max(initial=0))
    width += -width % 8  # whole 8-byte words, compared below as big-endian integers
    if n * width > max(MAX_PADDING_RATIO * int(lengths.sum()), _SMALL):
        return None
    matrix = np.zeros((n, width), np.uint8)
    everyone = np.arange(n)
    source = np.empty(n, np.int64)
    at = np.empty(n, np.int64)
    last = len(data) - 1
    for j in range(int(lengths.max(initial=0))):
        # the key that wrote byte j itself, at or before each key
        np.multiply(everyone, shared <= j, out=source)
        np.maximum.accumulate(source, out=source)
        np.take(starts, source, out=at)
        at -= shared.take(source)
        at += j
        np.minimum(at, last, out=at)
        matrix[:, j] = data.take(at) * (j < lengths)
    keys = KeyColumn(matrix, lengths)
    return keys if _strictly_increasing(keys) else None


def _strictly_increasing(keys: KeyColumn) -> bool:
    """Each key bytewise after the one before. Rows compare 8 bytes at a time; rows
    equal with their zero padding differ only by trailing zero bytes, and the shorter
    is then the smaller."""
    if len(keys) < 2 or not keys.matrix.shape[1]:
        return len(keys) < 2
    words = keys.matrix.view(">u8")
    before, after = words[:-1], words[1:]
    less = np.zeros(len(keys) - 1, bool)
    equal = np.ones(len(keys) - 1, bool)
    for c in range(words.shape[1]):
        less |= equal & (before[:, c] < after[:, c])
        equal &= before[:, c] == after[:, c]
    return bool((less | equal & (keys.lengths[:-1] < keys.lengths[1:])).all())
