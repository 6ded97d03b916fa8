"""Names as they may be shown: control characters made visible.

A tensor name or a path comes from the file, so it can hold a newline (one row
would print as two), a terminal escape sequence (rewriting the screen) or a
bidirectional override (showing text in another order than it is). For display,
to a terminal or a pipe, these are written as escapes (`\\n`, `\\x1b`, `\\u202e`);
the names themselves (in exported files, in --json) are never changed.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, line/paragraph separators, bidi and zero-width marks,
# and lone surrogates (the bytes of a name that was not UTF-8, kept escaped).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb"
    "\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    c = match.group(0)
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def shown(text: object) -> str:
    """`text` with every control or invisible formatting character escaped."""
    text = str(text)
    return _UNSAFE.sub(_visible, text) if _UNSAFE.search(text) else text


def shown_all(texts: list[str]) -> list[str]:
    """shown() of each text; one scan of them all when (as usual) none needs escaping."""
    if not _UNSAFE.search("".join(texts)):
        return texts
    return [shown(t) for t in texts]
