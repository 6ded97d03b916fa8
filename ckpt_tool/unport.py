"""A PyTorch port's weights brought back to the original's tensors (`verify --weights`).

The ported layouts (`torch`, `torch-mha`) rename, transpose, reshape, split and pack the
original tensors; every step only moves elements. So instead of an inverse written per
transform, the layout is run on *element ids*: each original tensor is replaced by
float64 numbers that count its elements (unique across tensors, exact below 2**53).
The arrays the layout then makes say, position by position, which original element they
hold, and reading the port's arrays (by the layout's names) at those positions rebuilds
every original tensor. Any step that is not a pure move shows up as an id that is not
one, and the file is then not taken as a port of this model.

Works for files `export --layout torch|torch-mha` wrote and for any PyTorch
`state_dict` saved under the same names (`safetensors.torch.save_file`, a `.npz`),
with or without a common prefix such as `bert.`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ckpt_tool.errors import CkptToolError, UsageError
from ckpt_tool.layouts import LAYOUTS, ExportArray, LayoutInput
from ckpt_tool.readers.base import Reader, VariableInfo
from ckpt_tool.rolemap import RoleMap

PORTED_LAYOUTS = ("torch", "torch-mha")
_MAX_ID = 2**53  # float64 counts exactly up to here


class _IdReader(Reader):
    """The original's variables, each read as float64 ids of its elements."""

    def __init__(self, path: Path, infos: Sequence[VariableInfo]):
        super().__init__(path)
        self._infos = list(infos)
        self.starts: dict[str, int] = {}
        start = 0
        for info in self._infos:
            self.starts[info.key] = start
            start += info.num_elements
        if start >= _MAX_ID:
            raise UsageError("the model is too large to trace a port's layout", path)
        self.format_name = "ids"

    def variables(self) -> list[VariableInfo]:
        return list(self._infos)

    def read(self, key: str) -> np.ndarray:
        info = next(i for i in self._infos if i.key == key)
        start = self.starts[key]
        return np.arange(start, start + info.num_elements, dtype=np.float64).reshape(info.shape)


def unported_weights(
    path: str | Path, infos: Sequence[VariableInfo], roles: RoleMap, other: Reader
) -> dict[str, np.ndarray] | None:
    """Original key -> array rebuilt from `other`, for every key the roles use; None when
    `other` is not a whole port of this model in a ported layout (then tensors are matched
    by name as for any other file)."""
    from ckpt_tool.export import select_variables

    ids = _IdReader(Path(path), [i for i in infos if i.dtype != "string"])
    needed = {key for layer in roles.layers for key in layer.weights.values()}
    other_keys = {info.key for info in other.variables()}
    best: tuple[int, list[ExportArray], str] | None = None
    for layout in PORTED_LAYOUTS:
        try:
            arrays = LAYOUTS[layout](LayoutInput(ids, select_variables(ids), roles))
        except (CkptToolError, LookupError, ValueError, TypeError):
            continue  # the layout refuses (or cannot express) this model: not this layout
        sourced = [a for a in arrays if a.sources]  # not the zeros a layout makes up
        prefix = _prefix([a.name for a in sourced], other_keys)
        if prefix is None:
            continue
        found = sum(prefix + a.name in other_keys for a in sourced)
        if best is None or found > best[0]:
            best = (found, [a for a in sourced if prefix + a.name in other_keys], prefix)
    if best is None:
        return None
    _, arrays, prefix = best
    rebuilt = _gather(ids, arrays, prefix, other)
    missing = [k for k in sorted(needed) if k not in rebuilt]
    for key in missing:  # a folded copy (Keras 3 export): the twin's values
        twin = next((i.extra.get("duplicate_of") for i in infos if i.key == key), None)
        if twin in rebuilt:
            rebuilt[key] = rebuilt[twin]
    if any(k not in rebuilt for k in needed):
        return None  # not a whole port: matching by names says what is missing
    return rebuilt


def _prefix(names: list[str], other_keys: set[str]) -> str | None:
    """ "" when `other` holds the layout's names as they are, else the one common prefix
    (`bert.`) before them; None when neither fits at all."""
    if not names:
        return None
    if any(n in other_keys for n in names):
        return ""
    first = names[0]
    for key in other_keys:
        if key.endswith("." + first):
            candidate = key[: -len(first)]
            if sum(candidate + n in other_keys for n in names) * 2 >= len(names):
                return candidate
    return None


def _gather(
    ids: _IdReader, arrays: list[ExportArray], prefix: str, other: Reader
) -> dict[str, np.ndarray]:
    """Scatter the port's values back to the original tensors, element by element."""
    values: dict[str, np.ndarray] = {}
    filled: dict[str, np.ndarray] = {}
    for arr in arrays:
        positions = arr.produce().reshape(-1)
        ported = np.asarray(other.read(prefix + arr.name))
        if tuple(ported.shape) != tuple(arr.shape):
            raise UsageError(
                f"{prefix + arr.name} has shape {list(ported.shape)}; a port of this model "
                f"has {list(arr.shape)} there",
                other.path,
            )
        flat = ported.reshape(-1)
        for info in arr.sources:
            start = ids.starts[info.key]
            inside = (positions >= start) & (positions < start + info.num_elements)
            index = positions[inside] - start
            if not np.array_equal(index, np.round(index)):
                return {}  # not a pure move of elements: not this layout
            target = values.setdefault(info.key, np.zeros(info.num_elements, dtype=flat.dtype))
            mark = filled.setdefault(info.key, np.zeros(info.num_elements, dtype=bool))
            target[index.astype(np.int64)] = flat[inside]
            mark[index.astype(np.int64)] = True
    by_key = {i.key: i for a in arrays for i in a.sources}
    return {
        key: values[key].reshape(by_key[key].shape)
        for key in values
        if filled[key].all()  # every element of the original tensor came from the port
    }
