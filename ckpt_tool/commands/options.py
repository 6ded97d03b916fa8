"""Options shared by several commands."""

from __future__ import annotations

import click

from ckpt_tool.readers import FORMATS

format_option = click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    default=None,
    help="Force the input format instead of detecting it.",
)

step_option = click.option(
    "--step",
    type=int,
    metavar="N",
    help="PATH is a directory of several checkpoints: read the one of step N (ckpt-N) "
    "instead of the latest that its `checkpoint` file names.",
)


def resolve_step(path: str, step: int | None) -> str:
    """The checkpoint of --step N in the directory PATH; without --step, PATH itself,
    after a note on stderr naming the checkpoint read when the directory holds several."""
    from ckpt_tool import console
    from ckpt_tool.readers.choice import checkpoint_choice, checkpoint_for_step

    if step is not None:
        return checkpoint_for_step(path, step)
    note = checkpoint_choice(path)
    if note:
        console.print_note(note)
    return path


no_crc_option = click.option(
    "--no-crc", is_flag=True, help="Skip crc32c checks when reading tensor data."
)
