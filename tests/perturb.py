"""Weights of a fixture written to an .npz under their resolved names, optionally with
one tensor perturbed or two tensors exchanged: the "perturbed copies" that verify
must reject (`ckpt-tool verify FIXTURE --weights COPY.npz`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckpt_tool.readers import open_reader
from tests.support import fixture_path


def _matches(info, part: str) -> bool:
    return any(part in name for name in (info.key, info.name, *info.aliases))


def write_weights_npz(
    fixture_id: str,
    target: Path,
    *,
    perturb: str | None = None,
    swap: tuple[str, str] | None = None,
) -> str | None:
    """Write the fixture's weights to `target`; `perturb` scales and shifts the first
    tensor whose key, name or alias contains it, `swap` exchanges two such tensors.
    Returns the npz name of the perturbed tensor."""
    with open_reader(fixture_path(fixture_id)) as reader:
        infos = [i for i in reader.variables() if i.kind == "weight"]
        arrays = {i.name: np.array(reader.read(i.key)) for i in infos}
    changed = None
    if perturb is not None:
        info = next(i for i in infos if _matches(i, perturb))
        arrays[info.name] = (arrays[info.name] * 1.25 + 0.05).astype(arrays[info.name].dtype)
        changed = info.name
    if swap is not None:
        a = next(i for i in infos if _matches(i, swap[0])).name
        b = next(i for i in infos if _matches(i, swap[1])).name
        assert arrays[a].shape == arrays[b].shape, (a, b)
        arrays[a], arrays[b] = arrays[b], arrays[a]
    np.savez(target, **arrays)
    return changed
