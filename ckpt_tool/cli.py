"""Thin click commands: parse options, call the library, render. Nothing else."""

from __future__ import annotations

import importlib
import sys

import click

from ckpt_tool import __version__, console
from ckpt_tool.errors import EXIT_USAGE, CkptToolError, UsageError

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
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]  # invoke consumes them
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        except BrokenPipeError:  # `ckpt-tool list X | head -1`: the reader has enough
            console.end_on_closed_pipe()
        except CkptToolError as exc:
            console.print_error(_naming_the_file(exc, ctx, args))
            sys.exit(exc.exit_code)
        except OSError as exc:  # permission denied, disk full, ... outside a reader's checks
            where = f"{exc.filename}: " if exc.filename else ""
            console.print_error(f"{where}{exc.strerror or exc}")
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            console.print_error("interrupted")
            sys.exit(130)


def _naming_the_file(exc: CkptToolError, ctx: click.Context, args: list[str]) -> str:
    """The error line, led by the command's input file when the error did not name one
    (a layer the rebuild cannot compute, a model TensorFlow fails to run). Option
    errors stay as they are."""
    if exc.path is not None or isinstance(exc, UsageError):
        return str(exc)
    path = _input_file(ctx, args)
    return f"{path}: {exc}" if path else str(exc)


def _input_file(ctx: click.Context, args: list[str]) -> str | None:
    """PATH (or SRC, or A) of the command that ran, parsed again from its arguments."""
    try:
        name, command, rest = ctx.command.resolve_command(ctx, args)
        if command is None:
            return None
        sub = command.make_context(name, rest, parent=ctx, resilient_parsing=True)
    except click.ClickException:
        return None
    for param in ("path", "src", "a"):
        if sub.params.get(param):
            return str(sub.params[param])
    return None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt-tool")
@click.option(
    "--storage-option",
    "storage_options",
    metavar="KEY=VALUE",
    multiple=True,
    help="Option for reading URLs (s3://, gs://, http(s)://), named as fsspec's "
    "filesystems name them and passed to the client (obstore, or fsspec), e.g. "
    "endpoint_url=http://127.0.0.1:8333, region_name=eu-west-1 or anon=true; repeatable. "
    "Credentials come from the usual environment variables and config files.",
)
def cli(storage_options: tuple[str, ...] = ()) -> None:
    """Open TensorFlow and Keras weight files, name every variable, prove ports numerically.

    Reads TF checkpoints (TF1 and TF2), SavedModels, .keras, .weights.h5, legacy .h5,
    .npz and .safetensors without running any model code. Exit codes: 0 ok, 1 numbers disagree
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
