"""The Python API: what the commands do, for scripts and notebooks.

    from ckpt_tool import api

    with api.open("model.keras") as weights:
        weights.variables                      # [VariableInfo(name, key, shape, dtype, ...)]
        weights.read("dense/kernel")           # np.ndarray (by name, key or alias)
        weights.roles.layers                   # [Layer(name, class_name, weights, evidence)]
        weights.listing()                      # the Listing `ckpt-tool list` prints
    report = api.verify("model.keras", weights="port.safetensors")
    report.passed, report.runs[0].outputs[0].max_abs
    api.export("model.keras", "port.safetensors", layout="torch")
    api.diff("model.keras", "port.safetensors").ok
    api.show(report)                           # the table the CLI prints
    api.figure(api.verify("model.keras", keep_arrays=True))  # verify --plot's picture

Every function returns the report object the CLI renders (`VerifyReport`,
`ExportResult`, `DiffReport`, `Listing`); `report.to_json()` is the CLI's `--json`.
Problems with a file raise `CkptToolError` (its message is the CLI's error line).
`open`, `export` and `diff` never import TensorFlow; `verify` runs the model with it.
`ckpt_tool.open` and `ckpt_tool.show` are these same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from ckpt_tool.diff import DiffReport
    from ckpt_tool.export import ExportResult
    from ckpt_tool.listing import Listing
    from ckpt_tool.readers.base import Reader, VariableInfo
    from ckpt_tool.rolemap import RoleMap
    from ckpt_tool.verify import VerifyReport

__all__ = ["WeightFile", "diff", "export", "figure", "open", "show", "verify"]

EXPORT_FORMATS = ("npz", "safetensors")


class WeightFile:
    """An open weight file of any supported format: its variables, tensors and roles.

    Use as a context manager (or call `close()`): readers keep the file open and hand out
    memory-mapped arrays; copy an array (`np.array(a)`) to keep it after closing."""

    def __init__(
        self,
        path: str | Path,
        format: str | None = None,
        *,
        config_file: str | None = None,
        roles_file: str | None = None,
        verify_crc: bool = True,
    ):
        from ckpt_tool.readers import open_reader

        self.reader: Reader = open_reader(path, format)
        self.reader.verify_crc = verify_crc
        self._config_file = config_file
        self._roles_file = roles_file
        self._roles: RoleMap | None = None

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def format(self) -> str:
        """The detected format: checkpoint, keras, weights-h5, h5, npz or safetensors."""
        return self.reader.format_name

    @property
    def variables(self) -> list[VariableInfo]:
        """Every tensor in the file (optimizer state and bookkeeping too), in model order."""
        return self.reader.variables()

    @property
    def weights(self) -> list[VariableInfo]:
        """The tensors `ckpt-tool list` shows: weights only, byte-identical copies folded."""
        return [t.info for t in self.listing().tensors]

    def names(self) -> list[str]:
        """The resolved names of `weights`."""
        return [info.name for info in self.weights]

    def variable(self, name: str) -> VariableInfo:
        """A variable by resolved name, raw key or alias (`:0` suffixes ignored)."""
        from ckpt_tool.errors import NotFoundError

        wanted = name.removesuffix(":0")
        infos = self.variables
        for field_of in (lambda i: (i.name,), lambda i: (i.key,), lambda i: i.aliases):
            for info in infos:
                if any(n.removesuffix(":0") == wanted for n in field_of(info)):
                    return info
        raise NotFoundError(f"no variable named {name!r}", self.path)

    def read(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array (by resolved name, raw key or alias)."""
        return self.reader.read(self.variable(name).key)

    def listing(
        self, *, show_all: bool = False, pattern: str | None = None, sort: str = "order"
    ) -> Listing:
        """The Listing `ckpt-tool list` prints (`show(listing)` prints it the same way)."""
        from ckpt_tool.listing import build_listing

        return build_listing(self.reader, show_all=show_all, pattern=pattern, sort=sort)

    @property
    def roles(self) -> RoleMap:
        """The layers the weights make up: each layer's class, variables by role and the
        evidence that decided them (what `ckpt-tool list --roles` shows)."""
        if self._roles is None:
            from ckpt_tool.model import ModelOptions, open_model

            options = ModelOptions(
                config_file=self._config_file, roles_file=self._roles_file, lenient_config=True
            )
            self._roles = open_model(self.reader, options).roles
        return self._roles

    def role_of(self, name: str) -> tuple[str, str] | None:
        """(layer name, role) of a variable, e.g. ("attention", "query.kernel"); None when
        the variable belongs to no recognised layer."""
        hit = self.roles.by_key().get(self.variable(name).key)
        return None if hit is None else (hit[0].name, hit[1])

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeightFile({str(self.path)!r}, format={self.format!r})"


def open(  # the natural name: api.open, ckpt_tool.open
    path: str | Path,
    format: str | None = None,
    *,
    config_file: str | None = None,
    roles_file: str | None = None,
    verify_crc: bool = True,
) -> WeightFile:
    """Open a checkpoint (prefix, .index, directory), SavedModel, .keras, .weights.h5,
    .h5, .npz or .safetensors. `format` forces one; `config_file` and `roles_file` are
    `--config` and `--roles`."""
    return WeightFile(
        path, format, config_file=config_file, roles_file=roles_file, verify_crc=verify_crc
    )


def verify(
    path: str | Path, *, note: Callable[[str], None] | None = None, **options: Any
) -> VerifyReport:
    """`ckpt-tool verify PATH`: options are VerifyOptions' fields, named as the CLI's
    long options with underscores (weights=, against=, atol=, rtol=, precision=,
    per_layer=, scales=[...], inputs_file=, seed=, ...). Runs the model with TensorFlow.
    `note` receives the progress notes the CLI prints on stderr."""
    from ckpt_tool.verify import VerifyOptions
    from ckpt_tool.verify import verify as run_verify

    _check_names("verify", options, VerifyOptions)
    if "scales" in options:
        options["scales"] = [float(s) for s in options["scales"]]
    return run_verify(str(path), VerifyOptions(**options), note=note or (lambda _: None))


def export(
    path: str | Path,
    out: str | Path,
    *,
    to: str | None = None,
    format: str | None = None,
    verify_crc: bool = True,
    **options: Any,
) -> ExportResult:
    """`ckpt-tool export PATH -o OUT`: `to` is "npz" or "safetensors" (default: by OUT's
    suffix); options are ExportOptions' fields (layout=, pattern=, dtype=, force=,
    include_optimizer=, compress=, roles_file=, config_file=, torch_prefix=)."""
    from ckpt_tool.errors import UsageError
    from ckpt_tool.export import ExportOptions, export_npz
    from ckpt_tool.readers import open_reader

    _check_names("export", options, ExportOptions)
    to = to or ("safetensors" if Path(out).suffix == ".safetensors" else "npz")
    if to not in EXPORT_FORMATS:
        raise UsageError(f"to={to!r}: choose from {', '.join(EXPORT_FORMATS)}")
    export_options = ExportOptions(**options)
    with open_reader(path, format) as reader:
        reader.verify_crc = verify_crc
        if to == "safetensors":
            from ckpt_tool.export_safetensors import export_safetensors

            return export_safetensors(reader, out, export_options)
        return export_npz(reader, out, export_options)


def diff(
    a: str | Path,
    b: str | Path,
    *,
    format_a: str | None = None,
    format_b: str | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
    pattern: str | None = None,
    include_optimizer: bool = False,
    by_role: bool = False,
    verify_crc: bool = True,
) -> DiffReport:
    """`ckpt-tool diff A B`: the tensors of two weight files compared pair by pair;
    `report.ok` is the CLI's exit code 0."""
    from ckpt_tool.diff import diff_paths
    from ckpt_tool.errors import UsageError

    for option, value in (("atol", atol), ("rtol", rtol)):
        if not value >= 0:  # also rejects NaN
            raise UsageError(f"{option} must be a number >= 0, not {value}")
    return diff_paths(
        a,
        b,
        format_a=format_a,
        format_b=format_b,
        verify_crc=verify_crc,
        atol=atol,
        rtol=rtol,
        include_optimizer=include_optimizer,
        pattern=pattern,
        by_role=by_role,
    )


def figure(report: VerifyReport, *, per_layer: bool | None = None) -> Figure:
    """The `verify --plot` figure of a report made with `verify(..., keep_arrays=True)`
    (a matplotlib Figure: shown inline in a notebook, `.savefig(path)` to keep it).
    per_layer defaults to whether the report compared layers."""
    from ckpt_tool.plot import build_figure

    if per_layer is None:
        per_layer = bool(report.runs and report.runs[0].layers is not None)
    return build_figure(report, per_layer=per_layer)


def show(report: Any) -> None:
    """Print a report as the CLI does: a Listing, VerifyReport, DiffReport or ExportResult."""
    from ckpt_tool import console, console_diff
    from ckpt_tool.diff import DiffReport
    from ckpt_tool.export import ExportResult
    from ckpt_tool.listing import Listing
    from ckpt_tool.verify import VerifyReport

    if isinstance(report, Listing):
        console.render_listing(report)
    elif isinstance(report, VerifyReport):
        console.render_verify(report)
    elif isinstance(report, DiffReport):
        console_diff.render_diff(report)
    elif isinstance(report, ExportResult):
        console_diff.render_export(report, report.manifest.get("notes"))
    else:
        raise TypeError(f"show() prints ckpt-tool reports, not {type(report).__name__}")


def _check_names(what: str, options: dict[str, Any], cls: type) -> None:
    """Unknown keyword arguments are a user's mistake: name them and the valid ones."""
    from ckpt_tool.errors import UsageError

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"{what}() got unknown option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(known))}"
        )
