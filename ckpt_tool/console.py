"""The one place that knows rich: tables, trees, progress and errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console
from rich.markup import escape as _markup_escape
from rich.text import Text

from ckpt_tool import storage
from ckpt_tool.gc_pause import gc_paused
from ckpt_tool.listing import ListedTensor, Listing
from ckpt_tool.shown import shown
from ckpt_tool.table_layout import Column, available_width, print_columns

if TYPE_CHECKING:
    from ckpt_tool.column_listing import ColumnListing

T = TypeVar("T")

# emoji=False: a name holding `:smile:` is shown as it is (and rich's emoji table is
# never loaded).
out = Console(highlight=False, soft_wrap=False, emoji=False)
if not out.is_terminal and "COLUMNS" not in os.environ:
    out.width = 200  # piped to a file or a program: do not fold names at 80 columns
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def piped() -> bool:
    """Whether tables are printed at their natural widths (no terminal, no COLUMNS)."""
    return available_width(out) is None


def end_on_closed_pipe() -> None:
    """Exit quietly with the code of a process ended by SIGPIPE (128 + 13), as shells
    show for `yes | head -1`, not 1 (which means "numbers disagree"); stdout goes to
    devnull so that nothing more is written to the closed pipe at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor
        pass
    sys.exit(128 + signal.SIGPIPE)


out.on_broken_pipe = end_on_closed_pipe  # rich's own handler exits 1


def escape(text: str) -> str:
    """Text from a file, safe to print through rich: control characters made visible
    (a name cannot break a row or send terminal escapes) and markup escaped."""
    return _markup_escape(shown(text))


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
        _fetched_column(),
        console=err,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total, fetched_before=storage.stats.bytes)
        yield lambda n=1: bar.advance(task, n)


def _fetched_column():
    """A column: bytes fetched from URLs while the bar runs and their rate (empty for
    local files). rich.progress is imported only when a bar is drawn."""
    from rich.progress import ProgressColumn

    class FetchedColumn(ProgressColumn):
        def render(self, task) -> Text:
            fetched = storage.stats.bytes - task.fields.get("fetched_before", 0)
            if fetched <= 0:
                return Text("")
            rate = f", {human_bytes(fetched / task.elapsed)}/s" if task.elapsed else ""
            return Text(f"{human_bytes(fetched)} fetched{rate}")

    return FetchedColumn()


def track(items: Iterable[T], description: str, total: int) -> Iterator[T]:
    with progress(description, total) as advance:
        for item in items:
            yield item
            advance()


@functools.lru_cache(maxsize=4096)  # a listing repeats few sizes
def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _shape(shape: tuple[int, ...]) -> str:
    return _shape_text(tuple(shape))


@functools.lru_cache(maxsize=4096)  # a listing repeats few shapes
def _shape_text(shape: tuple[int, ...]) -> str:
    return str(list(shape))  # "[8, 3]"


@functools.lru_cache(maxsize=4096)  # and few parameter counts
def _count(n: int) -> str:
    return f"{n:,}"


_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _name_lines(t: ListedTensor) -> list[str]:
    """The resolved name, then the raw key when it says more, then folded copies."""
    info = t.info
    lines = [info.name]
    if info.key.removesuffix(_VALUE_SUFFIX) != info.name:
        lines.append(info.key)
    lines.extend(f"= {k}" for k in t.duplicate_keys)
    return lines


def _stat(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


_RIGHT = {"params", "bytes", "min", "max", "mean", "std", "nan", "inf"}
# The order in which columns give way on a narrow terminal (see table_layout):
# sizes first, then what is least needed to tell rows apart; names move above their
# row rather than being cut.
_GIVE_PLAIN = {"params": 1, "bytes": 2, "name": 3, "dtype": 4}
_GIVE_ROLES = {"params": 1, "bytes": 2, "dtype": 3, "evidence": 4, "name": 5, "layer": 6}
_GIVE_STATS = {"params": 1, "bytes": 2, "dtype": 3, "nan": 4, "inf": 5, "name": 6, "shape": 7}
_GIVE_ROLES_STATS = {
    **{"params": 1, "bytes": 2, "dtype": 3, "evidence": 4, "nan": 5, "inf": 6},
    **{"name": 7, "layer": 8, "shape": 9},
}
_STACKED = {"name", "layer"}


@gc_paused()  # millions of objects for a large index: see gc_pause
def render_listing(listing: Listing, *, show_roles: bool = False, show_stats: bool = False) -> None:
    headers = ["name"]
    if show_roles:
        headers += ["layer", "role", "evidence"]
    headers += ["shape", "dtype", "params", "bytes"]
    if show_stats:
        headers += ["min", "max", "mean", "std", "nan", "inf"]
    give = {
        (False, False): _GIVE_PLAIN,
        (True, False): _GIVE_ROLES,
        (False, True): _GIVE_STATS,
        (True, True): _GIVE_ROLES_STATS,
    }[show_roles, show_stats]
    columns = [
        Column(
            h,
            right=h in _RIGHT,
            give=give.get(h),
            stack=h in _STACKED,
            style="dim" if h == "evidence" else None,
        )
        for h in headers
    ]
    cells = _listing_columns(listing.tensors, show_roles, show_stats)
    below = _lines_below(listing.tensors)
    title = Text(f"{listing.path} ({listing.description or listing.format})", style="bold")
    print_columns(out, columns, cells, title, below, below_style="dim")
    _print_totals(listing)


def _listing_columns(
    tensors: list[ListedTensor], show_roles: bool, show_stats: bool
) -> list[list[str]]:
    """The listing's cells, column by column (a million rows make no object per row)."""
    infos = [t.info for t in tensors]
    shapes = [tuple(info.shape) for info in infos]
    shape_cells = {shape: (_shape_text(shape), _count(_product(shape))) for shape in set(shapes)}
    byte_cells = {n: human_bytes(n) for n in {info.nbytes for info in infos}}
    columns = [[info.name for info in infos]]
    if show_roles:
        roles = [t.role or {} for t in tensors]
        columns += [
            [role.get("layer") or "-" for role in roles],
            [role.get("role") or "?" for role in roles],
            [role.get("evidence") or "" for role in roles],
        ]
    columns += [
        [shape_cells[shape][0] for shape in shapes],
        [info.dtype for info in infos],
        [shape_cells[shape][1] for shape in shapes],
        [byte_cells[info.nbytes] for info in infos],
    ]
    if show_stats:
        stats = [t.stats or {} for t in tensors]
        columns += [[_stat(s.get(k)) for s in stats] for k in ("min", "max", "mean", "std")]
        columns += [[str(s.get(k, "-")) for s in stats] for k in ("nan", "inf")]
    return columns


def _product(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _lines_below(tensors: list[ListedTensor]) -> dict[int, list[str]]:
    """Row -> the lines under its name: the raw key when it says more, folded copies."""
    return {
        r: more
        for r, t in enumerate(tensors)
        if (t.duplicate_keys or t.info.key.removesuffix(_VALUE_SUFFIX) != t.info.name)
        and (more := _name_lines(t)[1:])
    }


def render_tree(listing: Listing) -> None:
    from rich.tree import Tree

    root = Tree(escape(f"{listing.path} ({listing.description or listing.format})"))
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


@gc_paused()
def render_column_listing(listing: ColumnListing) -> None:
    """render_listing's piped table (name, shape, dtype, params, bytes) of a listing made
    column by column: the same text, written with numpy (see column_text)."""
    import numpy as np

    from ckpt_tool.column_text import CodedColumn, write_table

    table, rows = listing.table, listing.rows
    shape_ids = np.flatnonzero(np.bincount(table.shape_ids[rows], minlength=1))
    shapes = [table.shapes[i] for i in shape_ids.tolist()]
    dtypes = np.unique(table.dtype_numbers[rows])
    sizes = np.unique(table.nbytes[rows])
    columns = [
        CodedColumn("shape", False, table.shape_ids, shape_ids, list(map(_shape_text, shapes))),
        CodedColumn(
            "dtype", False, table.dtype_numbers, dtypes, [table.dtypes[d] for d in dtypes.tolist()]
        ),
        CodedColumn(
            "params", True, table.shape_ids, shape_ids, [_count(_product(s)) for s in shapes]
        ),
        CodedColumn("bytes", True, table.nbytes, sizes, list(map(human_bytes, sizes.tolist()))),
    ]
    title = shown(f"{listing.path} ({listing.description or listing.format})").rstrip()
    names = table.names
    write_table(out.file, title, "name", names.matrix, names.lengths, rows, columns)
    _print_totals(listing, folded=0)


def _print_totals(listing: Listing | ColumnListing, folded: int | None = None) -> None:
    totals = listing.totals
    out.print(
        f"[bold]{totals['tensors']}[/] tensors, [bold]{totals['parameters']:,}[/] parameters, "
        f"[bold]{human_bytes(totals['bytes'])}[/]"
    )
    if folded is None:
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
    from ckpt_tool import console_verify

    console_verify.render_roles(role_map, infos_by_key)


def render_verify(report) -> None:
    from ckpt_tool import console_verify

    console_verify.render_verify(report)
