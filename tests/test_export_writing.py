"""The export's writing: the same zip bytes zipfile writes, whichever CRC-32 computes them,
and the file that starts writeback early writes every byte as given."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from ckpt_tool import write_behind, zip_stored
from ckpt_tool.export import ExportOptions, export_npz
from ckpt_tool.readers import open_reader
from ckpt_tool.zip_stored import StoredZip
from tests.support import fixture_path

RNG = np.random.default_rng(7)
MEMBERS = [  # (name, pieces written one after another)
    ("__manifest__.npy", [b'{"a": 1}']),
    ("empty.npy", []),
    ("layer/kernel.npy", [RNG.bytes(300_000), RNG.bytes(1), RNG.bytes(70_000)]),
    ("gewichte/größe:0.npy", [RNG.bytes(5000)]),  # a UTF-8 name: flag bit 11
    ("dir\\back.npy", [b"x" * 17]),  # zipfile stores it as it is on POSIX
    ("held/then/streamed.npy", [RNG.bytes(40_000), RNG.bytes(40_000)]),  # past 64 KiB
    ("exactly/64KiB.npy", [RNG.bytes(1 << 16)]),  # the largest member written whole
]


def write_with_zipfile(fh, members) -> None:
    with zipfile.ZipFile(fh, "w") as zf:
        for name, pieces in members:
            with zf.open(name, "w", force_zip64=True) as out:
                for piece in pieces:
                    out.write(piece)


def write_stored(fh, members) -> None:
    archive = StoredZip(fh)
    for name, pieces in members:
        with archive.open(name) as out:
            for piece in pieces:
                out.write(piece)
    archive.close()


@pytest.fixture(params=["isal", "zlib"])
def crc(request, monkeypatch) -> str:
    """Both CRC-32s: ISA-L's (when installed) and zlib's fallback."""
    if request.param == "isal":
        isal_zlib = pytest.importorskip("isal.isal_zlib")
        monkeypatch.setattr(zip_stored, "crc32", isal_zlib.crc32)
    else:
        monkeypatch.setattr(zip_stored, "crc32", zlib.crc32)
    return request.param


def test_same_bytes_as_zipfile(crc: str, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.zip", tmp_path / "theirs.zip"
    with open(ours, "wb") as fh:
        write_stored(fh, MEMBERS)
    with open(theirs, "wb") as fh:
        write_with_zipfile(fh, MEMBERS)
    assert ours.read_bytes() == theirs.read_bytes()
    with zipfile.ZipFile(ours) as zf:
        assert zf.testzip() is None  # every CRC checked by zipfile's reader
        assert [i.filename for i in zf.infolist()] == [name for name, _ in MEMBERS]
        assert zf.read("layer/kernel.npy") == b"".join(MEMBERS[2][1])


def test_zip64_central_directory_beyond_2_gib(tmp_path: Path) -> None:
    """Members past 2 GiB (a sparse file: nothing is written before them) get zip64
    offsets in the central directory and zip64 end records, as zipfile writes them."""
    start = 3 << 30
    outs = {}
    for name, write in (("ours", write_stored), ("theirs", write_with_zipfile)):
        path = tmp_path / f"{name}.zip"
        with open(path, "wb") as fh:
            fh.seek(start)
            write(fh, MEMBERS)
        with open(path, "rb") as fh:
            fh.seek(start)
            outs[name] = fh.read()
    assert outs["ours"] == outs["theirs"]
    assert b"PK\x06\x06" in outs["ours"] and b"PK\x06\x07" in outs["ours"]


def test_many_members_zip64_end_record(tmp_path: Path) -> None:
    """More than 65535 members: zip64 end records with the true count."""
    members = [(f"m{i}.npy", [b"."]) for i in range(65_536)]
    ours, theirs = tmp_path / "ours.zip", tmp_path / "theirs.zip"
    with open(ours, "wb") as fh:
        write_stored(fh, members)
    with open(theirs, "wb") as fh:
        write_with_zipfile(fh, members)
    assert ours.read_bytes() == theirs.read_bytes()
    with zipfile.ZipFile(ours) as zf:
        assert len(zf.infolist()) == 65_536


def test_export_equals_zipfile_rewrite(crc: str, tmp_path: Path) -> None:
    """A whole export (Keras-made .keras, manifest inside) is the archive zipfile makes
    of the same members in the same order, and NumPy reads it."""
    out = tmp_path / "seed.npz"
    with open_reader(fixture_path("seed_keras")) as reader:
        export_npz(reader, out, ExportOptions())
    with zipfile.ZipFile(out) as zf:
        members = [(i.filename, [zf.read(i)]) for i in zf.infolist()]
    again = tmp_path / "again.npz"
    with open(again, "wb") as fh:
        write_with_zipfile(fh, members)
    assert out.read_bytes() == again.read_bytes()
    with np.load(out, allow_pickle=False) as z:
        assert len(z.files) == len(members) > 1


def test_one_member_at_a_time(tmp_path: Path) -> None:
    with open(tmp_path / "x.zip", "wb") as fh:
        archive = StoredZip(fh)
        member = archive.open("a")
        with pytest.raises(ValueError):
            archive.open("b")
        with pytest.raises(ValueError):
            archive.close()
        with member:
            member.write(b"a")
        archive.close()


def test_write_behind_hints_every_byte_once(monkeypatch, tmp_path: Path) -> None:
    """The ranges handed to writeback follow each other from 0, cover what reached the
    file, and the file holds exactly what was written."""
    calls: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((offset, length, flags))
        return 0

    monkeypatch.setattr(write_behind, "_sync_range", record)
    data = [RNG.bytes(1 << 20) for _ in range(40)] + [RNG.bytes(40 << 20), b"tail"]
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with write_behind.WriteBehindFile(os.fdopen(fd, "wb", buffering=0)) as fh:
        for piece in data:
            fh.write(piece)
    assert path.read_bytes() == b"".join(data)
    assert len(calls) >= 2
    position = 0
    for offset, length, flags in calls:
        assert (offset, flags) == (position, 2) and length > 0
        position += length
    assert position <= sum(map(len, data))


def test_write_behind_real_call(tmp_path: Path) -> None:
    """With the system's own call (where there is one) the bytes are unchanged."""
    data = RNG.bytes(70 << 20)
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with write_behind.WriteBehindFile(os.fdopen(fd, "wb", buffering=0)) as fh:
        fh.write(memoryview(data)[:1000])
        fh.write(memoryview(data)[1000:])
    assert path.read_bytes() == data


def _weights_h5_with(path: Path, name: bytes) -> Path:
    """A .weights.h5 laid out as Keras writes one, plus a layer group named `name` (raw
    bytes: HDF5 stores names as bytes, whatever a reader expects)."""
    with h5py.File(path, "w") as f:
        dense = f.create_group("layers").create_group("dense").create_group("vars")
        dense.attrs["name"] = "dense"
        dense.create_dataset("0", data=np.ones((2, 2), np.float32))
        layer = h5py.h5g.create(f["layers"].id, name)
        weights = h5py.h5g.create(layer, b"vars")
        ds = h5py.h5d.create(weights, b"0", h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((3,)))
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.arange(3, dtype=np.float32))
    return path


@pytest.mark.parametrize(
    ("name", "problem"),
    [(b"bad\xff", "is not UTF-8 text"), (b"y" * 70_000, "a zip member name holds at most 65535")],
    ids=["not-utf8", "too-long"],
)
def test_names_a_zip_cannot_hold(name: bytes, problem: str, tmp_path: Path) -> None:
    """A layer name that is not UTF-8, or too long for a zip header: `list` shows it
    (escaped), `export` refuses it in one line and writes nothing."""
    from click.testing import CliRunner

    from ckpt_tool.cli import cli

    src = _weights_h5_with(tmp_path / "odd.weights.h5", name)
    listed = CliRunner().invoke(cli, ["list", str(src)])
    assert listed.exit_code == 0, listed.output
    assert "2 tensors" in listed.stdout
    out = tmp_path / "out" / "odd.npz"
    out.parent.mkdir()
    result = CliRunner().invoke(cli, ["export", str(src), "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0] and "odd.weights.h5" in lines[0], lines
    assert os.listdir(out.parent) == []
