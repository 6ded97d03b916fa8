"""JSON from files a stranger wrote: nesting bounded before parsing, errors as ValueError.

Python's json module recurses once per level of nesting, so a config nested 100,000
deep raises RecursionError (not a ValueError), and whatever walks the result
recurses as well. `loads_json` measures the nesting first and refuses anything
deeper than MAX_JSON_DEPTH with a ValueError, which every caller already reports
as "not valid JSON". `read_config_text` reads a config file only if it is a
regular file of sane size (a FIFO would wait forever, /dev/zero never end).
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

MAX_JSON_DEPTH = 256  # Keras configs of nested models reach a few dozen levels
MAX_CONFIG_BYTES = 256 << 20
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


class JSONTooDeepError(ValueError):
    """The document nests arrays and objects deeper than MAX_JSON_DEPTH."""


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of [ and { in a JSON text (strings ignored)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    bare = np.frombuffer(_STRING.sub(b"", raw), dtype=np.uint8)
    if bare.size == 0:
        return 0
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int64)
    step -= np.isin(bare, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def loads_json(text: str | bytes) -> Any:
    """json.loads, refusing (ValueError) documents nested deeper than MAX_JSON_DEPTH."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise JSONTooDeepError(f"nested {depth} levels deep (more than {MAX_JSON_DEPTH})")
    try:
        return json.loads(text)
    except RecursionError:  # cannot happen below the depth limit, but never a traceback
        raise JSONTooDeepError("nested too deeply") from None


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
