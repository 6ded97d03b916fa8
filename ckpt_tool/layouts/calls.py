"""How the model calls an attention layer: which tensors it passes as query, value and key.

The weights cannot tell whether a MultiHeadAttention is called with a `key` of its own
or computes keys from `value`; a Keras functional config can (its inbound nodes). A
layout whose target computes keys and values from one input needs to know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ckpt_tool.errors import CkptToolError
from ckpt_tool.rolemap import RoleMap

_TENSORS = ("query", "value", "key")


@dataclass(frozen=True)
class AttentionCall:
    """One call of an attention layer. Tensors are `(layer, node, tensor)` refs."""

    query: Any
    value: Any
    key: Any  # None: keys come from `value` (Keras's default)
    options: dict[str, Any] = field(default_factory=dict)  # plain call arguments

    @property
    def separate_key(self) -> bool:
        return self.key is not None and self.key != self.value


def attention_calls(model_config: dict | None, roles: RoleMap) -> dict[str, list[AttentionCall]]:
    """Each layer's calls (query, value, key) by layer name, from the model's own graph.
    A layer missing from the result is called in a way no config tells (weights alone,
    a chain guessed from them, or a config that cannot be read)."""
    from ckpt_tool.graph import build_graph

    if model_config is None and roles.family is None:
        return {}
    try:
        graph = build_graph(model_config, roles)
    except (CkptToolError, AttributeError, KeyError, TypeError, ValueError, IndexError):
        return {}
    if graph.source.startswith("chain"):
        return {}
    calls: dict[str, list[AttentionCall]] = {}
    for node in graph.nodes:
        # MultiHeadAttention.call(query, value, key=None, ...): by position or by name
        tensors = dict(zip(_TENSORS, node.args, strict=False))
        tensors |= {k: v for k, v in node.kwargs.items() if k in _TENSORS}
        options = {k: v for k, v in node.kwargs.items() if k not in _TENSORS}
        call = AttentionCall(
            tensors.get("query"), tensors.get("value"), tensors.get("key"), options
        )
        calls.setdefault(node.layer, []).append(call)
    return calls
