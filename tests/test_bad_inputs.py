"""Bad, corrupt and hostile inputs on the command line: one clear line, nothing lost.

Every row of CASES damages a copy of a real fixture (or builds a small hostile
file) and runs one command. The run must exit 2 with exactly one line on stderr,
`error: <the file at fault>: <the problem>`, no traceback, and, for `export`, no
output file and no temporary file left behind. The table runs in-process through
click's runner (fast); the rows marked `e2e` run again as a real subprocess, and
the cases that need a real process (permissions, a full disk, Ctrl-C) only so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_tool.cli import cli
from tests.bundle_writer import (
    block_with_trailer,
    copy_bundle,
    data_block_handles,
    decode_table,
    encode_block,
    encode_table,
    entry_of,
    footer_handles,
    rewrite_index,
    varint,
)
from tests.hostile_bundles import float_entry, partitioned_checkpoint, write_bundle
from tests.support import ROOT, fixture_path, run_cli, sigint_as_on_a_terminal

SEED_CKPT = fixture_path("seed_checkpoint")  # prefix .../ckpt-1, with a `checkpoint` file
SEED_KERAS = fixture_path("seed_keras")
SEED_H5 = fixture_path("seed_legacy_h5")
FLOAT_KEY = "optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"  # (3, 2, 4) float32


# --------------------------------------------------------------------------
# Running the CLI and checking the one line


def invoke(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr). An exception other
    than SystemExit escaping the CLI is a bug and fails the test here."""
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} escaped: {result.exception}")
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str, file: Path, problem: tuple[str, ...]) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == 2, (code, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {file}: "), (lines[0], str(file))
    for word in problem:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def assert_nothing_written(out: Path | None, before: bytes | None = None) -> None:
    """No output (or the old output unchanged) and no temporary file beside it."""
    if out is None:
        return
    if before is None:
        assert not out.exists(), out
    else:
        assert out.read_bytes() == before, "the existing output was changed"
    if not out.parent.is_dir():
        return
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, leftovers


# --------------------------------------------------------------------------
# Builders: each returns what to run, the file the error must name, and
# the output that must not appear


@dataclass
class Setup:
    args: list[str]
    file: Path  # the error line must start with `error: <file>: `
    output: Path | None = None  # export target that must not appear (or stay unchanged)
    output_before: bytes | None = None
    check: Callable[[], None] | None = None  # more to assert after the run


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], Setup]
    problem: tuple[str, ...]  # words the error line must contain
    e2e: bool = False  # also run in a real subprocess
    marks: tuple = field(default=())


def _ckpt(tmp: Path) -> Path:
    """A copy of the seed checkpoint directory (with its `checkpoint` file); the prefix."""
    shutil.copytree(SEED_CKPT.parent, tmp / "run")
    return tmp / "run" / SEED_CKPT.name


def _index(prefix: Path) -> Path:
    return Path(f"{prefix}.index")


def _shard(prefix: Path) -> Path:
    return Path(f"{prefix}.data-00000-of-00001")


def _edit_bytes(path: Path, edit: Callable[[bytearray], bytes | bytearray]) -> None:
    path.write_bytes(bytes(edit(bytearray(path.read_bytes()))))


def _flip(data: bytearray, pos: int) -> bytearray:
    data[pos] ^= 0x01
    return data


def _edit_entry(prefix: Path, key: str, **changes) -> None:
    """Re-encode the index with one entry's fields changed (dims: a new shape)."""

    def edit(k: bytes, entry) -> None:
        if k != key.encode():
            return
        for name, value in changes.items():
            if name == "dims":
                entry.shape.ClearField("dim")
                for d in value:
                    entry.shape.dim.add(size=d)
            else:
                setattr(entry, name, value)

    rewrite_index(prefix, edit_entry=edit)


# -- paths


def missing_path(tmp: Path) -> Setup:
    return Setup(["list", str(tmp / "nothing.keras")], tmp / "nothing.keras")


def missing_path_with_markup(tmp: Path) -> Setup:
    path = tmp / "[bold]runs" / "[" / "x].keras"  # "[/x]" once joined: markup, if unescaped
    return Setup(["list", str(path)], path)


def missing_prefix(tmp: Path) -> Setup:
    return Setup(["list", str(tmp / "ckpt-3")], tmp / "ckpt-3")


def directory_without_checkpoint(tmp: Path) -> Setup:
    (tmp / "notes.txt").write_text("no weights here\n")
    return Setup(["list", str(tmp)], tmp)


def other_file(tmp: Path) -> Setup:
    (tmp / "notes.txt").write_text("no weights here\n")
    return Setup(["list", str(tmp / "notes.txt")], tmp / "notes.txt")


def missing_data_shard(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _shard(prefix).unlink()
    return Setup(["list", str(prefix)], _shard(prefix))


def state_file_names_missing_prefix(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    (prefix.parent / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    return Setup(["list", str(prefix.parent)], prefix.parent)


# -- the .index table


def index_truncated(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _edit_bytes(_index(prefix), lambda d: d[: len(d) * 2 // 3])
    return Setup(["list", str(prefix)], _index(prefix))


def index_wrong_magic(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _edit_bytes(_index(prefix), lambda d: d[:-8] + b"\x00" * 8)
    return Setup(["list", str(prefix)], _index(prefix))


def index_block_crc(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    offset, size = data_block_handles(_index(prefix).read_bytes())[0]
    _edit_bytes(_index(prefix), lambda d: _flip(d, offset + size // 2))
    return Setup(["list", str(prefix.parent)], _index(prefix))


def index_handle_past_end(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    data = _index(prefix).read_bytes()
    (meta_off, meta_size), (_, index_size) = footer_handles(data)
    handles = varint(meta_off) + varint(meta_size) + varint(len(data) * 4) + varint(index_size)
    _index(prefix).write_bytes(data[:-48] + handles.ljust(40, b"\x00") + data[-8:])
    return Setup(["list", str(prefix)], _index(prefix))


def _table_from_raw_block(contents: bytes) -> bytes:
    """A table whose one data block has these contents (crc right), indexed under 'z'."""
    block = block_with_trailer(contents)
    index = encode_block([(b"z", varint(0) + varint(len(contents)))], restart_interval=1)
    meta = encode_block([])
    out = bytearray(block)
    meta_handle = varint(len(out)) + varint(len(meta))
    out += block_with_trailer(meta)
    index_handle = varint(len(out)) + varint(len(index))
    out += block_with_trailer(index)
    out += (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    return bytes(out)


def index_endless_varint(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    # entry header bytes that all say "more follows", up to the restart array
    contents = b"\xff\xff\xff" + struct.pack("<I", 0) + struct.pack("<I", 1)
    _index(prefix).write_bytes(_table_from_raw_block(contents))
    return Setup(["list", str(prefix)], _index(prefix))


def index_entry_garbage(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    table = decode_table(_index(prefix).read_bytes())
    table[1] = (table[1][0], b"\x12\xff\xff\xff\xff\x0f")  # a shape field running off the end
    _index(prefix).write_bytes(encode_table(table))
    return Setup(["list", str(prefix)], _index(prefix))


# -- tensor data (`list --stats --all` reads every tensor)


def data_crc_flip(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    entry = entry_of(prefix, FLOAT_KEY)
    _edit_bytes(_shard(prefix), lambda d: _flip(d, entry.offset + 5))
    return Setup(["list", "--stats", "--all", str(prefix)], _shard(prefix))


def data_size_mismatch(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _edit_entry(prefix, FLOAT_KEY, size=entry_of(prefix, FLOAT_KEY).size + 4)
    return Setup(["list", "--stats", "--all", str(prefix)], _index(prefix))


def data_offset_past_end(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _edit_entry(prefix, FLOAT_KEY, offset=_shard(prefix).stat().st_size + 16)
    return Setup(["list", "--stats", "--all", str(prefix)], _shard(prefix))


def data_terabyte_shape(tmp: Path) -> Setup:
    """4 PiB of float32 whose size field agrees with the shape: refused by bounds,
    before any allocation (an allocation this size would raise MemoryError)."""
    prefix = _ckpt(tmp)
    dims = [1 << 20, 1 << 20, 1 << 10]
    _edit_entry(prefix, FLOAT_KEY, dims=dims, size=4 * int(np.prod(dims, dtype=object)))
    return Setup(["list", "--stats", "--all", str(prefix)], _shard(prefix))


def data_terabyte_shape_small_size(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _edit_entry(prefix, FLOAT_KEY, dims=[1 << 30, 1 << 30])
    return Setup(["list", "--stats", "--all", str(prefix)], _index(prefix))


def data_unknown_dtype(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _edit_entry(prefix, FLOAT_KEY, dtype=99)
    return Setup(["list", "--stats", "--all", str(prefix)], _index(prefix))


def data_negative_dims(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _edit_entry(prefix, FLOAT_KEY, dims=[-3, 8])
    return Setup(["list", str(prefix)], _index(prefix))


def data_shard_id_out_of_range(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    _edit_entry(prefix, FLOAT_KEY, shard_id=3)
    return Setup(["list", "--stats", "--all", str(prefix)], _index(prefix))


# -- .keras archives


def _keras_members() -> dict[str, bytes]:
    with zipfile.ZipFile(SEED_KERAS) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def keras_missing_weights(tmp: Path) -> Setup:
    members = _keras_members()
    del members["model.weights.h5"]
    path = _write_zip(tmp / "model.keras", members)
    return Setup(["list", str(path)], path)


def keras_weights_only_outside(tmp: Path) -> Setup:
    """The weights exist only as `../model.weights.h5`: not the member Keras reads."""
    members = _keras_members()
    members["../model.weights.h5"] = members.pop("model.weights.h5")
    path = _write_zip(tmp / "model.keras", members)
    return Setup(["list", str(path)], path)


def keras_config_nested_too_deeply(tmp: Path) -> Setup:
    members = _keras_members()
    members["config.json"] = b'{"layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = _write_zip(tmp / "model.keras", members)
    return Setup(["list", str(path)], path)


def _patch_central_size(path: Path, member: str, size: int) -> None:
    """Make the central directory declare `size` uncompressed bytes for `member`."""
    data = bytearray(path.read_bytes())
    pos = data.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, pos + 24, size)
            path.write_bytes(bytes(data))
            return
        pos = data.find(b"PK\x01\x02", pos + 4)
    raise KeyError(member)


def keras_huge_declared_member(tmp: Path) -> Setup:
    path = _write_zip(tmp / "model.keras", _keras_members())
    _patch_central_size(path, "config.json", 0xF0000000)  # ~4 GB of "JSON"
    return Setup(["list", str(path)], path)


def keras_deflate_bomb(tmp: Path) -> Setup:
    """model.weights.h5 deflated from 300 MiB of zeros: a few hundred KiB on disk."""
    path = tmp / "bomb.keras"
    members = _keras_members()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in ("metadata.json", "config.json"):
            zf.writestr(name, members[name])
        with zf.open("model.weights.h5", "w", force_zip64=True) as fh:
            zeros = bytes(16 << 20)
            for _ in range(300 // 16 + 1):
                fh.write(zeros)
    return Setup(["list", str(path)], path)


# -- HDF5


def h5_truncated(tmp: Path) -> Setup:
    path = tmp / "model.h5"
    data = SEED_H5.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return Setup(["list", str(path)], path)


def h5_not_hdf5(tmp: Path) -> Setup:
    path = tmp / "model.h5"
    path.write_text("definitely not HDF5\n" * 10)
    return Setup(["list", str(path)], path)


def h5_without_weights(tmp: Path) -> Setup:
    path = tmp / "data.h5"
    with h5py.File(path, "w") as f:
        f["measurements"] = np.arange(10.0)
    return Setup(["list", str(path)], path)


def h5_object_dtype(tmp: Path) -> Setup:
    path = tmp / "model.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0"]
        g.create_dataset("dense/kernel:0", data=["a", "b"], dtype=h5py.string_dtype())
    return Setup(["list", str(path)], path)


def h5_unwritten_terabytes(tmp: Path) -> Setup:
    """A 9 KiB .weights.h5 whose chunked dataset claims 4 TiB never written (reads
    would return fill values): refused before allocating."""
    path = tmp / "model.weights.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("layers/dense/vars")
        group.attrs["name"] = "dense"
        group.create_dataset("0", shape=(1 << 20, 1 << 20), dtype="float32", chunks=(64, 64))
    return Setup(["list", "--stats", str(path)], path)


# -- .npz


def npz_pickled_objects(tmp: Path) -> Setup:
    path = tmp / "weights.npz"
    np.savez(path, kernel=np.ones(3), payload=np.array([{"a": 1}, None], dtype=object))
    return Setup(["list", str(path)], path)


def npz_negative_dims(tmp: Path) -> Setup:
    """A member whose header says shape (-2, -2): 16 bytes by the product of dims."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (-2, -2)}
    )
    path = tmp / "weights.npz"
    _write_zip(path, {"kernel.npy": header.getvalue() + bytes(16)})
    return Setup(["list", str(path)], path)


# -- export and diff


def export_output_dir_missing(tmp: Path) -> Setup:
    out = tmp / "no" / "such" / "out.npz"
    return Setup(["export", str(SEED_KERAS), "-o", str(out)], out.parent, output=out)


def export_target_exists(tmp: Path) -> Setup:
    out = tmp / "out.npz"
    out.write_bytes(b"precious")
    return Setup(
        ["export", str(SEED_KERAS), "-o", str(out)], out, output=out, output_before=b"precious"
    )


def export_output_is_directory(tmp: Path) -> Setup:
    (tmp / "out.npz").mkdir()
    return Setup(["export", str(SEED_KERAS), "-o", str(tmp / "out.npz")], tmp / "out.npz")


def export_corrupt_source(tmp: Path) -> Setup:
    setup = data_crc_flip(tmp)
    out = tmp / "out.npz"
    src = setup.args[-1]
    return Setup(["export", src, "-o", str(out), "--include-optimizer"], setup.file, output=out)


def export_corrupt_source_force(tmp: Path) -> Setup:
    setup = export_corrupt_source(tmp)
    assert setup.output is not None
    setup.output.write_bytes(b"the previous export")
    setup.args.append("--force")
    setup.output_before = b"the previous export"
    return setup


def diff_corrupt_a(tmp: Path) -> Setup:
    setup = data_crc_flip(tmp)
    clean = copy_bundle(SEED_CKPT, tmp / "clean")
    return Setup(["diff", setup.args[-1], str(clean), "--include-optimizer"], setup.file)


def diff_missing_b(tmp: Path) -> Setup:
    return Setup(["diff", str(SEED_KERAS), str(tmp / "gone.npz")], tmp / "gone.npz")


# --------------------------------------------------------------------------
# Hostile inputs, round two: each builder makes one member of a class of attack


# -- reading outside the file (HDF5 external storage, external links, virtual datasets)


def _secret(tmp: Path) -> Path:
    """A local file no command names: not one of its bytes may be read."""
    path = tmp / "secret.bin"
    path.write_bytes(b"SECRET!!" * 64)
    return path


def _legacy_h5_with(path: Path, make_weight: Callable[[h5py.Group, str], None]) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [b"dense"]
        layer = g.create_group("dense")
        layer.attrs["weight_names"] = [b"dense/kernel:0"]
        layer.create_group("dense")
        make_weight(layer, "dense/kernel:0")
    return path


def _export_setup(tmp: Path, src: Path, file: Path | None = None) -> Setup:
    out = tmp / "out.npz"
    return Setup(["export", str(src), "-o", str(out)], file or src, output=out)


def h5_external_storage(tmp: Path) -> Setup:
    secret = _secret(tmp)
    path = _legacy_h5_with(
        tmp / "model.h5",
        lambda g, n: g.create_dataset(n, shape=(16,), dtype="f4", external=[(str(secret), 0, 64)]),
    )
    return _export_setup(tmp, path)


def keras_external_storage(tmp: Path) -> Setup:
    """The same inside a .keras: its model.weights.h5 keeps a weight in a local file."""
    secret = _secret(tmp)
    weights = tmp / "weights.h5"
    with h5py.File(weights, "w") as f:
        group = f.create_group("layers/dense/vars")
        group.attrs["name"] = "dense"
        group.create_dataset("0", shape=(4, 3), dtype="f4", external=[(str(secret), 0, 48)])
    members = _keras_members()
    members["model.weights.h5"] = weights.read_bytes()
    return _export_setup(tmp, _write_zip(tmp / "model.keras", members))


def h5_external_link(tmp: Path) -> Setup:
    other = tmp / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.ones(16, np.float32)

    def link(g: h5py.Group, name: str) -> None:
        g[name] = h5py.ExternalLink(str(other), "x")

    return _export_setup(tmp, _legacy_h5_with(tmp / "model.h5", link))


def h5_virtual_dataset(tmp: Path) -> Setup:
    other = tmp / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.ones(16, np.float32)

    def virtual(g: h5py.Group, name: str) -> None:
        layout = h5py.VirtualLayout(shape=(16,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "x", shape=(16,))
        g.create_virtual_dataset(name, layout)

    return _export_setup(tmp, _legacy_h5_with(tmp / "model.h5", virtual))


# -- sizes a small file claims: HDF5 chunks, deflated members, shared slice bytes


def h5_chunk_bomb(tmp: Path) -> Setup:
    """One element in a resizable dataset whose single chunk is 512 MiB of gzip (half a
    MiB on disk): reading the element would inflate the whole chunk."""

    def bomb(g: h5py.Group, name: str) -> None:
        ds = g.create_dataset(
            name,
            (1,),
            "f4",
            maxshape=(None,),
            chunks=(1 << 27,),
            compression="gzip",
            compression_opts=1,
        )
        ds[0] = 1.0

    path = _legacy_h5_with(tmp / "model.h5", bomb)
    return Setup(["list", "--stats", str(path)], path)


def npz_deflate_bomb_under_threshold(tmp: Path) -> Setup:
    """Three members of 100 MiB zeros each, deflated (each below the per-member floor):
    together 300 MiB from a few hundred KiB."""
    path = tmp / "weights.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (25 << 20,)}
    )
    zeros = bytes(16 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i in range(3):
            with zf.open(f"w{i}.npy", "w", force_zip64=True) as fh:
                fh.write(header.getvalue())
                for _ in range(100 // 16):
                    fh.write(zeros)
                fh.write(bytes((100 << 20) - (100 // 16) * len(zeros)))
    out = tmp / "out.npz"
    return Setup(["export", str(path), "-o", str(out)], path, output=out)


def partitioned_slices_sharing_bytes(tmp: Path) -> Setup:
    """64 slices of a (64, 2^18) tensor whose entries all point at the first slice's
    1 MiB: a 1 MiB shard claiming 64 MiB (and, with more slices, any size)."""
    prefix = partitioned_checkpoint(tmp / "ckpt", 64, 1 << 18, 64, shared=True)
    return Setup(["list", "--stats", str(prefix)], _index(prefix))


# -- special files: FIFOs and devices where files are expected


def _unblock_later(*fifos: Path) -> None:
    """If a regression makes a command open a FIFO and wait, open the writing end
    after a while so the test fails instead of hanging."""

    def unblock() -> None:
        time.sleep(20)
        for fifo in fifos:
            # no reader waiting (or already cleaned up): nothing to do
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock, daemon=True).start()


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    _unblock_later(path)
    return path


def fifo_as_keras(tmp: Path) -> Setup:
    path = _fifo(tmp / "model.keras")
    return Setup(["list", str(path)], path)


def fifo_as_npz(tmp: Path) -> Setup:
    path = _fifo(tmp / "weights.npz")
    return Setup(["list", str(path)], path)


def fifo_as_index(tmp: Path) -> Setup:
    path = _fifo(tmp / "ckpt-1.index")
    return Setup(["list", str(path)], path)


def fifo_as_state_file(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    state = prefix.parent / "checkpoint"
    state.unlink()
    _fifo(state)
    return Setup(["list", str(prefix.parent)], state)


def fifo_as_diff_b(tmp: Path) -> Setup:
    path = _fifo(tmp / "b.npz")
    return Setup(["diff", str(SEED_KERAS), str(path)], path)


def _savedmodel(tmp: Path) -> Path:
    shutil.copytree(fixture_path("seed_keras3_savedmodel"), tmp / "sm")
    return tmp / "sm"


def fifo_as_savedmodel_index(tmp: Path) -> Setup:
    index = _savedmodel(tmp) / "variables" / "variables.index"
    index.unlink()
    _fifo(index)
    return Setup(["list", str(tmp / "sm")], index)


def savedmodel_index_missing(tmp: Path) -> Setup:
    (_savedmodel(tmp) / "variables" / "variables.index").unlink()
    return Setup(["list", str(tmp / "sm")], tmp / "sm" / "variables")


def fifo_as_saved_model_pb(tmp: Path) -> Setup:
    pb = _savedmodel(tmp) / "saved_model.pb"
    pb.unlink()
    _fifo(pb)
    return Setup(["list", str(tmp / "sm")], pb)


def saved_model_pb_to_dev_zero(tmp: Path) -> Setup:
    pb = _savedmodel(tmp) / "saved_model.pb"
    pb.unlink()
    pb.symlink_to("/dev/zero")
    return Setup(["list", str(tmp / "sm")], pb)


def shard_to_dev_zero(tmp: Path) -> Setup:
    """A data shard that is a device: it has no size to check a tensor's bytes against,
    and reading it would never end."""
    prefix = _ckpt(tmp)
    shard = Path(f"{prefix}.data-00000-of-00001")
    shard.unlink()
    shard.symlink_to("/dev/zero")
    return Setup(["list", "--stats", str(prefix)], shard)


def state_file_to_dev_zero(tmp: Path) -> Setup:
    prefix = _ckpt(tmp)
    state = prefix.parent / "checkpoint"
    state.unlink()
    state.symlink_to("/dev/zero")
    return Setup(["list", str(prefix.parent)], state)


def _stays(path: Path, is_kind: Callable[[Path], bool]) -> Callable[[], None]:
    def check() -> None:
        assert is_kind(path), f"{path} was replaced"
        assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]

    return check


def export_force_onto_fifo(tmp: Path) -> Setup:
    out = _fifo(tmp / "out.npz")
    args = ["export", str(SEED_KERAS), "-o", str(out), "--force"]
    return Setup(args, out, check=_stays(out, lambda p: p.is_fifo()))


def export_force_onto_symlink_to_device(tmp: Path) -> Setup:
    out = tmp / "out.npz"
    out.symlink_to("/dev/null")
    args = ["export", str(SEED_KERAS), "-o", str(out), "--force"]
    return Setup(args, out, check=_stays(out, lambda p: p.is_symlink() and p.is_char_device()))


# -- names and documents


def export_names_differing_after_nul(tmp: Path) -> Setup:
    """Two keys that differ only after a NUL byte: a zip member name ends at the NUL,
    so both would be stored as one member (and a tensor lost)."""
    prefix = write_bundle(
        tmp / "ckpt",
        [
            float_entry("w\x00one", np.ones(2, np.float32)),
            float_entry("w\x00two", np.zeros(2, np.float32)),
        ],
    )
    out = tmp / "out.npz"
    return Setup(["export", str(prefix), "-o", str(out)], prefix, output=out)


def npz_opaque_eight_byte_records(tmp: Path) -> Setup:
    path = tmp / "weights.npz"
    np.savez(path, w=np.zeros(4, "V8"))
    return Setup(["list", "--stats", str(path)], path)


def npz_datetimes(tmp: Path) -> Setup:
    path = tmp / "weights.npz"
    np.savez(path, w=np.zeros(4, "M8[s]"))
    out = tmp / "out.npz"
    return Setup(["export", str(path), "-o", str(out)], path, output=out)


_DEEP_JSON = "[" * 100_000 + "]" * 100_000


def bert_config_nested_too_deeply(tmp: Path) -> Setup:
    model = tmp / "bert"
    shutil.copytree(fixture_path("bert_tf1").parent, model)
    (model / "bert_config.json").write_text(_DEEP_JSON)
    return Setup(["list", "--roles", str(model)], model / "bert_config.json")


def config_option_nested_too_deeply(tmp: Path) -> Setup:
    config = tmp / "config.json"
    config.write_text('{"class_name": ' + _DEEP_JSON + "}")
    out = tmp / "out.npz"
    args = ["export", str(SEED_KERAS), "-o", str(out), "--config", str(config)]
    return Setup(args, config, output=out)


def roles_yaml_malformed(tmp: Path) -> Setup:
    roles = tmp / "roles.yaml"
    roles.write_text("a: [1, 2\nb: {c\n  - x: y\n")
    out = tmp / "out.npz"
    args = ["export", str(SEED_KERAS), "-o", str(out), "--roles", str(roles)]
    return Setup(args, roles, output=out)


def roles_yaml_nested_too_deeply(tmp: Path) -> Setup:
    roles = tmp / "roles.yaml"
    roles.write_text(_DEEP_JSON)
    out = tmp / "out.npz"
    args = ["export", str(SEED_KERAS), "-o", str(out), "--roles", str(roles)]
    return Setup(args, roles, output=out)


CASES = [
    Case("path-missing", missing_path, ("no such file",), e2e=True),
    Case("path-missing-with-markup", missing_path_with_markup, ("no such file",)),
    Case("prefix-missing", missing_prefix, ("no such file",)),
    Case("directory-without-checkpoint", directory_without_checkpoint, ("no checkpoint",)),
    Case("file-of-no-known-format", other_file, ("not a tensorflow checkpoint",)),
    Case("data-shard-missing", missing_data_shard, ("missing",)),
    Case("state-file-names-missing-prefix", state_file_names_missing_prefix, ("ckpt-9",)),
    Case("index-truncated", index_truncated, ("truncated",)),
    Case("index-wrong-magic", index_wrong_magic, ("magic",)),
    Case("index-block-crc", index_block_crc, ("crc32c",), e2e=True),
    Case("index-handle-past-end", index_handle_past_end, ("past the end",)),
    Case("index-varint-never-ends", index_endless_varint, ("varint",)),
    Case("index-entry-protobuf-garbage", index_entry_garbage, ("BundleEntryProto",)),
    Case("data-crc-flip", data_crc_flip, ("crc32c mismatch", FLOAT_KEY), e2e=True),
    Case("data-size-disagrees", data_size_mismatch, ("does not match", FLOAT_KEY)),
    Case("data-offset-past-end", data_offset_past_end, ("past the end", FLOAT_KEY)),
    Case("data-terabyte-shape", data_terabyte_shape, ("past the end", FLOAT_KEY), e2e=True),
    Case("data-terabyte-shape-small-size", data_terabyte_shape_small_size, ("does not match",)),
    Case("data-unknown-dtype", data_unknown_dtype, ("unknown dtype", FLOAT_KEY)),
    Case("data-negative-dims", data_negative_dims, ("negative dimension",)),
    Case("data-shard-id-out-of-range", data_shard_id_out_of_range, ("shard 3",)),
    Case("keras-no-weights-member", keras_missing_weights, ("model.weights.h5",), e2e=True),
    Case("keras-weights-only-as-dotdot", keras_weights_only_outside, ("model.weights.h5",)),
    Case("keras-config-nested-too-deeply", keras_config_nested_too_deeply, ("config.json",)),
    Case("keras-huge-declared-member", keras_huge_declared_member, ("config.json", "declares")),
    Case("keras-deflate-bomb", keras_deflate_bomb, ("decompression bomb",)),
    Case("h5-truncated", h5_truncated, ("truncated",), e2e=True),
    Case("h5-not-hdf5", h5_not_hdf5, ("not a tensorflow checkpoint",)),
    Case("h5-without-weights", h5_without_weights, ("no keras weights",)),
    Case("h5-object-dtype", h5_object_dtype, ("dense/kernel:0", "numeric")),
    Case("h5-unwritten-terabytes", h5_unwritten_terabytes, ("declares", "stores 0"), e2e=True),
    Case("npz-pickled-object-array", npz_pickled_objects, ("payload", "pickle")),
    Case("npz-negative-dims", npz_negative_dims, ("kernel", "negative dimension")),
    Case("export-output-dir-missing", export_output_dir_missing, ("does not exist",)),
    Case("export-target-exists", export_target_exists, ("--force",)),
    Case("export-output-is-directory", export_output_is_directory, ("directory",)),
    Case("export-corrupt-source", export_corrupt_source, ("crc32c",), e2e=True),
    Case("export-corrupt-source-force", export_corrupt_source_force, ("crc32c",)),
    Case("diff-corrupt-a", diff_corrupt_a, ("crc32c",)),
    Case("diff-missing-b", diff_missing_b, ("no such file",)),
    # round two: one row per class of attack
    Case("h5-external-storage", h5_external_storage, ("external files",), e2e=True),
    Case("keras-external-storage", keras_external_storage, ("external files",)),
    Case("h5-external-link", h5_external_link, ("external link",)),
    Case("h5-virtual-dataset", h5_virtual_dataset, ("virtual dataset",)),
    Case("h5-chunk-bomb", h5_chunk_bomb, ("chunks of 536870912 bytes",)),
    Case("npz-deflate-bomb-under-threshold", npz_deflate_bomb_under_threshold, ("bomb",)),
    Case("partitioned-slices-sharing-bytes", partitioned_slices_sharing_bytes, ("same bytes",)),
    Case("fifo-as-keras", fifo_as_keras, ("fifo",)),
    Case("fifo-as-npz", fifo_as_npz, ("fifo",)),
    Case("fifo-as-index", fifo_as_index, ("fifo",)),
    Case("fifo-as-state-file", fifo_as_state_file, ("fifo",), e2e=True),
    Case("fifo-as-diff-b", fifo_as_diff_b, ("fifo",)),
    Case("state-file-to-dev-zero", state_file_to_dev_zero, ("character device",)),
    Case("fifo-as-savedmodel-index", fifo_as_savedmodel_index, ("fifo",)),
    Case("savedmodel-index-missing", savedmodel_index_missing, ("variables.index", "missing")),
    Case("fifo-as-saved-model-pb", fifo_as_saved_model_pb, ("fifo",)),
    Case("saved-model-pb-to-dev-zero", saved_model_pb_to_dev_zero, ("character device",)),
    Case("shard-to-dev-zero", shard_to_dev_zero, ("character device",)),
    Case("export-force-onto-fifo", export_force_onto_fifo, ("fifo", "refusing")),
    Case("export-force-onto-device", export_force_onto_symlink_to_device, ("device",)),
    Case("export-names-differing-after-nul", export_names_differing_after_nul, ("NUL",)),
    Case("npz-opaque-records", npz_opaque_eight_byte_records, ("|V8",)),
    Case("npz-datetimes", npz_datetimes, ("datetime64",)),
    Case("bert-config-nested-too-deeply", bert_config_nested_too_deeply, ("nested",)),
    Case("config-option-nested-too-deeply", config_option_nested_too_deeply, ("nested",)),
    Case("roles-yaml-malformed", roles_yaml_malformed, ("line 2",)),
    Case("roles-yaml-nested-too-deeply", roles_yaml_nested_too_deeply, ("roles file",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    setup = case.build(tmp_path)
    code, _, stderr = invoke(setup.args)
    assert_one_line_error(code, stderr, setup.file, case.problem)
    assert_nothing_written(setup.output, setup.output_before)
    if setup.check is not None:
        setup.check()


E2E = [c for c in CASES if c.e2e]


@pytest.mark.parametrize("case", E2E, ids=[c.id for c in E2E])
def test_bad_input_in_a_real_process(case: Case, tmp_path: Path) -> None:
    setup = case.build(tmp_path)
    result = run_cli(*setup.args, cwd=tmp_path)
    assert_one_line_error(result.returncode, result.stderr, setup.file, case.problem)
    assert_nothing_written(setup.output, setup.output_before)
    if setup.check is not None:
        setup.check()


def test_no_crc_skips_the_check_and_reads(tmp_path: Path) -> None:
    setup = data_crc_flip(tmp_path)
    code, stdout, stderr = invoke([*setup.args[:-1], "--no-crc", "--json", setup.args[-1]])
    assert code == 0, stderr
    assert stderr == ""
    import json

    tensors = {t["key"]: t for t in json.loads(stdout)["tensors"]}
    assert tensors[FLOAT_KEY]["stats"] is not None  # read, with the damaged byte


def test_listing_needs_no_tensor_bytes(tmp_path: Path) -> None:
    """Damaged tensor data does not stop `list` (it reads no tensor), only reading does."""
    for build in (data_crc_flip, data_unknown_dtype, data_terabyte_shape):
        setup = build(tmp_path / build.__name__)
        args = [a for a in setup.args if a != "--stats"]
        code, _, stderr = invoke(args)
        assert code == 0, (build.__name__, stderr)


def test_hostile_member_names_are_never_extracted(tmp_path: Path) -> None:
    """A .keras whose extra members are named `../x` or `/abs/x` lists fine and writes
    nothing anywhere: members are read in memory, never extracted."""
    work = tmp_path / "work"
    work.mkdir()
    absolute = tmp_path / "absolute-target.txt"
    members = _keras_members()
    members["../escaped.txt"] = b"escaped"
    members[str(absolute)] = b"absolute"
    path = _write_zip(work / "model.keras", members)
    assert set(zipfile.ZipFile(path).namelist()) >= {"../escaped.txt", str(absolute)}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for args in (["list", str(path)], ["list", "--stats", str(path)]):
        code, _, stderr = invoke(args)
        assert code == 0, stderr
    out = work / "out.npz"
    code, _, stderr = invoke(["export", str(path), "-o", str(out)])
    assert code == 0, stderr
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == sorted([*before, out.relative_to(tmp_path)])
    assert not absolute.exists() and not (tmp_path / "escaped.txt").exists()


MARKUP_NAMES = ("a[/b]", "[red]x")  # rich markup, if a name were rendered as markup


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["list", "--roles"],
        ["list", "--tree"],
        ["diff", "--all"],
    ],
    ids=["list", "list-roles", "list-tree", "diff"],
)
def test_tensor_names_are_printed_verbatim(command: list[str], tmp_path: Path) -> None:
    """Names come from the file: `[/b]` must neither crash the output nor `[red]`
    vanish into a colour."""
    path = tmp_path / "weights.npz"
    np.savez(path, **{name: np.zeros(2) for name in MARKUP_NAMES})
    args = [*command, str(path)] + ([str(path)] if command[0] == "diff" else [])
    code, stdout, stderr = invoke(args)
    assert code == 0, stderr
    shown = stdout.replace("│", " ").replace("└──", " ").replace("├──", " ")
    for name in MARKUP_NAMES:
        leaf = name.rsplit("/", 1)[-1] if "--tree" in command else name
        assert leaf in shown, (name, stdout)


# --------------------------------------------------------------------------
# A damaged HDF5 global heap: HDF5 itself would spin forever reading a string
# attribute, so the reader must refuse the file before any attribute is read


def _stall_global_heap(data: bytes) -> bytes:
    """Turn the first object of the first global heap collection into free space of
    size 0: HDF5's walk over the collection (p = begin + size) no longer advances."""
    pos = data.index(b"GCOL")
    obj = pos + 16  # after "GCOL", version, 3 reserved bytes, 8-byte collection size
    out = bytearray(data)
    out[obj : obj + 2] = b"\x00\x00"  # object index 0: free space
    out[obj + 8 : obj + 16] = bytes(8)  # size 0
    return bytes(out)


def _stalled_weights_h5(tmp: Path) -> Path:
    path = tmp / "model.weights.h5"
    path.write_bytes(_stall_global_heap(fixture_path("seed_weights_h5").read_bytes()))
    return path


def _stalled_keras(tmp: Path) -> Path:
    members = _keras_members()
    members["model.weights.h5"] = _stall_global_heap(members["model.weights.h5"])
    return _write_zip(tmp / "model.keras", members)


@pytest.mark.parametrize(
    "build", [_stalled_weights_h5, _stalled_keras], ids=["weights-h5", "keras"]
)
def test_damaged_global_heap_is_refused_not_hung(build, tmp_path: Path) -> None:
    path = build(tmp_path)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ckpt_tool", "list", str(path)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"},
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("list hung on a damaged global heap")
    assert_one_line_error(result.returncode, result.stderr, path, ("global heap",))


# --------------------------------------------------------------------------
# Permission denied: root ignores file modes, so the CLI runs in a child that
# has dropped CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (then modes apply to root)

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_file_capabilities() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_unprivileged(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}
    preexec = _drop_file_capabilities if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        preexec_fn=preexec,
        timeout=120,
    )


def _require_denied(path: Path, mode: int, tmp_path: Path) -> None:
    """Skip unless a process like the CLI's really gets EACCES on `path`."""
    os.chmod(path, mode)
    if mode & 0o444:  # readable but not writable: try to create a file in it
        probe = "import os,sys; open(os.path.join(sys.argv[1], '.probe'), 'wb')"
    else:
        probe = "import os,sys; p=sys.argv[1]; os.listdir(p) if os.path.isdir(p) else open(p,'rb')"
    check = _run_unprivileged("-c", probe, str(path), cwd=tmp_path)
    if "PermissionError" not in check.stderr:
        pytest.skip(f"cannot make {path.name} unreadable here (mode {oct(mode)} is not enforced)")


@pytest.fixture
def restore_modes(tmp_path: Path):
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:  # let pytest clean up
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _perm_index(tmp: Path):
    prefix = _ckpt(tmp)
    return ["list", str(prefix)], _index(prefix), 0o000, _index(prefix), ("permission denied",)


def _perm_shard(tmp: Path):
    prefix = _ckpt(tmp)
    args = ["list", "--stats", str(prefix)]
    return args, _shard(prefix), 0o000, _shard(prefix), ("permission denied",)


def _perm_directory(tmp: Path):
    prefix = _ckpt(tmp)
    return ["list", str(prefix)], prefix.parent, 0o000, prefix, ("permission denied",)


def _perm_export_dir(tmp: Path):
    out_dir = tmp / "readonly"
    out_dir.mkdir()
    args = ["export", str(SEED_KERAS), "-o", str(out_dir / "out.npz")]
    return args, out_dir, 0o555, out_dir, ("not writable",)


def _perm_keras(tmp: Path):
    path = tmp / "model.keras"
    shutil.copyfile(SEED_KERAS, path)
    return ["list", str(path)], path, 0o000, path, ("permission denied",)


PERMISSION_CASES = {
    "index-unreadable": _perm_index,
    "data-shard-unreadable": _perm_shard,
    "checkpoint-directory-unreadable": _perm_directory,
    "export-directory-not-writable": _perm_export_dir,
    "keras-file-unreadable": _perm_keras,
}


@pytest.mark.parametrize("build", PERMISSION_CASES.values(), ids=PERMISSION_CASES.keys())
def test_permission_denied(build, tmp_path: Path, restore_modes) -> None:
    args, target, mode, file, problem = build(tmp_path)
    _require_denied(target, mode, tmp_path)
    result = _run_unprivileged("-m", "ckpt_tool", *args, cwd=tmp_path)
    assert_one_line_error(result.returncode, result.stderr, file, problem)
    if args[0] == "export":
        assert not any(target.iterdir())


# --------------------------------------------------------------------------
# A full disk and Ctrl-C while exporting

_FULL_DISK_WRAPPER = """
import errno, os, sys

real_fdopen = os.fdopen

class FillsUp:
    '''A file that takes `room` bytes, then fails every write with ENOSPC.'''

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        n = len(memoryview(data).cast("B"))
        if n > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

def fdopen(fd, mode="r", *args, **kwargs):
    f = real_fdopen(fd, mode, *args, **kwargs)
    return FillsUp(f, int(os.environ["ROOM"])) if "w" in mode else f

os.fdopen = fdopen
sys.argv = ["ckpt-tool", *sys.argv[1:]]
from ckpt_tool.cli import main
main()
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_disk_full_mid_export_injected(tmp_path: Path, existing: bool) -> None:
    """ENOSPC after 4 KiB of the export: one line, and no partial or temporary file."""
    out = tmp_path / "out.npz"
    before = None
    args = ["export", str(fixture_path("transformer_block_keras")), "-o", str(out)]
    if existing:
        before = b"an older export"
        out.write_bytes(before)
        args.append("--force")
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_WRAPPER, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "ROOM": "4096", "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=120,
    )
    assert_one_line_error(result.returncode, result.stderr, out, ("disk full",))
    assert_nothing_written(out, before)


def _unshare_prefix() -> list[str] | None:
    tool = shutil.which("unshare")
    if tool is None:
        return None
    return [tool, "-m"] if os.geteuid() == 0 else [tool, "-r", "-m"]


def test_disk_full_on_a_real_small_filesystem(tmp_path: Path) -> None:
    """The export target on a 256 KiB tmpfs (mounted in a private mount namespace, so
    nothing outside sees it): the real ENOSPC gives the same one line and leaves the
    filesystem empty."""
    unshare = _unshare_prefix()
    if unshare is None:
        pytest.skip("no unshare(1)")
    src = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    np.savez(src, **{f"w{i}": rng.standard_normal(64 << 10, dtype=np.float32) for i in range(4)})
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = (
        'mount -t tmpfs -o size=256k none "$1" || exit 99\n'
        '"$2" -m ckpt_tool export "$3" -o "$1/out.npz" 2>"$4/stderr.txt"\n'
        'echo $? >"$4/rc.txt"\n'
        'ls -A "$1" >"$4/left.txt"\n'
    )
    result = subprocess.run(
        [*unshare, "sh", "-c", script, "sh", str(mnt), sys.executable, str(src), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"},
        timeout=120,
    )
    if result.returncode != 0 or not (tmp_path / "rc.txt").exists():
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[:200]}")
    code = int((tmp_path / "rc.txt").read_text())
    stderr = (tmp_path / "stderr.txt").read_text()
    assert_one_line_error(code, stderr, mnt / "out.npz", ("disk full",))
    assert (tmp_path / "left.txt").read_text().split() == []


@pytest.fixture(scope="module")
def large_source(tmp_path_factory) -> Path:
    """64 MiB of random float32 in an .npz: exporting it with --compress takes seconds."""
    path = tmp_path_factory.mktemp("large") / "large.npz"
    rng = np.random.default_rng(1)
    np.savez(path, **{f"layer_{i}/kernel": rng.random(4 << 20, dtype=np.float32) for i in range(4)})
    return path


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_ctrl_c_mid_export(large_source: Path, tmp_path: Path, existing: bool) -> None:
    """SIGINT once the temporary file exists: exit 130, one line, the target absent or
    unchanged, the temporary file removed."""
    out = tmp_path / "out.npz"
    before = None
    args = ["export", str(large_source), "-o", str(out), "--compress"]
    if existing:
        before = b"an older export"
        out.write_bytes(before)
        args.append("--force")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckpt_tool", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"},
        preexec_fn=sigint_as_on_a_terminal,
    )
    deadline = time.monotonic() + 60
    temp = []
    while not temp and proc.poll() is None and time.monotonic() < deadline:
        temp = [p for p in tmp_path.iterdir() if p.name.startswith(".out.npz.")]
        time.sleep(0.01)
    assert temp, "the export never started writing (or finished before it could be interrupted)"
    time.sleep(0.2)  # well inside the writing of the members
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 130, (proc.returncode, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: interrupted"), stderr
    assert_nothing_written(out, before)
