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
