"""ckpt-tool: list, verify and export TensorFlow and Keras weights.

The Python API lives in `ckpt_tool.api` (`open`, `verify`, `export`, `diff`, `show`).
`ckpt_tool.open`, `ckpt_tool.WeightFile` and `ckpt_tool.show` are loaded from there on
first use, so `import ckpt_tool` stays light. (`ckpt_tool.verify`, `.export` and `.diff`
are the library's modules; call `ckpt_tool.api.verify` and friends.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckpt_tool.blas_threads import sleep_idle_blas_threads

# OpenBLAS reads its thread settings when NumPy loads it: before any module imports NumPy
sleep_idle_blas_threads()

__version__ = "0.1.0"

__all__ = ["WeightFile", "__version__", "open", "show"]
_API = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from ckpt_tool.api import WeightFile, open, show


def __getattr__(name: str) -> Any:
    if name in _API:
        from ckpt_tool import api

        return getattr(api, name)
    raise AttributeError(f"module 'ckpt_tool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
