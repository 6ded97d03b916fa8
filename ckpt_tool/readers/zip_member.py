"""Read members of a zip archive in memory, with bounds, never extracting.

Keras `.keras` files and NumPy `.npz` files are zips whose members are
usually *stored* (not compressed). A stored member is a byte range of the
archive, so it can be read in place without copying it first.
"""

from __future__ import annotations

import io
import lzma
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

from ckpt_tool.errors import CorruptFileError, UnsupportedFormatError
from ckpt_tool.gc_pause import hold_paused, release_paused
from ckpt_tool.readers.budget import MEMORY_FLOOR
from ckpt_tool.readers.regular_file import open_regular
from ckpt_tool.storage import RemotePath

GiB = 1 << 30
MiB = 1 << 20

MAX_MEMBER_BYTES = 16 * GiB  # a declared size above this is refused outright
# A compressed member that inflates past this floor *and* by more than this
# ratio is refused as a likely decompression bomb (the rule Keras uses).
BOMB_FLOOR_BYTES = 256 * MiB
BOMB_MAX_RATIO = 100
# A compressed member inflating to more than the memory budget's floor is inflated into
# an anonymous temporary file (gone when closed, or when the process dies) instead.
INFLATE_IN_MEMORY_BYTES = MEMORY_FLOOR

# What reading a damaged member can raise: bad headers, bad crc, a broken deflate,
# bzip2 (OSError) or lzma stream.
MEMBER_READ_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    zlib.error,
    lzma.LZMAError,
)


def reason(exc: BaseException) -> str:
    """An exception's message for an error line: its first line only (NumPy and
    h5py messages can run on with advice that does not apply here)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"


def is_zip(path: Path) -> bool:
    """Cheap check: the file starts like a zip archive."""
    try:
        with open_regular(path) as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"PK\x03\x04", b"PK\x05\x06")


class _UrlZipFile(zipfile.ZipFile):
    """A zip archive at a URL: its directory and members are range reads (through the
    URL's pages); closing the archive closes the file under it."""

    def __init__(self, path: RemotePath):
        self._source = path.open_paged()
        try:
            super().__init__(self._source)
        except BaseException:
            self._source.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._source.close()


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip archive, turning every failure into a CkptToolError."""
    try:
        if isinstance(path, RemotePath):
            return _UrlZipFile(path)
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise CorruptFileError(f"not a readable zip archive ({reason(e)})", path) from None


def check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, limit: int) -> None:
    """Refuse members that are encrypted, too large, or inflate suspiciously."""
    if info.flag_bits & 0x1:
        raise UnsupportedFormatError(f"zip member {info.filename!r} is encrypted", path)
    if info.file_size > limit:
        raise CorruptFileError(
            f"zip member {info.filename!r} declares {info.file_size} bytes "
            f"(more than the {limit} allowed)",
            path,
        )
    if (
        info.compress_type != zipfile.ZIP_STORED
        and info.file_size > BOMB_FLOOR_BYTES
        and info.file_size > BOMB_MAX_RATIO * max(info.compress_size, 1)
    ):
        raise CorruptFileError(
            f"zip member {info.filename!r} would inflate {info.compress_size} bytes "
            f"to {info.file_size}: refused as a likely decompression bomb",
            path,
        )


def check_archive_inflation(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse an archive whose compressed members together inflate past the bomb rule:
    many members each just under the per-member threshold add up as one bomb does."""
    packed = [i for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED]
    inflated = sum(i.file_size for i in packed)
    compressed = sum(i.compress_size for i in packed)
    if inflated > BOMB_FLOOR_BYTES and inflated > BOMB_MAX_RATIO * max(compressed, 1):
        raise CorruptFileError(
            f"{len(packed)} compressed members would inflate {compressed} bytes to "
            f"{inflated}: refused as a likely decompression bomb",
            path,
        )


def read_member(zf: zipfile.ZipFile, name: str, path: Path, limit: int) -> bytes:
    """The whole member as bytes, refusing it if it declares more than `limit`."""
    info = get_info(zf, name, path)
    check_member(zf, info, path, limit)
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
    except MEMBER_READ_ERRORS as e:
        raise CorruptFileError(f"cannot read zip member {name!r} ({reason(e)})", path) from None
    if len(data) > limit:
        raise CorruptFileError(f"zip member {name!r} is larger than {limit} bytes", path)
    return data


def get_info(zf: zipfile.ZipFile, name: str, path: Path) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(name)
    except KeyError:
        raise CorruptFileError(f"the archive has no {name!r} member", path) from None


def stored_data_offset(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, file_size: int
) -> int | None:
    """Offset of a stored member's bytes in the archive; None if compressed.

    The central directory gives the local header's offset; the data starts
    after that header's fixed 30 bytes, the file name and its extra field.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    fp = zf.fp
    if fp is None:
        return None
    fp.seek(info.header_offset)
    raw = fp.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise CorruptFileError(f"zip member {info.filename!r}: truncated local header", path)
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != _LOCAL_MAGIC:
        raise CorruptFileError(f"zip member {info.filename!r}: bad local header", path)
    name_len, extra_len = fields[9], fields[10]
    offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if offset + info.file_size > file_size:
        raise CorruptFileError(
            f"zip member {info.filename!r} runs past the end of the file (truncated archive?)",
            path,
        )
    return offset


class FileSlice(io.RawIOBase):
    """A read-only, seekable file object over bytes [start, start+size) of a file.

    h5py opens such an object like a file; each read goes straight from the
    archive into h5py's buffer, so a stored `model.weights.h5` is never copied
    into memory as a whole (let alone twice). Over a URL the cyclic garbage
    collector is paused until close(): see gc_pause.
    """

    def __init__(self, path: Path, start: int, size: int):
        super().__init__()
        self._holds_gc = False
        if isinstance(path, RemotePath):
            self._file = path.open_paged()  # range reads, small ones through its pages
            hold_paused()
            self._holds_gc = True
        else:
            self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
        self._path = path
        self._start = start
        self._size = size
        self._pos = 0

    def span(self) -> tuple[Path, int, int]:
        """(archive path, offset of the member's bytes, their size)."""
        return self._path, self._start, self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        out = memoryview(b).cast("B")
        n = max(0, min(len(out), self._size - self._pos))
        if n == 0:
            return 0
        self._file.seek(self._start + self._pos)
        got = 0
        while got < n:  # a raw read may return fewer bytes than asked
            chunk = self._file.readinto(out[got:n])
            if not chunk:
                raise OSError("zip member ends early (truncated archive?)")
            got += chunk
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        pos = base + offset
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            if self._holds_gc:
                release_paused()
        super().close()


class MemberFile:
    """A zip member opened as a seekable binary file, without extracting it.

    Stored members are read in place from the archive; compressed ones are
    inflated (after the size and ratio checks) into memory when small, else into an
    anonymous temporary file, so memory stays within the budget's floor.
    """

    def __init__(self, zf: zipfile.ZipFile, name: str, path: Path, limit: int = MAX_MEMBER_BYTES):
        info = get_info(zf, name, path)
        check_member(zf, info, path, limit)
        self.stored = False
        offset = stored_data_offset(zf, info, path, path.stat().st_size)
        if offset is not None and info.file_size > 0:
            self.file: io.RawIOBase | io.BytesIO = FileSlice(path, offset, info.file_size)
            self.stored = True
        elif info.file_size <= INFLATE_IN_MEMORY_BYTES:
            self.file = io.BytesIO(read_member(zf, name, path, limit))
        else:
            self.file = _inflate_to_disk(zf, info, path, limit)

    def close(self) -> None:
        self.file.close()


def _inflate_to_disk(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, limit: int):
    """The member inflated into an unnamed temporary file, at most `limit` bytes."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by MemberFile.close)
    try:
        with zf.open(info) as f:
            shutil.copyfileobj(f, spool, 4 * MiB)
            if f.read(1) or spool.tell() > limit:
                raise CorruptFileError(
                    f"zip member {info.filename!r} is larger than {limit} bytes", path
                )
    except MEMBER_READ_ERRORS as e:
        spool.close()
        raise CorruptFileError(
            f"cannot read zip member {info.filename!r} ({reason(e)})", path
        ) from None
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool
