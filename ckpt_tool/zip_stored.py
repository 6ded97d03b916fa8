"""A zip archive of stored (uncompressed) members, written in order, with a fast CRC-32.

What `zipfile.ZipFile(fh, "w")` writes for `zf.open(name, "w", force_zip64=True)`, byte
for byte (the tests compare both): a local header with a zip64 extra field (sizes in the
extra, 0xFFFFFFFF in the header; time 1980-01-01 00:00), the member's bytes, and at the
end a central directory with zip64 fields and end records only where sizes, offsets or
the member count need them. The CRC-32 of each member comes from ISA-L (the `isal`
package, an optional dependency: `pip install 'ckpt-tool[fast]'`), about four times
faster than zlib's here; without it, zlib's.

A member up to 64 KiB is written whole when it is closed. A larger one is streamed: its
local header is written first with CRC and sizes zero and rewritten in place when the
member is closed. The file must be seekable.
"""

from __future__ import annotations

import struct
import sys
import zipfile
from typing import BinaryIO

try:  # ISA-L's CRC-32 (the same polynomial and values as zlib's)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - depends on the installed extras
    from zlib import crc32

__all__ = ["StoredZip", "crc32"]

_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory header
_END = struct.Struct("<4s4H2LH")  # end of central directory
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory
_LOCATOR64 = struct.Struct("<4sLQL")  # zip64 end of central directory locator
_ZIP64_EXTRA = struct.Struct("<HHQQ")  # tag 1, 16 bytes: uncompressed, compressed size
_ZIP64_LIMIT = (1 << 31) - 1  # zipfile's limits, so that the choices are its own
_COUNT_LIMIT = (1 << 16) - 1
_VERSION = 45  # zip64: "version needed to extract" 4.5
_UTF8_NAME = 0x800
_DOS_DATE = (1980 - 1980) << 9 | 1 << 5 | 1  # 1980-01-01, zipfile's default date_time
_DOS_TIME = 0
_SYSTEM = 0 if sys.platform == "win32" else 3  # "made by": MS-DOS or Unix, as zipfile
_MODE = 0o600 << 16  # external attributes: rw------- (zipfile's for open(name, "w"))
_SMALL = 64 << 10  # members up to this size are written whole, header first


class StoredZip:
    """Stored members written one after another into `fh`; `close()` writes the central
    directory. Only one member may be open at a time."""

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self._pos = fh.tell()
        self._members: list[tuple[bytes, int, int, int, int]] = []  # name, flags, crc, size, offset
        self._open: _Member | None = None

    def open(self, name: str) -> _Member:
        """A member `name` to write into (a context manager with `write`). The name is
        stored as zipfile stores it (`zipfile.ZipInfo` normalizes it)."""
        if self._open is not None:
            raise ValueError("another member is still open")
        filename = zipfile.ZipInfo(name).filename
        try:
            encoded, flags = filename.encode("ascii"), 0
        except UnicodeEncodeError:
            encoded, flags = filename.encode("utf-8"), _UTF8_NAME
        self._open = _Member(self, encoded, flags, self._pos)
        return self._open

    def close(self) -> None:
        """Write the central directory and end records (zip64 ones only when needed)."""
        if self._open is not None:
            raise ValueError("a member is still open")
        start = self._pos
        for name, flags, crc, size, offset in self._members:
            extra = []
            if size > _ZIP64_LIMIT:
                extra += [size, size]  # uncompressed, compressed
            if offset > _ZIP64_LIMIT:
                extra.append(offset)
            fields = struct.pack(f"<HH{len(extra)}Q", 1, 8 * len(extra), *extra) if extra else b""
            small = 0xFFFFFFFF if size > _ZIP64_LIMIT else size
            central = _CENTRAL.pack(
                b"PK\x01\x02",
                _VERSION,  # made by: version
                _SYSTEM,  # made by: system
                _VERSION,  # needed to extract
                0,  # reserved
                flags,
                zipfile.ZIP_STORED,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                small,  # compressed size
                small,  # uncompressed size
                len(name),
                len(fields),
                0,  # comment length
                0,  # disk number
                0,  # internal attributes
                _MODE,
                0xFFFFFFFF if offset > _ZIP64_LIMIT else offset,
            )
            self._write(central + name + fields)
        end = self._pos
        count, size, offset = len(self._members), end - start, start
        if count > _COUNT_LIMIT or offset > _ZIP64_LIMIT or size > _ZIP64_LIMIT:
            self._write(
                _END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
                + _LOCATOR64.pack(b"PK\x06\x07", 0, end, 1)
            )
            count, size, offset = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(offset, 0xFFFFFFFF)
        self._write(_END.pack(b"PK\x05\x06", 0, 0, count, count, size, offset, 0))
        self._fh.flush()

    def _write(self, data) -> None:
        self._fh.write(data)
        self._pos += memoryview(data).nbytes

    def _finish(self, member: _Member) -> None:
        """Write a small member whole, or rewrite a large one's local header with its CRC
        and size."""
        header = _local_header(member.name, member.flags, member.crc, member.size)
        if member.pending is not None:
            self._write(header + b"".join(member.pending))
        else:  # back to the placeholder header and forward again, as zipfile does
            self._fh.seek(member.offset)
            self._fh.write(header)
            self._fh.seek(self._pos)
        self._members.append((member.name, member.flags, member.crc, member.size, member.offset))
        self._open = None


class _Member:
    """One member being written, its CRC-32 kept. Its first _SMALL bytes are held back, so
    that a small member is written whole with its final header; past that, the header
    goes out with CRC and size zero and every byte goes straight to the file."""

    def __init__(self, archive: StoredZip, name: bytes, flags: int, offset: int):
        self.archive, self.name, self.flags, self.offset = archive, name, flags, offset
        self.crc = 0
        self.size = 0
        self.pending: list[bytes] | None = []  # None once streaming

    def write(self, data) -> int:
        data = memoryview(data).cast("B")  # counted in bytes, whatever the buffer's format
        self.crc = crc32(data, self.crc)
        self.size += len(data)
        if self.pending is not None:
            if self.size <= _SMALL:
                self.pending.append(bytes(data))
                return len(data)
            self.archive._write(_local_header(self.name, self.flags, 0, 0))
            for piece in self.pending:
                self.archive._write(piece)
            self.pending = None
        self.archive._write(data)
        return len(data)

    def __enter__(self) -> _Member:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.archive._finish(self)
        return False


def _local_header(name: bytes, flags: int, crc: int, size: int) -> bytes:
    extra = _ZIP64_EXTRA.pack(1, 16, size, size)  # always zip64, as force_zip64=True
    return (
        _LOCAL.pack(
            b"PK\x03\x04",
            _VERSION,
            0,  # reserved
            flags,
            zipfile.ZIP_STORED,
            _DOS_TIME,
            _DOS_DATE,
            crc,
            0xFFFFFFFF,  # compressed size: in the zip64 extra
            0xFFFFFFFF,  # uncompressed size: in the zip64 extra
            len(name),
            len(extra),
        )
        + name
        + extra
    )
