"""Export layouts: which names and arrays `ckpt-tool export --layout L` writes.

    keras      the tensors as they are, under their resolved names
    torch      PyTorch state_dict names, one nn.Linear per projection
    torch-mha  as torch, with each MultiHeadAttention as one nn.MultiheadAttention
    haiku      AlphaFold's Haiku names (`<scope>//query_w`, ...)

A layout is a function from `LayoutInput` (the reader, the selected tensors and
their roles) to a list of `ExportArray`; it raises `LayoutRefused` when the
source cannot be expressed in it.
"""

from __future__ import annotations

from ckpt_tool.layouts.base import (
    ExportArray,
    Layout,
    LayoutInput,
    LayoutRefused,
    npz_name,
    numpy_dtype,
    unique_names,
)
from ckpt_tool.layouts.haiku import haiku_layout
from ckpt_tool.layouts.keras import keras_layout
from ckpt_tool.layouts.pytorch import torch_layout, torch_mha_layout

LAYOUTS: dict[str, Layout] = {
    "keras": keras_layout,
    "torch": torch_layout,
    "torch-mha": torch_mha_layout,
    "haiku": haiku_layout,
}

# Layouts whose target loads a dict of arrays with its own loader, which would trip on any
# member that is not a parameter: their export keeps the manifest beside the archive.
STANDARD_LOADERS: dict[str, str] = {
    "torch": "torch.nn.Module.load_state_dict",
    "torch-mha": "torch.nn.Module.load_state_dict",
    "haiku": "alphafold.model.utils.flat_params_to_haiku",
}

__all__ = [
    "LAYOUTS",
    "STANDARD_LOADERS",
    "ExportArray",
    "Layout",
    "LayoutInput",
    "LayoutRefused",
    "npz_name",
    "numpy_dtype",
    "unique_names",
]
