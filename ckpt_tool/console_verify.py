"""Rendering for `verify`: the roles found, one agreement table, the verdict and why."""

from __future__ import annotations

from rich.text import Text

from ckpt_tool import console
from ckpt_tool.readers.choice import describe_format
from ckpt_tool.table_layout import Column, Row, print_lines, print_table


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _verdict(passed: bool) -> Text:
    return Text("PASS", style="bold green") if passed else Text("FAIL", style="bold red")


def render_roles(role_map, infos_by_key: dict | None = None) -> None:
    """The layers found in a weight file and which variable plays which role: a line
    per layer (name, class, evidence), then its roles, variables and shapes."""
    columns = [
        Column("  role"),
        Column("variable", stack=True, give=1),
        Column("shape", right=False, give=2),
    ]
    rows: list[Row] = []
    for layer in role_map.layers:
        heading = Text(layer.name, style="bold") + Text(
            f"  {layer.class_name}  {layer.evidence}", style="dim"
        )
        first = True
        for role, key in layer.weights.items():
            info = (infos_by_key or {}).get(key)
            shape = _shape(info.shape) if info is not None else ""
            name = info.name if info is not None else key
            rows.append(Row([f"  {role}", name, shape], above=[heading] if first else []))
            first = False
        if layer.notes:
            if first:  # a layer without weights still shows its notes
                rows.append(Row(["", "", ""], above=[heading]))
            rows[-1].below.extend(Text(note, style="dim") for note in layer.notes)
    unassigned = list(role_map.unassigned)
    for k, info in enumerate(unassigned):
        above = [Text("unassigned  no pattern fits", style="bold")] if k == 0 else []
        rows.append(Row(["  ?", info.name, _shape(info.shape)], above=above))
    print_table(console.out, columns, rows, Text("layers and roles", style="bold"))


# Columns of an agreement table. `req atol` and `req rtol` repeat max abs and max rel
# (the smallest tolerances that pass alone), so they give way first.
_METRICS = [
    ("max abs", None, lambda a: f"{a.max_abs:.3g}"),
    ("mean abs", 4, lambda a: f"{a.mean_abs:.3g}"),
    ("median abs", 3, lambda a: f"{a.median_abs:.3g}"),
    ("max rel", None, lambda a: f"{a.max_rel:.3g}"),
    ("cosine", None, lambda a: f"{a.cosine:.9f}"),
    ("req atol", 1, lambda a: f"{a.required_atol:.3g}"),
    ("req rtol", 2, lambda a: f"{a.required_rtol:.3g}"),
]


def agreement_table(title: str, labelled: list[tuple[list[str], object]], keys: list[str]) -> None:
    """One row per agreement; `keys` name the leading columns that identify a row (the
    input set, the output or layer), each stacked above its row when space runs out."""
    columns = [Column(k, stack=True, give=5 + i) for i, k in enumerate(keys)]
    columns.append(Column("shape", give=5 + len(keys)))
    columns += [Column(h, right=True, give=g) for h, g, _ in _METRICS]
    columns.append(Column(""))
    rows = [
        Row([*ids, _shape(a.shape), *(f(a) for _, _, f in _METRICS), _verdict(a.passed)])
        for ids, a in labelled
    ]
    print_table(console.out, columns, rows, Text(title))


def render_agreements(report) -> None:
    """Every run's outputs in one table, a row per input set and output; per-layer
    tables after it."""
    runs = report.runs
    if not runs:
        return
    several_outputs = any(len(run.outputs) > 1 for run in runs)
    if len(runs) == 1:
        keys, title = ["output"], f"outputs, inputs: {runs[0].label}"
        labelled = [([a.name], a) for a in runs[0].outputs]
    else:
        keys = ["inputs", "output"] if several_outputs else ["inputs"]
        title = "outputs, a row per input set"
        labelled = [
            ([run.label, a.name] if several_outputs else [run.label], a)
            for run in runs
            for a in run.outputs
        ]
    agreement_table(title, labelled, keys)
    for run in runs:
        if run.layers is None:
            continue
        label = "per layer" if len(runs) == 1 else f"per layer, inputs: {run.label}"
        agreement_table(label, [([a.name], a) for a in run.layers], ["layer"])
        if run.first_divergent:
            console.out.print(f"first layer that diverges: [bold red]{run.first_divergent}[/]")


def render_verify(report) -> None:
    out = console.out
    header = [
        Text(report.path, style="bold") + Text(f" ({describe_format(report.path, report.format)})"),
        Text(f"original: {report.original}"),
        Text(f"weights:  {report.weights_source}"),
        Text(f"graph:    {report.graph_source}; NumPy in {report.precision}"),
    ]
    print_lines(out, header)
    render_roles(report.roles, report.variables)
    print_lines(out, [Text("settled ", style="cyan") + Text(line) for line in report.settled])
    render_agreements(report)
    if report.runs:
        a = report.runs[0].outputs[0] if report.runs[0].outputs else None
        tol = f" (atol {a.atol:g}, rtol {a.rtol:g})" if a else ""
        print_lines(out, [_verdict(report.passed) + Text(tol)])
    hints = getattr(report, "hints", [])
    print_lines(out, [Text("hint: ", style="yellow") + Text(h) for h in hints])
