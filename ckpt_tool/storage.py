"""Where a reader's bytes come from: local paths as they are, URLs through range requests.

`as_path(text)` returns a `pathlib.Path` for a local path (or a `file://` URL) and a
`RemotePath` for `s3://`, `gs://`, `http(s)://` and any other URL fsspec reads. A
RemotePath answers the few pathlib questions the readers ask (name, parent, `/`, exists,
is_file, is_dir, glob, stat, read_bytes) and `open_binary()` gives a seekable file whose
reads become HTTP range requests: only the bytes asked for are fetched. Large reads are split
into chunks fetched in parallel by a bounded pool; each chunk is retried on transient
errors, and a read that finally fails is one CkptToolError naming the URL.

The requests are made by obstore, or by fsspec and its filesystems where obstore does
not serve (remote_clients.py); either is imported only when a URL is opened, so local
paths cost exactly what they cost before. No secret is ever part of
a message: the query string of a URL (a signed URL's signature) is never shown,
credentials come from the environment, the libraries' config files or
`--storage-option`, and the values of secret-looking options are blanked out of errors.
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from ckpt_tool.ahead import ordered_ahead
from ckpt_tool.errors import CkptToolError, NotFoundError, UsageError

T = TypeVar("T")
R = TypeVar("R")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

CHUNK_BYTES = 8 << 20  # one range request fetches at most this much
# Parsers that read many small pieces (zip directories, HDF5 metadata) read through
# pages of a URL's bytes, each fetched once and kept; reads of DIRECT_BYTES or more
# (tensor data) bypass them. At most PAGES_KEPT_BYTES are kept per URL.
PAGE_BYTES = 16 << 10
DIRECT_BYTES = 256 << 10
PAGES_KEPT_BYTES = 256 << 20


def _parallel_reads() -> int:
    """CKPT_TOOL_PARALLEL_READS: range requests in flight at once (default 8; 1: serial)."""
    try:
        return max(1, int(os.environ.get("CKPT_TOOL_PARALLEL_READS", "8")))
    except ValueError:
        return 8


MAX_WORKERS = _parallel_reads()  # range requests in flight at once, in all
_in_flight = threading.BoundedSemaphore(MAX_WORKERS)
RETRIES = 4  # attempts per range before the read fails
_BACKOFF = (0.2, 0.5, 1.0)  # seconds between attempts

_SECRET_KEY = re.compile(r"key|secret|token|password|credential|session", re.I)
_options: dict[str, Any] = {}
_info_cache: dict[str | tuple[str, str], dict | None] = {}  # url or (url, kind) -> info
_lock = threading.Lock()


@dataclass
class TransferStats:
    """Bytes fetched from URLs and requests made, since the last reset()."""

    bytes: int = 0
    requests: int = 0

    def reset(self) -> None:
        self.bytes = self.requests = 0


stats = TransferStats()


class RemoteReadError(CkptToolError):
    """A URL could not be read (after retries): a network or permission problem."""


def is_url(path: object) -> bool:
    return isinstance(path, RemotePath) or bool(_URL.match(str(path)))


def configure(options: Mapping[str, str]) -> None:
    """Storage options from `--storage-option KEY=VALUE`, with fsspec's names (e.g.
    endpoint_url, anon, region_name), for the client remote_clients picks. "true"/"false"
    become booleans, digits integers."""
    _options.clear()
    for key, value in options.items():
        low = value.lower()
        _options[key] = (
            low == "true"
            if low in ("true", "false")
            else (int(value) if value.isdigit() else value)
        )
    _info_cache.clear()


def parse_option(text: str) -> tuple[str, str]:
    """KEY=VALUE -> (KEY, VALUE); the value is never echoed back in an error."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError("--storage-option wants KEY=VALUE (one was given without '=')")
    return key.strip(), value


def as_path(path: str | os.PathLike | RemotePath) -> Path | RemotePath:
    """A pathlib.Path for local paths and file:// URLs, a RemotePath for other URLs."""
    if isinstance(path, (Path, RemotePath)):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        from urllib.request import url2pathname

        return Path(url2pathname(text[len("file://") :]))
    if _URL.match(text):
        return RemotePath(text)
    return Path(text)


def open_binary(path: Path | RemotePath, buffering: int = -1):
    """A file opened for binary reading: open() for a local path; for a URL, an
    unbuffered file whose every read is one range read (buffering > 0 adds read-ahead
    of that many bytes, for parsers that read many small pieces)."""
    if isinstance(path, RemotePath):
        return path.open("rb", buffering if buffering > 0 else 0)
    from ckpt_tool.readers.regular_file import open_regular

    return open_regular(path)  # a FIFO or device is refused unread, never waited on


class RemotePath:
    """A URL with the read-only pathlib surface the readers use.

    The query string (if any) belongs to this object only: it is sent with its reads
    but never shown, and paths derived from it (`/`, parent, a suffix added with
    f"{p}.index") do not carry it.
    """

    def __init__(self, url: str, query: str = ""):
        base, sep, q = url.partition("?")
        scheme, _, rest = base.partition("://")
        self._base = f"{scheme}://{rest.rstrip('/') or rest}"
        self._query = q if sep else query
        self.protocol = self._base.split("://", 1)[0].lower()
        self._pages: dict[int, bytes] = {}  # page index -> bytes (see cached_bytes)

    # -- naming --

    def __str__(self) -> str:
        return self._base

    def __repr__(self) -> str:
        return f"RemotePath({self._base!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other._base == self._base

    def __hash__(self) -> int:
        return hash(self._base)

    @property
    def url(self) -> str:
        """The full URL, query included (never printed)."""
        return f"{self._base}?{self._query}" if self._query else self._base

    @property
    def name(self) -> str:
        rest = self._base.split("://", 1)[1]
        return rest.rsplit("/", 1)[-1] if "/" in rest else ""

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def parent(self) -> RemotePath:
        scheme, rest = self._base.split("://", 1)
        if "/" not in rest:
            return self
        return RemotePath(f"{scheme}://{rest.rsplit('/', 1)[0]}")

    def __truediv__(self, other: str) -> RemotePath:
        return RemotePath(f"{self._base}/{str(other).lstrip('/')}")

    def is_absolute(self) -> bool:
        return True

    def is_symlink(self) -> bool:
        return False

    def resolve(self) -> RemotePath:
        return self

    # -- what is there --

    def _info(self, kind: str | None = None) -> dict | None:
        """{"type": "file" | "directory", "size": bytes} for the URL, cached; None when
        nothing is there. With `kind` ("file" or "directory"), None also when something
        else is there: an object store answers that in one request instead of two."""
        with _lock:
            if self.url in _info_cache:
                return _info_cache[self.url]
            if kind and (self.url, kind) in _info_cache:
                return None
        client, key = _client(self)
        info = _retrying(lambda: client.info(key, kind), self, "look it up")
        with _lock:
            _info_cache[self.url if info is not None or not kind else (self.url, kind)] = info
        return info

    def exists(self) -> bool:
        return self._info() is not None

    def is_file(self) -> bool:
        info = self._info("file")
        return info is not None and info.get("type") == "file"

    def is_dir(self) -> bool:
        if self.protocol in ("http", "https"):
            # A web server has no directories, only pages: a SavedModel or checkpoint
            # directory is recognised by the file it must hold.
            return (self / "saved_model.pb").is_file() or (self / "checkpoint").is_file()
        info = self._info("directory")
        return info is not None and info.get("type") == "directory"

    def stat(self) -> SimpleNamespace:
        info = self._info()
        if info is None:
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return SimpleNamespace(st_size=int(info.get("size") or 0))

    def size(self) -> int:
        return self.stat().st_size

    def iterdir(self) -> list[RemotePath]:
        client, key = _client(self)
        entries = _retrying(lambda: client.ls(key), self, "list it")
        out = []
        for entry in entries:
            child = self / entry["name"]
            with _lock:
                _info_cache.setdefault(child.url, entry)
            out.append(child)
        return out

    def glob(self, pattern: str) -> list[RemotePath]:
        """Children whose name matches `pattern` (one level: no '**')."""
        return [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern)]

    def rglob(self, pattern: str) -> list[RemotePath]:
        return []

    # -- bytes --

    def read_bytes(self) -> bytes:
        size = self.size()
        buf = bytearray(size)
        read_into(self, 0, memoryview(buf))
        return bytes(buf)

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def cached_bytes(self, start: int, length: int) -> bytes:
        """Bytes start..start+length (clipped to the end) through this URL's pages: the
        missing ones are fetched in one range read and kept (up to PAGES_KEPT_BYTES)."""
        end = min(start + length, self.size())
        if end <= start:
            return b""
        first, last = start // PAGE_BYTES, (end - 1) // PAGE_BYTES
        with _lock:
            pages = {i: self._pages.get(i) for i in range(first, last + 1)}
        missing = [i for i, page in pages.items() if page is None]
        if missing:
            lo = missing[0] * PAGE_BYTES
            buf = bytearray(min((missing[-1] + 1) * PAGE_BYTES, self.size()) - lo)
            read_into(self, lo, memoryview(buf))
            with _lock:
                for i in range(missing[0], missing[-1] + 1):
                    page = bytes(buf[i * PAGE_BYTES - lo : (i + 1) * PAGE_BYTES - lo])
                    pages[i] = page
                    if len(self._pages) * PAGE_BYTES < PAGES_KEPT_BYTES:
                        self._pages[i] = page
        data = b"".join(pages[i] for i in range(first, last + 1))
        return data[start - first * PAGE_BYTES : end - first * PAGE_BYTES]

    def open_paged(self) -> PagedFile:
        """A seekable file for parsers that read many small pieces (zipfile, h5py):
        small reads come from this URL's kept pages, large ones are range reads."""
        return PagedFile(self)

    def open(self, mode: str = "rb", buffering: int = -1):
        if mode != "rb":
            raise UsageError(f"a URL is read-only here (mode {mode!r})", self)
        raw = RangeFile(self)
        return (
            raw
            if buffering == 0
            else io.BufferedReader(raw, buffering if buffering > 0 else 1 << 16)
        )


class RangeFile(io.RawIOBase):
    """A seekable read-only file over a URL: each read is a range request."""

    def __init__(self, path: RemotePath):
        super().__init__()
        self.path = path
        self.name = str(path)
        self._size = path.size()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        if n:
            read_into(self.path, self._pos, view[:n])
        self._pos += n
        return n

    def readall(self) -> bytes:
        """The rest of the object in one read (RawIOBase's would take 8 KiB at a time)."""
        buf = bytearray(max(0, self._size - self._pos))
        return bytes(buf[: self.readinto(buf)])

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a URL has no file descriptor")


class PagedFile(RangeFile):
    """A RangeFile whose small reads go through the URL's pages (RemotePath.cached_bytes),
    so a parser jumping between nearby small pieces makes few requests."""

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        if n >= DIRECT_BYTES:
            read_into(self.path, self._pos, view[:n])
        elif n:
            view[:n] = self.path.cached_bytes(self._pos, n)
        self._pos += n
        return n


# -- range reads -----------------------------------------------------------------------

AHEAD_BYTES = 256 << 20  # tensors read ahead of the writer, at most this many bytes


def produce_ahead(items: Iterable[T], produce: Callable[[T], R], size: Callable[[T], int]):
    """produce(item) for each item, in order, with the next items already being produced
    in threads while the caller works on this one: at most MAX_WORKERS at once and at
    most AHEAD_BYTES (by size(item)) ahead, or one item if it is larger. For URLs, where each
    tensor is a round trip, this keeps several range reads in flight."""
    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        yield from ordered_ahead(
            items, partial(pool.submit, produce), size, MAX_WORKERS, AHEAD_BYTES
        )


def read_into(path: RemotePath, offset: int, out: memoryview) -> None:
    """Fill `out` with the bytes of `path` from `offset`: chunks of CHUNK_BYTES fetched
    in parallel (at most MAX_WORKERS at once), each retried on transient errors."""
    total = len(out)
    if total == 0:
        return
    starts = range(0, total, CHUNK_BYTES)

    def fetch(start: int) -> None:
        end = min(start + CHUNK_BYTES, total)
        data = read_range(path, offset + start, end - start)
        out[start:end] = data

    if len(starts) == 1:
        fetch(0)
        return
    with ThreadPoolExecutor(min(MAX_WORKERS, len(starts))) as pool:
        for future in [pool.submit(fetch, s) for s in starts]:
            future.result()


def read_range(path: RemotePath, start: int, length: int) -> bytes:
    """Bytes start..start+length of `path`, in one range request (with retries)."""
    client, key = _client(path)

    def fetch() -> bytes:
        with _in_flight:  # read-ahead and chunking together never exceed MAX_WORKERS
            data = client.read(key, start, length)
        got = memoryview(data).nbytes
        if got != length:
            raise _ShortRead(f"got {got} of {length} bytes")
        return data

    data = _retrying(fetch, path, f"read bytes {start}..{start + length}")
    with _lock:
        stats.bytes += length
        stats.requests += 1
    return data


class _ShortRead(Exception):
    """The server sent fewer bytes than asked for (the object changed or is shorter)."""


def _retrying(call, path: RemotePath, what: str):
    """call() with retries on transient errors; a final failure is one RemoteReadError."""
    last: BaseException | None = None
    for attempt in range(RETRIES):
        try:
            return call()
        except FileNotFoundError:
            raise NotFoundError("no such object", path) from None
        except PermissionError as e:
            raise RemoteReadError(f"access denied: {_reason(e, path)}", path) from None
        except _ShortRead as e:
            raise RemoteReadError(f"cannot {what}: {e}", path) from None
        except (CkptToolError, KeyboardInterrupt):
            raise
        except Exception as e:  # network, timeouts, 5xx: the libraries' own error types
            if _is_permanent(e):
                raise RemoteReadError(f"cannot {what}: {_reason(e, path)}", path) from None
            last = e
            if attempt < RETRIES - 1:
                time.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
    raise RemoteReadError(
        f"cannot {what} after {RETRIES} tries: {_reason(last, path)}", path
    ) from None


def _is_permanent(e: BaseException) -> bool:
    """Errors no retry can fix: missing libraries, bad options, 4xx answers."""
    if isinstance(e, (ImportError, TypeError, ValueError)):
        return True
    status = getattr(e, "status", None) or getattr(e, "code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def _reason(e: BaseException | None, path: RemotePath) -> str:
    """One line saying why, with the URL's query string (a signature) removed."""
    text = (str(e) or type(e).__name__) if e is not None else "unknown error"
    text = text.replace(path.url, str(path))
    if path._query:
        text = text.replace(path._query, "…")
    for key, value in _options.items():
        if isinstance(value, str) and value and _SECRET_KEY.search(key):
            text = text.replace(value, "…")
    return " ".join(text.split())[:300]


def _client(path: RemotePath):
    """(client, key) for a URL: remote_clients picks obstore or fsspec (each keeps its
    stores or filesystems per bucket or host); the libraries are imported on first use."""
    from ckpt_tool import remote_clients

    authority = path.url.partition("://")[2].partition("/")[0].partition("?")[0]
    try:
        client = remote_clients.client_for(path.protocol, authority, _options, bool(path._query))
    except ImportError as e:
        raise UsageError(str(e), path) from None
    return client, client.key(path.url)
