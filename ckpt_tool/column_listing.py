"""`ckpt-tool list` of a VariableTable: selection, order and totals, column by column.

The same listing as listing.build_listing gives for the reader's variables(), for the
plain table (no --filter, --roles, --stats, --tree or --json): a million rows are
selected and sorted with numpy, and no object is made per row.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ckpt_tool.readers.base import Reader
from ckpt_tool.readers.variable_table import KINDS, VariableTable


@dataclass
class ColumnListing:
    path: str
    format: str
    description: str
    table: VariableTable
    rows: np.ndarray  # the rows of `table` shown, in the order shown
    hidden: Counter  # kind -> number of tensors not shown
    hidden_bytes: int

    @property
    def totals(self) -> dict:
        shape_counts = np.bincount(self.table.shape_ids[self.rows], minlength=1)
        parameters = 0
        for shape_id in np.flatnonzero(shape_counts).tolist():
            n = int(shape_counts[shape_id])
            for d in self.table.shapes[shape_id]:
                n *= d
            parameters += n
        return {
            "tensors": len(self.rows),
            "parameters": parameters,
            "bytes": _total(self.table.nbytes[self.rows]),
        }


def _total(sizes: np.ndarray) -> int:
    """The exact sum of sizes (Python ints: no int64 overflow), per distinct size."""
    values, counts = np.unique(sizes, return_counts=True)
    return sum(v * c for v, c in zip(values.tolist(), counts.tolist(), strict=True))


def column_pattern(pattern: str | None) -> bool:
    """Whether build_column_listing takes this --filter pattern: ASCII (names are)."""
    return pattern is None or pattern.isascii()


def build_column_listing(
    reader: Reader,
    table: VariableTable,
    *,
    show_all: bool = False,
    pattern: str | None = None,
    sort: str = "order",
) -> ColumnListing:
    """build_listing's selection and order over a VariableTable (an ASCII pattern)."""
    weight = KINDS.index("weight")
    hidden: Counter = Counter()
    hidden_bytes = 0
    rows = table.order  # rows of the table, in the variables' order
    if not show_all:
        kinds = table.kind_ids[rows]
        for kind_id in np.unique(kinds).tolist():
            if kind_id != weight:
                of_kind = table.kind_ids == kind_id
                hidden[KINDS[kind_id]] += int(of_kind.sum())
                hidden_bytes += _total(table.nbytes[of_kind])
        rows = rows[kinds == weight]
        del kinds
    if pattern:
        rows = rows[_matching(table, rows, pattern)]
    if sort == "name" and len(rows) > 1:  # ASCII names: their bytes sort as the strings
        words = table.names.matrix[rows].view(">u8")
        rows = rows[np.lexsort(words.T[::-1])]
    elif sort == "size":  # (-nbytes, order): rows are in order already
        rows = rows[np.argsort(-table.nbytes[rows], kind="stable")]
    from ckpt_tool.readers.choice import describe_format

    description = describe_format(reader.path, reader.format_name)
    return ColumnListing(
        str(reader.path), reader.format_name, description, table, rows, hidden, hidden_bytes
    )


_ROWS = 1 << 16  # names matched at once


def _matching(table: VariableTable, rows: np.ndarray, pattern: str) -> np.ndarray:
    """Which of `rows` have a name matching the glob (as fnmatchcase: a name is its
    key and has no aliases here). Names and pattern are ASCII, so the pattern matches
    the names' bytes as it matches their text."""
    match = re.compile(fnmatch.translate(pattern).encode("ascii")).match
    width = table.names.matrix.shape[1]
    found = np.zeros(len(rows), bool)
    for first in range(0, len(rows) if width else 0, _ROWS):
        chunk = table.names.matrix[rows[first : first + _ROWS]]
        names = chunk.view(f"S{width}")[:, 0].tolist()  # (no zero byte inside a name)
        found[first : first + len(names)] = [match(name) is not None for name in names]
    return found
