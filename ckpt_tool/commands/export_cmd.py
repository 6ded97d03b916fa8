"""`ckpt-tool export`: write a weight file's tensors to .npz or .safetensors under meaningful names."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ckpt_tool import console, console_diff
from ckpt_tool.commands.options import format_option, no_crc_option, resolve_step, step_option
from ckpt_tool.errors import UsageError
from ckpt_tool.export import (
    CAST_DTYPES,
    LAYOUTS,
    ExportOptions,
    check_target,
    plan_export,
    write_npz,
)
from ckpt_tool.readers import open_reader
from ckpt_tool.storage import as_path

# A progress bar is worth drawing only for exports this large (in tensors or bytes).
_PROGRESS_MIN_ARRAYS = 50
_PROGRESS_MIN_BYTES = 64 << 20


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a killed job, a closed terminal) clean up like Ctrl-C: no
    partial OUT, no temporary file."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # SIGHUP: the terminal was closed; SIGTERM: the job was killed.
    hangup = getattr(signal, "SIGHUP", None)
    signals = [signal.SIGTERM] + ([hangup] if hangup is not None else [])
    # A signal ignored on purpose (`nohup`) stays ignored.
    previous = {
        sig: signal.signal(sig, interrupt)
        for sig in signals
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_safetensors():
    from ckpt_tool.export_safetensors import write_safetensors

    return write_safetensors


@click.command("export")
@click.argument("src", type=click.Path(path_type=str, readable=False))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=str, readable=False),
    help="The file to write (.npz, or .safetensors: see --to).",
)
@click.option(
    "--to",
    "to",
    type=click.Choice(["npz", "safetensors"]),
    default=None,
    help="Output format (default: safetensors when OUT ends in .safetensors, else npz). "
    "safetensors is what PyTorch loads (safetensors.torch.load_file); the manifest is in "
    "its metadata under __manifest__.",
)
@format_option
@click.option("--filter", "pattern", metavar="GLOB", help="Only names (or keys) matching GLOB.")
@click.option(
    "--include-optimizer", is_flag=True, help="Also export optimizer state (never bookkeeping)."
)
@click.option("--compress", is_flag=True, help="Deflate the members (smaller, slower; .npz only).")
@click.option(
    "--dtype",
    type=click.Choice(CAST_DTYPES),
    default=None,
    help="Cast floating tensors to this dtype (default: keep every dtype).",
)
@click.option(
    "--layout",
    type=click.Choice(list(LAYOUTS)),
    default="keras",
    show_default=True,
    help="Names and shapes for: keras (as stored), torch (state_dict, nn.Linear per "
    "projection), torch-mha (nn.MultiheadAttention), haiku (AlphaFold's Attention).",
)
@click.option(
    "--roles",
    "roles_file",
    type=click.Path(path_type=str, readable=False),
    help="JSON/YAML overriding role assignments (as verify --roles).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=str, readable=False),
    help="A Keras model config (model.to_json()) for files that hold none.",
)
@click.option(
    "--torch-prefix",
    default="",
    metavar="PREFIX",
    help="--layout torch: put PREFIX before a model family's PyTorch names, e.g. `bert.` "
    "for BertForPreTraining (default: the bare model's names, as BertModel).",
)
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@step_option
@no_crc_option
def command(
    src: str,
    out: str,
    to: str | None,
    format_: str | None,
    pattern: str | None,
    include_optimizer: bool,
    compress: bool,
    dtype: str | None,
    layout: str,
    roles_file: str | None,
    config_file: str | None,
    torch_prefix: str,
    force: bool,
    no_crc: bool,
    step: int | None,
) -> None:
    """Export the weights in SRC to OUT (.npz or .safetensors) under meaningful names.

    OUT holds one array per tensor plus `__manifest__` (JSON: source, names, keys,
    aliases, dtypes, shapes, layer roles; in a .safetensors, in the header's metadata);
    for torch, torch-mha and haiku, whose loaders take every array as a parameter, the
    manifest of an .npz is OUT.manifest.json beside OUT instead. `--layout
    torch|torch-mha|haiku` renames, transposes and packs the weights for those
    frameworks, or refuses (exit 2, nothing written) with the reason when a layer cannot
    be expressed there. bfloat16 is stored as its uint16 bit pattern in .npz (as BF16 in
    .safetensors); strings as bytes arrays (safetensors holds none: exclude them with
    --filter). OUT is written to a temporary file and renamed into place when complete:
    an error or Ctrl-C leaves no partial file.
    """
    options = ExportOptions(
        pattern=pattern,
        include_optimizer=include_optimizer,
        compress=compress,
        dtype=dtype,
        force=force,
        layout=layout,
        roles_file=roles_file,
        config_file=config_file,
        torch_prefix=torch_prefix,
    )
    src = resolve_step(src, step)
    to = to or ("safetensors" if Path(out).suffix == ".safetensors" else "npz")
    if to == "safetensors" and compress:
        raise UsageError("--compress applies to .npz only; safetensors stores raw bytes")
    check_target(Path(out), as_path(src), force=force)  # refuse before opening SRC
    with _terminate_as_interrupt(), open_reader(src, format_) as reader:
        reader.verify_crc = not no_crc
        plan = plan_export(reader, options)
        big = len(plan.arrays) >= _PROGRESS_MIN_ARRAYS or plan.source_bytes >= _PROGRESS_MIN_BYTES
        with console.progress("export", len(plan.arrays) if big else 0) as advance:
            write = write_npz if to == "npz" else _write_safetensors()
            result = write(plan, out, force=force, on_array=lambda _arr: advance())
    console_diff.render_export(result, plan.notes)
