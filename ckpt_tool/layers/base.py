"""The layer-kind protocol shared by every kernel in `ckpt_tool.layers`.

A layer kind knows three things about one Keras layer class (or one layer of
our own, such as the synthesizers):

- `weight_names(config)`: the roles of its weights, in the order Keras creates
  them for that config (the order of `layer.weights`);
- `weight_shapes(config, input_shapes)`: the shape of each role for given input
  shapes;
- `apply(config, weights, inputs, *, dtype, **call_kwargs)`: the forward pass in
  NumPy, with `config` the layer's Keras config dict (as in a `.keras` file's
  config.json), `weights` a dict keyed by role and `inputs` a list of arrays in
  the order of the Keras call signature.

`apply` checks the weights (every role present, nothing extra, shapes right)
and the inputs, casts everything to `dtype`, then hands over to the kind's
`compute`, which is a thin wrapper around a plain function of arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ckpt_tool.errors import CkptToolError, UnsupportedFormatError, UsageError

if TYPE_CHECKING:
    from ckpt_tool.readers.base import VariableInfo
    from ckpt_tool.rolemap import Layer

Shape = tuple[int, ...]
#: a weight shape where None stands for a size the config does not fix
WeightShape = tuple[int | None, ...]

# The dtypes a forward pass can run in: float64 for reference numbers, float32
# to mimic the rounding of a float32 model.
SUPPORTED_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


class UnknownLayerError(UnsupportedFormatError):
    """A layer kind (Keras class name) that ckpt-tool has no kernel for."""


class LayerConfigError(UsageError):
    """A layer config (or call argument) that the kernel cannot honour."""


class LayerWeightsError(CkptToolError):
    """Weights that do not fit the layer: a role missing, extra, or the wrong shape."""


class LayerKind:
    """One layer kind: its weight roles, their shapes, and its forward pass.

    Subclasses set `name`, `min_inputs`, `max_inputs` and `call_kwargs`, and
    implement `weight_names`, `weight_shapes` and `compute`.
    """

    name: ClassVar[str] = ""
    #: one-line description shown when listing layer kinds
    summary: ClassVar[str] = ""
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    #: keyword arguments `apply` accepts besides `dtype` (Keras call arguments)
    call_kwargs: ClassVar[frozenset[str]] = frozenset()
    #: when anonymous weights are parsed by shape and order, kinds with a rank try
    #: `match_shapes` in rank order (the most specific pattern first); None: never
    shape_match_rank: ClassVar[int | None] = None

    # -- what the weights tell (roles by shape and order) --------------------------------

    def match_shapes(self, infos: Sequence[VariableInfo], i: int) -> tuple[Layer, int] | None:
        """This kind's weights at `infos[i:]` in Keras's creation order: the layer with
        its roles and how many variables it takes, or None if the shapes do not fit."""
        return None

    def infer_config(self, shapes: Mapping[str, Shape]) -> dict:
        """The Keras config that weights of these shapes (by role) imply."""
        return {}

    def unknown_settings(self) -> tuple[list[dict], str | None]:
        """Settings the weights do not store: the config changes worth trying (verify
        settles them numerically) and a note saying what was assumed."""
        return [], None

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        """Roles of the layer's weights in Keras's creation order."""
        raise NotImplementedError

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, WeightShape]:
        """Shape of each role when the layer is built on `input_shapes`."""
        raise NotImplementedError

    def compute(
        self,
        config: Mapping[str, Any],
        weights: dict[str, np.ndarray],
        inputs: list[np.ndarray],
        **call_kwargs: Any,
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """The forward pass on checked, already-cast weights and inputs."""
        raise NotImplementedError

    def apply(
        self,
        config: Mapping[str, Any],
        weights: Mapping[str, np.ndarray],
        inputs: Sequence[np.ndarray],
        *,
        dtype: Any = np.float64,
        **call_kwargs: Any,
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the layer: check weights and inputs, cast to `dtype`, compute."""
        dt = check_dtype(dtype)
        xs = self._check_inputs(inputs, dt)
        unknown = sorted(set(call_kwargs) - self.call_kwargs - {"training"})
        if unknown:
            accepted = ", ".join(sorted(self.call_kwargs)) or "none"
            raise LayerConfigError(
                f"{self.name}: unknown call argument(s) {', '.join(unknown)}; accepted: {accepted}"
            )
        call_kwargs.pop("training", None)  # inference only: dropout is the identity
        ws = self._check_weights(config, weights, [x.shape for x in xs], dt)
        return self.compute(config, ws, xs, **call_kwargs)

    # -- checks -------------------------------------------------------------

    def _check_inputs(self, inputs: Sequence[np.ndarray], dt: np.dtype) -> list[np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        n = len(inputs)
        hi = self.max_inputs
        if n < self.min_inputs or (hi is not None and n > hi):
            want = (
                f"{self.min_inputs}"
                if hi == self.min_inputs
                else f"{self.min_inputs} to {hi}"
                if hi is not None
                else f"at least {self.min_inputs}"
            )
            raise LayerConfigError(f"{self.name} takes {want} input(s), got {n}")
        return [as_float(x, dt, what=f"{self.name} input {i}") for i, x in enumerate(inputs)]

    def _check_weights(
        self,
        config: Mapping[str, Any],
        weights: Mapping[str, np.ndarray],
        input_shapes: list[Shape],
        dt: np.dtype,
    ) -> dict[str, np.ndarray]:
        names = self.weight_names(config)
        missing = [n for n in names if n not in weights]
        extra = sorted(set(weights) - set(names))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise LayerWeightsError(
                f"{self.name} weights do not fit its config ({'; '.join(parts)}); "
                f"expected roles: {', '.join(names) or 'none'}"
            )
        expected = self.weight_shapes(config, input_shapes)
        out: dict[str, np.ndarray] = {}
        for n in names:
            w = as_float(weights[n], dt, what=f"{self.name} weight {n}")
            want = expected.get(n)
            if want is not None and not _shape_fits(w.shape, want):
                raise LayerWeightsError(
                    f"{self.name} weight {n} has shape {tuple(w.shape)}, "
                    f"expected {tuple(want)} for inputs {[tuple(s) for s in input_shapes]}"
                )
            out[n] = w
        return out


def _shape_fits(shape: Sequence[int], want: Sequence[int | None]) -> bool:
    """`shape` equals `want`, where a None in `want` matches any size."""
    return len(shape) == len(want) and all(
        w is None or s == w for s, w in zip(shape, want, strict=False)
    )


# -- small helpers shared by the kernels ----------------------------------------


def check_dtype(dtype: Any) -> np.dtype:
    """The numpy dtype to compute in; float64 or float32 only."""
    dt = np.dtype(dtype)
    if dt not in SUPPORTED_DTYPES:
        raise LayerConfigError(f"cannot compute in {dt}; use float64 or float32")
    return dt


def as_float(x: Any, dt: np.dtype, *, what: str) -> np.ndarray:
    """`x` as a C-contiguous array of dtype `dt` (a copy only when needed)."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf" and a.dtype.name not in ("bfloat16",):
        raise LayerConfigError(f"{what} has dtype {a.dtype}, not a number")
    return np.asarray(a, dtype=dt, order="C")  # (ascontiguousarray would make 0-d 1-d)


def as_mask(m: Any, *, what: str) -> np.ndarray | None:
    """A boolean mask (Keras casts masks with `cast(mask, "bool")`: nonzero is True)."""
    if m is None:
        return None
    a = np.asarray(m)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "biuf":
        raise LayerConfigError(f"{what} has dtype {a.dtype}, not a mask")
    return a != 0


def const(value: float, dt: np.dtype) -> np.ndarray:
    """A scalar constant in the compute dtype (as Keras's `ops.cast(c, dtype)`)."""
    return np.asarray(value, dtype=dt)[()]


def get_bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    v = config.get(key, default)
    if v is None:
        return default
    if not isinstance(v, (bool, int, np.bool_)):
        raise LayerConfigError(f"config {key}={v!r} is not a boolean")
    return bool(v)


def get_int(config: Mapping[str, Any], key: str, *, default: int | None = None) -> int | None:
    v = config.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise LayerConfigError(f"config {key}={v!r} is not an integer")
    return int(v)


def require_int(config: Mapping[str, Any], key: str, layer: str) -> int:
    v = get_int(config, key)
    if v is None:
        raise LayerConfigError(f"{layer} config has no {key}")
    if v <= 0:
        raise LayerConfigError(f"{layer} config {key}={v} must be positive")
    return v


def get_int_tuple(config: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    """An int-or-list config value as a tuple (None and empty stay None)."""
    v = config.get(key)
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v),)
    if isinstance(v, (list, tuple)) and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in v
    ):
        return tuple(int(i) for i in v) or None
    raise LayerConfigError(f"config {key}={v!r} is not an int or a list of ints")
