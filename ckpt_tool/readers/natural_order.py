"""Natural order of names ("layer_2" before "layer_10"), for many names at once.

`natural_key` splits a name into text and numbers: ("layer_", 10, ""). Made one name at a
time, these keys take seconds for a million names. `natural_keys` gives, for names that are
ASCII without characters below a newline (the usual case), one plain string per name that
sorts the same way: every number is zero-padded to the width of the longest number (equal
numbers, written with or without leading zeros, become equal text, as their ints are
equal) and its digits become the characters 1..10, which sort below any character of
such a name (as a number in a key tuple ends the text before it). The padding is done
with numpy over all the names joined, not with a function call per number.
"""

from __future__ import annotations

import re

import numpy as np

_DIGITS = re.compile(r"(\d+)")
_LOW = re.compile("[\x00-\x0a]")  # the separator and the characters digits become
MAX_PADDED_WIDTH = 64  # longer numbers: keys made one by one


def natural_key(text: str) -> tuple:
    parts = _DIGITS.split(text)  # text, digits, text, ...: the odd items are numbers
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


def natural_keys(texts: list[str]) -> list:
    """Sort keys ordering `texts` as natural_key orders them (ties stay ties)."""
    if not texts:
        return []
    joined = "".join(texts)
    if not joined.isascii() or _LOW.search(joined):
        return list(map(natural_key, texts))
    text = np.frombuffer("\x00".join(texts).encode("ascii"), np.uint8)
    is_digit = (text - np.uint8(ord("0")) < 10).view(np.int8)
    edge = np.zeros(1, np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate((edge, is_digit, edge))))
    starts, lengths = edges[::2], edges[1::2] - edges[::2]  # the runs of digits
    width = int(lengths.max(initial=0))
    if width > MAX_PADDED_WIDTH:
        return list(map(natural_key, texts))
    # Each character moves right by the zeros put before its number and all numbers
    # before it; the places left free are the zeros.
    step = np.ones(len(text), np.int64)
    step[starts] += width - lengths
    padded = np.full(len(text) + int(step.sum()) - len(text), ord("0"), np.uint8)
    padded[np.cumsum(step) - 1] = text
    padded[padded - np.uint8(ord("0")) < 10] -= np.uint8(ord("0") - 1)  # digits -> 1..10
    return padded.tobytes().decode("ascii").split("\x00")


def natural_matrix(matrix: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """natural_keys of names given as rows of a zero-padded uint8 matrix (printable
    ASCII, no zero byte inside a name), as rows of another such matrix, its width a
    multiple of 8: rows compare as their names' sort keys do. None when a number is
    longer than MAX_PADDED_WIDTH digits."""
    n, width = matrix.shape
    run = np.zeros(n, np.int64)  # digits so far in the number each row is in
    numbers = np.zeros(n, np.int64)
    digit_count = np.zeros(n, np.int64)
    longest = 0
    for j in range(width):  # (the zero padding is no digit: 0 - ord("0") wraps)
        is_digit = matrix[:, j] - np.uint8(ord("0")) < 10
        numbers += is_digit & (run == 0)
        run = np.where(is_digit, run + 1, 0)
        digit_count += is_digit
        longest = max(longest, int(run.max(initial=0)))
    if longest > MAX_PADDED_WIDTH:
        return None
    new_lengths = lengths + numbers * longest - digit_count
    out_width = int(new_lengths.max(initial=0))
    out = np.zeros((n, out_width + -out_width % 8), np.uint8)
    for start in range(0, n, _ROWS):
        rows = slice(start, start + _ROWS)
        _pad_numbers(matrix[rows], lengths[rows], new_lengths[rows], longest, out[rows])
    return out


_ROWS = 1 << 16  # rows padded at once


def _pad_numbers(matrix, lengths, new_lengths, digits: int, out: np.ndarray) -> None:
    """out = the rows of `matrix` with every number zero-padded to `digits` digits and
    the digits 0-9 written as the characters 1-10."""
    n, width = matrix.shape
    is_digit = matrix - np.uint8(ord("0")) < 10  # (the zero padding is no digit)
    starts = is_digit.copy()  # where a number starts
    starts[:, 1:] &= ~is_digit[:, :-1]
    # A number's length: its digits up to the next number's start, counted backwards.
    run = np.zeros((n, width + 1), np.int16)
    for j in range(width - 1, -1, -1):
        run[:, j] = np.where(is_digit[:, j], run[:, j + 1] + 1, 0)
    # Each character moves right by the zeros put before its number and those before it.
    shift = np.where(starts, digits - run[:, :width], 0).astype(np.int64)
    np.cumsum(shift, axis=1, out=shift)
    # (flat indices: one-dimensional takes and puts are the fast ones)
    at = np.flatnonzero(np.arange(width) < lengths[:, None])
    out_width = out.shape[1]
    moved = at + (at // width) * (out_width - width) + shift.ravel().take(at)
    text = matrix.ravel().take(at)
    text = np.where(is_digit.ravel().take(at), text - np.uint8(ord("0") - 1), text)
    out[...] = np.arange(out_width) < new_lengths[:, None]  # the padding zeros: 1
    out.ravel()[moved] = text
