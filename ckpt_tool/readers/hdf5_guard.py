"""Refuse HDF5 files whose global heap would send the HDF5 library into an endless loop.

Variable-length strings (Keras' `name` attributes, for one) live in *global heap
collections*: "GCOL", version 1, 3 reserved bytes, the collection size, then
objects `uint16 index, uint16 refcount, 4 reserved, size` padded to 8 bytes.
HDF5 (1.14.6 as shipped with h5py) walks a collection by `p = begin + need`,
where `need` is the object size for index 0 (free space) and header plus the
aligned size otherwise. A damaged size that makes `need` zero (or wraps it
backwards) makes that walk spin forever, inside C, where no timeout reaches.
So before any attribute is read, every collection in the file is walked here
the same way, and a walk that would not advance is reported as a damaged file.

Collections are found by their signature; byte ranges holding the raw data of
contiguous datasets (tensor values) are skipped, so weights can never be
mistaken for a heap.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from ckpt_tool.errors import CorruptFileError
from ckpt_tool.storage import RemotePath

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HEAP_SIGNATURE = b"GCOL"
_MAX_NEED = 1 << 63  # an object "larger" than this wraps HDF5's pointer arithmetic


def check_global_heaps(f: h5py.File, source: Any, path: Path) -> None:
    """Raise CorruptFileError if a global heap collection of the open file `f`
    (opened from `source`: a path, a zip_member.FileSlice, a BytesIO or a temporary
    file) is damaged
    in a way that would make HDF5 loop forever."""
    with _image(source) as (image, start, end):
        if image is None:
            return
        base = _superblock(image, start, end)
        if base is None:
            return
        lengths = _sizeof_lengths(image, base, end)
        if lengths is None:
            return
        # Search only between the datasets' raw data, so tensor bytes are never read.
        for lo, hi in _gaps(_raw_data_ranges(f), start, base, end):
            pos = image.find(HEAP_SIGNATURE, lo, hi)
            while pos != -1:
                _check_collection(image, pos, end, lengths, path)
                pos = image.find(HEAP_SIGNATURE, pos + 1, hi)


def _gaps(skip: list[tuple[int, int]], start: int, base: int, end: int) -> list[tuple[int, int]]:
    """The absolute [lo, hi) spans of [base, end) not covered by `skip` (offsets in the
    HDF5 image, which begins at `start`: a dataset's offset counts the user block); a
    span is widened by the signature's length so no match is cut in two."""
    gaps, pos = [], base
    for lo, hi in sorted(skip):
        lo, hi = start + lo, start + hi
        if lo > pos:
            gaps.append((pos, min(lo + len(HEAP_SIGNATURE) - 1, end)))
        pos = max(pos, hi)
    if pos < end:
        gaps.append((pos, end))
    return gaps


@contextlib.contextmanager
def _image(source: Any):
    """(buffer with .find, start, end) of the HDF5 bytes; (None, 0, 0) if unavailable."""
    span = getattr(source, "span", None)
    if span is not None and isinstance(span()[0], RemotePath):
        url, start, size = span()
        # the metadata h5py has read is in the URL's pages already: mostly nothing new
        yield _ReadImage(url.cached_bytes), start, min(url.size(), start + size)
        return
    if isinstance(source, str | Path) or span is not None:
        file_path, start, size = (Path(source), 0, None) if span is None else span()
        try:
            with open(file_path, "rb") as fh:
                total = fh.seek(0, 2)
                if total == 0:
                    yield None, 0, 0
                    return
                end = total if size is None else min(total, start + size)
                yield _ReadImage(_pread(fh.fileno())), start, end
        except (OSError, ValueError):
            yield None, 0, 0
        return
    getvalue = getattr(source, "getvalue", None)
    if getvalue is not None:
        data = getvalue()
        yield data, 0, len(data)
        return
    try:  # an inflated zip member in a temporary file
        fileno = source.fileno()
        total = os.fstat(fileno).st_size
    except (AttributeError, OSError, ValueError):
        yield None, 0, 0
        return
    if total == 0:
        yield None, 0, 0
        return
    yield _ReadImage(_pread(fileno)), 0, total


def _pread(fileno: int) -> Callable[[int, int], bytes]:
    return lambda offset, size: os.pread(fileno, size, offset)


class _ReadImage:
    """The bytes of a file as the walk reads them (image[i], image[a:b],
    image.find(sub, lo, hi)), by positioned reads of just those bytes. (A memory map
    would do, but the kernel maps whole large pages of the tensor bytes around each
    small span searched: 150 MB resident for a 340 MB file.)"""

    BLOCK = 1 << 20  # find() searches this many bytes at a time

    def __init__(self, read: Callable[[int, int], bytes]):
        self.read = read

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            return self.read(key.start, max(0, key.stop - key.start))
        return self.read(key, 1)[0]

    def find(self, sub: bytes, lo: int, hi: int) -> int:
        pos = lo
        while pos < hi:
            stop = min(hi, pos + self.BLOCK)
            # the block and the first bytes of the next: no match is cut in two
            data = self.read(pos, min(hi, stop + len(sub) - 1) - pos)
            found = data.find(sub)
            if found != -1:
                return pos + found
            pos = stop
        return -1


def _superblock(image, start: int, end: int) -> int | None:
    """Offset of the superblock: at 0, 512, 1024, ... (after a user block)."""
    offset = 0
    while start + offset + len(HDF5_SIGNATURE) <= end:
        if image[start + offset : start + offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return start + offset
        offset = 512 if offset == 0 else offset * 2
    return None


def _sizeof_lengths(image, base: int, end: int) -> int | None:
    """The file's "size of lengths" from the superblock (2, 4 or 8), else None."""
    if base + 16 > end:
        return None
    version = image[base + 8]
    lengths = image[base + 14] if version in (0, 1) else image[base + 10]
    return lengths if lengths in (2, 4, 8) else None


def _raw_data_ranges(f: h5py.File) -> list[tuple[int, int]]:
    """[start, stop) of every contiguous dataset's raw data in the HDF5 image (HDF5's
    dataset offsets are from the image's first byte, user block included)."""
    return [
        (d.offset, d.offset + d.storage_size)
        for d in scan(f).datasets.values()
        if d.offset is not None and d.storage_size
    ]


def _check_collection(image, pos: int, end: int, lengths: int, path: Path) -> None:
    """Walk one collection the way HDF5 does; refuse it if the walk cannot finish."""
    header = 8 + lengths  # signature, version, 3 reserved, collection size
    if pos + header > end or image[pos + 4] != 1:
        return  # HDF5 reports a bad version itself
    size = int.from_bytes(image[pos + 8 : pos + header], "little")
    stop = pos + size
    if stop > end:
        raise CorruptFileError(
            f"damaged HDF5 global heap at byte {pos}: its size {size} runs past the end "
            "of the file",
            path,
        )
    object_header = 8 + lengths  # index, refcount, 4 reserved, object size
    p = pos + header
    steps = 0
    while p < stop and p + object_header <= stop:
        index = int.from_bytes(image[p : p + 2], "little")
        obj_size = int.from_bytes(image[p + 8 : p + object_header], "little")
        need = obj_size if index == 0 else object_header + ((obj_size + 7) & ~7)
        need &= (1 << 64) - 1
        steps += 1
        if need == 0 or need >= _MAX_NEED or steps > size // 8 + 16:
            raise CorruptFileError(
                f"damaged HDF5 global heap at byte {pos} (object at byte {p} has size "
                f"{obj_size}): HDF5 would loop forever reading it",
                path,
            )
        p += need


# --------------------------------------------------------------------------
# Datasets and links that read outside the file


def check_self_contained(f: h5py.File, path: Path) -> None:
    """Raise CorruptFileError for anything in the file that makes HDF5 read another
    file: an external link, a dataset with external raw storage, a virtual dataset.
    Only links and dataset creation properties are inspected; nothing is followed."""
    problem = outside_reference(f)
    if problem is not None:
        raise CorruptFileError(f"{problem}: ckpt-tool reads only the files it is given", path)


def outside_reference(f: h5py.File) -> str | None:
    """A description of the first link or dataset that points outside the file."""
    found = scan(f)
    for name, link_type, address in found.links:
        if link_type == h5py.h5l.TYPE_EXTERNAL:
            try:
                filename = f.id.links.get_val(name.encode("utf-8", "surrogateescape"))[0]
            except Exception:  # a damaged link value: still an external link
                filename = b"?"
            filename = filename.decode("utf-8", "backslashreplace")
            return f"{name!r} is an external link to {filename!r}"
        dataset = found.datasets.get(address) if link_type == h5py.h5l.TYPE_HARD else None
        if dataset is not None and dataset.layout == h5py.h5d.VIRTUAL:
            return f"dataset {name!r} is a virtual dataset (its data lives in other files)"
        if dataset is not None and dataset.external_count > 0:
            return f"dataset {name!r} keeps its data in external files"
    return None


# --------------------------------------------------------------------------
# One walk of a file's links and objects, inside HDF5, shared by the checks above and the
# readers: no h5py object is made per member, and each dataset is opened once.


@dataclass(frozen=True)
class StoredDataset:
    name: str  # the path HDF5's object walk reached it by
    address: int  # of its object header
    offset: int | None  # of its raw data (None unless contiguous and allocated)
    storage_size: int
    layout: int  # h5py.h5d.CONTIGUOUS, CHUNKED, COMPACT or VIRTUAL
    external_count: int  # external raw-data files
    filters: int


@dataclass
class FileScan:
    links: list[tuple[str, int, int]]  # (path, link type, object address or -1), walk order
    datasets: dict[int, StoredDataset]  # object address -> what its headers say


# id(file object) -> (a weak reference to it, its scan). Not a WeakKeyDictionary: that
# hashes the file, which h5py refuses for some damaged files.
_SCANS: dict[int, tuple[weakref.ref, FileScan]] = {}


def scan(f: h5py.File) -> FileScan:
    """The links and datasets of the open file `f`, walked once per file object. Links
    are listed, not followed: an external link's target is never opened. A damaged
    link table or object ends the walk early; what was found so far is kept (the
    damage is reported where it is read)."""
    cached = _SCANS.get(id(f))
    if cached is not None and cached[0]() is f:
        return cached[1]
    links: list[tuple[str, int, int]] = []
    datasets: dict[int, StoredDataset] = {}

    def visit_link(name: bytes, info: Any) -> None:
        # Never raise in here: h5py's C callback turns exceptions into SystemErrors.
        with contextlib.suppress(Exception):
            address = int(info.u) if info.type == h5py.h5l.TYPE_HARD else -1
            links.append((name.decode("utf-8", "surrogateescape"), info.type, address))

    def visit_object(name: bytes, info: Any) -> None:
        if info.type != h5py.h5o.TYPE_DATASET:
            return
        address = int(info.addr)
        text = name.decode("utf-8", "surrogateescape")
        # unreadable headers are reported where the dataset is read
        datasets[address] = StoredDataset(text, address, None, 0, -1, 0, 0)
        with contextlib.suppress(Exception):
            dataset = h5py.h5d.open(f.id, name)  # inside HDF5, no h5py object
            plist = dataset.get_create_plist()
            datasets[address] = StoredDataset(
                text,
                address,
                dataset.get_offset(),
                dataset.get_storage_size(),
                plist.get_layout(),
                plist.get_external_count(),
                plist.get_nfilters(),
            )

    with contextlib.suppress(Exception):
        f.id.links.visit(visit_link, info=True)
    with contextlib.suppress(Exception):
        h5py.h5o.visit(f.id, visit_object, info=True)
    found = FileScan(links, datasets)
    key = id(f)
    with contextlib.suppress(TypeError):  # an object without weak references: not kept
        _SCANS[key] = (weakref.ref(f, lambda _: _SCANS.pop(key, None)), found)
    return found
