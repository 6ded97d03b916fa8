"""`ckpt-tool verify`: prove that the weights, run in NumPy, compute what the model computes."""

from __future__ import annotations

import sys

import click

from ckpt_tool import console
from ckpt_tool.commands.options import format_option, no_crc_option, resolve_step, step_option
from ckpt_tool.compare import DEFAULT_ATOL, DEFAULT_RTOL
from ckpt_tool.errors import EXIT_DISAGREE, EXIT_OK, UsageError
from ckpt_tool.readers import require_path
from ckpt_tool.storage import is_url
from ckpt_tool.verify import MASK_MODES, PRECISIONS, VerifyOptions, verify


def _scales(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[float]:
    if not value:
        return []
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of numbers, e.g. 0.1,1,10") from None


@click.command("verify")
@click.argument("path", type=click.Path(path_type=str, readable=False))
@format_option
@click.option(
    "--weights",
    "weights",
    metavar="OTHER",
    help="Run NumPy on the weights from OTHER (an export, a ported or edited .npz or "
    ".safetensors, a .weights.h5, a PyTorch state_dict under the torch layout's names) "
    "against PATH's model.",
)
@click.option(
    "--roles",
    "roles_file",
    metavar="FILE",
    help="JSON/YAML mapping of variable to role (or layer:role) overriding the detected roles.",
)
@click.option(
    "--against",
    metavar="MODEL",
    help="Run MODEL with TensorFlow as the reference instead of PATH's own model (e.g. a "
    "bare checkpoint against the graph it came from, or one model against another that "
    "should compute the same function).",
)
@click.option(
    "--custom-objects",
    "custom_objects",
    metavar="FILE.py|MODULE",
    multiple=True,
    help="Import this Python file or module before loading a .keras/.h5 model: it defines "
    "(and registers) the model's custom layers. Runs that code: trusted files only.",
)
@click.option(
    "--ignore-names",
    is_flag=True,
    help="Assign roles by shapes and order alone, as if every variable were anonymous "
    "(no names, no model config: the layers run as a chain).",
)
@click.option(
    "--num-heads",
    type=int,
    metavar="N",
    help="BERT checkpoints: attention heads of the 2-D (D, D) kernels (the weights cannot "
    "tell; default: num_attention_heads of a bert_config.json beside PATH).",
)
@click.option(
    "--bert-config",
    "bert_config",
    metavar="FILE",
    help="BERT checkpoints: the model's bert_config.json when it is not beside PATH.",
)
@click.option(
    "--mask",
    type=click.Choice(list(MASK_MODES)),
    default="padding",
    show_default=True,
    help="How generated inputs fill token ids of Embedding(mask_zero=True) layers and "
    "attention-mask inputs: padding (a kept prefix of random length per row), random "
    "(about 30% masked, never the first position), none (nothing masked).",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="Keras model config (JSON of model.to_json(), or a .keras file) for files that hold none and whose SavedModel serving graph cannot be read.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random normal inputs.")
@click.option(
    "--batch",
    default=2,
    show_default=True,
    help="Batch size where the model's batch dimension is unknown.",
)
@click.option(
    "--seq-len", default=8, show_default=True, help="Size of other unknown input dimensions."
)
@click.option(
    "--scales",
    callback=_scales,
    metavar="LIST",
    help="Also run constant inputs at these magnitudes, e.g. 0.1,1,10,100,1000 (one table, "
    "a row per input set); token ids and masks cannot be scaled and keep their values.",
)
@click.option(
    "--inputs",
    "inputs_file",
    metavar="FILE",
    help="Your own inputs: .npy (one input) or .npz (one array per input).",
)
@click.option("--atol", default=DEFAULT_ATOL, show_default=True, help="Absolute tolerance.")
@click.option(
    "--rtol",
    default=DEFAULT_RTOL,
    show_default=True,
    help="Relative tolerance (an element fails only if its error exceeds both).",
)
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default="float64",
    show_default=True,
    help="NumPy compute precision; float32 mimics the original's rounding.",
)
@click.option(
    "--per-layer",
    is_flag=True,
    help="Compare every layer's output and name the first that diverges (Keras models; "
    "TF1 graphs through name scopes that match the layer names, e.g. BERT).",
)
@click.option(
    "--plot",
    "plot",
    metavar="OUT",
    help="Also draw the agreement to OUT (.png, .svg or .html; needs matplotlib, the "
    "`plot` extra): per output the error distribution and where the largest errors sit; "
    "with --per-layer the error of every layer along the depth; attention maps of the "
    "original and the rebuild side by side.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON (schema ckpt-tool.verify/1)."
)
@click.option(
    "--unsafe",
    is_flag=True,
    help="Allow Python lambdas: load .keras files with safe_mode off and legacy .h5 "
    "files whose config holds a Lambda's code. It runs: trusted files only.",
)
@step_option
@no_crc_option
def command(
    path: str, format_: str | None, as_json: bool, no_crc: bool, step: int | None, **options
) -> None:
    """Map PATH's variables to layer roles, rebuild the forward pass in NumPy einsum, run the
    original model with TensorFlow, and report how closely the two agree.

    Runs the model's own code (TensorFlow executes it): use it on files you trust.
    Exit code 0 when every output agrees within --atol/--rtol, 1 when any disagrees,
    2 for usage or input errors. The defaults (atol 1e-5, rtol 1e-4) hold with margin
    for float32 models checked against the float64 NumPy reference. When outputs
    disagree, `hint:` lines name the cause where it is known (the original's float32
    rounding, a causal mask the file does not store, roles read from shapes alone).
    """
    if is_url(path) or is_url(options.get("against") or ""):
        raise UsageError(
            "verify runs the model with TensorFlow, which needs the files on disk: copy them "
            "first (list, export and diff read URLs directly)",
            path,
        )
    for given in (path, options.get("against"), options.get("weights")):
        if given:
            require_path(given)  # before saying that it will run anything
    path = resolve_step(path, step)
    plot = options.pop("plot")
    if plot:
        from ckpt_tool.plot import check_plot_target

        check_plot_target(plot)  # before the model runs
    console.print_note("verify executes the model with TensorFlow (list and export never do)")
    options["custom_objects"] = list(options["custom_objects"])
    opts = VerifyOptions(format=format_, no_crc=no_crc, keep_arrays=bool(plot), **options)
    report = verify(path, opts, note=console.print_note)
    if plot:
        from ckpt_tool.plot import write_plot

        console.print_note(f"wrote {write_plot(report, plot, per_layer=opts.per_layer)}")
    if as_json:
        console.print_json(report.to_json())
    else:
        console.render_verify(report)
    sys.exit(EXIT_OK if report.passed else EXIT_DISAGREE)
