"""EinsumDense: `activation(einsum(equation, x, kernel) + bias)`.

Keras: `keras.layers.EinsumDense(equation, output_shape, activation, bias_axes)`;
weights `kernel` then `bias` (only with `bias_axes`). The kernel and bias
shapes follow Keras's `_analyze_einsum_string`: the bias spans the output
spec from its first bias letter to the end, with 1 where a letter is not a
bias axis (and a trailing 1 per right-elided dim).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import get_activation
from ckpt_tool.layers.base import LayerConfigError, LayerKind, Shape
from ckpt_tool.layers.contract import contract


def analyze_einsum_dense(
    equation: str,
    bias_axes: str | None,
    input_shape: Sequence[int | None],
    output_shape: Sequence[int | None] | int,
) -> tuple[Shape, Shape | None, tuple[int | None, ...]]:
    """(kernel shape, bias shape or None, full output shape) as Keras builds them."""
    eq = equation.replace("...", "0")
    left_elided = False
    m = re.fullmatch(r"([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)", eq)
    if m is None:
        m = re.fullmatch(r"0([a-zA-Z]+),([a-zA-Z]+)->0([a-zA-Z]+)", eq)
        left_elided = m is not None
    if m is None:
        m = re.fullmatch(r"([a-zA-Z]{2,})0,([a-zA-Z]+)->([a-zA-Z]+)0", eq)
    if m is None:
        raise LayerConfigError(
            f"EinsumDense equation {equation!r} is not of the form "
            "X,Y->Z, ...X,Y->...Z or X...,Y->Z..."
        )
    in_spec, w_spec, out_spec = m.groups()
    input_shape = list(input_shape)
    elided = len(input_shape) - len(in_spec)
    out = [output_shape] if isinstance(output_shape, int) else list(output_shape)
    out.insert(0, input_shape[0])
    if elided > 0 and left_elided:
        for i in range(1, elided):
            out.insert(1, input_shape[i])
    elif elided > 0:
        out.extend(input_shape[len(input_shape) - elided :])

    if left_elided:
        in_map = {c: i + elided - len(input_shape) for i, c in enumerate(in_spec)}
        out_map = {c: i + elided for i, c in enumerate(out_spec)}
    else:
        in_map = {c: i for i, c in enumerate(in_spec)}
        out_map = {c: i for i, c in enumerate(out_spec)}
    for c in in_spec:
        if c in out_map:
            o = out[out_map[c]]
            if o is not None and o != input_shape[in_map[c]]:
                raise LayerConfigError(
                    f"EinsumDense {equation!r}: input and output sizes differ at {c!r}"
                )
            out[out_map[c]] = input_shape[in_map[c]]
    kernel: list[int] = []
    for c in w_spec:
        if c in out_map:
            kernel.append(out[out_map[c]])
        elif c in in_map:
            kernel.append(input_shape[in_map[c]])
        else:
            raise LayerConfigError(f"EinsumDense {equation!r}: kernel letter {c!r} is unbound")
    bias: Shape | None = None
    if bias_axes:
        for c in bias_axes:
            if c not in out_spec:
                raise LayerConfigError(
                    f"EinsumDense bias axis {c!r} is not in the output spec {out_spec!r}"
                )
        off = elided if left_elided else 0
        idx = {c: out[i + off] for i, c in enumerate(out_spec)}
        first = min(out_spec.find(c) for c in bias_axes)
        bias = tuple(idx[c] if c in bias_axes else 1 for c in out_spec[first:])
        if not left_elided:
            bias = bias + (1,) * max(elided, 0)
    return tuple(kernel), bias, tuple(out)


def einsum_dense(
    x: np.ndarray,
    equation: str,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    activation: Any = None,
) -> np.ndarray:
    """einsum(equation, x, kernel) (+ bias), then the activation."""
    y = contract(equation, x, kernel)
    if bias is not None:
        y = y + bias
    return get_activation(activation)(y)


def _equation(config: Mapping[str, Any]) -> str:
    eq = config.get("equation")
    if not isinstance(eq, str):
        raise LayerConfigError("EinsumDense config has no equation")
    return eq


def _output_shape(config: Mapping[str, Any]) -> list[int | None]:
    o = config.get("output_shape")
    if isinstance(o, int):
        return [o]
    if isinstance(o, (list, tuple)):
        return list(o)
    raise LayerConfigError(f"EinsumDense config output_shape={o!r} is not an int or a list")


class EinsumDenseKind(LayerKind):
    name = "EinsumDense"
    summary = "activation(einsum(equation, x, kernel) + bias)"

    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return ["kernel", "bias"] if config.get("bias_axes") else ["kernel"]

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        k, b, _ = analyze_einsum_dense(
            _equation(config), config.get("bias_axes"), input_shapes[0], _output_shape(config)
        )
        shapes: dict[str, Shape] = {"kernel": k}
        if b is not None:
            shapes["bias"] = b
        return shapes

    def compute(self, config, weights, inputs, **call_kwargs):
        (x,) = inputs
        return einsum_dense(
            x, _equation(config), weights["kernel"], weights.get("bias"), config.get("activation")
        )
