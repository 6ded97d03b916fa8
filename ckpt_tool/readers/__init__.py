"""Format detection: open_reader(path) picks the reader that recognises the path."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ckpt_tool.errors import CkptToolError, NotFoundError, UnsupportedFormatError, UsageError
from ckpt_tool.readers.base import Reader, VariableInfo
from ckpt_tool.readers.regular_file import open_regular, refuse_special
from ckpt_tool.storage import RemotePath, as_path, produce_ahead

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FORMATS", "Reader", "VariableInfo", "open_reader", "read_in_order", "require_path"]


# Reader classes by format, in sniffing order; each module is imported only when its
# turn comes, so listing a checkpoint never imports h5py.
_READERS = {
    "checkpoint": ("ckpt_tool.readers.checkpoint", "CheckpointReader"),
    "keras": ("ckpt_tool.readers.keras_h5", "KerasArchiveReader"),
    "weights-h5": ("ckpt_tool.readers.keras_h5", "WeightsH5Reader"),
    "h5": ("ckpt_tool.readers.keras_h5", "LegacyH5Reader"),
    "npz": ("ckpt_tool.readers.npz", "NpzReader"),
    "safetensors": ("ckpt_tool.readers.safetensors_reader", "SafetensorsReader"),
}


def _reader_class(format: str) -> type[Reader]:
    module, name = _READERS[format]
    return getattr(importlib.import_module(module), name)


FORMATS = tuple(_READERS)


def open_reader(path: str | Path, format: str | None = None) -> Reader:
    """Open a weight file of any supported format; `format` forces one.

    `path` may also be a URL (s3://, gs://, http(s)://, file://): see storage.py."""
    path = as_path(path)
    refuse_special(path)  # a FIFO or device would hang or never end when sniffed
    if format is not None:
        if format not in _READERS:
            raise UsageError(f"unknown format {format!r}; choose from {', '.join(_READERS)}")
        return _reader_class(format)(path)
    require_path(path)
    for name in _READERS:
        if name == "checkpoint" and not _may_be_checkpoint(path):
            continue  # a file of another format: the checkpoint reader is not imported
        cls = _reader_class(name)
        if cls.sniff(path):
            return cls(path)
    _check_readable(path)
    if path.is_dir() or _names_checkpoint_file(path):
        # Meant as a checkpoint or SavedModel: its reader says what is missing or broken
        # (no .index, a `checkpoint` file naming a missing prefix, a damaged table).
        return _reader_class("checkpoint")(path)
    raise UnsupportedFormatError(
        "not a TensorFlow checkpoint, SavedModel, .keras, .h5, .npz or .safetensors file", path
    )


def require_path(path: str | Path) -> None:
    """NotFoundError unless the path exists (or is a checkpoint prefix)."""
    path = as_path(path)
    if not path.exists() and not _is_checkpoint_prefix(path):
        raise NotFoundError("no such file or directory", path)


def read_in_order(reader: Reader, infos: list[VariableInfo]) -> Iterator[np.ndarray]:
    """reader.read() of each variable, in order; from a URL, the next ones are fetched
    while the caller works on the current one (storage.produce_ahead)."""
    if isinstance(reader.path, RemotePath):
        return produce_ahead(infos, lambda info: reader.read(info.key), lambda info: info.nbytes)
    return (reader.read(info.key) for info in infos)


def _check_readable(path: Path) -> None:
    """A path no reader recognised because it cannot be read is reported as such."""
    if isinstance(path, RemotePath):
        return  # a URL that cannot be read failed with its own message already
    try:
        if path.is_dir():
            os.listdir(path)
        elif path.exists():
            open_regular(path).close()
    except OSError as e:
        raise CkptToolError(f"cannot read: {e.strerror or e}", path) from None


def _names_checkpoint_file(path: Path) -> bool:
    """A `.index` file, a `.data-*` shard or a prefix whose `.index` exists."""
    return (
        (path.name.endswith(".index") and path.is_file())
        or ".data-" in path.name
        or _is_checkpoint_prefix(path)
    )


def _may_be_checkpoint(path: Path) -> bool:
    """What CheckpointReader.sniff can accept: a directory, a file named as part of a
    checkpoint or SavedModel, or a prefix with an `.index` beside it."""
    return (
        path.is_dir()
        or path.name in ("saved_model.pb", "checkpoint")
        or _names_checkpoint_file(path)
    )


def _is_checkpoint_prefix(path: Path) -> bool:
    return as_path(str(path) + ".index").exists()
