"""Damaged weight files, read in a disposable worker process.

A *target* is one file of a real fixture (an `.index`, a data shard, a `.h5`, a
`.keras`, a `saved_model.pb`, an `.npz`, ...) or one member or table entry inside
it. A *case* is a list of mutations (byte flips, truncations, splices, random
overwrites, ...) applied to that file's bytes. The worker writes the damaged
file into a private copy of the fixture and runs the library on it as `list
--stats --roles` would: open_reader, variables, read every tensor, statistics,
model_config, signatures, roles. The outcome must be a result whose arrays have
the listed shapes, or a one-line CkptToolError. Anything else is a bug: another
exception, a crash of the process, a hang (the parent kills the worker after a
timeout), or a memory blow-up (the worker's address space is capped).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
import traceback
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.support import fixture_path

MEMORY_LIMIT = 2 << 30  # address space of a worker: far below what a blow-up needs
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 40)

# A mutation: (op, a, b, payload). Positions are taken modulo the data length (+1).
Mutation = tuple[str, int, int, bytes]


def mutate(data: bytes, ops: list[Mutation]) -> bytes:
    """Apply mutations in order; every op is defined for every input (even empty)."""
    buf = bytearray(data)
    for op, a, b, payload in ops:
        n = len(buf)
        pos = a % (n + 1)
        if op == "flip" and n:
            buf[a % n] ^= 1 << (b % 8)
        elif op == "set" and n:
            buf[a % n] = b & 0xFF
        elif op == "truncate":
            del buf[pos:]
        elif op == "overwrite":
            buf[pos : pos + len(payload)] = payload
        elif op == "insert":
            buf[pos:pos] = payload
        elif op == "delete":
            del buf[pos : pos + 1 + b % 64]
        elif op == "splice" and n:  # copy a chunk of the file over another place
            length = 1 + b % 64
            src = (a // 7) % n
            buf[pos : pos + length] = buf[src : src + length]
        elif op == "integer":  # an interesting little-endian integer, 1 to 8 bytes wide
            width = 1 << (b % 4)
            value = INTERESTING[(b // 4) % len(INTERESTING)] & ((1 << (8 * width)) - 1)
            buf[pos : pos + width] = value.to_bytes(width, "little")
    return bytes(buf)


# --------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    name: str
    source: Path  # a fixture file or directory, copied once per worker
    damaged: str  # the file inside the copy whose bytes are mutated ("" = the copy itself)
    opened: str = ""  # what open_reader gets, inside the copy ("" = the copy itself)
    inner: str = ""  # "member:<name>" (a zip member) or "entries" (the index's entries)


def _ckpt(name: str, fixture_id: str, damaged: str, opened: str, inner: str = "") -> Target:
    path = fixture_path(fixture_id)
    return Target(name, path.parent, damaged, opened or path.name, inner)


def targets(npz_dir: Path) -> dict[str, Target]:
    """Every fuzz target; npz_dir holds the .npz sources made by make_npz_sources."""
    seed_sm = fixture_path("seed_tfkeras_functional_savedmodel")
    keras3_export = fixture_path("seed_keras3_export")
    out = [
        _ckpt("ckpt-index", "seed_checkpoint", "ckpt-1.index", "ckpt-1"),
        _ckpt("ckpt-index-entries", "seed_checkpoint", "ckpt-1.index", "ckpt-1", "entries"),
        _ckpt("ckpt-data", "seed_checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1"),
        _ckpt("dtypes-index-entries", "edge_dtypes", "dtypes.index", "dtypes", "entries"),
        _ckpt("dtypes-data", "edge_dtypes", "dtypes.data-00000-of-00001", "dtypes"),
        _ckpt(
            "partitioned-index-entries",
            "edge_partitioned",
            "model.ckpt.index",
            "model.ckpt",
            "entries",
        ),
        _ckpt("partitioned-data", "edge_partitioned", "model.ckpt.data-00000-of-00001", ""),
        _ckpt("sliced-index", "edge_sharded_sliced", "sliced.index", "sliced"),
        _ckpt("tf1-meta", "bert_tf1", "bert_model.ckpt.meta", "bert_model.ckpt"),
        Target("savedmodel-pb", seed_sm, "saved_model.pb"),
        Target("keras-metadata-pb", seed_sm, "keras_metadata.pb"),
        Target("savedmodel-index", keras3_export, "variables/variables.index"),
        Target("savedmodel-index-entries", seed_sm, "variables/variables.index", "", "entries"),
        Target("keras-zip", fixture_path("seed_keras"), ""),
        Target(
            "keras-weights-member", fixture_path("seed_keras"), "", "", "member:model.weights.h5"
        ),
        Target(
            "keras-config-member",
            fixture_path("transformer_block_keras"),
            "",
            "",
            "member:config.json",
        ),
        Target("weights-h5", fixture_path("seed_weights_h5"), ""),
        Target("legacy-h5", fixture_path("seed_legacy_h5"), ""),
        Target("npz-stored", npz_dir / "stored.npz", ""),
        Target("npz-compressed", npz_dir / "compressed.npz", ""),
        Target("npz-export", npz_dir / "export.npz", ""),
        Target("npz-export-manifest", npz_dir / "export.npz", "", "", "member:__manifest__.npy"),
        Target("safetensors-export", npz_dir / "export.safetensors", ""),
    ]
    return {t.name: t for t in out}


def make_npz_sources(directory: Path) -> Path:
    """A stored and a compressed np.savez archive, and ckpt-tool exports (with their
    manifest, bfloat16 bits and strings) of the edge_dtypes checkpoint: .npz and
    .safetensors."""
    import numpy as np

    from ckpt_tool.export import ExportOptions, export_npz
    from ckpt_tool.export_safetensors import export_safetensors
    from ckpt_tool.readers import open_reader

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "dense/kernel": rng.standard_normal((4, 3)).astype(np.float32),
        "dense/bias": np.arange(3, dtype=np.float16),
        "steps": np.array(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "fortran": np.asfortranarray(rng.standard_normal((3, 5))),
        "empty": np.zeros((0, 4), dtype=np.int32),
    }
    np.savez(directory / "stored.npz", **arrays)
    np.savez_compressed(directory / "compressed.npz", **arrays)
    with open_reader(fixture_path("edge_dtypes")) as reader:
        export_npz(reader, directory / "export.npz", ExportOptions(force=True))
        # every dtype safetensors holds (complex and strings it cannot): bfloat16, ints, bool
        options = ExportOptions(force=True, pattern="[bfeiu]*")
        export_safetensors(reader, directory / "export.safetensors", options)
    return directory


# --------------------------------------------------------------------------
# The worker: one case at a time, in its own process

_TF_ONLY = {"string", "resource", "variant", "qint8", "quint8", "qint16", "quint16", "qint32"}


def exercise(path: Path, verify_crc: bool) -> tuple[str, str]:
    """Run the library on `path` like `list --all --stats --roles`; (outcome, detail)."""
    from ckpt_tool.errors import CkptToolError
    from ckpt_tool.listing import attach_roles, build_listing, tensor_stats
    from ckpt_tool.readers import open_reader

    try:
        with open_reader(path) as reader:
            reader.verify_crc = verify_crc
            infos = reader.variables()
            listing = build_listing(reader, show_all=True)
            for info in infos:
                array = reader.read(info.key)
                if tuple(array.shape) != tuple(info.shape):
                    return "bug", f"{info.key!r}: read shape {array.shape}, listed {info.shape}"
                if info.dtype not in _TF_ONLY and array.dtype.name != info.dtype:
                    return "bug", f"{info.key!r}: read {array.dtype}, listed {info.dtype}"
                tensor_stats(array)
                del array
            reader.model_config()
            if hasattr(reader, "signatures"):
                reader.signatures()
            attach_roles(reader, listing)
        return "ok", f"{len(infos)} tensors"
    except CkptToolError as exc:
        message = str(exc)
        if "\n" in message or not message.strip():
            return "bug", f"{type(exc).__name__} message is not one line: {message!r}"
        return "error", f"{type(exc).__name__}: {message}"
    except MemoryError:
        return "bug", "MemoryError (an allocation the file's sizes did not justify)\n" + (
            traceback.format_exc()
        )
    except Exception:  # the point of the fuzz: nothing else may escape
        return "bug", traceback.format_exc()


def _damage(target: Target, original: bytes, ops: list[Mutation]) -> bytes:
    """The damaged bytes of the target file (rebuilding the zip or table if needed)."""
    if target.inner.startswith("member:"):
        return _damage_member(original, target.inner[len("member:") :], ops)
    if target.inner == "entries":
        return _damage_entries(original, ops)
    return mutate(original, ops)


def _damage_member(archive: bytes, member: str, ops: list[Mutation]) -> bytes:
    """Mutate one zip member and write the archive again (stored, crcs right), so the
    damage reaches the member's parser instead of the zip layer."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == member:
                data = mutate(data, ops)
            dst.writestr(zipfile.ZipInfo(info.filename, info.date_time), data)
    return out.getvalue()


def _damage_entries(index: bytes, ops: list[Mutation]) -> bytes:
    """Mutate the key or value of one `.index` entry (chosen by the first op) and
    encode the table again, every block crc right: the damage reaches the protobuf
    and bundle checks instead of stopping at the block crc."""
    from tests.bundle_writer import decode_table, encode_table

    table = decode_table(index)
    if not ops or not table:
        return index
    i = ops[0][1] % len(table)
    key, value = table[i]
    if ops[0][2] % 5 == 0:
        table[i] = (mutate(key, ops), value)
    else:
        table[i] = (key, mutate(value, ops))
    return encode_table(sorted(table))


def run_case(scratch: Path, target: Target, ops: list[Mutation], verify_crc: bool):
    copy = scratch / target.name
    if not copy.exists():
        if target.source.is_dir():
            shutil.copytree(target.source, copy)
        else:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target.source, copy)
    damaged = copy / target.damaged if target.damaged else copy
    original = damaged.read_bytes()
    try:
        damaged.write_bytes(_damage(target, original, ops))
        return exercise(copy / target.opened if target.opened else copy, verify_crc)
    finally:
        damaged.write_bytes(original)


STRUCTURED = "__structured__"  # a case that is a structure spec, not mutations


def run_structured(scratch: Path, spec: dict) -> tuple[str, str]:
    """Build the file a structure spec describes (tests/structured_inputs), then
    exercise it like any damaged file."""
    from tests.structured_inputs import build

    directory = scratch / "structured"
    shutil.rmtree(directory, ignore_errors=True)
    try:
        try:
            path = build(directory, spec)
        except Exception as exc:  # a spec the writing library refuses: nothing to read
            return "ok", f"not buildable: {type(exc).__name__}: {exc}"
        return exercise(path, verify_crc=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _self_test(name: str, arg) -> tuple[str, str]:
    """Misbehaviour on request, to test the harness: sleep, allocate, abort."""
    if name == "__sleep__":
        time.sleep(arg)
    elif name == "__allocate__":
        try:
            bytearray(arg)
        except MemoryError:
            return "bug", "MemoryError"
    elif name == "__abort__":
        os.abort()
    return "ok", name


def _worker(conn, target_list: list[Target], memory_limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    warnings.simplefilter("ignore")  # overflow in statistics of garbage values, ...
    import ckpt_tool.listing
    import ckpt_tool.readers.checkpoint
    import ckpt_tool.readers.keras_h5
    import ckpt_tool.readers.npz
    import ckpt_tool.roles  # noqa: F401 - imported once, not inside the first case

    by_name = {t.name: t for t in target_list}
    scratch = Path(tempfile.mkdtemp(prefix="ckpt-fuzz-"))
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            name, ops, verify_crc = msg
            if name == STRUCTURED:
                conn.send(run_structured(scratch, ops))
            elif name.startswith("__"):
                conn.send(_self_test(name, ops))
            else:
                conn.send(run_case(scratch, by_name[name], ops, verify_crc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class Worker:
    """A worker process that runs cases; restarted after a crash or a hang."""

    def __init__(self, target_list: list[Target], timeout: float, memory_limit: int = MEMORY_LIMIT):
        self.targets = target_list
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.counts: dict[str, dict[str, int]] = {}
        self.restarts = 0
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        try:
            self._proc = ctx.Process(
                target=_worker, args=(child, self.targets, self.memory_limit), daemon=True
            )
            self._proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(10)
        self._proc = self._conn = None
        self.restarts += 1

    def run(self, name: str, ops: list[Mutation], verify_crc: bool) -> tuple[str, str]:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send((name, ops, verify_crc))
        if not self._conn.poll(self.timeout):
            self._kill()
            result = ("bug", f"hang: no answer within {self.timeout:g} s")
        else:
            try:
                result = self._conn.recv()
            except (EOFError, ConnectionError):
                self._proc.join(5)
                code = self._proc.exitcode
                self._kill()
                result = ("bug", f"crash: the worker died (exit code {code})")
        outcome = result[0]
        per_target = self.counts.setdefault(name, {})
        per_target[outcome] = per_target.get(outcome, 0) + 1
        return result

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(10)
            except (OSError, ValueError):
                pass
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = self._conn = None


def summary(counts: dict[str, dict[str, int]]) -> str:
    lines = []
    total: dict[str, int] = {}
    for name in sorted(counts):
        c = counts[name]
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
        parts = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        lines.append(f"  {name:28s} {sum(c.values()):7d}  ({parts})")
    parts = ", ".join(f"{k} {v}" for k, v in sorted(total.items()))
    lines.append(f"  {'total':28s} {sum(total.values()):7d}  ({parts})")
    return "\n".join(lines)
