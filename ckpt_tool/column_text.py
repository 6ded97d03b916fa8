"""A piped table written from columns with numpy: a million rows without a str per row.

table_layout.plain_column_lines pads each column to its natural width with str.format,
one line per row. When every cell is printable ASCII (nothing to escape, one character
per byte) and the last column is right-justified, every line has the same length, so
the lines are rows of a byte matrix: the first column is copied from a matrix of names,
and the others, which repeat a few texts (shapes, dtypes, sizes), are taken from a
small matrix of their distinct texts, already padded. The text is the same, byte for
byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

import numpy as np

from ckpt_tool.table_layout import _GAP

ROWS_PER_WRITE = 1 << 16
_SPACE, _NEWLINE = ord(" "), ord("\n")


@dataclass
class CodedColumn:
    """A column whose row r shows texts[i] where distinct[i] == values[r]: `distinct`
    holds the values of the rows shown, sorted; the texts are printable ASCII."""

    header: str
    right: bool
    values: np.ndarray
    distinct: np.ndarray
    texts: list[str]


def write_table(
    file: TextIO,
    title: str,
    name_header: str,
    names: np.ndarray,
    name_lengths: np.ndarray,
    rows: np.ndarray,
    columns: list[CodedColumn],
) -> None:
    """The title, the header line and a line for each of `rows`: its name (row r of
    `names`, a zero-padded uint8 matrix of printable ASCII, name_lengths[r] long),
    left-justified, then each column's text; the last column must be right-justified."""
    assert columns and columns[-1].right
    name_width = max(len(name_header), int(name_lengths[rows].max(initial=0)))
    widths = [max([len(c.header), *map(len, c.texts)]) for c in columns]
    cells = [name_header.ljust(name_width)]
    cells += [_justify(c.header, w, c.right) for c, w in zip(columns, widths, strict=True)]
    file.write(f"{title}\n{_GAP.join(cells)}\n")
    starts = np.cumsum([0, name_width, *widths]) + np.arange(len(widths) + 2) * len(_GAP)
    line_width = int(starts[-1]) - len(_GAP) + 1  # and a newline
    padded = [_text_matrix(c, w) for c, w in zip(columns, widths, strict=True)]
    copied = min(name_width, names.shape[1])
    for first in range(0, len(rows), ROWS_PER_WRITE):
        chunk = rows[first : first + ROWS_PER_WRITE]
        lines = np.full((len(chunk), line_width), _SPACE, np.uint8)
        name_bytes = names[chunk, :copied]
        lines[:, :copied] = np.where(name_bytes == 0, _SPACE, name_bytes)
        for column, texts, start in zip(columns, padded, starts[1:-1].tolist(), strict=True):
            ids = np.searchsorted(column.distinct, column.values[chunk])
            lines[:, start : start + texts.shape[1]] = texts[ids]
        lines[:, -1] = _NEWLINE
        file.write(lines.tobytes().decode("ascii"))


def _justify(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _text_matrix(column: CodedColumn, width: int) -> np.ndarray:
    """Row i: texts[i] justified to `width`, as bytes."""
    joined = "".join(_justify(t, width, column.right) for t in column.texts)
    return np.frombuffer(joined.encode("ascii"), np.uint8).reshape(len(column.texts), width)
