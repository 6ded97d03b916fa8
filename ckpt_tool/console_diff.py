"""Rendering for `export` and `diff` (rich, on top of console's consoles)."""

from __future__ import annotations

from rich.table import Table

from ckpt_tool.console import err, escape, human_bytes, out
from ckpt_tool.diff import EQUAL, DiffReport, PairDiff
from ckpt_tool.export import ExportResult


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


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pair_row(p: PairDiff) -> list[str]:
    v = p.values
    a, b = escape(p.a.name), escape(p.b.name)
    name = a if p.a.name == p.b.name else f"{a}\n[dim]{b}[/]"
    if p.a.shape != p.b.shape:
        shape = f"{_shape(p.a.shape)} vs {_shape(p.b.shape)}"
    else:
        shape = _shape(p.a.shape)
    dtype = p.a.dtype if p.a.dtype == p.b.dtype else f"{p.a.dtype} vs {p.b.dtype}"
    style = "green" if p.status == EQUAL else "red"
    mismatched = "-" if v is None else f"{v.mismatched:,}/{v.elements:,}"
    return [
        name,
        f"[{style}]{p.status}[/]",
        shape,
        dtype,
        _num(None if v is None else v.max_abs),
        _num(None if v is None else v.max_rel),
        mismatched,
        escape(p.matched_by if p.role is None else f"{p.matched_by}: {p.role}"),
    ]


def render_diff(report: DiffReport, *, show_all: bool = False) -> None:
    """Pairs that differ (every pair with show_all), tensors on one side only, a summary."""
    rows = [p for p in report.pairs if show_all or p.status != EQUAL]
    if rows:
        table = Table(box=None, title_justify="left")
        for col in ("name (a / b)", "status", "shape", "dtype"):
            table.add_column(col, overflow="fold")
        for col in ("max abs", "max rel", "mismatched"):
            table.add_column(col, justify="right")
        table.add_column("matched by", style="dim")
        for p in rows:
            table.add_row(*_pair_row(p))
        out.print(table)
    for label, infos in (("only in A", report.only_a), ("only in B", report.only_b)):
        if infos:
            out.print(f"[bold]{label}[/] ({len(infos)}):")
            for info in infos:
                out.print(f"  {escape(info.name)}  {_shape(info.shape)} {info.dtype}")
    s = report.summary
    tol = f"atol={report.atol:g}, rtol={report.rtol:g}"
    verdict = "[green]match[/]" if report.ok else "[red]differ[/]"
    out.print(
        f"{verdict}: {s['compared']} compared ({s['equal']} equal, {s['differ']} differ, "
        f"{s['shape_mismatch']} shape, {s['dtype_mismatch']} dtype mismatches), "
        f"{s['only_in_a']} only in A, {s['only_in_b']} only in B  [dim]({tol})[/]"
    )
