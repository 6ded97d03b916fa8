"""Helpers for the layer kinds' shape matchers (`LayerKind.match_shapes`): anonymous
weights (`variables/N`) read, in Keras's creation order, as one layer's roles."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations

from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import SHAPE_ORDER, Layer

Shape = tuple[int, ...]


def shape_at(infos: Sequence[VariableInfo], i: int) -> Shape | None:
    """The shape of the i-th variable, None past the end."""
    return infos[i].shape if i < len(infos) else None


def shape_layer(name: str, kind, weights: dict[str, str], shapes: dict[str, Shape]) -> Layer:
    """A layer found by shape and order, its config inferred from the shapes."""
    return Layer(name, kind.name, kind.infer_config(shapes), weights, SHAPE_ORDER)


def equal_shape_permutations(
    weights: dict[str, str], shapes: dict[str, Shape], parts: list[str]
) -> list[dict[str, str]]:
    """Other assignments of the projections in `parts` that fit the shapes equally."""
    alternatives = []
    for perm in permutations(parts):
        if list(perm) == parts:
            continue
        alt = dict(weights)
        fits = True
        for src, dst in zip(parts, perm, strict=True):
            for param in ("kernel", "bias"):
                role_src, role_dst = f"{src}.{param}", f"{dst}.{param}"
                if role_src not in weights:
                    continue
                if shapes[role_src] != shapes[role_dst]:
                    fits = False
                alt[role_dst] = weights[role_src]
        if fits:
            alternatives.append(alt)
    return alternatives


def shape_matchers() -> list:
    """The registered kinds that parse anonymous weights, in the order they are tried."""
    from ckpt_tool.layers import LAYERS

    kinds = [k for k in LAYERS.values() if k.shape_match_rank is not None]
    return sorted(kinds, key=lambda k: k.shape_match_rank)
