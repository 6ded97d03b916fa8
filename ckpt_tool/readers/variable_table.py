"""A reader's variables column by column: what `list` prints, without an object per variable.

`Reader.variables()` gives one VariableInfo per tensor. For an index of a million
entries that is a million objects (and their names, dicts and tuples): seconds and
hundreds of megabytes. A reader that can describe its variables more simply (a TF1
checkpoint whose names are its keys) gives a VariableTable instead: names as rows of a
byte matrix, and ids into short lists of the distinct shapes, dtypes and kinds.
Readers that cannot (object graphs, SavedModels, partitioned tensors, names that need
unescaping) give None, and callers use variables().
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ckpt_tool.readers.base import BOOKKEEPING, OPTIMIZER, WEIGHT, VariableInfo
from ckpt_tool.readers.key_column import KeyColumn

KINDS = (WEIGHT, OPTIMIZER, BOOKKEEPING)  # kind_ids index this; also the sort's group order
_SLASH, _DOT = ord("/"), ord(".")


@dataclass
class VariableTable:
    """Variables as columns with a row per entry (in key order), and `order`: the row
    of each variable in the reader's order (variable i, of order i, is row order[i]).
    A variable's name is its key."""

    names: KeyColumn  # printable ASCII, nothing to escape or unescape
    shape_ids: np.ndarray  # into shapes
    shapes: list[tuple[int, ...]]
    dtype_numbers: np.ndarray  # TensorFlow DataType numbers
    dtypes: dict[int, str]  # DataType number -> dtype name
    kind_ids: np.ndarray  # into KINDS
    nbytes: np.ndarray  # int64
    order: np.ndarray

    def __len__(self) -> int:
        return len(self.order)

    def infos(self) -> list[VariableInfo]:
        """The same variables as VariableInfo (what variables() gives, without extra)."""
        rows = self.order
        names = [self.names[row].decode("ascii") for row in rows.tolist()]
        return [
            VariableInfo(name, name, self.shapes[s], self.dtypes[d], KINDS[k], (), i, size)
            for i, (name, s, d, k, size) in enumerate(
                zip(
                    names,
                    self.shape_ids[rows].tolist(),
                    self.dtype_numbers[rows].tolist(),
                    self.kind_ids[rows].tolist(),
                    self.nbytes[rows].tolist(),
                    strict=True,
                )
            )
        ]


def plain_keys(keys: KeyColumn) -> bool:
    """Keys that are their own names: printable ASCII, and no component starting with
    a dot (`.ATTRIBUTES`, `.OPTIMIZER_SLOT`, escapes `..` and `.S`)."""
    if keys.matrix is None or not keys.is_ascii_text():
        return False
    m = keys.matrix
    if not m.shape[1]:
        return True
    dot = m == _DOT
    component_dot = dot[:, 1:] & (m[:, :-1] == _SLASH)
    escaped = dot[:, :-1] & (dot[:, 1:] | (m[:, 1:] == ord("S")))
    return not (dot[:, 0].any() or component_dot.any() or escaped.any())


def component_in(keys: KeyColumn, last: bool, words: Iterable[str]) -> np.ndarray:
    """Per key: whether its first (or last) `/`-separated component is one of `words`."""
    m, lengths = keys.matrix, keys.lengths
    n, width = m.shape
    if not width:
        return np.zeros(n, bool)
    slash = m == _SLASH
    if last:  # the component after the last slash
        after = width - slash[:, ::-1].argmax(axis=1)  # (width - 0 when no slash...)
        start = np.where(slash.any(axis=1), after, 0)
        end = lengths
    else:  # up to the first slash
        start = np.zeros(n, np.int64)
        end = np.where(slash.any(axis=1), slash.argmax(axis=1), lengths)
    hit = np.zeros(n, bool)
    by_length: dict[int, list[bytes]] = {}
    for word in words:
        by_length.setdefault(len(word), []).append(word.encode("ascii"))
    for size, same_size in by_length.items():
        rows = np.flatnonzero(end - start == size)
        if not rows.size or not size:
            continue
        text = m[rows[:, None], start[rows, None] + np.arange(size)]
        text = np.ascontiguousarray(text).view(f"S{size}")[:, 0]
        found = np.zeros(len(rows), bool)
        for word in same_size:
            found |= text == word
        hit[rows[found]] = True
    return hit
