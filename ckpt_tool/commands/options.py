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

no_crc_option = click.option(
    "--no-crc", is_flag=True, help="Skip crc32c checks when reading tensor data."
)
