"""What every layout works with: the selected tensors, their roles, and the arrays it makes.

A layout turns the tensors `export` selected (with the role parser's layer and role for
each) into `ExportArray`s: an npz name, the array's shape and dtype, the source tensors
it is made from, and a producer that reads them and builds the array only when the
writer asks for it (one array in memory at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckpt_tool.errors import UsageError
from ckpt_tool.layouts.calls import AttentionCall, attention_calls
from ckpt_tool.readers.base import WEIGHT, Reader, VariableInfo
from ckpt_tool.rolemap import Layer, RoleMap

Producer = Callable[[], np.ndarray]


class LayoutRefused(UsageError):
    """The source cannot be expressed in the requested layout (exit 2, nothing written)."""


@dataclass
class ExportArray:
    """One array of the output: its npz name, how to produce it, and what it came from."""

    name: str  # the array's key in the npz
    produce: Producer
    sources: tuple[VariableInfo, ...]  # the tensors it is made from (none: synthesized)
    shape: tuple[int, ...]
    dtype: str  # logical dtype before any --dtype cast
    role: dict | None = None
    label: str | None = None  # the manifest's "name"; None: the same as `name`
    transform: str | None = None  # how it was made from its sources; None: verbatim

    @property
    def source(self) -> VariableInfo | None:
        return self.sources[0] if self.sources else None

    @property
    def verbatim(self) -> bool:
        """The array is one source tensor, unchanged (same shape, same values)."""
        return self.transform is None and len(self.sources) == 1


@dataclass
class LayerTensors:
    """The selected tensors of one layer, by role."""

    layer: Layer
    tensors: dict[str, VariableInfo]

    @property
    def infos(self) -> list[VariableInfo]:
        return sorted(self.tensors.values(), key=lambda i: i.order)


@dataclass
class LayoutInput:
    """What a layout gets: the reader, the selected tensors in model order and their roles.
    Layouts append human-readable notes (what was kept, assumed or synthesized) and,
    for ported layouts, the target module of each layer with its constructor arguments."""

    reader: Reader
    infos: list[VariableInfo]
    roles: RoleMap
    notes: list[str] = field(default_factory=list)
    modules: list[dict] = field(default_factory=list)  # ported layouts: module per layer
    dropped: set[str] = field(default_factory=set)  # keys left out on purpose (zero biases)
    torch_prefix: str = ""  # before a model family's PyTorch names (`bert.`)
    model_config: dict | None = None  # the Keras model config, if any (how layers are called)

    def __post_init__(self) -> None:
        self._by_key = self.roles.by_key()
        self._calls: dict[str, list[AttentionCall]] | None = None

    def calls(self, layer: Layer) -> list[AttentionCall] | None:
        """How the model calls `layer` (query, value, key); None when no graph tells."""
        if self._calls is None:
            self._calls = attention_calls(self.model_config, self.roles)
        return self._calls.get(layer.name)

    @property
    def path(self) -> Path:
        return self.reader.path

    def role_of(self, info: VariableInfo) -> tuple[Layer, str] | None:
        return self._by_key.get(info.key)

    def role_json(self, info: VariableInfo) -> dict | None:
        """The manifest's `role`: layer, class, role and the evidence that decided it."""
        hit = self.role_of(info)
        if hit is None:
            return None
        layer, role = hit
        return role_dict(layer, role)

    def groups(self) -> list[LayerTensors | VariableInfo]:
        """Selected tensors grouped by layer, each group where its first tensor is;
        tensors without a role stand alone."""
        out: list[LayerTensors | VariableInfo] = []
        by_layer: dict[int, LayerTensors] = {}
        for info in self.infos:
            hit = self.role_of(info) if info.kind == WEIGHT else None
            if hit is None:
                out.append(info)
                continue
            layer, role = hit
            group = by_layer.get(id(layer))
            if group is None:
                group = by_layer[id(layer)] = LayerTensors(layer, {})
                out.append(group)
            group.tensors[role] = info
        return out

    def read(self, key: str) -> np.ndarray:
        return self.reader.read(key)


Layout = Callable[[LayoutInput], list[ExportArray]]


def role_dict(layer: Layer, role: str) -> dict:
    return {
        "layer": layer.name,
        "class": layer.class_name,
        "role": role,
        "evidence": layer.evidence,
    }


# --- making arrays ---------------------------------------------------------------------------


def verbatim(
    inp: LayoutInput, name: str, info: VariableInfo, *, label: str | None = None
) -> ExportArray:
    """The source tensor as it is, under a new name."""
    reader, key = inp.reader, info.key
    return ExportArray(
        name=name,
        produce=lambda: reader.read(key),
        sources=(info,),
        shape=tuple(info.shape),
        dtype=info.dtype,
        role=inp.role_json(info),
        label=label,
    )


def derived(
    inp: LayoutInput,
    name: str,
    infos: list[VariableInfo],
    fn: Callable[..., np.ndarray],
    shape: tuple[int, ...],
    transform: str,
    *,
    role: dict | None = None,
) -> ExportArray:
    """An array computed from source tensors: fn(*arrays), made C-contiguous.
    `shape` is what fn returns (checked when written)."""
    reader = inp.reader
    keys = [i.key for i in infos]
    dtypes = {i.dtype for i in infos}
    if len(dtypes) != 1:
        raise LayoutRefused(
            f"cannot combine {', '.join(i.name for i in infos)} into {name}: "
            f"their dtypes differ ({', '.join(sorted(dtypes))})",
            inp.path,
        )

    def produce() -> np.ndarray:
        return np.ascontiguousarray(fn(*(reader.read(k) for k in keys)))

    if role is None:
        role = inp.role_json(infos[0])
    return ExportArray(
        name, produce, tuple(infos), tuple(shape), infos[0].dtype, role, None, transform
    )


def zeros(
    name: str, shape: tuple[int, ...], dtype: str, role: dict | None, why: str
) -> ExportArray:
    """A synthesized all-zero array (a bias the target layout requires and the source lacks)."""
    return ExportArray(
        name=name,
        produce=lambda: np.zeros(shape, dtype=numpy_dtype(dtype)),
        sources=(),
        shape=tuple(shape),
        dtype=dtype,
        role=role,
        transform=f"zeros ({why})",
    )


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a dtype name, including ml_dtypes' (bfloat16, float8_*)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def flat(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --- names -------------------------------------------------------------------------------------


def npz_name(name: str) -> str:
    """A member name that np.load gives back unchanged and that cannot escape a directory
    when unzipped: no empty, "." or ".." segments, no leading "/", no "__" prefix
    (reserved for bookkeeping such as the manifest)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    parts = ["_" if p == ".." else p for p in parts]
    out = "/".join(parts) or "tensor"
    if out.startswith("__"):
        out = "_" + out.lstrip("_")
    return out


def unique_names(names: Iterable[str]) -> list[str]:
    """Keep names in order; the second and later uses of a name get `_1`, `_2`, ..."""
    names = list(names)
    taken = set(names)
    seen: set[str] = set()
    result = []
    for name in names:
        if name in seen:
            i = 1
            while f"{name}_{i}" in taken:
                i += 1
            name = f"{name}_{i}"
            taken.add(name)
        seen.add(name)
        result.append(name)
    return result


def safe_name(name: str) -> str:
    """`npz_name` for each side of a Haiku-style `scope//param` separator (kept as is)."""
    return "//".join(npz_name(part) for part in name.split("//"))


def make_unique(arrays: list[ExportArray]) -> list[ExportArray]:
    """Rename in place so every npz name is zip-safe and used once (later uses get
    `_1`, `_2`, ...)."""
    names = unique_names(safe_name(a.name) for a in arrays)
    for arr, name in zip(arrays, names, strict=True):
        arr.name = name
    return arrays
