"""Find Python code serialized inside a Keras model config.

tf-keras writes a Lambda layer's `lambda` (and an RNN cell wrapper's) as marshalled
bytecode with `function_type: "lambda"`; Keras 3 writes `{"class_name": "__lambda__"}`.
Loading such a config runs that code. Keras 3's safe mode refuses it; tf-keras'
legacy `.h5` loader does not, so verify looks for it itself before anything loads.
The walk is iterative: a config nested 100,000 deep costs no recursion.
"""

from __future__ import annotations

from typing import Any


def python_code_in(config: Any) -> str | None:
    """A short description of the first serialized Python function in `config`, or None."""
    stack = [(config, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            if value.get("class_name") == "__lambda__":
                return f"a Python lambda at {where or 'the top level'}"
            for key, item in value.items():
                if isinstance(key, str) and key.endswith("type") and item == "lambda":
                    name = value.get("name") or _layer_name(value)
                    return f"a Python lambda (Lambda layer {name!r})" if name else "a Python lambda"
                stack.append((item, _layer_name(value) or where))
        elif isinstance(value, list):
            stack.extend((item, where) for item in value)
    return None


def _layer_name(value: dict) -> str:
    config = value.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else ""
