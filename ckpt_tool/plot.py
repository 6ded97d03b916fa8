"""`verify --plot OUT.png|.svg|.html`: pictures of how the rebuild agrees with the original.

One row per model output: the distribution of |rebuild - original| over its elements
(log scale, with the --atol line) and a map of where in the tensor the largest errors
sit (the tensor folded to 2-D: all leading axes by the last one, the five largest
marked with their indices). With --per-layer, one row: each layer's max and mean
abs error along the depth of the model, the first divergent layer marked. For attention
layers, one row each: the original's and the rebuild's attention probabilities for one
example and head, side by side, and their difference (see `plot_attention`).

matplotlib is an optional dependency (`pip install 'ckpt-tool[plot]'`), imported only
here, with its non-interactive Agg backend; the figure is written through a temporary
file renamed into place, so a failure leaves no partial picture.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ckpt_tool.errors import CkptToolError, NotFoundError, UsageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ckpt_tool.verify import VerifyReport

PLOT_SUFFIXES = (".png", ".svg", ".html")
MAX_OUTPUTS = 6  # output rows drawn (the rest are named in the figure's note)
MAX_ATTENTION = 4  # attention layers drawn
TOP = 5  # largest errors marked per output
_HEATMAP_MAX = 256  # rows/columns of an error map before it is max-pooled


def check_plot_target(path: str | Path) -> Path:
    """Refuse before any model runs: an unknown suffix, a missing directory, no matplotlib."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot writes {', '.join(PLOT_SUFFIXES)} files", path)
    if not path.parent.is_dir():
        raise NotFoundError("output directory does not exist", path.parent)
    if path.is_dir():
        raise UsageError("--plot output is a directory", path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CkptToolError(
            "verify --plot needs matplotlib: pip install 'ckpt-tool[plot]'"
        ) from None
    return path


def build_figure(report: VerifyReport, *, per_layer: bool = False) -> Figure:
    """The figure for a report made with keep_arrays (VerifyOptions)."""
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    from ckpt_tool.plot_attention import attention_maps

    arrays = report.arrays
    if arrays is None:
        raise ValueError("the report holds no arrays: verify with keep_arrays=True")
    run = report.runs[0]
    outputs = list(zip(run.outputs, arrays.actual, arrays.expected, strict=True))[:MAX_OUTPUTS]
    maps = attention_maps(arrays, MAX_ATTENTION)
    rows = len(outputs) + (1 if per_layer else 0) + len(maps)
    fig = Figure(figsize=(12, 3.4 * rows + 0.8), layout="constrained")
    verdict = "PASS" if report.passed else "FAIL"
    fig.suptitle(
        f"{Path(report.path).name}: NumPy rebuild ({report.precision}) vs {report.original}"
        f" - {run.label} - {verdict}",
        fontsize=11,
    )
    grid = GridSpec(rows, 6, figure=fig)
    row = 0
    for agreement, actual, expected in outputs:
        error = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
        _error_histogram(fig.add_subplot(grid[row, 0:3]), agreement, error)
        _error_map(fig.add_subplot(grid[row, 3:5]), agreement.name, error)
        _largest_errors(fig.add_subplot(grid[row, 5]), agreement.name, error)
        row += 1
    if per_layer:
        _layer_errors(fig.add_subplot(grid[row, 0:6]), run, report)
        row += 1
    for m in maps:
        _attention_row(fig, [fig.add_subplot(grid[row, c : c + 2]) for c in (0, 2, 4)], m)
        row += 1
    return fig


def write_plot(report: VerifyReport, path: str | Path, *, per_layer: bool = False) -> Path:
    """Draw the report and write it to `path` (.png, .svg or .html) atomically."""
    from ckpt_tool.export import _AtomicTarget

    path = check_plot_target(path)
    fig = build_figure(report, per_layer=per_layer)
    suffix = path.suffix.lower()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png" if suffix == ".png" else "svg", dpi=100)
    data = buffer.getvalue()
    if suffix == ".html":
        data = _html(report, data.decode("utf-8")).encode("utf-8")
    with _AtomicTarget(path, force=True) as fh:
        fh.write(data)
    return path


# --- panels -----------------------------------------------------------------------------


def _error_histogram(ax: Axes, agreement: Any, error: np.ndarray) -> None:
    flat = error.reshape(-1)
    exact = int(np.count_nonzero(flat == 0))
    positive = flat[flat > 0]
    if positive.size:
        low, high = np.log10(positive.min()), np.log10(positive.max())
        bins = np.logspace(low - 0.05, high + 0.05, 40)
        ax.hist(positive, bins=bins, color="tab:blue")
        ax.set_xscale("log")
    ax.axvline(agreement.atol, color="tab:red", linestyle="--", label=f"atol {agreement.atol:g}")
    ax.set_xlabel("|rebuild - original| per element")
    ax.set_ylabel("elements")
    ax.set_title(f"{agreement.name}: error distribution")
    ax.legend(
        title=f"max {agreement.max_abs:.2e}, cosine {agreement.cosine:.9f}, {exact} exact",
        fontsize=8,
        title_fontsize=8,
    )


def _error_map(ax: Axes, name: str, error: np.ndarray) -> None:
    """|error| folded to 2-D (leading axes x last axis), max-pooled when large; the
    largest elements marked and named by their full index."""
    shape = error.shape
    folded = error.reshape(1, -1) if error.ndim < 2 else error.reshape(-1, shape[-1])
    pooled, (fr, fc) = _max_pool(folded, _HEATMAP_MAX)
    image = ax.imshow(pooled, aspect="auto", cmap="magma", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="|error|")
    for rank, flat_index in enumerate(_top(error)):
        r, c = divmod(int(flat_index), folded.shape[1])
        ax.plot(c // fc, r // fr, marker="o", markersize=9, markerfacecolor="none", color="cyan")
        ax.annotate(str(rank + 1), (c // fc, r // fr), color="cyan", fontsize=8)
    ax.set_title(f"{name}: where the largest errors are", fontsize=10)
    lead = "x".join(str(d) for d in shape[:-1]) or "1"
    pooled_note = f", max-pooled {fr}x{fc}" if fr > 1 or fc > 1 else ""
    ax.set_xlabel(f"last axis ({shape[-1] if shape else 1}){pooled_note}")
    ax.set_ylabel(f"leading axes ({lead})")


def _largest_errors(ax: Axes, name: str, error: np.ndarray) -> None:
    """The largest errors by their full index in the output tensor."""
    lines = []
    for rank, flat_index in enumerate(_top(error)):
        index = [int(i) for i in np.unravel_index(flat_index, error.shape)] if error.shape else []
        where = ",".join(map(str, index))
        lines.append(f"{rank + 1}. [{where}]\n   {error.reshape(-1)[flat_index]:.2e}")
    ax.set_title("largest errors", fontsize=10)
    ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=7)
    ax.set_axis_off()


def _top(error: np.ndarray) -> np.ndarray:
    return np.argsort(error.reshape(-1), kind="stable")[::-1][:TOP]


def _layer_errors(ax: Axes, run: Any, report: VerifyReport) -> None:
    ax.set_title("error per layer (along the depth of the model)")
    if not run.layers:
        ax.text(
            0.5,
            0.5,
            f"no per-layer comparison: {report.original} exposes no layer outputs",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return
    names = [a.name for a in run.layers]
    x = np.arange(len(names))
    floor = np.finfo(np.float64).tiny
    ax.plot(x, [max(a.max_abs, floor) for a in run.layers], marker="o", label="max abs")
    ax.plot(x, [max(a.mean_abs, floor) for a in run.layers], marker=".", label="mean abs")
    ax.axhline(run.layers[0].atol, color="tab:red", linestyle="--", label="atol")
    if run.first_divergent in names:
        i = names.index(run.first_divergent)
        ax.axvline(i, color="tab:orange", label=f"first divergent: {run.first_divergent}")
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("|rebuild - original|")
    ax.legend(fontsize=8)


def _attention_row(fig: Figure, axes: list[Axes], m: Any) -> None:
    where = f"example {m.example}, head {m.head}"
    original_ax, rebuild_ax, diff_ax = axes
    if m.rebuild is None:
        for ax, what in zip(
            axes, ("original attention", "rebuild attention", "|difference|"), strict=True
        ):
            ax.set_title(f"{m.layer}: {what}\nnot drawn", fontsize=9)
            ax.set_axis_off()
        _centred_text(rebuild_ax, m.why_missing)
        return
    vmax = (
        float(m.rebuild.max())
        if m.original is None
        else float(max(m.rebuild.max(), m.original.max()))
    )
    if m.original is not None:
        original_ax.imshow(m.original, vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
        original_ax.set_title(f"{m.layer}: original attention\n{where}", fontsize=9)
    else:
        _centred_text(original_ax, m.why_missing)
        original_ax.set_title(f"{m.layer}: original attention\nnot available", fontsize=9)
        original_ax.set_axis_off()
    image = rebuild_ax.imshow(m.rebuild, vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
    rebuild_ax.set_title(f"{m.layer}: rebuild attention\n{where}", fontsize=9)
    fig.colorbar(image, ax=rebuild_ax, label="probability")
    for ax in (original_ax, rebuild_ax):
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    if m.original is not None:
        diff = np.abs(m.original - m.rebuild)
        image = diff_ax.imshow(diff, cmap="magma", aspect="auto")
        fig.colorbar(image, ax=diff_ax, label="|difference|")
        diff_ax.set_title(f"{m.layer}: |difference|\nmax {m.max_difference:.1e}", fontsize=9)
        diff_ax.set_xlabel("key position")
    else:
        diff_ax.set_title(f"{m.layer}: |difference|\nno original", fontsize=9)
        diff_ax.set_axis_off()


def _max_pool(a: np.ndarray, limit: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`a` reduced by block maxima to at most limit x limit; the block sizes."""
    fr = max(1, -(-a.shape[0] // limit))
    fc = max(1, -(-a.shape[1] // limit))
    if fr == 1 and fc == 1:
        return a, (1, 1)
    rows, cols = -(-a.shape[0] // fr) * fr, -(-a.shape[1] // fc) * fc
    padded = np.zeros((rows, cols), dtype=a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    pooled = padded.reshape(rows // fr, fr, cols // fc, fc).max(axis=(1, 3))
    return pooled, (fr, fc)


def _html(report: VerifyReport, svg: str) -> str:
    """A self-contained page: the verdict and the figure as inline SVG."""
    svg = svg[svg.find("<svg") :]  # drop the XML prologue and doctype
    verdict = "PASS" if report.passed else "FAIL"
    title = html.escape(f"ckpt-tool verify {Path(report.path).name}: {verdict}")
    rows = "".join(
        f"<tr><td>{html.escape(run.label)}</td><td>{html.escape(a.name)}</td>"
        f"<td>{a.max_abs:.3e}</td><td>{a.cosine:.9f}</td>"
        f"<td>{'PASS' if a.passed else 'FAIL'}</td></tr>"
        for run in report.runs
        for a in run.outputs
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body>\n<h1>{title}</h1>\n"
        "<table border='1' cellpadding='4'><tr><th>inputs</th><th>output</th>"
        f"<th>max abs</th><th>cosine</th><th></th></tr>{rows}</table>\n{svg}\n</body></html>\n"
    )


def _centred_text(ax, text: str) -> None:
    """A short explanation in the middle of a panel (where a picture cannot be drawn)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=8, transform=ax.transAxes)
