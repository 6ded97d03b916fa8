"""The memory budget: how much a command may allocate for what a file claims.

`list`, `export` and `diff` hold one tensor at a time (two for `diff`), so they
need about twice the largest tensor they must hold, plus a floor for everything
else. Anything a file asks to be inflated or buffered (a compressed zip member,
an HDF5 chunk, a reassembled partitioned tensor) is checked against this budget
before any work starts, so a small hostile file cannot claim gigabytes.

The floor is 256 MiB; CKPT_TOOL_MEMORY_BUDGET (bytes, or with a K, M or G suffix)
raises or lowers it for a machine that has the memory.

What a command keeps per variable grows with the number of variables a file claims,
at a few bytes of index each. Before any per-variable work, that number times the
measured cost of a variable's records is checked against the budget. Once the command
has chosen the variables it works on (the weights to export, the rows to print), the
records of the chosen ones are checked again, at the cost of that command.
"""

from __future__ import annotations

import os
import re

from ckpt_tool.errors import CkptToolError

MiB = 1 << 20
MEMORY_FLOOR = 256 * MiB
BUDGET_VARIABLE = "CKPT_TOOL_MEMORY_BUDGET"

# What the interpreter and the libraries take before any variable is kept.
PROCESS_BYTES = 64 * MiB

# Peak memory per variable, from the slope of peak RSS between indexes of 20,000 and
# 80,000 entries (one float32[1] each; 180,000 for export with a filter), rounded up.
# Every variable the file claims: its VariableInfo, the entry it came from, its listing
# record (measured 1.03 KB), and for export its role (1.6 KB in all):
CLAIMED_BYTES = {
    "list": 1_100,
    "list --json": 1_100,
    "export": 1_700,
    "diff": 1_100,  # each side's (2.05 KB a pair)
    "diff --by-role": 1_800,  # ... and its role (1.7 KB a side)
}
# And each variable the command works on, on top of that:
SELECTED_BYTES = {
    "list": 1_000,  # its row (measured 1.7-2.0 KB in all: a table, --tree, --stats, --roles)
    "list --json": 2_600,  # its JSON object and text (3.5 KB in all)
    "export": 3_300,  # layout records, the manifest, a zip member record (4.8 KB in all)
    "diff": 0,  # (its spellings to match and its pair are in the records' cost)
    "diff --by-role": 0,
}

_SIZE = re.compile(r"\s*(\d+)\s*([KMG]?)i?B?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class OverBudgetError(CkptToolError):
    """What the file claims would need more memory than the budget allows."""


def memory_floor() -> int:
    """The budget's floor: CKPT_TOOL_MEMORY_BUDGET when set, else 256 MiB."""
    text = os.environ.get(BUDGET_VARIABLE)
    if not text:
        return MEMORY_FLOOR
    match = _SIZE.fullmatch(text)
    if match is None:
        raise CkptToolError(
            f"{BUDGET_VARIABLE}={text!r} is not a size (bytes, or a number with K, M or G)"
        )
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def allowance(largest_tensor_bytes: int) -> int:
    """Bytes a command may use while holding tensors of at most this size."""
    return max(memory_floor(), 2 * largest_tensor_bytes)


def check_variable_count(
    path: object, claimed: int, largest_tensor_bytes: int, work: str, selected: int = 0
) -> None:
    """Refuse, before it starts, per-variable work (`work`, a key of CLAIMED_BYTES) on
    `selected` of the `claimed` variables when their records would not fit in the budget
    beside the process itself."""
    need = PROCESS_BYTES + claimed * CLAIMED_BYTES[work] + selected * SELECTED_BYTES[work]
    budget = allowance(largest_tensor_bytes)
    if need > budget:
        # before the selection only the records are counted: the least it could take
        about = "at least" if SELECTED_BYTES[work] and not selected else "about"
        raise OverBudgetError(
            f"{claimed:,} variables: `{work}` would need {about} {_size(need)} for them, "
            f"more than the memory budget of {_size(budget)} "
            f"(set {BUDGET_VARIABLE} to allow more)",
            path,
        )


def _size(nbytes: int) -> str:
    if nbytes >= 1 << 30:
        return f"{nbytes / (1 << 30):.1f} GiB"
    return f"{nbytes / MiB:.0f} MiB"
