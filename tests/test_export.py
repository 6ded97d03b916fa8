"""`ckpt-tool export`: every fixture round-trips bit for bit; the target is never half-written."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from ckpt_tool import export
from ckpt_tool.errors import CkptToolError
from ckpt_tool.export import (
    MANIFEST_KEY,
    ExportInterrupted,
    ExportOptions,
    export_npz,
    npz_name,
    select_variables,
    unique_names,
)
from ckpt_tool.layouts.keras import is_anonymous
from ckpt_tool.listing import attach_roles, build_listing
from ckpt_tool.readers import open_reader
from tests.support import (
    ROOT,
    fixture,
    fixture_index,
    fixture_path,
    hostile_model_writes_its_file,
    run_cli,
    sigint_as_on_a_terminal,
)

ALL_FIXTURES = [f["id"] for f in fixture_index()]


def load_npz(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, arrays) exactly as a NumPy user would read them."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    manifest = json.loads(str(arrays.pop(MANIFEST_KEY)))
    return manifest, arrays


def logical(array: np.ndarray, entry: dict) -> np.ndarray:
    """The stored array as the manifest says to read it (bfloat16 from its uint16 bits)."""
    if entry["dtype"] != entry["stored_dtype"] and entry["dtype"] != "string":
        return array.view(getattr(ml_dtypes, entry["dtype"], None) or np.dtype(entry["dtype"]))
    return array


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "SUO" or b.dtype.kind in "SUO":
        as_bytes = [x.encode() if isinstance(x, str) else bytes(x) for x in np.ravel(a).tolist()]
        return a.shape == b.shape and as_bytes == [bytes(x) for x in np.ravel(b).tolist()]
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def reference_read(fixture_id: str, key: str) -> np.ndarray | None:
    """The tensor as TensorFlow or h5py reads it from the source, independent of ckpt-tool;
    None where the key is not a TensorFlow or HDF5 address (e.g. inside a .keras zip)."""
    entry = fixture(fixture_id)
    path = fixture_path(fixture_id)
    if entry["format"] == "checkpoint":
        prefix = path / "variables" / "variables" if path.is_dir() else path
        value = tf.train.load_checkpoint(str(prefix)).get_tensor(key)
        return np.asarray(value)
    if entry["format"] in ("weights-h5", "h5"):
        with h5py.File(path, "r") as f:
            if key in f and isinstance(f[key], h5py.Dataset):
                data = f[key][()]
                if f[key].attrs.get("dtype") == "bfloat16":
                    data = np.asarray(data).view(ml_dtypes.bfloat16)
                return np.asarray(data)
    return None


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Every fixture exported once with optimizer state (module-scoped: reused by tests)."""
    out_dir = tmp_path_factory.mktemp("exported")
    paths = {}
    for fixture_id in ALL_FIXTURES:
        out = out_dir / f"{fixture_id}.npz"
        with open_reader(fixture_path(fixture_id)) as reader:
            export_npz(reader, out, ExportOptions(include_optimizer=True))
        paths[fixture_id] = out
    return paths


# --- round trip ----------------------------------------------------------------------------


def source_roles(reader) -> dict[str, dict]:
    """Key -> {layer, class, role, evidence} as `list` shows roles for the source."""
    listing = build_listing(reader, show_all=True)
    attach_roles(reader, listing)
    return {t.info.key: t.role for t in listing.tensors if t.role and t.role["role"]}


@pytest.mark.parametrize("fixture_id", ALL_FIXTURES)
def test_round_trip_bitwise(fixture_id: str, exported: dict[str, Path]) -> None:
    manifest, arrays = load_npz(exported[fixture_id])
    entries = manifest["variables"]
    with open_reader(fixture_path(fixture_id)) as reader:
        infos = select_variables(reader, include_optimizer=True)
        roles = source_roles(reader)
        assert [e["source_names"] for e in entries] == [[i.name] for i in infos]
        assert [e["source_key"] for e in entries] == [i.key for i in infos]
        assert set(arrays) == {e["key"] for e in entries}
        assert [e["key"] for e in entries] == unique_names(npz_name(e["name"]) for e in entries)
        for entry, info in zip(entries, infos, strict=True):
            stored = arrays[entry["key"]]
            assert stored.dtype != object
            assert entry["dtype"] == info.dtype and entry["shape"] == list(info.shape)
            assert entry["kind"] == info.kind and entry["transform"] is None
            assert entry["aliases"] == list(info.aliases)
            assert entry["role"] == roles.get(info.key)
            if not is_anonymous(info.name):
                assert entry["name"] == info.name
            elif entry["role"] is not None:  # `variables/3` named by its layer and role
                assert entry["name"].startswith(entry["role"]["layer"] + "/")
                assert entry["name"].endswith("/" + entry["role"]["role"].split(".")[-1])
            source = reader.read(info.key)
            assert same_bits(logical(stored, entry), np.asarray(source)), info.name
            reference = reference_read(fixture_id, info.key)
            if reference is not None:
                assert same_bits(logical(stored, entry), reference), info.name
    assert manifest["schema"] == "ckpt-tool.npz-manifest/1"
    assert manifest["source"] == {
        "path": fixture_path(fixture_id).name,
        "format": fixture(fixture_id)["format"],
    }


@pytest.mark.parametrize("fixture_id", ALL_FIXTURES)
def test_npz_reader_reads_export_back(fixture_id: str, exported: dict[str, Path]) -> None:
    manifest, _arrays = load_npz(exported[fixture_id])
    with open_reader(exported[fixture_id]) as back, open_reader(fixture_path(fixture_id)) as src:
        infos = select_variables(src, include_optimizer=True)
        back_infos = select_variables(back, include_optimizer=True)
        assert [i.name for i in back_infos] == [e["name"] for e in manifest["variables"]]
        for b, s in zip(back_infos, infos, strict=True):
            assert (b.dtype, b.shape, b.kind) == (s.dtype, s.shape, s.kind)
            assert same_bits(np.asarray(back.read(b.key)), np.asarray(src.read(s.key)))


def test_roles_of_weights_only(exported: dict[str, Path]) -> None:
    manifest, _arrays = load_npz(exported["seed_keras"])
    entries = manifest["variables"]
    assert {e["kind"] for e in entries} == {"weight", "optimizer"}
    assert all(e["role"] is None for e in entries if e["kind"] == "optimizer")
    assert all(e["role"]["evidence"] == "config" for e in entries if e["kind"] == "weight")


def test_weights_only_by_default(tmp_path: Path) -> None:
    src = fixture_path("seed_checkpoint")
    out = tmp_path / "w.npz"
    with open_reader(src) as reader:
        export_npz(reader, out)
        kinds = {i.kind for i in reader.variables()}
        weights = [i.name for i in reader.variables() if i.kind == "weight"]
    assert {"weight", "optimizer", "bookkeeping"} <= kinds
    manifest, _arrays = load_npz(out)
    assert {e["kind"] for e in manifest["variables"]} == {"weight"}
    assert sorted(e["name"] for e in manifest["variables"]) == sorted(weights)


@pytest.mark.parametrize("fixture_id", ["seed_tfkeras_savedmodel", "seed_keras", "bert_tf1"])
def test_cli_list_of_export_shows_source_names(fixture_id: str, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    result = run_cli("export", str(fixture_path(fixture_id)), "-o", str(out))
    assert result.returncode == 0, result.stderr
    src = json.loads(run_cli("list", str(fixture_path(fixture_id)), "--json").stdout)
    back = json.loads(run_cli("list", str(out), "--json").stdout)
    assert [t["name"] for t in back["tensors"]] == [t["name"] for t in src["tensors"]]
    assert [t["shape"] for t in back["tensors"]] == [t["shape"] for t in src["tensors"]]
    assert [t["dtype"] for t in back["tensors"]] == [t["dtype"] for t in src["tensors"]]
    assert back["format"] == "npz"


def test_savedmodel_names_are_resolved_not_raw_keys(exported: dict[str, Path]) -> None:
    manifest, _arrays = load_npz(exported["seed_tfkeras_savedmodel"])
    weights = [e for e in manifest["variables"] if e["kind"] == "weight"]
    assert weights and all(".ATTRIBUTES" not in e["key"] for e in weights)
    assert all(not e["key"].startswith("variables/") for e in weights)
    assert any(e["source_key"].startswith("variables/") for e in weights)


def test_bfloat16_and_strings(exported: dict[str, Path]) -> None:
    manifest, arrays = load_npz(exported["edge_dtypes"])
    by_dtype = {e["dtype"]: e for e in manifest["variables"]}
    bf16 = by_dtype["bfloat16"]
    assert bf16["stored_dtype"] == "uint16" and arrays[bf16["key"]].dtype == np.uint16
    reader_value = tf.train.load_checkpoint(str(fixture_path("edge_dtypes"))).get_tensor(
        bf16["source_key"]
    )
    assert arrays[bf16["key"]].view(ml_dtypes.bfloat16).tobytes() == reader_value.tobytes()
    if "string" in by_dtype:
        strings = arrays[by_dtype["string"]["key"]]
        assert strings.dtype.kind == "S"


# --- options -------------------------------------------------------------------------------


def test_filter(tmp_path: Path) -> None:
    out = tmp_path / "q.npz"
    result = run_cli(
        "export", str(fixture_path("seed_keras")), "-o", str(out), "--filter", "*query*"
    )
    assert result.returncode == 0, result.stderr
    manifest, _arrays = load_npz(out)
    names = [e["name"] for e in manifest["variables"]]
    assert names and all("query" in n for n in names)
    with open_reader(fixture_path("seed_keras")) as reader:
        expected = [i.name for i in select_variables(reader, pattern="*query*")]
    assert names == expected


def test_filter_matching_nothing_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "none.npz"
    result = run_cli("export", str(fixture_path("seed_keras")), "-o", str(out), "--filter", "zzz*")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "zzz" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("cast", ["float16", "float32"])
def test_dtype_casts_floating_tensors_only(cast: str, tmp_path: Path) -> None:
    out = tmp_path / "cast.npz"
    src = fixture_path("edge_dtypes")
    assert run_cli("export", str(src), "-o", str(out), "--dtype", cast).returncode == 0
    manifest, arrays = load_npz(out)
    with open_reader(src) as reader:
        infos = {i.key: i for i in reader.variables()}
        for entry in manifest["variables"]:
            info = infos[entry["source_key"]]
            stored = arrays[entry["key"]]
            source = np.asarray(reader.read(info.key))
            assert entry["source_dtype"] == info.dtype
            if info.dtype.startswith("float") or info.dtype == "bfloat16":
                assert stored.dtype == np.dtype(cast) and entry["dtype"] == cast
                assert same_bits(stored, source.astype(cast))
            else:
                assert entry["dtype"] == info.dtype
                assert same_bits(logical(stored, entry), source)


def test_compress(tmp_path: Path, exported: dict[str, Path]) -> None:
    out = tmp_path / "z.npz"
    src = fixture_path("transformer_block_keras")
    assert run_cli("export", str(src), "-o", str(out), "--compress").returncode == 0
    with zipfile.ZipFile(out) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    with zipfile.ZipFile(exported["transformer_block_keras"]) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    manifest, arrays = load_npz(out)
    with open_reader(src) as reader:
        for entry in manifest["variables"]:
            assert same_bits(arrays[entry["key"]], np.asarray(reader.read(entry["source_key"])))


def test_refuses_existing_output_without_force(tmp_path: Path) -> None:
    out = tmp_path / "exists.npz"
    out.write_bytes(b"precious")
    src = str(fixture_path("seed_keras"))
    result = run_cli("export", src, "-o", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists.npz" in lines[0] and "--force" in lines[0]
    assert out.read_bytes() == b"precious"
    result = run_cli("export", src, "-o", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert load_npz(out)[0]["variables"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.npz"]


def test_refuses_to_overwrite_the_source(tmp_path: Path, exported: dict[str, Path]) -> None:
    src = tmp_path / "src.npz"
    src.write_bytes(exported["seed_keras"].read_bytes())
    before = src.read_bytes()
    result = run_cli("export", str(src), "-o", str(src), "--force")
    assert result.returncode == 2 and "source" in result.stderr
    assert src.read_bytes() == before
    data = tmp_path / "ckpt.data-00000-of-00001"
    data.write_bytes(b"x")
    with pytest.raises(CkptToolError, match="source"):
        export.check_target(data, tmp_path / "ckpt", force=True)


def test_refuses_missing_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "dir.npz"
    result = run_cli("export", str(fixture_path("seed_keras")), "-o", str(out))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "does not exist" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_refuses_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("export", str(fixture_path("seed_keras")), "-o", str(locked / "o.npz"))
    assert result.returncode == 2 and "not writable" in result.stderr


@pytest.mark.parametrize(
    "src_kind", ["missing", "garbage", "truncated_npz"], ids=["missing", "garbage", "truncated"]
)
def test_bad_input_one_line_no_output(src_kind: str, tmp_path: Path, exported) -> None:
    src = tmp_path / f"{src_kind}.npz"
    if src_kind == "garbage":
        src.write_bytes(b"not a weight file at all")
    elif src_kind == "truncated_npz":
        data = exported["seed_keras"].read_bytes()
        src.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.npz"
    result = run_cli("export", str(src), "-o", str(out))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and src.name in result.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_hostile_savedmodel_exports_without_running_anything(tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    out = tmp_path / "hostile.npz"
    src = fixture_path("hostile_savedmodel")
    before = {p.name for p in src.parent.rglob("*")}
    result = run_cli("export", str(src), "-o", str(out), "--include-optimizer", cwd=work)
    assert result.returncode == 0, result.stderr
    assert list(work.iterdir()) == []
    assert not (ROOT / "pwned.txt").exists()
    assert {p.name for p in src.parent.rglob("*")} == before
    assert load_npz(out)[0]["variables"]
    assert hostile_model_writes_its_file()  # positive control: run by TensorFlow, it does


# --- failures while writing ----------------------------------------------------------------


def _failing_writer(exc: BaseException, after: int):
    calls = {"n": 0}
    real = export.write_member

    def write_member(zf, name, array):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        real(zf, name, array)

    return write_member


@pytest.mark.parametrize("existing", [False, True], ids=["absent", "existing"])
def test_disk_full_leaves_no_partial_file(monkeypatch, tmp_path: Path, existing: bool) -> None:
    out = tmp_path / "full.npz"
    if existing:
        out.write_bytes(b"old")
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(export, "write_member", _failing_writer(full, after=3))
    with open_reader(fixture_path("seed_keras")) as reader, pytest.raises(CkptToolError) as info:
        export_npz(reader, out, ExportOptions(force=True))
    message = str(info.value)
    assert "disk full" in message and "full.npz" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == (["full.npz"] if existing else [])
    if existing:
        assert out.read_bytes() == b"old"


def test_keyboard_interrupt_leaves_no_partial_file(monkeypatch, tmp_path: Path) -> None:
    out = tmp_path / "int.npz"
    monkeypatch.setattr(export, "write_member", _failing_writer(KeyboardInterrupt(), after=2))
    with open_reader(fixture_path("seed_keras")) as reader, pytest.raises(ExportInterrupted):
        export_npz(reader, out)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def big_npz(tmp_path_factory) -> Path:
    """A 160 MiB synthetic .npz: long enough an export to interrupt midway."""
    src = tmp_path_factory.mktemp("big") / "big.npz"
    rng = np.random.default_rng(0)
    block = rng.standard_normal((256, 1024), dtype=np.float32)  # 1 MiB
    with zipfile.ZipFile(src, "w") as zf:
        for i in range(160):
            with zf.open(f"layer_{i:03d}/kernel.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, block + i)
    return src


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_export_subprocess(signum: int, big_npz: Path, tmp_path: Path) -> None:
    """A real Ctrl-C (or kill): the signal arrives once the temporary file is growing."""
    src = big_npz
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "big_out.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckpt_tool", "export", str(src), "-o", str(out), "--compress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=sigint_as_on_a_terminal,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]
        if temps and temps[0].stat().st_size > (2 << 20):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "export finished before it could be interrupted"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "big_out.npz" in lines[0]
    assert list(out_dir.iterdir()) == []


# --- names ---------------------------------------------------------------------------------


def test_unique_names() -> None:
    assert unique_names(["a", "b", "a", "a_1", "a"]) == ["a", "b", "a_2", "a_1", "a_3"]
    assert unique_names([]) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dense/kernel", "dense/kernel"),
        ("/abs//path/", "abs/path"),
        ("../../etc/passwd", "_/_/etc/passwd"),
        ("__manifest__", "_manifest__"),
        ("", "tensor"),
    ],
)
def test_npz_name(name: str, expected: str) -> None:
    assert npz_name(name) == expected
