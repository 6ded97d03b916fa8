"""NpzReader against NumPy's own np.load, on files NumPy writes here and on the fixtures."""

from __future__ import annotations

import json
import zipfile

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ckpt_tool.errors import CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.readers.base import BOOKKEEPING, WEIGHT
from ckpt_tool.readers.npz import MANIFEST_KEY, NpzReader, manifest_beside, parse_manifest
from tests.support import FIXTURES


def _bitwise(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "dense/kernel": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i8": rng.integers(-128, 127, (7,), dtype=np.int8),
        "u64": np.arange(3, dtype=np.uint64),
        "flag": np.array([True, False]),
        "c64": (rng.standard_normal(3) + 1j).astype(np.complex64),
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 3), np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32)),
        "big_endian": np.arange(4, dtype=">i4"),
    }


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_round_trip_equals_np_load(tmp_path, save):
    arrays = _arrays()
    path = tmp_path / "weights.npz"
    save(path, **arrays)
    assert NpzReader.sniff(path)
    with NpzReader(path) as reader, np.load(path, allow_pickle=False) as npz:
        infos = reader.variables()
        assert [v.key for v in infos] == list(arrays)  # archive order = insertion order
        assert [v.order for v in infos] == list(range(len(arrays)))
        for info in infos:
            ours = reader.read(info.key)
            _bitwise(ours, npz[info.key])
            assert info.name == info.key and info.kind == WEIGHT
            assert info.shape == ours.shape and info.dtype == ours.dtype.name
            assert info.nbytes == npz[info.key].nbytes
            np.testing.assert_array_equal(ours, arrays[info.key])
            if save is np.savez and ours.size:
                assert isinstance(ours, np.memmap) and not ours.flags.writeable


def test_single_npy_is_memory_mapped(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "kernel.npy"
    np.save(path, array)
    with NpzReader(path) as reader:
        [info] = reader.variables()
        assert info.key == "kernel" and info.shape == (3, 4)
        ours = reader.read("kernel")
    assert isinstance(ours, np.memmap)
    _bitwise(ours, np.load(path, allow_pickle=False))


def _manifest_bytes(doc) -> np.ndarray:
    return np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)


def test_bfloat16_as_uint16_bits_with_manifest(tmp_path):
    original = np.random.default_rng(1).standard_normal((4, 3)).astype(ml_dtypes.bfloat16)
    manifest = {
        "variables": [
            {
                "key": "w0",
                "name": "multi_head_attention/query/kernel",
                "dtype": "bfloat16",
                "role": {"layer": "multi_head_attention", "role": "query_kernel"},
                "source_key": "layers/multi_head_attention/query_dense/vars/0",
                "note": "kept as is",
            }
        ]
    }
    path = tmp_path / "export.npz"
    np.savez(path, w0=original.view(np.uint16), __manifest__=_manifest_bytes(manifest))
    with NpzReader(path) as reader:
        w0, meta = reader.variables()
        assert w0.name == "multi_head_attention/query/kernel"
        assert w0.dtype == "bfloat16" and w0.kind == WEIGHT
        assert w0.extra["role"] == {"layer": "multi_head_attention", "role": "query_kernel"}
        assert w0.extra["source_key"] == "layers/multi_head_attention/query_dense/vars/0"
        assert w0.extra["stored_dtype"] == "uint16" and w0.extra["note"] == "kept as is"
        assert w0.aliases == ("layers/multi_head_attention/query_dense/vars/0",)
        assert meta.key == MANIFEST_KEY and meta.kind == BOOKKEEPING
        _bitwise(reader.read("w0"), original)


def test_manifest_beside_the_archive(tmp_path):
    """`<archive>.manifest.json` (the export of a layout with its own loader) does what
    the `__manifest__` member does: bfloat16 from its bits, names, order."""
    original = np.random.default_rng(2).standard_normal((2, 3)).astype(ml_dtypes.bfloat16)
    path = tmp_path / "export.npz"
    np.savez(path, **{"a//w": original.view(np.uint16), "a//b": np.ones(3, np.float32)})
    doc = {
        "variables": [
            {"key": "a//b", "name": "bias", "order": 1},
            {"key": "a//w", "name": "weights", "dtype": "bfloat16", "order": 0},
        ]
    }
    manifest_beside(path).write_text(json.dumps(doc))
    with NpzReader(path) as reader:
        assert [(i.key, i.name, i.dtype) for i in reader.variables()] == [
            ("a//w", "weights", "bfloat16"),
            ("a//b", "bias", "float32"),
        ]
        _bitwise(reader.read("a//w"), original)
    manifest_beside(path).write_text("{oops")
    with pytest.raises(CorruptFileError, match="the manifest is not valid JSON") as info:
        NpzReader(path)
    assert info.value.path == str(manifest_beside(path))


def test_manifest_as_text_array_and_mapping(tmp_path):
    doc = {"variables": {"b": {"dtype": "bfloat16", "name": "x/b", "order": 0}}}
    original = np.arange(3).astype(ml_dtypes.bfloat16)
    path = tmp_path / "text.npz"
    np.savez(
        path,
        a=np.ones(2, np.float32),
        b=original.view(np.uint16),
        __manifest__=np.array(json.dumps(doc)),
    )
    with NpzReader(path) as reader:
        infos = reader.variables()
        assert infos[0].name == "x/b" and [v.order for v in infos] == [
            0,
            1,
            2,
        ]  # the manifest's order wins
        _bitwise(reader.read("b"), original)


def test_manifest_never_reinterprets_real_values(tmp_path):
    """A manifest dtype only applies to bit containers of the same width."""
    path = tmp_path / "float.npz"
    values = np.arange(3, dtype=np.float32)
    np.savez(path, a=values, __manifest__=_manifest_bytes([{"key": "a", "dtype": "bfloat16"}]))
    with NpzReader(path) as reader:
        assert reader.variables()[0].dtype == "float32"
        _bitwise(reader.read("a"), values)


def test_bfloat16_saved_by_numpy_without_manifest(tmp_path):
    original = np.arange(5).astype(ml_dtypes.bfloat16)
    path = tmp_path / "bf16.npz"
    np.savez(path, w=original)  # NumPy writes it as raw '|V2'
    with NpzReader(path) as reader:
        [info] = reader.variables()
        assert info.dtype == "bfloat16" and info.extra["dtype_inferred"] is True
        _bitwise(reader.read("w"), original)


def test_dunder_keys_are_bookkeeping(tmp_path):
    path = tmp_path / "book.npz"
    np.savez(path, w=np.ones(2), __step__=np.array(3))
    with NpzReader(path) as reader:
        kinds = {v.key: v.kind for v in reader.variables()}
    assert kinds == {"w": WEIGHT, "__step__": BOOKKEEPING}


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, w=np.ones(2), evil=np.array([{"a": 1}], dtype=object))
    assert NpzReader.sniff(path)
    with pytest.raises(UnsupportedFormatError) as err:
        NpzReader(path)
    assert "pickle" in err.value.message and "evil" in err.value.message
    assert err.value.path == str(path)

    npy = tmp_path / "pickle.npy"
    np.save(npy, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(UnsupportedFormatError, match="pickle"):
        NpzReader(npy)


def test_corrupt_inputs(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, a=np.arange(100.0), b=np.arange(10))
    data = good.read_bytes()

    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError) as err:
        NpzReader(cut)
    assert err.value.path == str(cut)

    npy = tmp_path / "cut.npy"
    np.save(npy, np.arange(100.0))
    npy.write_bytes(npy.read_bytes()[:-8])
    with pytest.raises(CorruptFileError, match="truncated"):
        NpzReader(npy)

    bad_manifest = tmp_path / "bad_manifest.npz"
    np.savez(bad_manifest, a=np.ones(1), __manifest__=np.frombuffer(b"{oops", np.uint8))
    with pytest.raises(CorruptFileError, match=MANIFEST_KEY):
        NpzReader(bad_manifest)

    lying = tmp_path / "lying.npz"  # header declares more data than the member holds
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(lying, "w") as zout:
        raw = zin.read("a.npy")
        zout.writestr("a.npy", raw[:-16])
    with pytest.raises(CorruptFileError, match="data bytes"):
        NpzReader(lying)

    with pytest.raises(NotFoundError):
        NpzReader(tmp_path / "missing.npz")
    with NpzReader(good) as reader, pytest.raises(NotFoundError):
        reader.read("nope")


def test_sniff_leaves_other_zips_alone(tmp_path):
    other = tmp_path / "thing.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("config.json", "{}")
    assert not NpzReader.sniff(other)
    text = tmp_path / "x.npz.txt"
    text.write_text("not numpy")
    assert not NpzReader.sniff(text)


def test_parse_manifest_rejects_entries_without_key(tmp_path):
    with pytest.raises(CorruptFileError):
        parse_manifest(_manifest_bytes({"variables": [{"name": "x"}]}), tmp_path)


def test_committed_npz_fixtures_equal_np_load():
    paths = sorted(FIXTURES.glob("**/*.npz"))
    assert paths, "no .npz under fixtures/"
    for path in paths:
        with NpzReader(path) as reader, np.load(path, allow_pickle=False) as npz:
            assert sorted(v.key for v in reader.variables()) == sorted(npz.files)
            for info in reader.variables():
                _bitwise(reader.read(info.key), npz[info.key])


_DTYPES = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i4", "|i1", "<u2", "|b1", "<c8"])


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_/]{0,12}", fullmatch=True),
        _DTYPES.flatmap(
            lambda dt: hnp.arrays(
                dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
            )
        ),
        min_size=1,
        max_size=4,
    ),
    compressed=st.booleans(),
)
def test_any_numeric_archive_round_trips(tmp_path_factory, arrays, compressed):
    path = tmp_path_factory.mktemp("h") / "a.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    with NpzReader(path) as reader:
        assert [v.key for v in reader.variables()] == list(arrays)
        for key, array in arrays.items():
            _bitwise(reader.read(key), array)


def test_open_reader_finds_npz_by_content(tmp_path):
    from ckpt_tool.readers import open_reader

    path = tmp_path / "weights.bin"
    np.savez(path.with_suffix(".npz"), w=np.ones(3, np.float32))
    path.with_suffix(".npz").rename(path)
    reader = open_reader(path)
    try:
        assert reader.format_name == "npz"
        assert [v.key for v in reader.variables()] == ["w"]
    finally:
        reader.close()
