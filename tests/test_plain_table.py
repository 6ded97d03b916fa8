"""Piped tables are built column-wise as plain strings: the lines must be exactly the
styled table's lines at natural width, whatever the cells hold."""

from __future__ import annotations

from rich.text import Text

from ckpt_tool.table_layout import Column, Row, plain_table_lines, table_lines

COLUMNS = [
    Column("name", give=3, stack=True),
    Column("role", style="dim"),
    Column("shape"),
    Column("params", right=True, give=1),
    Column("note"),
]


def _rows() -> list[Row]:
    return [
        Row(["dense/kernel", "kernel", "[8, 3]", "24", ""]),
        Row(["a\nb\x1b[2J", Text("bias", style="bold"), "[3]", "3", "x\u202ey "]),
        Row(["名前/重み", "gamma", "[1]", "1", "end"], below=[Text("= copy\tkey", style="dim")]),
        Row(["trailing ", "", "[]", "1,000,000", "  "], above=["above\rline "]),
        Row(["émoji 🙂/w", Text("b\x00", style="dim"), "[2, 2]", "４ 🙂", "-"], below=["  "]),
    ]


def test_plain_lines_equal_the_styled_table_at_natural_width():
    title = Text("path\x1b]0;x\x07 (TensorFlow checkpoint) ", style="bold")
    styled = [line.plain.rstrip() for line in table_lines(COLUMNS, _rows(), None, title)]
    assert plain_table_lines(COLUMNS, _rows(), title) == styled
    assert not any("\x1b" in line or "\n" in line for line in styled)


def test_plain_lines_without_rows_or_extra_lines():
    for rows in ([], _rows()[:2]):
        styled = [line.plain.rstrip() for line in table_lines(COLUMNS, rows, None)]
        assert plain_table_lines(COLUMNS, rows) == styled
