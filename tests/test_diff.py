"""`ckpt-tool diff`: matching across formats, per-tensor differences, exit codes, JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import google_crc32c
import ml_dtypes
import numpy as np
import pytest

from ckpt_tool.diff import (
    SCHEMA,
    compare_arrays,
    diff_readers,
    match_by_role,
    match_tensors,
    normalize_name,
)
from ckpt_tool.export import ExportOptions, export_npz, select_variables
from ckpt_tool.readers import open_reader
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import Layer, RoleMap
from tests.bundle_writer import entry_of, mask, rewrite_index
from tests.support import FIXTURES, fixture_path, run_cli


def diff_json(*args: str) -> tuple[int, dict]:
    result = run_cli("diff", *args, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def source_arrays(fixture_id: str) -> dict[str, np.ndarray]:
    """Resolved name -> array for the fixture's weights (read through ckpt-tool)."""
    with open_reader(fixture_path(fixture_id)) as reader:
        return {i.name: np.array(reader.read(i.key)) for i in select_variables(reader)}


@pytest.fixture(scope="module")
def seed_arrays() -> dict[str, np.ndarray]:
    return source_arrays("seed_keras")


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture_id", ["seed_checkpoint", "seed_tfkeras_savedmodel", "bert_tf1", "edge_dtypes"]
)
def test_source_vs_its_own_export_matches(fixture_id: str, tmp_path: Path) -> None:
    out = tmp_path / "export.npz"
    with open_reader(fixture_path(fixture_id)) as reader:
        export_npz(reader, out, ExportOptions(include_optimizer=True))
    code, report = diff_json(str(fixture_path(fixture_id)), str(out), "--include-optimizer")
    assert code == 0, report["summary"]
    assert report["match"] is True
    assert report["summary"]["compared"] == len(report["pairs"]) > 0
    for pair in report["pairs"]:
        assert pair["status"] == "equal" and pair["mismatched"] == 0
        assert pair["max_abs"] == (None if pair["dtype_a"] == "string" else 0)
    assert all(p["matched_by"] == "name" for p in report["pairs"])


def test_keras_vs_weights_h5_of_the_same_model() -> None:
    code, report = diff_json(str(fixture_path("seed_keras")), str(fixture_path("seed_weights_h5")))
    assert code == 0, report
    with open_reader(fixture_path("seed_keras")) as reader:
        assert report["summary"]["compared"] == len(select_variables(reader))


# Every seed fixture carries a copy of the same trained weights (fixtures/README.md), saved
# by different writers that spell the names differently.
CROSS_FORMAT = [
    ("seed_keras", "seed_legacy_h5"),  # query_dense/kernel vs query/kernel:0
    ("seed_tfkeras_checkpoint", "seed_weights_h5"),  # seed_model/ prefix vs layers/.../vars/i
    ("seed_checkpoint", "seed_tfkeras_checkpoint"),  # _query_dense/_kernel vs query/kernel
    ("seed_checkpoint", "seed_keras3_savedmodel"),  # shared `seed_model/kernel` aliases
    ("seed_keras3_savedmodel", "seed_tfkeras_savedmodel"),
    ("seed_legacy_h5", "seed_tfkeras_functional_savedmodel"),
]


@pytest.mark.parametrize(("a", "b"), CROSS_FORMAT, ids=["-".join(p) for p in CROSS_FORMAT])
def test_same_weights_across_writers_and_spellings(a: str, b: str) -> None:
    code, report = diff_json(str(fixture_path(a)), str(fixture_path(b)))
    assert report["only_in_a"] == [] and report["only_in_b"] == []
    with open_reader(fixture_path(a)) as reader:
        assert report["summary"]["compared"] == len(select_variables(reader))
    assert code == 0, [p for p in report["pairs"] if p["status"] != "equal"]
    for pair in report["pairs"]:  # paired by name: equal shapes and dtypes, equal bits
        assert pair["shape_a"] == pair["shape_b"] and pair["max_abs"] == 0


def test_unnamed_export_is_not_paired_by_guesswork() -> None:
    """Keras 3 `model.export()` keeps only `variables/N` and layer-less SavedVariable names;
    against a .keras nothing can be paired by name (that is --by-role's job), and diff says
    so instead of pairing by shape."""
    code, report = diff_json(
        str(fixture_path("seed_keras3_export")), str(fixture_path("seed_keras"))
    )
    assert code == 1 and report["pairs"] == []
    assert len(report["only_in_a"]) == len(report["only_in_b"]) == 10


# --- --by-role --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "count"),
    [
        ("seed_keras", "seed_keras3_export", 10),
        ("transformer_block_keras", "transformer_block_savedmodel", 16),
        ("mha_gate_keras", "mha_gate_savedmodel", 10),
    ],
)
def test_by_role_pairs_a_keras_file_with_its_anonymous_export(a: str, b: str, count: int) -> None:
    code, report = diff_json(str(fixture_path(a)), str(fixture_path(b)), "--by-role")
    assert code == 0, report["summary"]
    assert report["by_role"] is True and report["summary"]["compared"] == count
    assert {p["matched_by"] for p in report["pairs"]} == {"role"}
    assert all(p["max_abs"] == 0 for p in report["pairs"])
    query = next(p for p in report["pairs"] if p["role"] == "MultiHeadAttention#0 query.kernel")
    assert "query" in query["a"] and query["b_key"].startswith("variables/")


def _perturbed_savedmodel(src: Path, dst: Path, key: str, index: int, delta: float) -> Path:
    """A copy of a SavedModel with one float32 of one variable changed and its checksum
    recomputed (diff verifies checksums: a wrong one would exit 2, not 1)."""
    shutil.copytree(src, dst)
    prefix = dst / "variables" / "variables"
    entry = entry_of(prefix, key)
    (shard,) = (dst / "variables").glob("variables.data-*")
    data = bytearray(shard.read_bytes())
    values = np.frombuffer(data, np.float32, entry.size // 4, entry.offset).copy()
    values[index] += delta
    data[entry.offset : entry.offset + entry.size] = values.tobytes()
    shard.write_bytes(bytes(data))
    crc = mask(google_crc32c.value(values.tobytes()))

    def fix(k: bytes, e) -> None:
        if k == key.encode():
            e.crc32c = crc

    rewrite_index(prefix, edit_entry=fix)
    return dst


def test_by_role_perturbed_export_exits_1_and_names_the_pair(tmp_path: Path) -> None:
    key = "variables/4/.ATTRIBUTES/VARIABLE_VALUE"  # the value kernel (3, 2, 4)
    copy = _perturbed_savedmodel(
        fixture_path("seed_keras3_export"), tmp_path / "perturbed", key, 5, 0.25
    )
    code, report = diff_json(str(fixture_path("seed_keras")), str(copy), "--by-role")
    assert code == 1 and report["summary"]["compared"] == 10
    (bad,) = [p for p in report["pairs"] if p["status"] != "equal"]
    assert bad["a"] == "multi_head_attention/value/kernel" and bad["b_key"] == key
    assert bad["role"] == "MultiHeadAttention#0 value.kernel"
    assert bad["mismatched"] == 1 and bad["max_abs"] == pytest.approx(0.25, rel=1e-5)
    human = run_cli("diff", str(fixture_path("seed_keras")), str(copy), "--by-role")
    assert human.returncode == 1 and "value.kernel" in human.stdout


def test_match_by_role_counts_layers_per_class() -> None:
    """The i-th Dense pairs with the i-th Dense whatever the names; the rest by name."""
    a = [
        _info("enc/dense/kernel", shape=(4, 8), order=0),
        _info("enc/norm/gamma", shape=(8,), order=1),
        _info("enc/dense_1/kernel", shape=(8, 4), order=2),
        _info("step", shape=(), order=3),
    ]
    b = [
        _info("variables/0", shape=(4, 8), order=0),
        _info("variables/1", shape=(8, 4), order=1),
        _info("step", shape=(), order=2),
    ]
    roles_a = RoleMap(
        [
            Layer("dense", "Dense", {}, {"kernel": "enc/dense/kernel"}, "names"),
            Layer("norm", "LayerNormalization", {}, {"gamma": "enc/norm/gamma"}, "names"),
            Layer("dense_1", "Dense", {}, {"kernel": "enc/dense_1/kernel"}, "names"),
        ],
        [],
    )
    roles_b = RoleMap(
        [
            Layer("dense", "Dense", {}, {"kernel": "variables/0"}, "shape+order"),
            Layer("dense_1", "Dense", {}, {"kernel": "variables/1"}, "shape+order"),
        ],
        [],
    )
    matches, only_a, only_b = match_by_role(a, b, roles_a, roles_b)
    assert {(m.a.name, m.b.name, m.how, m.role) for m in matches} == {
        ("enc/dense/kernel", "variables/0", "role", "Dense#0 kernel"),
        ("enc/dense_1/kernel", "variables/1", "role", "Dense#1 kernel"),
        ("step", "step", "name", None),
    }
    assert [i.name for i in only_a] == ["enc/norm/gamma"] and only_b == []


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def test_perturbed_element_exits_1_and_names_the_tensor(tmp_path: Path, seed_arrays) -> None:
    arrays = {k: v.copy() for k, v in seed_arrays.items()}
    victim = "multi_head_attention/key/kernel"
    arrays[victim].flat[5] += 0.5
    b = _write_npz(tmp_path / "perturbed.npz", arrays)
    code, report = diff_json(str(fixture_path("seed_keras")), str(b))
    assert code == 1 and report["match"] is False
    bad = [p for p in report["pairs"] if p["status"] != "equal"]
    assert [p["a"] for p in bad] == [victim]
    (pair,) = bad
    assert pair["status"] == "differ" and pair["mismatched"] == 1
    assert pair["max_abs"] == pytest.approx(0.5, rel=1e-6)
    index = list(np.unravel_index(5, seed_arrays[victim].shape))
    assert pair["first_mismatch"]["index"] == index
    assert pair["first_mismatch"]["a"] == float(seed_arrays[victim].flat[5])
    human = run_cli("diff", str(fixture_path("seed_keras")), str(b))
    assert human.returncode == 1 and victim in human.stdout


def test_missing_tensor_exits_1_and_is_listed(tmp_path: Path, seed_arrays) -> None:
    arrays = dict(seed_arrays)
    del arrays["dense/bias"]
    b = _write_npz(tmp_path / "missing.npz", arrays)
    code, report = diff_json(str(fixture_path("seed_keras")), str(b))
    assert code == 1
    assert [t["name"] for t in report["only_in_a"]] == ["dense/bias"]
    assert report["only_in_b"] == []
    assert all(p["status"] == "equal" for p in report["pairs"])
    code, report = diff_json(str(b), str(fixture_path("seed_keras")))
    assert code == 1 and [t["name"] for t in report["only_in_b"]] == ["dense/bias"]
    human = run_cli("diff", str(fixture_path("seed_keras")), str(b))
    assert "only in A" in human.stdout and "dense/bias" in human.stdout


def test_shape_and_dtype_mismatch_reported(tmp_path: Path, seed_arrays) -> None:
    arrays = dict(seed_arrays)
    arrays["dense/kernel"] = seed_arrays["dense/kernel"].T  # (3, 1) -> (1, 3)
    arrays["dense/bias"] = seed_arrays["dense/bias"].astype(np.float64)
    b = _write_npz(tmp_path / "shapes.npz", arrays)
    code, report = diff_json(str(fixture_path("seed_keras")), str(b))
    assert code == 1
    status = {p["a"]: p for p in report["pairs"] if p["status"] != "equal"}
    assert set(status) == {"dense/kernel", "dense/bias"}
    kernel, bias = status["dense/kernel"], status["dense/bias"]
    assert kernel["status"] == "shape_mismatch"
    assert (kernel["shape_a"], kernel["shape_b"]) == ([3, 1], [1, 3])
    assert kernel["max_abs"] is None
    assert bias["status"] == "dtype_mismatch"
    assert (bias["dtype_a"], bias["dtype_b"]) == ("float32", "float64")
    assert bias["max_abs"] == 0.0  # the values themselves agree
    assert report["summary"]["shape_mismatch"] == 1 and report["summary"]["dtype_mismatch"] == 1


def test_tolerances(tmp_path: Path, seed_arrays) -> None:
    arrays = {k: v.copy() for k, v in seed_arrays.items()}
    name = "dense/kernel"
    ref = seed_arrays[name]
    arrays[name] = ref + np.float32(1e-3)
    b = _write_npz(tmp_path / "close.npz", arrays)
    a = str(fixture_path("seed_keras"))
    assert run_cli("diff", a, str(b)).returncode == 1
    assert run_cli("diff", a, str(b), "--atol", "1e-4").returncode == 1
    assert run_cli("diff", a, str(b), "--atol", "2e-3").returncode == 0
    # relative: |a - b| <= rtol * |b|, with b the second file
    worst = float(np.max(np.abs(ref - arrays[name]) / np.abs(arrays[name])))
    assert run_cli("diff", a, str(b), "--rtol", str(worst * 1.01)).returncode == 0
    assert run_cli("diff", a, str(b), "--rtol", str(worst * 0.5)).returncode == 1
    _code, report = diff_json(a, str(b), "--rtol", str(worst * 0.5))
    (pair,) = [p for p in report["pairs"] if p["a"] == name]
    assert pair["max_rel"] == pytest.approx(worst, rel=1e-6)
    assert 0 < pair["mismatched"] < pair["elements"] or pair["mismatched"] == pair["elements"]


def test_json_schema_is_stable(tmp_path: Path, seed_arrays) -> None:
    arrays = dict(seed_arrays)
    del arrays["dense/bias"]
    arrays["extra/thing"] = np.zeros(2, np.float32)
    b = _write_npz(tmp_path / "schema.npz", arrays)
    _, report = diff_json(str(fixture_path("seed_keras")), str(b))
    assert report["schema"] == SCHEMA == "ckpt-tool.diff/1"
    assert list(report) == [
        "schema",
        "a",
        "b",
        "atol",
        "rtol",
        "include_optimizer",
        "by_role",
        "match",
        "summary",
        "pairs",
        "only_in_a",
        "only_in_b",
    ]
    assert list(report["a"]) == ["path", "format"]
    assert list(report["summary"]) == [
        "compared",
        "equal",
        "differ",
        "shape_mismatch",
        "dtype_mismatch",
        "only_in_a",
        "only_in_b",
    ]
    assert list(report["pairs"][0]) == [
        "a",
        "b",
        "a_key",
        "b_key",
        "matched_by",
        "role",
        "status",
        "shape_a",
        "shape_b",
        "dtype_a",
        "dtype_b",
        "elements",
        "mismatched",
        "max_abs",
        "max_rel",
        "first_mismatch",
    ]
    assert list(report["only_in_a"][0]) == ["name", "key", "shape", "dtype"]
    assert [t["name"] for t in report["only_in_b"]] == ["extra/thing"]


@pytest.mark.parametrize(
    "args",
    [("missing.npz", "seed"), ("seed", "garbage.npz"), ("seed", "seed", "--atol", "-1")],
    ids=["missing-a", "garbage-b", "negative-atol"],
)
def test_bad_input_exits_2_with_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    seed = str(fixture_path("seed_keras"))
    argv = [seed if a == "seed" else str(tmp_path / a) if a.endswith(".npz") else a for a in args]
    result = run_cli("diff", *argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_include_optimizer(tmp_path: Path) -> None:
    a = str(fixture_path("seed_checkpoint"))
    out = tmp_path / "weights.npz"
    with open_reader(a) as reader:
        export_npz(reader, out)  # weights only
    assert run_cli("diff", a, str(out)).returncode == 0
    code, report = diff_json(a, str(out), "--include-optimizer")
    assert code == 1 and report["only_in_a"] and report["only_in_b"] == []


# --- matching ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("dense/kernel:0", "dense/kernel"),
        ("layers/dense/vars/0", "dense/vars/0"),
        ("model_weights/dense/dense/kernel:0", "dense/dense/kernel"),
        (
            "model/mha/_query_dense/kernel/.ATTRIBUTES/VARIABLE_VALUE",
            "model/mha/query_dense/kernel",
        ),
        ("mha/_query_dense/_kernel", "mha/query_dense/kernel"),
        ("plain", "plain"),
    ],
)
def test_normalize_name(raw: str, normal: str) -> None:
    assert normalize_name(raw) == normal


def _info(name: str, *, key: str | None = None, aliases=(), order=0, shape=(2,)) -> VariableInfo:
    return VariableInfo(
        key=key or name, name=name, shape=shape, dtype="float32", aliases=aliases, order=order
    )


def test_match_stages() -> None:
    a = [
        _info("dense/kernel", order=0),
        _info("mha/query_dense/kernel", aliases=("mha/query/kernel",), order=1),
        _info("norm/gamma:0", order=2),
        _info("only_a/x", order=3),
    ]
    b = [
        _info("model/mha/query/kernel", order=0),
        _info("model/dense/kernel", order=1),
        _info("model/norm/gamma", order=2),
        _info("model/only_b/y", order=3),
    ]
    matches, only_a, only_b = match_tensors(a, b)
    got = {(m.a.name, m.b.name): m.how for m in matches}
    assert got == {
        ("dense/kernel", "model/dense/kernel"): "model-prefix",
        ("mha/query_dense/kernel", "model/mha/query/kernel"): "model-prefix",
        ("norm/gamma:0", "model/norm/gamma"): "model-prefix",
    }
    assert [i.name for i in only_a] == ["only_a/x"]
    assert [i.name for i in only_b] == ["model/only_b/y"]


def test_match_exact_alias_and_normalized() -> None:
    a = [
        _info("x/kernel"),
        _info("y/kernel", key="raw/7"),
        _info("z/bias:0"),
        _info("w/gamma", aliases=("w/scale",)),
    ]
    b = [
        _info("z/bias"),
        _info("other", aliases=("raw/7",)),
        _info("x/kernel"),
        _info("w/scale", key="raw/8"),
    ]
    matches, only_a, only_b = match_tensors(a, b)
    assert {(m.a.name, m.b.name, m.how) for m in matches} == {
        ("x/kernel", "x/kernel", "name"),
        ("y/kernel", "other", "key"),
        ("z/bias:0", "z/bias", "normalized"),
        ("w/gamma", "w/scale", "alias"),
    }
    assert only_a == only_b == []


def test_match_vars_index_by_position() -> None:
    a = [_info("layers/dense/vars/1", order=1), _info("layers/dense/vars/0", order=0)]
    b = [_info("dense/bias", order=5), _info("dense/kernel", order=4)]
    matches, _only_a, _only_b = match_tensors(a, b)
    assert {(m.a.name, m.b.name, m.how) for m in matches} == {
        ("layers/dense/vars/0", "dense/kernel", "position"),
        ("layers/dense/vars/1", "dense/bias", "position"),
    }


def test_ambiguous_names_are_not_paired() -> None:
    a = [_info("block/kernel:0"), _info("block/kernel:1")]
    b = [_info("block/kernel")]
    matches, only_a, only_b = match_tensors(a, b)
    assert matches == [] and len(only_a) == 2 and len(only_b) == 1


# --- values --------------------------------------------------------------------------------


def test_compare_arrays_special_values() -> None:
    a = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0], np.float32)
    b = np.array([np.nan, np.inf, -np.inf, -0.0, 1.0], np.float32)
    d = compare_arrays(a, b)
    assert (d.mismatched, d.max_abs, d.max_rel) == (0, 0.0, 0.0)
    d = compare_arrays(np.array([np.nan, np.inf]), np.array([1.0, -np.inf]))
    assert d.mismatched == 2 and d.max_abs == np.inf
    d = compare_arrays(np.array([1.0, 0.5]), np.array([0.0, 0.5]), atol=1.0)
    assert d.mismatched == 0 and d.max_abs == 1.0 and d.max_rel == np.inf


def test_compare_arrays_integers_exactly() -> None:
    big = np.array([2**62, 2**53 + 1], np.int64)
    d = compare_arrays(big, big + np.array([0, 1]))
    assert d.mismatched == 1 and d.first_mismatch["index"] == [1]
    assert compare_arrays(big, big.copy()).mismatched == 0


def test_compare_arrays_bfloat16_strings_and_chunks(monkeypatch) -> None:
    x = np.arange(10, dtype=np.float32).astype(ml_dtypes.bfloat16)
    y = x.copy()
    y[7] = ml_dtypes.bfloat16(100)
    d = compare_arrays(x, y)
    assert d.mismatched == 1 and d.max_abs == 93.0 and d.first_mismatch["index"] == [7]
    s = compare_arrays(np.array([b"ab", b"c"], object), np.array([b"ab", b"d"], "S2"))
    assert s.mismatched == 1 and s.max_abs is None and s.first_mismatch["b"] == "d"
    monkeypatch.setattr("ckpt_tool.diff._CHUNK", 3)
    m = np.zeros((4, 5), np.float32)
    n = m.copy()
    n[3, 4] = 2.0
    d = compare_arrays(m, n)
    assert d.mismatched == 1 and d.first_mismatch["index"] == [3, 4] and d.max_abs == 2.0


@pytest.mark.parametrize(
    "dtypes", [("float32", "float32"), ("float64", "float32"), ("float16",) * 2]
)
def test_compare_arrays_finite_floats_as_widened_to_float64(dtypes, monkeypatch) -> None:
    """Chunks without NaN/Inf take a path with fewer temporaries; equal chunks are skipped:
    same counts and errors as the elementwise float64 rule written out here."""
    monkeypatch.setattr("ckpt_tool.diff._CHUNK", 256)
    rng = np.random.default_rng(7)
    a = rng.standard_normal(2000).astype(dtypes[0])
    b = a.astype(dtypes[1])
    b[1000:] = b[1000:] + rng.standard_normal(1000) * rng.choice([0.0, 1e-6, 1e-3, 1.0], 1000)
    b[1500:1510], a[1600:1605] = 0, 0
    for atol, rtol in [(0.0, 0.0), (1e-5, 1e-4)]:
        got = compare_arrays(a, b, atol=atol, rtol=rtol)
        xa, xb = a.astype(np.float64), b.astype(np.float64)
        err, mag = np.abs(xa - xb), np.abs(xb)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(err == 0, 0.0, err / mag)
        bad = err > atol + rtol * mag
        assert got.mismatched == int(bad.sum()) > 0
        assert got.max_abs == err.max() and got.max_rel == rel.max()
        assert got.first_mismatch["index"] == [int(np.argmax(bad))]
    if dtypes[0] == dtypes[1]:
        assert compare_arrays(a[:1000], b[:1000]).max_abs == 0.0


def test_diff_readers_api(tmp_path: Path) -> None:
    out = tmp_path / "e.npz"
    with open_reader(fixture_path("transformer_block_keras")) as reader:
        export_npz(reader, out)
    calls = []
    from contextlib import contextmanager

    @contextmanager
    def progress(pairs, nbytes):
        calls.append((pairs, nbytes))
        yield lambda n=1: calls.append("tick")

    with open_reader(fixture_path("transformer_block_keras")) as ra, open_reader(out) as rb:
        report = diff_readers(ra, rb, progress=progress)
    assert (
        report.ok and calls[0][0] == len(report.pairs) and calls.count("tick") == len(report.pairs)
    )


KERAS_HUB = json.loads((FIXTURES / "keras_hub" / "manifest.json").read_text())


@pytest.mark.parametrize(
    "entry",
    [e for e in KERAS_HUB if e["format"] != "keras" and not e.get("missing_weights")],
    ids=lambda e: e["id"],
)
def test_keras_hub_formats_pair_tensor_for_tensor(entry):
    """A keras-hub backbone's .keras, .weights.h5, export and checkpoint name their
    tensors alike: diff pairs every tensor and finds them equal."""
    keras_file = next(
        e for e in KERAS_HUB if e["model"] == entry["model"] and e["format"] == "keras"
    )
    result = run_cli("diff", str(FIXTURES / keras_file["path"]), str(FIXTURES / entry["path"]))
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr
    assert ", 0 only in A, 0 only in B" in result.stdout
