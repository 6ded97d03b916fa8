"""What every reader returns: an ordered list of VariableInfo and arrays on demand."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ckpt_tool.storage import as_path

# What a variable is for; list hides everything but WEIGHT unless --all.
WEIGHT = "weight"
OPTIMIZER = "optimizer"  # optimizer slots, iterations, learning rate, ...
BOOKKEEPING = "bookkeeping"  # object graph, save_counter, metrics, ...


@dataclass(slots=True)  # no __dict__ per variable: an index may hold millions
class VariableInfo:
    """One tensor in a weight file, described without reading its bytes."""

    key: str  # the raw key in the file, unique within a reader
    name: str  # the resolved human path, e.g. "multi_head_attention/query/kernel"
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name ("float32", "bfloat16", ...) or "string"
    kind: str = WEIGHT
    aliases: tuple[str, ...] = ()  # other names/keys for the same tensor
    order: int = 0  # position in the model's own order (creation order)
    nbytes: int = 0  # bytes of the tensor's data as stored
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts

    @property
    def num_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Reader:
    """A weight file opened for reading. Subclasses implement one format.

    sniff() decides cheaply whether a path is this format; variables() lists
    tensors without reading their bytes; read(key) returns one tensor.
    """

    format_name: ClassVar[str] = ""
    verify_crc: bool = True  # readers of formats with checksums honour this

    def __init__(self, path: str | Path):
        self.path = as_path(path)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        raise NotImplementedError

    def variables(self) -> list[VariableInfo]:
        raise NotImplementedError

    def read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def read_pieces(self, key: str, elements: int) -> Iterator[np.ndarray]:
        """The tensor's values, flattened, in consecutive pieces of `elements` values
        (the last may be shorter; an empty tensor is one empty piece), for work that
        streams over them. A reader may reuse a piece's memory for the next piece, so use
        each before taking the next. Checks that need every byte (a checksum) raise when
        the piece after the last is asked for."""
        return split_flat(self.read(key), elements)

    def claimed_variables(self) -> tuple[int, int]:
        """How many variables the file claims and the bytes of the largest, for the
        memory budget's check before per-variable work; readers whose index can answer
        without a record per variable (a checkpoint's) do so."""
        infos = self.variables()
        return len(infos), max((info.nbytes for info in infos), default=0)

    def variable_table(self):
        """variables() column by column (readers.variable_table.VariableTable), when
        the reader can give it that way; None otherwise."""
        return None

    def model_config(self) -> dict | None:
        """The Keras model config (class_name, config, ...) when the file has one."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def split_flat(array: np.ndarray, elements: int) -> Iterator[np.ndarray]:
    """An array's values, flattened, in views of `elements` values (the last may be
    shorter); an empty array is one empty piece."""
    flat = array.reshape(-1)
    if not flat.size:
        yield flat
    for start in range(0, flat.size, elements):
        yield flat[start : start + elements]
