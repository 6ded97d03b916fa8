"""`ckpt-tool diff`: compare the tensors of two weight files."""

from __future__ import annotations

import click

from ckpt_tool import console, console_diff
from ckpt_tool.commands.options import no_crc_option, resolve_step
from ckpt_tool.diff import diff_paths
from ckpt_tool.errors import EXIT_DISAGREE, EXIT_OK, UsageError
from ckpt_tool.readers import FORMATS

# A progress bar is worth drawing only for diffs this large (in pairs or bytes).
_PROGRESS_MIN_PAIRS = 50
_PROGRESS_MIN_BYTES = 128 << 20


def _progress(pairs: int, nbytes: int):
    big = pairs >= _PROGRESS_MIN_PAIRS or nbytes >= _PROGRESS_MIN_BYTES
    return console.progress("diff", pairs if big else 0)


@click.command("diff")
@click.argument("a", type=click.Path(path_type=str, readable=False))
@click.argument("b", type=click.Path(path_type=str, readable=False))
@click.option("--format-a", type=click.Choice(FORMATS), help="Force the format of A.")
@click.option("--format-b", type=click.Choice(FORMATS), help="Force the format of B.")
@click.option(
    "--atol",
    type=float,
    default=0.0,
    show_default=True,
    help="Absolute tolerance.",
)
@click.option(
    "--rtol",
    type=float,
    default=0.0,
    show_default=True,
    help="Relative tolerance (of |B|).",
)
@click.option("--filter", "pattern", metavar="GLOB", help="Only names (or keys) matching GLOB.")
@click.option("--include-optimizer", is_flag=True, help="Also compare optimizer state.")
@click.option(
    "--by-role",
    is_flag=True,
    help="Pair tensors by layer and role (the i-th layer of a class on each side), "
    "whatever their names: a .keras against its anonymous SavedModel export.",
)
@click.option("--all", "show_all", is_flag=True, help="Show equal pairs too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema ckpt-tool.diff/1).")
@no_crc_option
def command(
    a: str,
    b: str,
    format_a: str | None,
    format_b: str | None,
    atol: float,
    rtol: float,
    pattern: str | None,
    include_optimizer: bool,
    by_role: bool,
    show_all: bool,
    as_json: bool,
    no_crc: bool,
) -> None:
    """Compare the weights in A and B (any supported formats), tensor by tensor.

    Tensors are matched by resolved name, aliases and keys, ignoring spelling
    differences between formats (`:0` suffixes, `layers/`, a leading model name,
    `vars/<i>`); with --by-role, first by the role parser's layer and role. Elements agree
    when |a - b| <= atol + rtol * |b|. Exit 0 when every tensor agrees and none is
    missing, 1 otherwise, 2 on errors.
    """
    for option, value in (("--atol", atol), ("--rtol", rtol)):
        if not value >= 0:  # also rejects NaN
            raise UsageError(f"{option} must be a number >= 0, not {value}")
    a, b = resolve_step(a, None), resolve_step(b, None)  # notes naming what is read
    report = diff_paths(
        a,
        b,
        format_a=format_a,
        format_b=format_b,
        verify_crc=not no_crc,
        atol=atol,
        rtol=rtol,
        include_optimizer=include_optimizer,
        pattern=pattern,
        progress=_progress,
        by_role=by_role,
    )
    if as_json:
        console.print_json(report.to_json())
    else:
        console_diff.render_diff(report, show_all=show_all)
    raise SystemExit(EXIT_OK if report.ok else EXIT_DISAGREE)
