"""`ckpt-tool list`: the variables of a weight file, names resolved."""

from __future__ import annotations

import click

from ckpt_tool import console
from ckpt_tool.column_listing import build_column_listing, column_pattern
from ckpt_tool.commands.options import format_option, no_crc_option, resolve_step, step_option
from ckpt_tool.listing import SORT_KEYS, attach_roles, build_listing, stats_in_order
from ckpt_tool.readers import open_reader
from ckpt_tool.readers.budget import check_variable_count


def _work(as_json: bool) -> str:
    """The per-variable cost this listing is checked with (budget.SELECTED_BYTES)."""
    return "list --json" if as_json else "list"


@click.command("list")
@click.argument("path", type=click.Path(path_type=str, readable=False))
@format_option
@click.option("--all", "show_all", is_flag=True, help="Also show optimizer slots and bookkeeping.")
@click.option("--filter", "pattern", metavar="GLOB", help="Only names (or keys) matching GLOB.")
@click.option(
    "--sort",
    type=click.Choice(SORT_KEYS),
    default="order",
    show_default=True,
    help="order: the model's own variable order.",
)
@click.option("--tree", is_flag=True, help="Group tensors by layer path.")
@click.option(
    "--stats", is_flag=True, help="min, max, mean, std, NaN and Inf per tensor (reads data)."
)
@click.option(
    "--roles", "show_roles", is_flag=True, help="Show each variable's layer, role and evidence."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema ckpt-tool.list/1).")
@step_option
@no_crc_option
def command(
    path: str,
    format_: str | None,
    show_all: bool,
    pattern: str | None,
    sort: str,
    tree: bool,
    stats: bool,
    show_roles: bool,
    as_json: bool,
    no_crc: bool,
    step: int | None,
) -> None:
    """List the variables in PATH with resolved names, shapes, dtypes and sizes.

    PATH is a checkpoint prefix, a .index or .data file, a directory with a `checkpoint`
    file, a SavedModel directory, a .keras, .weights.h5 or .h5 file, an .npz or a .safetensors.
    """
    path = resolve_step(path, step)
    with open_reader(path, format_) as reader:
        reader.verify_crc = not no_crc
        plain = column_pattern(pattern) and not (tree or stats or show_roles or as_json)
        table = reader.variable_table() if plain and console.piped() else None
        if table is not None:  # a plain piped table: made column by column
            console.render_column_listing(
                build_column_listing(reader, table, show_all=show_all, pattern=pattern, sort=sort)
            )
            return
        claimed, largest = reader.claimed_variables()
        # before the names are resolved (an object graph costs about a row per variable),
        # every variable counts as a row unless a filter will select some
        rows = claimed if pattern is None else 0
        check_variable_count(reader.path, claimed, largest, _work(as_json), selected=rows)
        listing = build_listing(reader, show_all=show_all, pattern=pattern, sort=sort)
        shown = len(listing.tensors)
        check_variable_count(reader.path, claimed, largest, _work(as_json), selected=shown)
        role_notes = attach_roles(reader, listing) if show_roles else []
        if stats:
            results = stats_in_order(reader, [t.info for t in listing.tensors])
            for t in console.track(listing.tensors, "statistics", len(listing.tensors)):
                t.stats, t.stats_read = next(results), True
    if as_json:
        console.print_json(listing.to_json())
    elif tree:
        console.render_tree(listing)
    else:
        console.render_listing(listing, show_roles=show_roles, show_stats=stats)
    if not as_json:
        for note in role_notes:  # the serving graph's wiring, masks, settings
            console.print_note(note)
