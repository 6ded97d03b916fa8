"""The data behind `ckpt-tool list`: which tensors to show, in what order, with totals."""

from __future__ import annotations

import fnmatch
import itertools
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ckpt_tool.gc_pause import gc_paused
from ckpt_tool.readers.base import WEIGHT, Reader, VariableInfo, split_flat

SORT_KEYS = ("order", "name", "size")
# Elements per chunk when streaming statistics: a chunk's float64 deviations (512 KiB)
# stay in the CPU's cache between the passes over them, about twice as fast as 1M.
_CHUNK = 1 << 16


@dataclass(slots=True)  # no __dict__ per tensor: a listing may hold millions
class ListedTensor:
    info: VariableInfo
    duplicate_keys: list[str] = field(default_factory=list)  # byte-identical copies folded in
    stats: dict | None = None  # None for non-numeric tensors once stats_read
    stats_read: bool = False
    role: dict | None = None  # {"layer", "role", "evidence"} when roles were asked for

    def to_json(self) -> dict:
        info = self.info
        data = {
            "name": info.name,
            "key": info.key,
            "aliases": list(info.aliases),
            "duplicates": self.duplicate_keys,
            "shape": list(info.shape),
            "dtype": info.dtype,
            "parameters": info.num_elements,
            "bytes": info.nbytes,
            "kind": info.kind,
            "order": info.order,
        }
        if self.role is not None:
            data["role"] = self.role
        if self.stats_read:
            data["stats"] = self.stats
        return data


@dataclass
class Listing:
    path: str
    format: str
    tensors: list[ListedTensor]
    hidden: Counter  # kind -> number of tensors not shown
    hidden_bytes: int
    description: str = ""  # the format in words ("SavedModel", "Keras .keras file")

    @property
    def totals(self) -> dict:
        return {
            "tensors": len(self.tensors),
            "parameters": _parameters(t.info.shape for t in self.tensors),
            "bytes": sum(t.info.nbytes for t in self.tensors),
        }

    def to_json(self) -> dict:
        return {
            "schema": "ckpt-tool.list/1",
            "path": self.path,
            "format": self.format,
            "description": self.description,
            "tensors": [t.to_json() for t in self.tensors],
            "hidden": dict(self.hidden),
            "hidden_bytes": self.hidden_bytes,
            "totals": self.totals,
        }


def _parameters(shapes: Iterable[tuple[int, ...]]) -> int:
    """The number of values in tensors of these shapes (each distinct shape counted once
    and multiplied: a large index repeats few shapes)."""
    total = 0
    for shape, n in Counter(map(tuple, shapes)).items():
        for d in shape:
            n *= d
        total += n
    return total


@gc_paused()  # millions of objects for a large index: see gc_pause
def build_listing(
    reader: Reader,
    *,
    show_all: bool = False,
    pattern: str | None = None,
    sort: str = "order",
) -> Listing:
    """Select, fold and sort a reader's variables. Reads no tensor bytes."""
    tensors = _fold_duplicates(reader.variables())
    hidden: Counter = Counter()
    hidden_bytes = 0
    shown = []
    for tensor in tensors:
        info = tensor.info
        if not show_all and info.kind != WEIGHT:
            hidden[info.kind] += 1
            hidden_bytes += info.nbytes
        elif not pattern or _matches(info, pattern):
            shown.append(tensor)
    shown.sort(key=_sort_key(sort))
    from ckpt_tool.readers.choice import describe_format

    description = describe_format(reader.path, reader.format_name)
    return Listing(str(reader.path), reader.format_name, shown, hidden, hidden_bytes, description)


def _matches(info: VariableInfo, pattern: str) -> bool:
    names = (info.name, info.key, *info.aliases)
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def _sort_key(sort: str) -> Callable[[ListedTensor], tuple]:
    if sort == "name":
        return operator.attrgetter("info.name")
    if sort == "size":
        return lambda t: (-t.info.nbytes, t.info.order, t.info.name)
    return operator.attrgetter("info.order", "info.name")


def _fold_duplicates(infos: list[VariableInfo]) -> list[ListedTensor]:
    """Show a second copy of a variable as an alias of the first. A Keras 3
    `model.export()` stores every weight as `variables/N` and again as
    `_all_variables/M`; the reader marks the copy (extra["duplicate_of"]) when its
    dtype, shape, size and stored crc32c equal the first's, so no bytes are read."""
    if not any("duplicate_of" in info.extra for info in infos):
        return list(map(ListedTensor, infos))  # nothing to fold (the common case)
    listed = {info.key: ListedTensor(info) for info in infos}
    twins: dict[tuple, list[ListedTensor]] = {}  # equal tensors, each a variable of its own
    for tensor in listed.values():
        if "duplicate_of" not in tensor.info.extra:
            twins.setdefault(_identity(tensor.info), []).append(tensor)
    for info in infos:
        first = listed.get(info.extra.get("duplicate_of", ""))
        if first is None or first.info.key == info.key:
            continue
        # Equal values (fresh zero biases) may belong to several variables: give each
        # copy to the equal variable that has the fewest copies so far.
        target = min(twins.get(_identity(first.info), [first]), key=lambda t: len(t.duplicate_keys))
        target.duplicate_keys.append(info.key)
        del listed[info.key]
    return list(listed.values())


def _identity(info: VariableInfo) -> tuple:
    return (info.dtype, info.shape, info.nbytes, info.extra.get("crc32c"))


def _is_numeric(dtype: np.dtype) -> bool:
    """Plain numbers, and the ml_dtypes floats (bfloat16, float8) that numpy sees as 'V'."""
    if dtype.kind != "V":
        return True
    try:
        np.zeros(1, dtype).astype(np.float64)
    except (TypeError, ValueError):
        return False
    return dtype.names is None


def tensor_stats(array: np.ndarray) -> dict | None:
    """min, max, mean, std and NaN/Inf counts over finite values; None for non-numeric
    tensors. See stream_stats."""
    return stream_stats(split_flat(array, PIECE_ELEMENTS))


# Values per piece when a reader streams a tensor for statistics: whole chunks, 1 MiB of
# float32 (a piece and the chunk's float64 deviations stay in the CPU cache).
PIECE_ELEMENTS = 4 * _CHUNK


def stats_in_order(reader: Reader, infos: list[VariableInfo]) -> Iterator[dict | None]:
    """tensor_stats of each variable, in order. A local file's tensors are streamed
    (Reader.read_pieces) and worked on by every core (streaming.in_order); a URL's are
    read ahead whole (read_in_order) and worked on here."""
    from ckpt_tool.readers import read_in_order
    from ckpt_tool.storage import RemotePath
    from ckpt_tool.streaming import in_order

    if isinstance(reader.path, RemotePath):
        return map(tensor_stats, read_in_order(reader, infos))
    return in_order(
        infos,
        lambda info: reader.read_pieces(info.key, PIECE_ELEMENTS),
        stream_stats,
        lambda info: info.nbytes,
    )


def stream_stats(pieces: Iterable[np.ndarray]) -> dict | None:
    """tensor_stats of a tensor given as consecutive flat pieces (Reader.read_pieces,
    each a whole number of chunks but the last), streamed in chunks of _CHUNK values
    (Chan et al.'s pairwise update of mean and M2). The result depends only on the
    values, not on how they are cut into pieces."""
    pieces = iter(pieces)
    first = next(pieces)
    if first.dtype == object or first.dtype.kind in "SUb" or not _is_numeric(first.dtype):
        for _ in pieces:  # read on, so that a checksum is still checked
            pass
        return None
    moments = _Moments()
    buffer = np.empty(_CHUNK, np.float64)  # each chunk's float64 deviations
    for piece in itertools.chain((first,), pieces):
        for start in range(0, piece.size, _CHUNK):
            moments.add(piece[start : start + _CHUNK], buffer)
    return moments.result()


class _Moments:
    """Streaming min, max, count, mean, M2 and NaN/Inf counts, one chunk at a time."""

    def __init__(self) -> None:
        self.lo, self.hi = np.inf, -np.inf
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.nan = self.inf = 0

    def add(self, chunk: np.ndarray, buffer: np.ndarray) -> None:
        """One chunk (at most buffer.size values). A chunk without NaN or Inf (its min
        and max are finite) is summed as it is, in float64 accumulators, with the
        float64 buffer for its deviations from one of its values."""
        if chunk.dtype.kind in "fiu" and chunk.size:
            good, chunk_lo, chunk_hi = chunk, chunk.min(), chunk.max()
            if not (np.isfinite(chunk_lo) and np.isfinite(chunk_hi)):
                good = None  # NaN or Inf inside: the masked path below
        else:
            good = None
        if good is None:
            if chunk.dtype.kind == "c":
                chunk = np.abs(chunk)
            chunk = chunk.astype(np.float64)
            is_nan, is_inf = np.isnan(chunk), np.isinf(chunk)
            self.nan += int(is_nan.sum())
            self.inf += int(is_inf.sum())
            good = chunk[~(is_nan | is_inf)]
            if not good.size:
                return
            chunk_lo, chunk_hi = good.min(), good.max()
        self.lo, self.hi = min(self.lo, float(chunk_lo)), max(self.hi, float(chunk_hi))
        n_b = good.size
        # Widened once into the buffer (an exact cast), then shifted in place: the same
        # float64 values as a subtraction that casts, without its buffered casting loop.
        wide = buffer[:n_b]
        np.copyto(wide, good, casting="unsafe")
        # Floats, one widening pass: d = x - c with c a value of the chunk, S1 = sum(d),
        # S2 = sum(d*d); mean = c + S1/n and M2 = S2 - S1^2/n. S1^2/n is n*(mean - c)^2,
        # small beside S2 unless c lies far out (> ~32 std): then M2 would lose more than
        # 10 bits to cancellation, and mean and deviations are taken again as two passes
        # (as for integers, whose float64 sums are exact below 2**53).
        fast = good.dtype.kind == "f"
        if fast:
            shift = float(good[0])
            deviation = np.subtract(wide, shift, out=wide)
            s1 = float(deviation.sum())
            s2 = float(np.einsum("i,i->", deviation, deviation))  # no BLAS threads
            mean_b = shift + s1 / n_b
            fast = s1 * s1 / n_b <= s2 * (1 - 2.0**-10)
            if not fast:
                np.copyto(wide, good, casting="unsafe")  # undo the shift
        if fast:
            m2_b = max(s2 - s1 * s1 / n_b, 0.0)
        else:
            mean_b = float(good.sum(dtype=np.float64)) / n_b
            deviation = np.subtract(wide, mean_b, out=wide)
            m2_b = float(np.einsum("i,i->", deviation, deviation))
        delta, total = mean_b - self.mean, self.count + n_b
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.count * n_b / total
        self.count = total

    def result(self) -> dict:
        if self.count == 0:
            return {
                "min": None,
                "max": None,
                "mean": None,
                "std": None,
                "nan": self.nan,
                "inf": self.inf,
            }
        return {
            "min": self.lo,
            "max": self.hi,
            "mean": self.mean,
            "std": (self.m2 / self.count) ** 0.5,
            "nan": self.nan,
            "inf": self.inf,
        }


@gc_paused()  # millions of objects for a large index: see gc_pause
def attach_roles(reader: Reader, listing: Listing) -> list[str]:
    """Fill each listed tensor's layer, role and the evidence that decided it. Returns
    what the evidence says beyond roles: a SavedModel graph's wiring, masks and
    settings, or why it was not used."""
    from ckpt_tool.model import open_model
    from ckpt_tool.rolemap import GRAPH

    role_map = open_model(reader).roles
    by_key = role_map.by_key()
    for tensor in listing.tensors:
        hit = by_key.get(tensor.info.key)
        if hit is None:
            tensor.role = {"layer": None, "class": None, "role": None, "evidence": None}
            continue
        layer, role = hit
        tensor.role = {
            "layer": layer.name,
            "class": layer.class_name,
            "role": role,
            "evidence": layer.evidence,
        }
    notes = list(role_map.notes)
    for layer in role_map.layers:
        if layer.evidence == GRAPH:
            notes += [f"{layer.name} ({layer.class_name}): {note}" for note in layer.notes]
    return notes
