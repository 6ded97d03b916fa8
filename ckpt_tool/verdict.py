"""Why `verify` failed, where the cause is known: the original's float32 rounding, a
causal mask the file does not store, roles read from shapes alone; and which inputs
--scales cannot scale. Each hint is a sentence for the report; none changes a verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ckpt_tool.compare import Agreement, compare
from ckpt_tool.errors import CkptToolError
from ckpt_tool.graph import Graph, run_graph
from ckpt_tool.rolemap import SHAPE_ORDER, RoleMap

# The float64 gap counts as float32 rounding when it is at most this many times the
# float32 rebuild's own rounding (how far the float32 rebuild lies from the float64 one).
_ROUNDING_FACTOR = 8.0
_ATTENTION = ("MultiHeadAttention", "Attention")
_KIND_WORDS = {"ids": "token ids", "types": "token types", "mask": "a mask"}


def is_scalable(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "half"))


def scales_note(specs: Sequence, kinds: dict[int, dict]) -> tuple[bool, str | None]:
    """(whether any input can be scaled, a note naming the inputs that cannot)."""
    fixed = []
    for i, spec in enumerate(specs):
        if i in kinds or not is_scalable(spec.dtype):
            kind = _KIND_WORDS.get((kinds.get(i) or {}).get("kind"), spec.dtype)
            fixed.append(f"{spec.name.split(':')[0]} ({kind})")
    if not fixed:
        return True, None
    if len(fixed) == len(specs):
        return False, (
            f"--scales: no input can be scaled ({', '.join(fixed)}), so no constant runs "
            "were made; the random run above is the only one"
        )
    return True, (
        f"--scales: {', '.join(fixed)} cannot be scaled and keep their random values in "
        "every constant run; the other inputs take each constant"
    )


@dataclass
class RoundingGap:
    """A run whose failing outputs differ from the original by float32 rounding."""

    label: str
    names: list[str]
    gap: float  # the float64 rebuild's max abs error against the original
    own: float  # the float32 rebuild's max abs distance from the float64 one
    gap32: float  # the float32 rebuild's max abs error against the original
    pass32: bool  # the float32 rebuild passes the tolerance asked


def rounding_gap(
    label: str,
    outputs: list[Agreement],
    actual64: list[np.ndarray],
    actual32: list[np.ndarray],
    expected: list[np.ndarray],
) -> RoundingGap | None:
    """Set when every failing output's float64 gap is the size of float32 rounding:
    the float32 rebuild lies about as far from the float64 one as the original does,
    so the original's own float32 arithmetic explains the difference."""
    failing = [k for k, a in enumerate(outputs) if not a.passed]
    if not failing:
        return None
    gaps, own, gaps32, pass32 = [], [], [], True
    for k in failing:
        a64 = np.asarray(actual64[k], np.float64)
        a32 = np.asarray(actual32[k], np.float64)
        if a64.shape != a32.shape or a64.shape != np.shape(expected[k]):
            return None
        rounding = float(np.max(np.abs(a64 - a32))) if a64.size else 0.0
        gap = outputs[k].max_abs
        if not np.isfinite(gap) or rounding == 0 or gap > _ROUNDING_FACTOR * rounding:
            return None
        as32 = compare("", a32, expected[k], atol=outputs[k].atol, rtol=outputs[k].rtol)
        gaps.append(gap)
        own.append(rounding)
        gaps32.append(as32.max_abs)
        pass32 = pass32 and as32.passed
    names = [outputs[k].name for k in failing]
    return RoundingGap(label, names, max(gaps), max(own), max(gaps32), pass32)


def rounding_hint(gaps: list[RoundingGap]) -> str:
    """One sentence for every run whose failure is float32 rounding."""
    names = ", ".join(dict.fromkeys(n for g in gaps for n in g.names))
    labels = "; ".join(g.label for g in gaps)
    gap, own = max(g.gap for g in gaps), max(g.own for g in gaps)
    verdict32 = (
        "passes this tolerance"
        if all(g.pass32 for g in gaps)
        else f"agrees with the original to {max(g.gap32 for g in gaps):.2g}"
    )
    return (
        f"{names} (inputs {labels}): the float64 rebuild differs from the original by up to "
        f"{gap:.2g}, the size float32 rounding predicts here (the float32 rebuild differs "
        f"from the float64 one by up to {own:.2g}) and the float32 rebuild {verdict32}: "
        "the difference is the original's own float32 rounding, not a wrong weight. "
        f"--precision float32 compares like with like; --atol {gap:.2g} accepts it. "
        "The exit code stands for the tolerance asked."
    )


def summarize_hints(hints: list) -> list[str]:
    """Hints in order without repeats, the rounding gaps of all runs in one sentence."""
    gaps = [h for h in hints if isinstance(h, RoundingGap)]
    texts = [h for h in hints if isinstance(h, str) and h]
    if gaps:
        texts.insert(0, rounding_hint(gaps))
    return list(dict.fromkeys(texts))


def causal_hint(
    graph: Graph,
    weights: dict,
    inputs: list[np.ndarray],
    expected: list[np.ndarray],
    configs: dict,
    dtype: type,
    atol: float,
    rtol: float,
) -> str | None:
    """Attention rebuilt without the model's config may have lost a causal mask (a
    call argument, which weights never store): rerun with one; a hint only if the
    rebuild then agrees."""
    if graph.source == "config":
        return None
    nodes = [n for n in graph.nodes if n.class_name in _ATTENTION]
    if not nodes or any(n.kwargs.get("use_causal_mask") for n in nodes):
        return None
    causal = replace(
        graph,
        nodes=[
            replace(n, kwargs={**n.kwargs, "use_causal_mask": True})
            if n.class_name in _ATTENTION
            else n
            for n in graph.nodes
        ],
    )
    names = ", ".join(n.layer for n in nodes)
    try:
        actual, _ = run_graph(causal, weights, inputs, dtype=dtype, configs=configs)
        agrees = len(actual) == len(expected) and all(
            compare("", a, e, atol=atol, rtol=rtol).passed
            for a, e in zip(actual, expected, strict=True)
        )
    except CkptToolError:
        agrees = False
    if not agrees:
        return None
    return (
        f"with use_causal_mask=True in {names} the rebuild agrees: the model masks its "
        "attention causally, a call setting this file does not store (it holds no Keras "
        "config); pass the model's config with --config FILE (the JSON of model.to_json())"
    )


def shape_order_hint(roles: RoleMap) -> str | None:
    """Roles read from shapes and order alone, where several readings fit (q, k and v
    of one shape), may be read wrongly."""
    layers = [
        layer.name
        for layer in roles.layers
        if layer.evidence == SHAPE_ORDER and (layer.alternatives or layer.config_alternatives)
    ]
    if not layers:
        return None
    shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    return (
        f"the roles of {shown} were read from shapes and order alone and several readings "
        "fit (verify kept the one closest to the original); if none is right, "
        "--roles FILE or --config FILE says which variable is which"
    )


def explain_failure(
    label: str,
    outputs: list[Agreement],
    graph: Graph,
    weights: dict,
    inputs: list[np.ndarray],
    actual: list[np.ndarray],
    expected: list[np.ndarray],
    configs: dict,
    precision: str,
    roles: RoleMap,
    other_weights: bool = False,
    first_configs: dict | None = None,
) -> list[str | RoundingGap]:
    """Hints for a run with failing outputs, most specific first (summarize_hints
    turns them into sentences)."""
    atol, rtol = outputs[0].atol, outputs[0].rtol
    if precision == "float64":
        try:
            actual32, _ = run_graph(graph, weights, inputs, dtype=np.float32, configs=configs)
        except CkptToolError:
            actual32 = None
        if actual32 is not None and len(actual32) == len(actual):
            gap = rounding_gap(label, outputs, actual, actual32, expected)
            if gap:
                return [gap]
    dtype = np.float64 if precision == "float64" else np.float32
    hints = [causal_hint(graph, weights, inputs, expected, configs, dtype, atol, rtol)]
    if not hints[0] and first_configs is not None and first_configs != configs:
        # settling chose readings to make up for the missing mask: undo them
        hint = causal_hint(graph, weights, inputs, expected, first_configs, dtype, atol, rtol)
        if hint:
            hints = [f"{hint}. The settings settled above were chosen without the mask"]
    if not other_weights:  # OTHER's tensors take the roles the model's own agreed with
        hints.append(shape_order_hint(roles))
    return [h for h in hints if h]
