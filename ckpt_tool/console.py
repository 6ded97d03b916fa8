"""The one place that knows rich: tables, trees, progress and errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ckpt_tool.listing import ListedTensor, Listing

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=False)
if not out.is_terminal and "COLUMNS" not in os.environ:
    out.width = 200  # piped to a file or a program: do not fold names at 80 columns
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """One line on stderr: the file and what is wrong with it."""
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


def print_note(message: str) -> None:
    err.print(f"[dim]{message}[/]")


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


@contextmanager
def progress(description: str, total: int) -> Iterator[callable]:
    """A progress bar on stderr when it is a terminal; silent otherwise.
    Yields advance(n=1)."""
    if not err.is_terminal or total <= 1:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def track(items: Iterable[T], description: str, total: int) -> Iterator[T]:
    with progress(description, total) as advance:
        for item in items:
            yield item
            advance()


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _name_lines(t: ListedTensor) -> list[str]:
    """The resolved name, then the raw key when it says more, then folded copies."""
    info = t.info
    lines = [info.name]
    if info.key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE") != info.name:
        lines.append(info.key)
    lines.extend(f"= {k}" for k in t.duplicate_keys)
    return lines


def _stat(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


_RIGHT = {"params", "bytes", "min", "max", "mean", "std", "nan", "inf"}


def render_listing(listing: Listing, *, show_roles: bool = False, show_stats: bool = False) -> None:
    headers = ["name"]
    if show_roles:
        headers += ["layer", "role", "evidence"]
    headers += ["shape", "dtype", "params", "bytes"]
    if show_stats:
        headers += ["min", "max", "mean", "std", "nan", "inf"]
    rows = []
    for t in listing.tensors:
        row = [_name_lines(t)]
        if show_roles:
            role = t.role or {}
            row += [role.get("layer") or "-", role.get("role") or "?", role.get("evidence") or ""]
        row += [
            _shape(t.info.shape),
            t.info.dtype,
            f"{t.info.num_elements:,}",
            human_bytes(t.info.nbytes),
        ]
        if show_stats:
            s = t.stats or {}
            row += [_stat(s.get(k)) for k in ("min", "max", "mean", "std")]
            row += [str(s.get("nan", "-")), str(s.get("inf", "-"))]
        rows.append(row)
    title = f"{listing.path} ({listing.format})"
    if out.is_terminal:
        _rich_table(title, headers, rows)
    else:  # piped: plain aligned text, fast for thousands of rows, no escape codes
        _plain_table(title, headers, rows)
    _print_totals(listing)


def _rich_table(title: str, headers: list[str], rows: list[list]) -> None:
    table = Table(title=escape(title), title_justify="left", box=None)
    for header in headers:
        if header == "name":
            table.add_column(header, overflow="fold", ratio=1)
        elif header == "layer":
            table.add_column(header, overflow="fold")
        else:
            justify = "right" if header in _RIGHT else "left"
            style = "dim" if header == "evidence" else None
            table.add_column(header, justify=justify, no_wrap=True, style=style)
    for name_lines, *cells in rows:
        first, *more = (escape(line) for line in name_lines)
        name = "\n".join([first, *(f"[dim]{line}[/]" for line in more)])
        table.add_row(name, *(escape(c) for c in cells))
    out.print(table)


def _plain_table(title: str, headers: list[str], rows: list[list]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths[0] = max(widths[0], *(len(line) for line in row[0]))
        for i, cell in enumerate(row[1:], 1):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if h in _RIGHT else c.ljust(w)
            for c, w, h in zip(cells, widths, headers, strict=True)
        ]
        return "  ".join(parts).rstrip()

    text = [title, line(headers)]
    for name_lines, *cells in rows:
        text.append(line([name_lines[0], *cells]))
        text.extend("  " + extra for extra in name_lines[1:])
    out.file.write("\n".join(text) + "\n")


def render_tree(listing: Listing) -> None:
    from rich.tree import Tree

    root = Tree(escape(f"{listing.path} ({listing.format})"))
    nodes: dict[str, Tree] = {}
    for t in listing.tensors:
        parts = t.info.name.split("/")
        parent, path = root, ""
        for part in parts[:-1]:
            path = f"{path}/{part}"
            if path not in nodes:
                nodes[path] = parent.add(escape(part))
            parent = nodes[path]
        parent.add(
            f"{escape(parts[-1])}  {_shape(t.info.shape)} {t.info.dtype}  "
            f"[dim]{human_bytes(t.info.nbytes)}[/]"
        )
    out.print(root)
    _print_totals(listing)


def _print_totals(listing: Listing) -> None:
    totals = listing.totals
    out.print(
        f"[bold]{totals['tensors']}[/] tensors, [bold]{totals['parameters']:,}[/] parameters, "
        f"[bold]{human_bytes(totals['bytes'])}[/]"
    )
    folded = sum(len(t.duplicate_keys) for t in listing.tensors)
    if folded:
        out.print(f"[dim]{folded} byte-identical copies shown as aliases and counted once[/]")
    if listing.hidden:
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(listing.hidden.items()))
        out.print(
            f"[dim]hidden: {parts} tensors ({human_bytes(listing.hidden_bytes)}); "
            "--all shows them[/]"
        )


def render_roles(role_map, infos_by_key: dict | None = None) -> None:
    """The layers found in a weight file and which variable plays which role."""
    table = Table(title="layers and roles", title_justify="left", box=None)
    for col in ("layer", "class", "role", "variable", "shape", "evidence"):
        table.add_column(col, overflow="fold")
    for layer in role_map.layers:
        first = True
        for role, key in layer.weights.items():
            info = (infos_by_key or {}).get(key)
            shape = _shape(info.shape) if info is not None else ""
            name = info.name if info is not None else key
            table.add_row(
                escape(layer.name) if first else "",
                layer.class_name if first else "",
                escape(role),
                escape(name),
                shape,
                layer.evidence if first else "",
            )
            first = False
        for note in layer.notes:
            table.add_row("", "", "", f"[dim]{escape(note)}[/]", "", "")
    for info in role_map.unassigned:
        table.add_row("-", "-", "?", escape(info.name), _shape(info.shape), "no pattern fits")
    out.print(table)


def _verdict(passed: bool) -> str:
    return "[bold green]PASS[/]" if passed else "[bold red]FAIL[/]"


def _agreement_table(title: str, agreements) -> Table:
    table = Table(title=title, title_justify="left", box=None)
    for col in (
        "",
        "shape",
        "max abs",
        "mean abs",
        "median abs",
        "max rel",
        "cosine",
        "req atol",
        "req rtol",
        "",
    ):
        table.add_column(col, justify="right" if col not in ("", "shape") else "left")
    for a in agreements:
        table.add_row(
            a.name,
            _shape(a.shape),
            f"{a.max_abs:.3g}",
            f"{a.mean_abs:.3g}",
            f"{a.median_abs:.3g}",
            f"{a.max_rel:.3g}",
            f"{a.cosine:.9f}",
            f"{a.required_atol:.3g}",
            f"{a.required_rtol:.3g}",
            _verdict(a.passed),
        )
    return table


def render_verify(report) -> None:
    out.print(f"[bold]{report.path}[/] ({report.format})")
    out.print(f"original: {report.original}")
    out.print(f"weights:  {report.weights_source}")
    out.print(f"graph:    {report.graph_source}; NumPy in {report.precision}")
    render_roles(report.roles, report.variables)
    for line in report.settled:
        out.print(f"[cyan]settled[/] {line}")
    for run in report.runs:
        out.print(_agreement_table(f"outputs, inputs: {run.label}", run.outputs))
        if run.layers is not None:
            out.print(_agreement_table("per layer", run.layers))
            if run.first_divergent:
                out.print(f"first layer that diverges: [bold red]{run.first_divergent}[/]")
    if report.runs:
        a = report.runs[0].outputs[0] if report.runs[0].outputs else None
        tol = f" (atol {a.atol:g}, rtol {a.rtol:g})" if a else ""
        out.print(f"{_verdict(report.passed)}{tol}")
