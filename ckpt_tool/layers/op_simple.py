"""Layers without weights: Add, Multiply, Dropout (the identity at inference), Activation."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ckpt_tool.layers.activations import get_activation
from ckpt_tool.layers.base import LayerKind, Shape


def add(inputs: Sequence[np.ndarray]) -> np.ndarray:
    """inputs[0] + inputs[1] + ..., summed left to right as keras.layers.Add does."""
    return functools.reduce(np.add, inputs)


def multiply(inputs: Sequence[np.ndarray]) -> np.ndarray:
    """inputs[0] * inputs[1] * ..., left to right as keras.layers.Multiply does."""
    return functools.reduce(np.multiply, inputs)


class _NoWeights(LayerKind):
    def weight_names(self, config: Mapping[str, Any]) -> list[str]:
        return []

    def weight_shapes(
        self, config: Mapping[str, Any], input_shapes: Sequence[Shape]
    ) -> dict[str, Shape]:
        return {}


class AddKind(_NoWeights):
    name = "Add"
    summary = "elementwise sum of the inputs"
    min_inputs = 1
    max_inputs = None

    def compute(self, config, weights, inputs, **call_kwargs):
        return add(inputs)


class MultiplyKind(_NoWeights):
    name = "Multiply"
    summary = "elementwise product of the inputs"
    min_inputs = 1
    max_inputs = None

    def compute(self, config, weights, inputs, **call_kwargs):
        return multiply(inputs)


class DropoutKind(_NoWeights):
    name = "Dropout"
    summary = "identity (inference)"

    def compute(self, config, weights, inputs, **call_kwargs):
        return inputs[0]


class ActivationKind(_NoWeights):
    name = "Activation"
    summary = "activation(x)"

    def compute(self, config, weights, inputs, **call_kwargs):
        return get_activation(config.get("activation"))(inputs[0])
