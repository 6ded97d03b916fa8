"""The `keras` layout: every tensor as it is, under its resolved name.

Where the resolved name is only a position in an anonymous list (`variables/0` in a
Keras 3 `model.export()` SavedModel), the role parser's layer and role name it instead,
spelled as tf-keras names them: `multi_head_attention/query/kernel`,
`multi_head_attention/attention_output/bias`, `dense/kernel`.
"""

from __future__ import annotations

import re

from ckpt_tool.layouts.base import ExportArray, LayoutInput, make_unique, npz_name, verbatim
from ckpt_tool.readers.base import VariableInfo

# `variables/3`, `_all_variables/3`, `optimizer/_trainable_variables/3`: a position, no name.
_ANONYMOUS = re.compile(
    r"(^|/)(_?all_variables|_?variables|_?trainable_variables|_?non_trainable_variables)/\d+$"
)


# tf-keras's variable names for MultiHeadAttention's sub-layers (`.../attention_output/kernel`).
_SUBLAYER_NAMES = {"output": "attention_output"}


def is_anonymous(name: str) -> bool:
    return bool(_ANONYMOUS.search(name))


def keras_layout(inp: LayoutInput) -> list[ExportArray]:
    arrays = []
    renamed = 0
    for info in inp.infos:
        name = _meaningful_name(inp, info)
        renamed += name != info.name
        arrays.append(verbatim(inp, npz_name(name), info, label=name))
    if renamed:
        inp.notes.append(
            f"{renamed} anonymous tensors (variables/N) named by layer and role; "
            "the manifest keeps their source names"
        )
    return make_unique(arrays)


def _meaningful_name(inp: LayoutInput, info: VariableInfo) -> str:
    if not is_anonymous(info.name):
        return info.name
    hit = inp.role_of(info)
    if hit is None:
        return info.name
    layer, role = hit
    part, _, param = role.rpartition(".")
    if part:  # a sub-layer: spelled as tf-keras names MultiHeadAttention's
        return f"{layer.name}/{_SUBLAYER_NAMES.get(part, part)}/{param}"
    return f"{layer.name}/{role}"
