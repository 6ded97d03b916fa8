"""JSON from files a stranger wrote: nesting bounded before parsing, errors as ValueError.

Python's json module recurses once per level of nesting, so a config nested 100,000
deep raises RecursionError (not a ValueError), and whatever walks the result
recurses as well. `loads_json` turns that into a ValueError and refuses anything
deeper than MAX_JSON_DEPTH the same way, which every caller already reports as
"not valid JSON". `read_config_text` reads a config file only if it is a
regular file of sane size (a FIFO would wait forever, /dev/zero never end).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

MAX_JSON_DEPTH = 256  # Keras configs of nested models reach a few dozen levels
MAX_CONFIG_BYTES = 256 << 20


class JSONTooDeepError(ValueError):
    """The document nests arrays and objects deeper than MAX_JSON_DEPTH."""


def json_depth(value: Any) -> int:
    """How deeply lists and dicts nest in a parsed document (walked without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item if isinstance(child, list | dict))
    return deepest


def loads_json(text: str | bytes) -> Any:
    """json.loads, refusing (ValueError) documents nested deeper than MAX_JSON_DEPTH.

    The parser itself stops at Python's recursion limit (RecursionError, turned into the
    same ValueError); what it returns is measured without recursion."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JSONTooDeepError(f"nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise JSONTooDeepError(f"nested {depth} levels deep (more than {MAX_JSON_DEPTH})")
    return value


def read_config_text(path: str | Path) -> str:
    """A text config file's contents: OSError as open() raises it, also for a FIFO, a
    device or a file larger than MAX_CONFIG_BYTES (never waiting or reading forever)."""
    from ckpt_tool.readers.regular_file import NotRegularFileError, open_regular

    try:
        with open_regular(path) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except NotRegularFileError:
        raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device)", str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_CONFIG_BYTES} bytes", str(path))
    return data.decode("utf-8", errors="replace")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML errors span several, with a caret)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if isinstance(problem, str) and mark is not None:  # a YAML error: where and what
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split()) or type(exc).__name__
