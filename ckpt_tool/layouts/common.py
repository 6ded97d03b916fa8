"""Pieces the ported layouts (torch, torch-mha, haiku) share."""

from __future__ import annotations

from collections.abc import Callable

from ckpt_tool.layouts.base import (
    ExportArray,
    LayerTensors,
    LayoutInput,
    LayoutRefused,
    make_unique,
    npz_name,
    verbatim,
)
from ckpt_tool.readers.base import WEIGHT, VariableInfo
from ckpt_tool.rolemap import CONFIG, CONFIG_ORDER, USER, Layer

Handler = Callable[[LayoutInput, LayerTensors], list[ExportArray]]

MHA_PARTS = ("query", "key", "value", "gate", "output")


def port(
    inp: LayoutInput,
    layout: str,
    handlers: dict[str, Handler],
    fallback: Handler,
    loose_name: Callable[[str], str],
) -> list[ExportArray]:
    """Run each layer's handler (by Keras class) over the selected tensors, in model order.
    Tensors without a role keep their resolved name (through `loose_name`)."""
    refuse_optimizer(inp, layout)
    arrays: list[ExportArray] = []
    loose: list[str] = []
    for item in inp.groups():
        if isinstance(item, VariableInfo):
            name = loose_name(item.name)
            arrays.append(verbatim(inp, npz_name(name), item, label=name))
            loose.append(item.name)
            continue
        handler = handlers.get(item.layer.class_name, fallback)
        made = handler(inp, item)
        arrays += made + _leftovers(inp, item, made, fallback)
        if item.layer.alternatives and item.layer.evidence != USER:
            inp.notes.append(
                f"roles in {item.layer.name!r} follow Keras's creation order "
                f"({item.layer.evidence}); `ckpt-tool verify` can confirm them"
            )
    if loose:
        shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
        inp.notes.append(f"{len(loose)} tensors have no layer role and keep their names: {shown}")
    guessed = [m["layer"] for m in inp.modules if m["settings_from"] != "config"]
    if guessed:
        shown = ", ".join(guessed[:3]) + (", ..." if len(guessed) > 3 else "")
        inp.notes.append(
            f"no model config for {shown}: settings the weights do not hold (activations, "
            "epsilons, attention axes) are Keras's defaults in `modules`; pass --config"
        )
    return make_unique(arrays)


def _leftovers(
    inp: LayoutInput, lt: LayerTensors, made: list[ExportArray], fallback: Handler
) -> list[ExportArray]:
    """Tensors of the layer its handler did not use (roles it does not know, e.g. from a
    roles file), exported by the fallback so nothing selected is silently lost."""
    used = {s.key for arr in made for s in arr.sources} | inp.dropped
    rest = {role: info for role, info in lt.tensors.items() if info.key not in used}
    return fallback(inp, LayerTensors(lt.layer, rest)) if rest else []


def refuse_optimizer(inp: LayoutInput, layout: str) -> None:
    if any(info.kind != WEIGHT for info in inp.infos):
        raise LayoutRefused(
            f"--layout {layout} maps layer weights only; export optimizer state "
            "with --layout keras",
            inp.path,
        )


def require_whole(inp: LayoutInput, lt: LayerTensors, layout: str, why: str) -> None:
    """Refuse when --filter selected only part of a layer the layout must see whole."""
    missing = [role for role in lt.layer.weights if role not in lt.tensors]
    if missing:
        raise LayoutRefused(
            f"--layout {layout}: --filter selects only part of layer {lt.layer.name!r} "
            f"(not {', '.join(missing)}), and {why}",
            inp.path,
        )


def from_config(layer: Layer) -> bool:
    """Whether the layer's settings come from a model config (not guessed from shapes)."""
    return layer.evidence in (CONFIG, CONFIG_ORDER)


def module_entry(layer: Layer, prefix: str, module: str, args: dict) -> dict:
    """What the manifest's `modules` says about one layer: the target module and the
    arguments to build it with."""
    return {
        "layer": layer.name,
        "class": layer.class_name,
        "prefix": prefix,
        "module": module,
        "args": args,
        "settings_from": "config" if from_config(layer) else "weights",
    }
