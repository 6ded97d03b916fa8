"""Thin click commands: parse options, call the library, render. Nothing else."""

from __future__ import annotations

import importlib
import sys

import click

from ckpt_tool import __version__, console
from ckpt_tool.errors import EXIT_USAGE, CkptToolError

# Each command's module is imported only when that command runs (or --help lists it),
# so `list` does not pay for export, diff or verify at start-up.
_COMMANDS = {
    "list": "ckpt_tool.commands.list_cmd",
    "verify": "ckpt_tool.commands.verify_cmd",
    "export": "ckpt_tool.commands.export_cmd",
    "diff": "ckpt_tool.commands.diff_cmd",
}


class _Group(click.Group):
    """Loads commands lazily; turns a user's error into one line on stderr and its
    exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        return importlib.import_module(_COMMANDS[name]).command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CkptToolError as exc:
            console.print_error(str(exc))
            sys.exit(exc.exit_code)
        except OSError as exc:  # permission denied, disk full, ... outside a reader's checks
            where = f"{exc.filename}: " if exc.filename else ""
            console.print_error(f"{where}{exc.strerror or exc}")
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            console.print_error("interrupted")
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt-tool")
@click.option(
    "--storage-option",
    "storage_options",
    metavar="KEY=VALUE",
    multiple=True,
    help="Option for reading URLs (s3://, gs://, http(s)://), passed to the fsspec "
    "filesystem, e.g. endpoint_url=http://127.0.0.1:8333 or anon=true; repeatable. "
    "Credentials come from the usual environment variables and config files.",
)
def cli(storage_options: tuple[str, ...] = ()) -> None:
    """Open TensorFlow and Keras weight files, name every variable, prove ports numerically.

    Reads TF checkpoints (TF1 and TF2), SavedModels, .keras, .weights.h5, legacy .h5 and
    .npz without running any model code. Exit codes: 0 ok, 1 numbers disagree
    (verify, diff), 2 bad usage or an unreadable, missing or corrupt file.

    list, export and diff read checkpoints and SavedModels from URLs too (s3://, gs://,
    http(s)://, file://), fetching only the bytes they need (pip install
    'ckpt-tool[remote]'; --storage-option goes before the command).
    """
    from ckpt_tool import storage

    storage.configure(dict(storage.parse_option(o) for o in storage_options))


def main() -> None:
    cli(prog_name="ckpt-tool")


if __name__ == "__main__":
    main()
