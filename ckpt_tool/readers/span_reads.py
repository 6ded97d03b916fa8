"""A stored tensor's bytes read piece by piece into one reused buffer.

Streaming work (statistics, comparisons) needs each value once. Reading a whole tensor
first puts every byte through memory three times (the kernel's copy into a new array,
then each pass over it) and faults in fresh pages for every tensor; a piece of a
megabyte is still in the CPU cache when it is checksummed and used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

# Bytes per piece: a multiple of every item size, small enough to stay in the CPU cache.
PIECE_BYTES = 1 << 20


class ShortRead(Exception):
    """The file ended before the span did."""


def read_span(f: BinaryIO, offset: int, nbytes: int, piece_bytes: int) -> Iterator[np.ndarray]:
    """Bytes offset..offset+nbytes of an open file as uint8 pieces of `piece_bytes` (the
    last may be shorter), each read into the same buffer: a piece is valid until the
    next is taken. Raises ShortRead when the file ends early."""
    buffer = np.empty(max(0, min(piece_bytes, nbytes)), np.uint8)
    f.seek(offset)
    left = nbytes
    while left:
        piece = buffer[: min(left, buffer.size)]
        if f.readinto(piece) != piece.size:
            raise ShortRead
        yield piece
        left -= piece.size
