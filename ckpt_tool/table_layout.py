"""Tables that fit the width they are printed at, without cutting a number or a name.

A table starts with every column at its natural width. While it is wider than the
terminal, columns give way in the order of their `give` rank: a column is left out,
or, when `stack` is set (the names that identify a row), its cells move onto a line of
their own above the row's other fields. Cells are never truncated; a name longer than
the whole width is folded onto the next line. Piped output (no terminal, no COLUMNS)
uses natural widths: plain text, no padding to a width, no trailing spaces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from ckpt_tool.shown import shown, shown_all

Cell = str | Text
_GAP = "  "  # between columns
_INDENT = "  "  # before a stacked row's fields, notes and folded lines


@dataclass(frozen=True)
class Column:
    header: str
    right: bool = False  # right-justified (numbers)
    give: int | None = None  # order in which the column gives way (1 first); None: never
    stack: bool = False  # gives way by moving above the row instead of being left out
    style: str | None = None


@dataclass
class Row:
    cells: list[Cell]
    above: list[Cell] = field(default_factory=list)  # whole lines before the row
    below: list[Cell] = field(default_factory=list)  # indented lines after it (aliases, notes)


@dataclass
class Layout:
    shown: list[int]  # indices of the columns shown in the row line
    stacked: list[int]  # indices of the columns moved above the row
    left_out: list[str]  # headers of the columns not shown at all
    widths: list[int]


def available_width(console: Console) -> int | None:
    """The width to fit: the terminal's, or COLUMNS when set; None when piped."""
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console.width
    return None


def _text(cell: Cell) -> Text:
    """A cell as text, with control characters from the file made visible (`shown`): a
    name cannot break a row in two or send escapes to the terminal."""
    if isinstance(cell, Text):
        plain = shown(cell.plain)
        return cell if plain == cell.plain else Text(plain, style=cell.style)
    return Text(shown(cell))


def _natural_widths(columns: list[Column], rows: list[Row]) -> list[int]:
    widths = [len(c.header) for c in columns]
    for row in rows:
        for i, cell in enumerate(row.cells):
            widths[i] = max(widths[i], _text(cell).cell_len)
    return widths


def choose_layout(columns: list[Column], rows: list[Row], width: int | None) -> Layout:
    """Which columns stay in the row line, which move above it, which are left out."""
    widths = _natural_widths(columns, rows)
    shown = list(range(len(columns)))
    stacked: list[int] = []
    left_out: list[str] = []

    def line_width() -> int:
        indent = len(_INDENT) if stacked else 0
        return indent + sum(widths[i] for i in shown) + len(_GAP) * (len(shown) - 1)

    givers = sorted((c.give, i) for i, c in enumerate(columns) if c.give is not None)
    for _, i in givers:
        if width is None or line_width() <= width:
            break
        shown.remove(i)
        if columns[i].stack:
            stacked.append(i)
        else:
            left_out.append(columns[i].header)
    stacked.sort()
    return Layout(shown, stacked, left_out, widths)


def table_lines(
    columns: list[Column], rows: list[Row], width: int | None, title: Cell | None = None
) -> list[Text]:
    """The table as lines of styled text, each at most `width` cells wide (when the
    fields of one row fit at all) and without trailing spaces."""
    layout = choose_layout(columns, rows, width)
    lines: list[Text] = []
    if title is not None:
        lines += _fold(_text(title), width, "")
    indent = _INDENT if layout.stacked else ""
    header = _join(
        [Text(columns[i].header, style="bold") for i in layout.shown], columns, layout, indent
    )
    if layout.stacked:
        stacked_head = _INDENT.join(columns[i].header for i in layout.stacked)
        lines.append(Text(stacked_head, style="bold"))
    lines.append(header)
    for row in rows:
        for above in row.above:
            lines += _fold(_text(above), width, "")
        if layout.stacked:
            parts = [_text(row.cells[i]) for i in layout.stacked if _text(row.cells[i]).plain]
            if parts:
                lines += _fold(Text(_INDENT).join(parts), width, "")
        lines.append(_join([row.cells[i] for i in layout.shown], columns, layout, indent))
        for below in row.below:
            lines += _fold(Text(_INDENT) + _text(below), width, _INDENT)
    if layout.left_out:
        lines += _fold(
            Text(
                f"left out at this width: {', '.join(layout.left_out)} (--json has all)",
                style="dim",
            ),
            width,
            _INDENT,
        )
    return lines


def _join(cells: list[Cell], columns: list[Column], layout: Layout, indent: str) -> Text:
    line = Text(indent)
    for k, (cell, i) in enumerate(zip(cells, layout.shown, strict=True)):
        text = _text(cell).copy()
        if columns[i].style and not text.spans:
            text.stylize(columns[i].style)
        pad = layout.widths[i] - text.cell_len
        if k:
            line.append(_GAP)
        if columns[i].right:
            line.append(" " * pad)
            line.append_text(text)
        else:
            line.append_text(text)
            if k < len(cells) - 1:
                line.append(" " * pad)
    line.rstrip()
    return line


def _fold(text: Text, width: int | None, indent: str) -> list[Text]:
    """A line longer than the width folded, at a space when there is one in its second
    half (prose), else at the width (a long name); continuations indented."""
    text.rstrip()
    if width is None or text.cell_len <= width or width <= len(indent) + 8:
        return [text]
    lines: list[Text] = []
    first = True
    while text.cell_len > (width if first else width - len(indent)):
        room = width if first else width - len(indent)
        cut = text.plain.rfind(" ", room // 2, room + 1)
        cut = room if cut <= 0 else cut
        head, text = text[:cut], text[cut:]
        head.rstrip()
        lines.append(head if first else Text(indent) + head)
        text = text[1:] if text.plain.startswith(" ") else text
        first = False
    if text.cell_len:
        lines.append(text if first else Text(indent) + text)
    return lines


def print_lines(console: Console, lines: list[Text], *, fold: bool = True) -> None:
    """Styled on a terminal; plain text (fast, no escape codes) otherwise. Lines wider
    than the terminal are folded."""
    if fold:
        width = available_width(console)
        lines = [part for line in lines for part in _fold(line, width, _INDENT)]
    if console.is_terminal:
        for line in lines:
            console.print(line, soft_wrap=True)
    else:
        console.file.write("".join(line.plain.rstrip() + "\n" for line in lines))


def print_table(
    console: Console, columns: list[Column], rows: list[Row], title: Cell | None = None
) -> None:
    width = available_width(console)
    if width is None:  # piped: the same text as table_lines gives, built column-wise
        console.file.write("".join(line + "\n" for line in plain_table_lines(columns, rows, title)))
        return
    print_lines(console, table_lines(columns, rows, width, title), fold=False)


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _all_str(cells: list) -> bool:
    """Whether every cell is a plain str (one join at C speed, not a test per cell)."""
    try:
        "".join(cells)
    except TypeError:
        return False
    return True


def _column_format(cells: list[str], header: str, right: bool, last: bool) -> tuple[list, str]:
    """One column's shown cells (header first) and the format field that pads them to
    its natural width: str.format pads ASCII text; other text is padded here by its
    width in terminal cells and formatted as it is."""
    cells = shown_all(cells)
    if "".join(cells).isascii():  # one cell per character: str padding will do
        width = max(len(header), max(map(len, cells), default=0))
        return cells, (f"{{:>{width}}}" if right else "{}" if last else f"{{:<{width}}}")
    width = max(len(header), max(map(cell_len, cells), default=0))
    if right:
        return [" " * (width - cell_len(c)) + c for c in cells], "{}"
    return (cells if last else [c + " " * (width - cell_len(c)) for c in cells]), "{}"


def plain_table_lines(
    columns: list[Column], rows: list[Row], title: Cell | None = None
) -> list[str]:
    """The table at natural widths as plain lines (no trailing spaces): what
    `table_lines(columns, rows, None, title)` shows, without a styled text per cell, so
    that a million rows print in seconds."""
    cells = [[row.cells[i] for row in rows] for i in range(len(columns))]
    above = {r: row.above for r, row in enumerate(rows) if row.above}
    below = {r: row.below for r, row in enumerate(rows) if row.below}
    return plain_column_lines(columns, cells, title, above, below)


def plain_column_lines(
    columns: list[Column],
    cells: list[list[Cell]],
    title: Cell | None = None,
    above: dict[int, list[Cell]] | None = None,
    below: dict[int, list[Cell]] | None = None,
) -> list[str]:
    """plain_table_lines of a table given column by column: cells[i][r] is column i of
    row r; above/below hold the lines before/after the rows that have any."""
    lines: list[str] = []
    if title is not None:
        lines.append(shown(_plain(title)).rstrip())
    last = len(columns) - 1
    shown_cells, fields = [], []
    for i, c in enumerate(columns):
        plain = cells[i] if _all_str(cells[i]) else [_plain(x) for x in cells[i]]
        column, field = _column_format([c.header, *plain], c.header, c.right, i == last)
        shown_cells.append(column)
        fields.append(field)
    row_format = _GAP.join(fields).format
    row_lines = [row_format(*row).rstrip() for row in zip(*shown_cells, strict=True)]
    lines.append(row_lines[0])  # the header
    if not above and not below:
        lines += row_lines[1:]
        return lines
    above, below = above or {}, below or {}
    for r, line in enumerate(row_lines[1:]):
        if r in above:
            lines += [shown(_plain(line_above)).rstrip() for line_above in above[r]]
        lines.append(line)
        if r in below:
            lines += [(_INDENT + shown(_plain(line_below))).rstrip() for line_below in below[r]]
    return lines


def print_columns(
    console: Console,
    columns: list[Column],
    cells: list[list[Cell]],
    title: Cell | None = None,
    below: dict[int, list[str]] | None = None,
    below_style: str | None = None,
) -> None:
    """print_table of a table given column by column (see plain_column_lines): piped,
    no object per row is made."""
    if available_width(console) is None:
        lines = plain_column_lines(columns, cells, title, None, below)
        console.file.write("\n".join(lines) + "\n")
        return
    below = below or {}
    rows = [
        Row(list(row), below=[Text(line, style=below_style) for line in below.get(r, ())])
        for r, row in enumerate(zip(*cells, strict=True))
    ]
    print_table(console, columns, rows, title)
