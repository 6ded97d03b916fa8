"""Compare the tensors of two weight files of any supported formats.

Tensors are matched by name (see `match_tensors` for the rules), then compared
one pair at a time, chunk by chunk, so neither file is ever held in memory.
A pair is equal when every element satisfies `|a - b| <= atol + rtol * |b|`
(NaN equals NaN in the same place; infinities must agree exactly).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckpt_tool.export import select_variables
from ckpt_tool.readers.base import Reader, VariableInfo, split_flat
from ckpt_tool.readers.budget import check_variable_count
from ckpt_tool.rolemap import RoleMap
from ckpt_tool.streaming import in_order

SCHEMA = "ckpt-tool.diff/1"
# Elements per piece when comparing: 1 MiB of float32, read into the CPU cache and
# compared there (see Reader.read_pieces).
_CHUNK = 1 << 18

ProgressFactory = Callable[[int, int], AbstractContextManager[Callable[..., None]]]

# Pair statuses, most serious first.
SHAPE_MISMATCH = "shape_mismatch"
DTYPE_MISMATCH = "dtype_mismatch"
DIFFER = "differ"
EQUAL = "equal"


# --- names ---------------------------------------------------------------------------------

_ATTRIBUTE_SUFFIX = re.compile(r"/\.ATTRIBUTES/VARIABLE_VALUE$")
_OUTPUT_SUFFIX = re.compile(r":\d+$")
_CONTAINER_SEGMENTS = frozenset({"layers", "model_weights"})


def normalize_name(name: str) -> str:
    """The spelling differences between formats that never change which tensor is meant.

    - a TF1/tf-keras output suffix: `dense/kernel:0` -> `dense/kernel`
    - a checkpoint key's attribute suffix: `.../.ATTRIBUTES/VARIABLE_VALUE`
    - container segments added by Keras files: `layers/`, `model_weights/`
      (`layers/dense/vars/0` -> `dense/vars/0`)
    - a leading underscore on a segment (`_query_dense` in tf-keras and Keras 3.0.0-3.0.2,
      `query_dense` later)

    A leading model name is handled by `strip_root`, and `vars/<i>` by matching position
    within a layer (see `match_tensors`), since neither is visible in one name alone.
    """
    name = _ATTRIBUTE_SUFFIX.sub("", name)
    name = _OUTPUT_SUFFIX.sub("", name)
    parts = [p.lstrip("_") or p for p in name.split("/") if p and p not in _CONTAINER_SEGMENTS]
    return "/".join(parts)


def spellings(info: VariableInfo) -> list[str]:
    """Every name the tensor is known by: resolved name, aliases, raw key (in that order)."""
    return list(dict.fromkeys((info.name, *info.aliases, info.key)))


def common_root(names: Iterable[str]) -> str | None:
    """The first path segment shared by every name (a model name such as `model/` that one
    format puts in front of all variables), or None."""
    roots = {n.split("/", 1)[0] if "/" in n else None for n in names}
    if len(roots) == 1:
        (root,) = roots
        return root
    return None


_VARS_INDEX = re.compile(r"^(?P<layer>.*)/vars/(?P<index>\d+)$")


@dataclass
class Match:
    a: VariableInfo
    b: VariableInfo
    how: str  # role | name | alias | key | normalized | model-prefix | position
    role: str | None = None  # for `role`: "<Class>#<i> <role>", e.g. "Dense#1 kernel"


def match_tensors(
    a: list[VariableInfo], b: list[VariableInfo]
) -> tuple[list[Match], list[VariableInfo], list[VariableInfo]]:
    """Pair the tensors of two files. Returns (matches, only in a, only in b).

    Stages, each only over what earlier stages left, and each accepting a pair only
    when it is unambiguous both ways:
      1. name:         same resolved name
      2. alias:        the name or an alias of one equals the name or an alias of the other
      3. key:          the same, also counting raw keys (`variables/3/.ATTRIBUTES/...`)
      4. normalized:   any spelling the same after `normalize_name`
      5. model-prefix: the same after also dropping a root segment shared by every
                       name of one side (`model/dense/kernel` vs `dense/kernel`)
      6. position:     `<layer>/vars/<i>` is the i-th tensor (in model order) of the
                       other side's tensors under the same layer path

    `match_by_role` pairs by the role parser's layers and roles first, then hands what
    is left to these stages.
    """
    left, right = list(a), list(b)
    matches: list[Match] = []
    root_a = common_root(normalize_name(i.name) for i in a) if len(a) > 1 else None
    root_b = common_root(normalize_name(i.name) for i in b) if len(b) > 1 else None

    def rooted(root: str | None) -> Callable[[VariableInfo], set[str]]:
        def keys(info: VariableInfo) -> set[str]:
            names = {normalize_name(s) for s in spellings(info)}
            if root:
                names |= {n[len(root) + 1 :] for n in names if n.startswith(root + "/")}
            return names

        return keys

    stages: list[tuple[str, Callable, Callable]] = [
        ("name", lambda i: {i.name}, lambda i: {i.name}),
        ("alias", _names, _names),
        ("key", lambda i: set(spellings(i)), lambda i: set(spellings(i))),
        ("normalized", _normalized_keys, _normalized_keys),
        ("model-prefix", rooted(root_a), rooted(root_b)),
    ]
    for how, keys_a, keys_b in stages:
        found = _unique_pairs(left, right, keys_a, keys_b, a, b)
        matches += [Match(x, y, how) for x, y in found]
        _remove(left, right, found)
    found = _positional_pairs(left, right, root_a, root_b)
    matches += [Match(x, y, "position") for x, y in found]
    _remove(left, right, found)
    matches.sort(key=lambda m: (m.a.order, m.a.name))
    return matches, left, right


RoleId = tuple[str, int, str]  # (layer class, index among the layers of that class, role)


def role_ids(infos: list[VariableInfo], role_map: RoleMap) -> dict[str, RoleId]:
    """Key -> (class, i, role) for the tensors among `infos` that have a role: the i-th
    layer of its class (in model order, counting only layers with a tensor in `infos`)."""
    by_key = role_map.by_key()
    wanted = {info.key for info in infos}
    ids: dict[str, RoleId] = {}
    seen: dict[str, int] = defaultdict(int)
    for layer in role_map.layers:
        keys = [k for k in layer.weights.values() if k in wanted]
        if not keys:
            continue
        index = seen[layer.class_name]
        seen[layer.class_name] += 1
        for key in keys:
            _, role = by_key[key]
            ids[key] = (layer.class_name, index, role)
    return ids


def match_by_role(
    a: list[VariableInfo], b: list[VariableInfo], roles_a: RoleMap, roles_b: RoleMap
) -> tuple[list[Match], list[VariableInfo], list[VariableInfo]]:
    """Pair tensors that play the same role in the same layer: the i-th layer of a class
    on one side with the i-th of that class on the other, role by role. This pairs a
    `.keras` with its anonymous `model.export()` (`variables/N`), whatever the names.
    Tensors without a role (or whose counterpart has none) go through `match_tensors`."""
    ids_a, ids_b = role_ids(a, roles_a), role_ids(b, roles_b)
    by_id_b = {rid: info for info in b if (rid := ids_b.get(info.key)) is not None}
    matches, left = [], []
    for info in a:
        other = by_id_b.pop(ids_a[info.key], None) if info.key in ids_a else None
        if other is None:
            left.append(info)
            continue
        cls, index, role = ids_a[info.key]
        matches.append(Match(info, other, "role", f"{cls}#{index} {role}"))
    taken = {id(m.b) for m in matches}
    rest, only_a, only_b = match_tensors(left, [i for i in b if id(i) not in taken])
    matches = sorted(matches + rest, key=lambda m: (m.a.order, m.a.name))
    return matches, only_a, only_b


def reader_roles(reader: Reader) -> RoleMap:
    """The role parser over a reader's variables, with its model config when readable."""
    from ckpt_tool.model import ModelOptions, open_model

    return open_model(reader, ModelOptions(lenient_config=True)).roles


def _names(info: VariableInfo) -> set[str]:
    return {info.name, *info.aliases}


def _normalized_keys(info: VariableInfo) -> set[str]:
    return {normalize_name(s) for s in spellings(info)}


def _unique_pairs(
    left: list[VariableInfo],
    right: list[VariableInfo],
    keys_a: Callable[[VariableInfo], set[str]],
    keys_b: Callable[[VariableInfo], set[str]],
    all_a: list[VariableInfo],
    all_b: list[VariableInfo],
) -> list[tuple[VariableInfo, VariableInfo]]:
    """Pairs whose key sets meet, when each side's tensor meets exactly one of the other's.

    A key that several tensors of one file share (Keras 3 SavedVariable names such as
    `seed_model/kernel`) names none of them and is ignored; sharing is counted over all
    of a file's tensors, not only the ones still unpaired."""
    shared = _shared_keys(all_a, keys_a) | _shared_keys(all_b, keys_b)
    index_b: dict[str, set[int]] = defaultdict(set)
    for j, info in enumerate(right):
        for k in keys_b(info) - shared:
            index_b[k].add(j)
    candidates = {
        i: set().union(*(index_b.get(k, set()) for k in keys_a(x) - shared))
        for i, x in enumerate(left)
    }
    claimed: dict[int, list[int]] = defaultdict(list)
    for i, js in candidates.items():
        for j in js:
            claimed[j].append(i)
    pairs = []
    for i, js in candidates.items():
        if len(js) == 1:
            (j,) = js
            if len(claimed[j]) == 1:
                pairs.append((left[i], right[j]))
    return pairs


def _shared_keys(infos: list[VariableInfo], keys: Callable[[VariableInfo], set[str]]) -> set[str]:
    seen: set[str] = set()
    shared: set[str] = set()
    for info in infos:
        for k in keys(info):
            (shared if k in seen else seen).add(k)
    return shared


def _positional_pairs(
    left: list[VariableInfo], right: list[VariableInfo], root_a: str | None, root_b: str | None
) -> list[tuple[VariableInfo, VariableInfo]]:
    """`<layer>/vars/<i>` on one side against the i-th remaining tensor of the same layer on
    the other (tensors of a layer are the ones whose name is `<layer>/<something>`), when
    the layer's indices are exactly 0..n-1 and the other side has exactly n of them."""
    pairs = []
    for indexed, other, root_i, root_o, flip in (
        (left, right, root_a, root_b, False),
        (right, left, root_b, root_a, True),
    ):
        taken = {id(x) for pair in pairs for x in pair}
        by_layer: dict[str, list[tuple[int, VariableInfo]]] = defaultdict(list)
        for info in indexed:
            m = _VARS_INDEX.match(normalize_name(info.name))
            if m and id(info) not in taken:
                by_layer[m["layer"]].append((int(m["index"]), info))
        for layer, items in by_layer.items():
            forms = {layer, _strip(layer, root_i)}
            members = sorted(
                (
                    o
                    for o in other
                    if id(o) not in taken
                    and not _VARS_INDEX.match(normalize_name(o.name))
                    and forms & _layer_forms(normalize_name(o.name), root_o)
                ),
                key=lambda o: o.order,
            )
            if len(members) != len(items) or sorted(i for i, _ in items) != list(range(len(items))):
                continue  # only a complete, unambiguous layer is paired by position
            for index, info in items:
                pairs.append((members[index], info) if flip else (info, members[index]))
    return pairs


def _layer_forms(name: str, root: str | None) -> set[str]:
    layer = name.rpartition("/")[0]
    return {layer, _strip(layer, root)} - {""}


def _strip(name: str, root: str | None) -> str:
    return name[len(root) + 1 :] if root and name.startswith(root + "/") else name


def _remove(left: list, right: list, pairs: list[tuple[VariableInfo, VariableInfo]]) -> None:
    gone = {id(x) for pair in pairs for x in pair}
    left[:] = [x for x in left if id(x) not in gone]
    right[:] = [x for x in right if id(x) not in gone]


# --- values --------------------------------------------------------------------------------


@dataclass
class ValueDiff:
    elements: int
    mismatched: int  # elements outside the tolerance
    max_abs: float | None  # None for strings
    max_rel: float | None  # over elements where b != 0 (inf where b == 0 and a != 0)
    first_mismatch: dict | None  # {"index": [...], "a": ..., "b": ...}


def compare_arrays(
    a: np.ndarray, b: np.ndarray, *, atol: float = 0.0, rtol: float = 0.0
) -> ValueDiff:
    """Elementwise comparison of two same-shape arrays, streamed in chunks."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return compare_pieces(
        split_flat(a, _CHUNK), split_flat(b, _CHUNK), a.shape, atol=atol, rtol=rtol
    )


def compare_pieces(
    pieces_a: Iterable[np.ndarray],
    pieces_b: Iterable[np.ndarray],
    shape: tuple[int, ...],
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> ValueDiff:
    """compare_arrays of two tensors of `shape` given as flat pieces of equal sizes
    (Reader.read_pieces with the same piece size), one pair of pieces at a time. Both
    are read to their end, so that their checksums are checked."""
    textual, size = False, 0
    mismatched, first = 0, None
    max_abs = max_rel = 0.0
    for ca, cb in zip(pieces_a, pieces_b, strict=True):
        start, size = size, size + ca.size
        textual = _is_text(ca.dtype) or _is_text(cb.dtype)
        if textual:
            bad = np.fromiter(
                (
                    _as_bytes(x) != _as_bytes(y)
                    for x, y in zip(ca.tolist(), cb.tolist(), strict=True)
                ),
                dtype=bool,
                count=ca.size,
            )
        elif _identical(ca, cb):
            continue  # equal elements: nothing outside the tolerance, no error
        else:
            bad, chunk_abs, chunk_rel = _numeric_chunk(ca, cb, atol, rtol)
            max_abs, max_rel = max(max_abs, chunk_abs), max(max_rel, chunk_rel)
        n_bad = int(bad.sum())
        if n_bad and first is None:
            k = int(np.argmax(bad))
            first = {
                "index": [int(i) for i in np.unravel_index(start + k, shape)] if shape else [],
                "a": _scalar(ca[k]),
                "b": _scalar(cb[k]),
            }
        mismatched += n_bad
    if textual:
        return ValueDiff(size, mismatched, None, None, first)
    return ValueDiff(size, mismatched, max_abs, max_rel, first)


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same plain numeric dtype and every element equal (no NaN): one pass, no widening."""
    return a.dtype == b.dtype and a.dtype.kind in "biufc" and bool(np.array_equal(a, b))


def _numeric_chunk(
    a: np.ndarray, b: np.ndarray, atol: float, rtol: float
) -> tuple[np.ndarray, float, float]:
    """(outside tolerance mask, max |a-b|, max |a-b|/|b|) for one chunk, in float64
    (complex128 for complex); integers are also compared exactly in their own type."""
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        finite = _finite_float_chunk(a, b, atol, rtol)
        if finite is not None:
            return finite
    wide = np.complex128 if (a.dtype.kind == "c" or b.dtype.kind == "c") else np.float64
    xa, xb = _widen(a, wide), _widen(b, wide)
    integers = a.dtype.kind in "iub" and b.dtype.kind in "iub"
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # exact for integers (also beyond 2**53); otherwise equal infinities and NaN == NaN
        same = (a == b) if integers else (xa == xb) | (np.isnan(xa) & np.isnan(xb))
        d = np.abs(xa - xb)
        d = np.where(np.isnan(d), np.inf, d)  # NaN against a number, inf against -inf
        if integers:
            d = np.maximum(d, 1.0)  # distinct integers differ by at least 1
        d = np.where(same, 0.0, d)
        mag = np.abs(xb)
        bad = ~same & ~(d <= atol + rtol * mag)
        rel = np.where(mag > 0, d / np.where(mag > 0, mag, 1.0), np.where(d > 0, np.inf, 0.0))
    # fmax passes over NaN (inf / inf, where b is infinite): as in _finite_float_chunk, so
    # that no chunk's largest ratio is lost, whatever the chunk size
    return bad, float(d.max(initial=0.0)), float(np.fmax.reduce(rel, initial=0.0))


def _finite_float_chunk(
    a: np.ndarray, b: np.ndarray, atol: float, rtol: float
) -> tuple[np.ndarray, float, float] | None:
    """_numeric_chunk for float chunks without NaN or Inf (else None), with three float64
    temporaries: the same float64 differences, tolerances and ratios."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: seen by the check below
        d = np.subtract(a, b, dtype=np.float64)
    np.abs(d, out=d)
    mag = np.abs(b, dtype=np.float64)
    d_max, mag_max = float(d.max(initial=0.0)), float(mag.max(initial=0.0))
    if not (math.isfinite(d_max) and math.isfinite(mag_max)):
        return None  # NaN or Inf in a or b (or an overflowing difference)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.divide(d, mag)  # inf where only b is 0, NaN where both are 0
    rel = float(np.fmax.reduce(ratio, initial=0.0))  # fmax passes NaN over
    del ratio
    np.multiply(mag, rtol, out=mag)
    mag += atol
    return d > mag, d_max, rel


def _widen(x: np.ndarray, wide: type) -> np.ndarray:
    if x.dtype.kind == "b":
        x = x.astype(np.int8)
    return x.astype(wide)


def _is_text(dtype: np.dtype) -> bool:
    return dtype.kind in "SUO"


def _as_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _scalar(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, float) or not isinstance(value, (int, str, bool)):
        try:
            return float(value)
        except (TypeError, ValueError):
            return str(value)
    return value


# --- report --------------------------------------------------------------------------------


@dataclass
class PairDiff:
    a: VariableInfo
    b: VariableInfo
    matched_by: str
    status: str
    values: ValueDiff | None  # None when shapes differ or the values cannot be compared
    role: str | None = None  # "<Class>#<i> <role>" when paired by role

    def to_json(self) -> dict:
        v = self.values
        return {
            "a": self.a.name,
            "b": self.b.name,
            "a_key": self.a.key,
            "b_key": self.b.key,
            "matched_by": self.matched_by,
            "role": self.role,
            "status": self.status,
            "shape_a": list(self.a.shape),
            "shape_b": list(self.b.shape),
            "dtype_a": self.a.dtype,
            "dtype_b": self.b.dtype,
            "elements": None if v is None else v.elements,
            "mismatched": None if v is None else v.mismatched,
            "max_abs": None if v is None else _json_float(v.max_abs),
            "max_rel": None if v is None else _json_float(v.max_rel),
            "first_mismatch": None if v is None else v.first_mismatch,
        }


@dataclass
class DiffReport:
    a_path: str
    a_format: str
    b_path: str
    b_format: str
    atol: float
    rtol: float
    include_optimizer: bool
    pairs: list[PairDiff] = field(default_factory=list)
    by_role: bool = False
    only_a: list[VariableInfo] = field(default_factory=list)
    only_b: list[VariableInfo] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything matched within tolerance and nothing is missing on either side."""
        return not self.only_a and not self.only_b and all(p.status == EQUAL for p in self.pairs)

    @property
    def summary(self) -> dict:
        counts = {s: 0 for s in (EQUAL, DIFFER, SHAPE_MISMATCH, DTYPE_MISMATCH)}
        for p in self.pairs:
            counts[p.status] += 1
        return {
            "compared": len(self.pairs),
            **counts,
            "only_in_a": len(self.only_a),
            "only_in_b": len(self.only_b),
        }

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "a": {"path": self.a_path, "format": self.a_format},
            "b": {"path": self.b_path, "format": self.b_format},
            "atol": self.atol,
            "rtol": self.rtol,
            "include_optimizer": self.include_optimizer,
            "by_role": self.by_role,
            "match": self.ok,
            "summary": self.summary,
            "pairs": [p.to_json() for p in self.pairs],
            "only_in_a": [_info_json(i) for i in self.only_a],
            "only_in_b": [_info_json(i) for i in self.only_b],
        }


def _info_json(info: VariableInfo) -> dict:
    return {"name": info.name, "key": info.key, "shape": list(info.shape), "dtype": info.dtype}


def _json_float(value: float | None) -> float | str | None:
    """JSON has no infinity: +inf is written as the string "inf"."""
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


def diff_paths(
    a: str | Path,
    b: str | Path,
    *,
    format_a: str | None = None,
    format_b: str | None = None,
    verify_crc: bool = True,
    **options,
) -> DiffReport:
    """diff_readers of the weight files at A and B, each opened (in its detected or given
    format) for the comparison and closed after it."""
    from ckpt_tool.readers import open_reader

    with open_reader(a, format_a) as reader_a:
        count_a, largest_a = reader_a.claimed_variables()
        work = "diff --by-role" if options.get("by_role") else "diff"
        check_variable_count(reader_a.path, count_a, largest_a, work)  # before B is opened
        with open_reader(b, format_b) as reader_b:
            reader_a.verify_crc = reader_b.verify_crc = verify_crc
            return diff_readers(reader_a, reader_b, **options)


def diff_readers(
    reader_a: Reader,
    reader_b: Reader,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    include_optimizer: bool = False,
    pattern: str | None = None,
    progress: ProgressFactory | None = None,
    by_role: bool = False,
) -> DiffReport:
    """Match the two readers' tensors by name (with by_role: by layer and role first) and
    compare each pair, one pair in memory at a time. progress(pairs, bytes), when given,
    returns a context manager that yields advance() (console.progress fits); it is called
    once the pairs are known."""
    _check_budget(reader_a, reader_b, "diff --by-role" if by_role else "diff")
    infos_a = select_variables(reader_a, pattern=pattern, include_optimizer=include_optimizer)
    infos_b = select_variables(reader_b, pattern=pattern, include_optimizer=include_optimizer)
    if by_role:
        roles_a, roles_b = reader_roles(reader_a), reader_roles(reader_b)
        matches, only_a, only_b = match_by_role(infos_a, infos_b, roles_a, roles_b)
    else:
        matches, only_a, only_b = match_tensors(infos_a, infos_b)
    report = DiffReport(
        str(reader_a.path),
        reader_a.format_name,
        str(reader_b.path),
        reader_b.format_name,
        atol,
        rtol,
        include_optimizer,
        only_a=only_a,
        only_b=only_b,
        by_role=by_role,
    )
    total_bytes = sum(m.a.nbytes + m.b.nbytes for m in matches)
    bar = progress(len(matches), total_bytes) if progress else contextlib.nullcontext(_no_op)
    with bar as advance:
        # pairs are read and compared on every core, the results taken in order
        start = functools.partial(_start_pair, reader_a, reader_b)
        finish = functools.partial(_finish_pair, atol=atol, rtol=rtol)
        for pair in in_order(matches, start, finish, lambda m: m.a.nbytes + m.b.nbytes):
            report.pairs.append(pair)
            advance()
    return report


def _check_budget(reader_a: Reader, reader_b: Reader, work: str) -> None:
    """Both sides' variables against the memory budget, before any record is made: the
    file named is the one too many alone, or both."""
    count_a, largest_a = reader_a.claimed_variables()
    count_b, largest_b = reader_b.claimed_variables()
    largest = max(largest_a, largest_b)
    check_variable_count(reader_a.path, count_a, largest, work)
    check_variable_count(reader_b.path, count_b, largest, work)
    both = f"{reader_a.path} and {reader_b.path}"
    check_variable_count(both, count_a + count_b, largest, work)


def _no_op(n: int = 1) -> None:
    pass


def compare_pair(
    reader_a: Reader, reader_b: Reader, match: Match, *, atol: float, rtol: float
) -> PairDiff:
    return _finish_pair(_start_pair(reader_a, reader_b, match), atol=atol, rtol=rtol)


_Started = tuple[Match, PairDiff | None, Iterator[np.ndarray] | None, Iterator[np.ndarray] | None]


def _start_pair(reader_a: Reader, reader_b: Reader, match: Match) -> _Started:
    """The pair's verdict when its shapes or kinds differ; else both tensors opened for
    streaming (read_pieces: the readers' own calls, in the caller's thread)."""
    a, b = match.a, match.b
    if tuple(a.shape) != tuple(b.shape):
        return match, PairDiff(a, b, match.how, SHAPE_MISMATCH, None, match.role), None, None
    text_a, text_b = a.dtype == "string", b.dtype == "string"
    if text_a != text_b:
        return match, PairDiff(a, b, match.how, DTYPE_MISMATCH, None, match.role), None, None
    return match, None, reader_a.read_pieces(a.key, _CHUNK), reader_b.read_pieces(b.key, _CHUNK)


def _finish_pair(started: _Started, *, atol: float, rtol: float) -> PairDiff:
    """Compare the streams that _start_pair opened (any thread)."""
    match, decided, pieces_a, pieces_b = started
    if decided is not None:
        return decided
    assert pieces_a is not None and pieces_b is not None
    a, b = match.a, match.b
    values = compare_pieces(pieces_a, pieces_b, tuple(b.shape), atol=atol, rtol=rtol)
    status = DIFFER if values.mismatched else EQUAL
    if a.dtype != b.dtype:
        status = DTYPE_MISMATCH
    return PairDiff(a, b, match.how, status, values, match.role)
