"""Rendering for `export` and `diff` (rich, on top of console's consoles)."""

from __future__ import annotations

from rich.text import Text

from ckpt_tool import console
from ckpt_tool.console import err, escape, human_bytes
from ckpt_tool.diff import EQUAL, DiffReport, PairDiff
from ckpt_tool.export import ExportResult
from ckpt_tool.shown import shown
from ckpt_tool.table_layout import Column, Row, print_lines, print_table


def render_export(result: ExportResult, notes: list[str] | None = None) -> None:
    """On stderr (stdout stays free for pipes): the layout's notes, then one line saying
    what was written where."""
    for note in notes or ():
        err.print(f"[dim]note:[/] {escape(note)}")
    layout = result.manifest.get("layout", "keras")
    how = "" if layout == "keras" else f" ({layout} layout)"
    err.print(
        f"wrote [bold]{escape(str(result.path))}[/]{how}: {result.arrays} arrays, "
        f"{human_bytes(result.source_bytes)} of tensors, {human_bytes(result.file_bytes)} on disk"
    )
    if result.manifest_path is not None:
        err.print(f"wrote its manifest beside it: [bold]{escape(str(result.manifest_path))}[/]")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pair_row(p: PairDiff) -> Row:
    v = p.values
    below = [] if p.a.name == p.b.name else [Text(p.b.name, style="dim")]
    if p.a.shape != p.b.shape:
        shape = f"{_shape(p.a.shape)} vs {_shape(p.b.shape)}"
    else:
        shape = _shape(p.a.shape)
    dtype = p.a.dtype if p.a.dtype == p.b.dtype else f"{p.a.dtype} vs {p.b.dtype}"
    style = "green" if p.status == EQUAL else "red"
    mismatched = "-" if v is None else f"{v.mismatched:,}/{v.elements:,}"
    cells = [
        p.a.name,
        Text(p.status, style=style),
        shape,
        dtype,
        _num(None if v is None else v.max_abs),
        _num(None if v is None else v.max_rel),
        mismatched,
        p.matched_by if p.role is None else f"{p.matched_by}: {p.role}",
    ]
    return Row(cells, below=below)


# Columns in the order they give way on a narrow terminal; the name moves above its row.
_DIFF_COLUMNS = [
    Column("name (a / b)", stack=True, give=3),
    Column("status"),
    Column("shape", give=4),
    Column("dtype", give=2),
    Column("max abs", right=True),
    Column("max rel", right=True),
    Column("mismatched", right=True, give=5),
    Column("matched by", style="dim", give=1),
]


def render_diff(report: DiffReport, *, show_all: bool = False) -> None:
    """Pairs that differ (every pair with show_all), tensors on one side only, a summary,
    and a hint when names seem to pair wrongly."""
    out = console.out
    rows = [p for p in report.pairs if show_all or p.status != EQUAL]
    if rows:
        print_table(out, _DIFF_COLUMNS, [_pair_row(p) for p in rows])
    lines: list[Text] = []
    for label, infos in (("only in A", report.only_a), ("only in B", report.only_b)):
        if infos:
            lines.append(Text(label, style="bold") + Text(f" ({len(infos)}):"))
            lines += [
                Text(f"  {shown(info.name)}  {_shape(info.shape)} {info.dtype}") for info in infos
            ]
    s = report.summary
    tol = f"atol={report.atol:g}, rtol={report.rtol:g}"
    verdict = Text("match", style="green") if report.ok else Text("differ", style="red")
    lines.append(
        verdict
        + Text(
            f": {s['compared']} compared ({s['equal']} equal, {s['differ']} differ, "
            f"{s['shape_mismatch']} shape, {s['dtype_mismatch']} dtype mismatches), "
            f"{s['only_in_a']} only in A, {s['only_in_b']} only in B  "
        )
        + Text(f"({tol})", style="dim")
    )
    lines += [Text("hint: ", style="yellow") + Text(shown(h)) for h in diff_hints(report)]
    print_lines(out, lines)


def diff_hints(report: DiffReport) -> list[str]:
    """What the user can try when the result points at a known cause."""
    hints = []
    if report.only_a and report.only_b and not report.by_role:
        hints.append(
            f"{len(report.only_a)} only in A and {len(report.only_b)} only in B: the names "
            "may not pair across these files; --by-role pairs tensors by layer and role instead"
        )
    return hints
