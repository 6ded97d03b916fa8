"""Export a weight file to .safetensors: the format PyTorch users load, streamed and crash-safe.

The file is what `safetensors.torch.load_file` and `safetensors.numpy.load_file` open:
an 8-byte little-endian header length, a JSON header naming every tensor's dtype,
shape and byte range, then the raw little-endian bytes. The header's `__metadata__`
holds `format` (`pt` for the torch layouts, as Hugging Face loaders expect) and
`__manifest__`, the same JSON manifest an .npz export stores (see `ckpt_tool.export`).

Every shape and dtype is known from the plan before a byte is read, so the header is
written first and then one tensor at a time is read, written and dropped. Tensors are
laid out by decreasing item size (as the safetensors library does), so each one starts
at an offset aligned to its own item size; the manifest keeps the model's order. The
file goes through the same temporary file and rename as the .npz export: an error or
Ctrl-C leaves no partial output.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ckpt_tool.errors import CkptToolError, UsageError
from ckpt_tool.export import (
    MANIFEST_KEY,
    ExportArray,
    ExportOptions,
    ExportPlan,
    ExportResult,
    _AtomicTarget,
    check_target,
    plan_export,
)
from ckpt_tool.layouts import numpy_dtype
from ckpt_tool.readers.base import Reader
from ckpt_tool.readers.safetensors_reader import DTYPE_CODES

__all__ = ["export_safetensors", "safetensors_header", "write_safetensors"]

_CHUNK_BYTES = 16 << 20  # bytes per write (and per cast chunk)
# The `format` entry of the metadata, by layout: Hugging Face's loaders refuse files
# whose format is not one they know.
_FORMAT_OF_LAYOUT = {"torch": "pt", "torch-mha": "pt", "keras": "tf", "haiku": "jax"}


def _code(arr: ExportArray, dtype: str, source: Path) -> str:
    """The safetensors dtype code for the array's logical dtype, or a refusal naming it."""
    code = DTYPE_CODES.get(dtype)
    if code is None:
        what = arr.label or arr.name
        raise UsageError(
            f"tensor {what!r} has dtype {dtype}, which safetensors cannot hold; "
            "exclude it with --filter or export to .npz",
            source,
        )
    return code


def safetensors_header(plan: ExportPlan) -> tuple[bytes, list[int]]:
    """(the header bytes with their 8-byte length prefix, the arrays' write order).

    Raises UsageError before anything is written for a dtype safetensors cannot hold."""
    entries = []
    for i, (arr, (dtype, _)) in enumerate(zip(plan.arrays, plan.dtypes, strict=True)):
        code = _code(arr, dtype, plan.source)
        itemsize = numpy_dtype(dtype).itemsize
        entries.append((i, code, itemsize, _count(arr.shape) * itemsize))
    # Largest items first (stable: model order within a size), so offsets stay aligned.
    order = sorted(range(len(entries)), key=lambda i: -entries[i][2])
    header: dict = {
        "__metadata__": {
            "format": _FORMAT_OF_LAYOUT.get(plan.manifest.get("layout", "keras"), "np"),
            MANIFEST_KEY: json.dumps(plan.manifest, sort_keys=True),
        }
    }
    offset = 0
    for i in order:
        _, code, _, nbytes = entries[i]
        arr = plan.arrays[i]
        header[arr.name] = {
            "dtype": code,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text, order


def write_safetensors(
    plan: ExportPlan,
    out: str | Path,
    *,
    force: bool = False,
    on_array: Callable[[ExportArray], None] | None = None,
) -> ExportResult:
    """Write a plan to `out` as .safetensors, one tensor at a time, through a temporary
    file renamed into place at the end. on_array(array) is called after each tensor."""
    out = Path(out)
    if plan.compress:
        raise UsageError("--compress applies to .npz only; safetensors stores raw bytes")
    check_target(out, plan.source, force=force)
    header, order = safetensors_header(plan)
    with _AtomicTarget(out, force=force) as fh:
        fh.write(header)
        for i in order:
            arr, (dtype, _) = plan.arrays[i], plan.dtypes[i]
            _write_tensor(fh, arr, numpy_dtype(dtype), plan.source)
            if on_array is not None:
                on_array(arr)
    return ExportResult(out, len(plan.arrays), plan.source_bytes, out.stat().st_size, plan.manifest)


def export_safetensors(
    reader: Reader,
    out: str | Path,
    options: ExportOptions | None = None,
    *,
    on_array: Callable[[ExportArray], None] | None = None,
) -> ExportResult:
    """Export the reader's selected tensors to `out` (.safetensors, manifest in the metadata).
    Raises CkptToolError on every user-facing problem; `out` is never left half-written."""
    options = options or ExportOptions()
    if options.compress:
        raise UsageError("--compress applies to .npz only; safetensors stores raw bytes")
    check_target(Path(out), reader.path, force=options.force)  # refuse before reading
    plan = plan_export(reader, options)
    return write_safetensors(plan, out, force=options.force, on_array=on_array)


def _write_tensor(fh, arr: ExportArray, dtype: np.dtype, source: Path) -> None:
    """The array's bytes, little-endian, in C order, cast chunk by chunk when --dtype asks."""
    array = arr.produce()
    if tuple(array.shape) != tuple(arr.shape):
        what = arr.source.name if arr.verbatim else arr.name
        raise CkptToolError(
            f"tensor {what!r} has shape {array.shape}, expected {arr.shape}", source
        )
    flat = np.ascontiguousarray(array).reshape(-1)
    target = dtype if sys.byteorder == "little" else dtype.newbyteorder("<")
    step = max(1, _CHUNK_BYTES // max(1, max(flat.itemsize, target.itemsize)))
    for start in range(0, flat.size, step):
        chunk = flat[start : start + step]
        if chunk.dtype != target:
            chunk = chunk.astype(target)
        fh.write(memoryview(chunk.view(np.uint8)))


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
