"""Keras file readers (.keras, .weights.h5, legacy .h5) against Keras, tf-keras and h5py.

Every tensor the readers return is compared bit for bit with what Keras
itself loads from the same file and with what h5py reads from the dataset.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import keras
import ml_dtypes
import numpy as np
import pytest
import tf_keras

from ckpt_tool.errors import CkptToolError, CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.readers import keras_weight_names as kwn
from ckpt_tool.readers import zip_member
from ckpt_tool.readers.base import OPTIMIZER, WEIGHT
from ckpt_tool.readers.keras_h5 import KerasArchiveReader, LegacyH5Reader, WeightsH5Reader
from tests.support import fixture_custom_objects, fixture_path, fixtures_where

READERS = {cls.format_name: cls for cls in (KerasArchiveReader, WeightsH5Reader, LegacyH5Reader)}
KERAS_FIXTURES = [f for f in fixtures_where() if f["format"] in READERS]
FIXTURE_IDS = [f["id"] for f in KERAS_FIXTURES]


# --------------------------------------------------------------------------
# What Keras / tf-keras / h5py themselves read


def _numpy(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _keras3_model_for(fixture: dict):
    """The Keras 3 model holding a fixture's weights, loaded by Keras itself."""
    path = fixture_path(fixture["id"])
    if fixture["format"] == "keras":
        return keras.saving.load_model(
            path, safe_mode=True, custom_objects=fixture_custom_objects()
        )
    # A bare .weights.h5 has no architecture: load it into the same model's
    # .keras twin whose own values were zeroed first, so nothing leaks through.
    twins = fixtures_where(format="keras", model=fixture["model"])
    assert twins, f"no .keras fixture of model {fixture['model']!r} to load weights into"
    model = keras.saving.load_model(
        fixture_path(twins[0]["id"]), safe_mode=True, custom_objects=fixture_custom_objects()
    )
    opt = getattr(model, "optimizer", None)
    for v in [*model.weights, *(opt.variables if opt else [])]:
        v.assign(np.zeros(v.shape, dtype=v.dtype))
    model.load_weights(path)
    return model


@pytest.fixture(scope="module")
def reference():
    """fixture id -> {"weights": [(keras name, array)], "optimizer": [(name, array)] | None}."""
    cache: dict[str, dict] = {}

    def get(fixture: dict) -> dict:
        if fixture["id"] not in cache:
            path = fixture_path(fixture["id"])
            if fixture["format"] == "h5" and "tf-keras" in fixture["producer"]:
                model = tf_keras.models.load_model(path)
                weights = [(w.name, w.numpy()) for w in model.weights]
                opt = model.optimizer
                opt_vars = (
                    (opt.variables() if callable(opt.variables) else opt.variables) if opt else []
                )
                optimizer = [(v.name, v.numpy()) for v in opt_vars] or None
            else:
                model = _keras3_model_for(fixture)
                weights = [(w.path, _numpy(w)) for w in model.weights]
                opt = getattr(model, "optimizer", None)
                optimizer = (
                    [(None, _numpy(v)) for v in opt.variables] if opt and opt.built else None
                )
            cache[fixture["id"]] = {"weights": weights, "optimizer": optimizer}
        return cache[fixture["id"]]

    return get


def _h5_for(path: Path, fmt: str) -> h5py.File:
    """The HDF5 file as h5py opens it; for .keras, from the zip member's bytes."""
    if fmt == "keras":
        with zipfile.ZipFile(path) as zf:
            return h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r")
    return h5py.File(path, "r")


def _assert_bitwise(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape, what
    assert ours.dtype == theirs.dtype, what
    assert np.ascontiguousarray(ours).tobytes() == np.ascontiguousarray(theirs).tobytes(), what


def _open(fixture: dict):
    return READERS[fixture["format"]](fixture_path(fixture["id"]))


# --------------------------------------------------------------------------
# The proof: every tensor of every Keras fixture


def test_fixtures_are_present():
    formats = {f["format"] for f in KERAS_FIXTURES}
    assert formats == {"keras", "weights-h5", "h5"}


@pytest.mark.parametrize("fixture_id", FIXTURE_IDS)
def test_sniff_picks_exactly_this_reader(fixture_id):
    fixture = next(f for f in KERAS_FIXTURES if f["id"] == fixture_id)
    path = fixture_path(fixture_id)
    claimed = [name for name, cls in READERS.items() if cls.sniff(path)]
    assert claimed == [fixture["format"]]


# A custom layer's sub-layers are saved in attribute-name order (value, w1, w2), not in
# the order they were created, and nothing in the file records the latter.
_CUSTOM_SUBLAYER_ORDER = pytest.mark.xfail(
    strict=True, reason="custom sub-layer creation order is not stored in the file"
)


@pytest.mark.parametrize(
    "fixture_id",
    [
        pytest.param(i, marks=_CUSTOM_SUBLAYER_ORDER) if "synthesizer" in i else i
        for i in FIXTURE_IDS
    ],
)
def test_weights_equal_what_keras_loads(fixture_id, reference):
    fixture = next(f for f in KERAS_FIXTURES if f["id"] == fixture_id)
    ref = reference(fixture)
    with _open(fixture) as reader:
        weights = [v for v in reader.variables() if v.kind == WEIGHT]
        assert len(weights) == len(ref["weights"])
        for info, (keras_name, expected) in zip(weights, ref["weights"], strict=True):
            if fixture["format"] == "h5":
                assert info.extra["weight_name"] == keras_name  # tf-keras: "dense/kernel:0"
            else:  # Keras 3: the variable path, e.g. "attention/query/kernel"
                assert keras_name in (info.name, *info.aliases)
            assert info.shape == expected.shape and info.dtype == expected.dtype.name
            _assert_bitwise(reader.read(info.key), expected, info.name)


@pytest.mark.parametrize("fixture_id", FIXTURE_IDS)
def test_optimizer_state_equals_what_keras_loads(fixture_id, reference):
    fixture = next(f for f in KERAS_FIXTURES if f["id"] == fixture_id)
    expected = reference(fixture)["optimizer"]
    with _open(fixture) as reader:
        ours = [v for v in reader.variables() if v.kind == OPTIMIZER]
        if expected is None:  # a model saved without compiling: no optimizer state
            assert ours == []
            return
        assert len(ours) == len(expected)
        if fixture["format"] == "h5":  # tf-keras names them: match by name
            by_name = {v.extra["weight_name"]: v for v in ours}
            assert set(by_name) == {name for name, _ in expected}
            pairs = [(by_name[name], array) for name, array in expected]
        else:  # Keras 3 keeps optimizer.variables order in optimizer/vars/<i>
            pairs = list(zip(ours, [array for _, array in expected], strict=True))
        for info, array in pairs:
            _assert_bitwise(reader.read(info.key), array, info.name)


@pytest.mark.parametrize("fixture_id", FIXTURE_IDS)
def test_every_tensor_equals_h5py(fixture_id):
    fixture = next(f for f in KERAS_FIXTURES if f["id"] == fixture_id)
    path = fixture_path(fixture_id)
    with _open(fixture) as reader, _h5_for(path, fixture["format"]) as f:
        infos = reader.variables()
        datasets: list[str] = []
        f.visititems(
            lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None
        )
        if fixture["format"] != "h5":  # every dataset of a Keras 3 file is a variable
            assert sorted(v.key for v in infos) == sorted(datasets)
        for info in infos:
            raw = f[info.key][()]
            ours = reader.read(info.key)
            assert ours.shape == raw.shape == info.shape
            assert np.asarray(raw).tobytes() == np.ascontiguousarray(ours).tobytes()
            assert info.nbytes == np.asarray(raw).nbytes
        assert [v.order for v in infos] == list(range(len(infos)))
        assert len({v.name for v in infos}) == len(infos)


# --------------------------------------------------------------------------
# Names


def _names(reader) -> dict[str, tuple[int, ...]]:
    return {v.name: v.shape for v in reader.variables() if v.kind == WEIGHT}


def test_seed_keras_names_mha_sublayers_by_role(reference):
    fixture = fixtures_where(id="seed_keras")[0]
    model = keras.saving.load_model(fixture_path("seed_keras"), safe_mode=True)
    mha = next(
        layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)
    )
    with _open(fixture) as reader:
        names = _names(reader)
    subs = {"query": "query_dense", "key": "key_dense", "value": "value_dense"}
    for sub, attr in {**subs, "attention_output": "output_dense"}.items():
        layer = getattr(mha, attr)  # named as Keras names the weight: the sub-layer's name
        assert names[f"multi_head_attention/{sub}/kernel"] == tuple(layer.kernel.shape)
        assert names[f"multi_head_attention/{sub}/bias"] == tuple(layer.bias.shape)


def test_weights_h5_without_config_names_like_its_keras_twin():
    with WeightsH5Reader(fixture_path("seed_weights_h5")) as bare:
        bare_list = [(v.name, v.shape, v.kind) for v in bare.variables()]
    with KerasArchiveReader(fixture_path("seed_keras")) as full:
        full_list = [(v.name, v.shape, v.kind) for v in full.variables()]
    assert bare_list == full_list


def _keras_paths(fixture_id: str) -> list[str]:
    model = keras.saving.load_model(fixture_path(fixture_id), safe_mode=True)
    return [w.path for w in model.weights]


@pytest.mark.parametrize(
    "fixture_id",
    ["mha_nobias_keras", "mha_gate_keras", "attention_dot_keras", "attention_concat_keras",
     "additive_attention_keras"],
)  # fmt: skip
def test_names_are_the_keras_weight_paths(fixture_id):
    """Layers saved under auto-generated h5 groups (`layers/multi_head_attention`) are
    named as Keras names their weights (`attention/query/kernel`), in Keras's order; the
    h5 path stays an alias."""
    with KerasArchiveReader(fixture_path(fixture_id)) as reader:
        infos = [v for v in reader.variables() if v.kind == WEIGHT]
    assert [v.name for v in infos] == _keras_paths(fixture_id)


def test_mha_without_bias_shifts_no_index_into_bias():
    with KerasArchiveReader(fixture_path("mha_nobias_keras")) as reader:
        aliases = [v.aliases[0] for v in reader.variables() if v.kind == WEIGHT]
    assert aliases == [
        f"multi_head_attention/{s}/kernel" for s in kwn.MHA_SUBLAYERS if s != "gate_dense"
    ]


def test_mha_gate_sits_between_key_and_value():
    with KerasArchiveReader(fixture_path("mha_gate_keras")) as reader:
        names = [n.rsplit("/", 2)[1] for n in _names(reader)]
    assert names == [
        "query", "query", "key", "key", "gate", "gate", "value", "value",
        "attention_output", "attention_output",
    ]  # fmt: skip


def test_snake_case_matches_keras():
    from keras.src.utils import naming

    for class_name in [*kwn.SCHEMAS, "MultiHeadAttention", "Conv2DTranspose", "EinsumDense"]:
        assert kwn.to_snake_case(class_name) == naming.to_snake_case(class_name)


def test_weight_names_schema():
    assert kwn.weight_names("Dense", {"use_bias": False}, 1) == ["kernel"]
    assert kwn.weight_names("Dense", None, 2) == ["kernel", "bias"]
    assert kwn.weight_names("LayerNormalization", {"center": False}, 1) == ["gamma"]
    assert kwn.weight_names("LayerNormalization", {"scale": False}, 1) == ["beta"]
    assert kwn.weight_names("LayerNormalization", None, 1) is None  # gamma or beta: unknown
    assert kwn.weight_names("Attention", {"use_scale": False, "score_mode": "concat"}, 1) == [
        "concat_score_weight"
    ]
    assert kwn.weight_names("Dense", {"use_bias": True}, 3) == ["kernel", "bias", "2"]
    assert kwn.weight_names("Dense", {"use_bias": True}, 1) is None  # file disagrees
    assert kwn.weight_names("MyLayer", None, 2) is None


# --------------------------------------------------------------------------
# Files made here: configs that shift indices, bfloat16, order past 10 layers


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A Keras 3 model with flags that drop weights and a bfloat16 layer, saved 3 ways."""
    keras.utils.set_random_seed(1)
    d = tmp_path_factory.mktemp("keras_made")
    inp = keras.Input((5, 6))
    x = keras.layers.Dense(4, use_bias=False)(inp)
    x = keras.layers.LayerNormalization(center=False)(x)
    y = keras.layers.LayerNormalization(scale=False)(x)
    x = keras.layers.MultiHeadAttention(2, 3, use_gate=True)(x, y)
    x = keras.layers.Attention(score_mode="concat")([x, y])
    x = keras.layers.BatchNormalization(center=False)(x)
    x = keras.layers.EinsumDense("abc,cd->abd", (None, 3))(x)  # no bias_axes
    x = keras.layers.Dense(2, dtype="bfloat16")(x)
    model = keras.Model(inp, x)
    for v in model.weights:  # non-trivial values everywhere, bf16 included
        v.assign(keras.random.normal(v.shape, dtype=v.dtype))
    model.save(d / "made.keras")
    model.save_weights(d / "made.weights.h5")
    model.save(d / "made.h5")
    return {"dir": d, "model": model}


def test_config_flags_shift_indices(made):
    with KerasArchiveReader(made["dir"] / "made.keras") as reader:
        infos = [v for v in reader.variables() if v.kind == WEIGHT]
        assert [v.name for v in infos] == [w.path for w in made["model"].weights]
        names = [(v.aliases[0] if v.aliases else v.name) for v in infos]  # the file's paths
    assert "dense/kernel" in names and "dense/bias" not in names
    assert "layer_normalization/gamma" in names and "layer_normalization_1/beta" in names
    assert "batch_normalization/beta" not in names and "batch_normalization/moving_mean" in names
    assert "einsum_dense/kernel" in names and "einsum_dense/bias" not in names
    assert "attention/concat_score_weight" in names


def test_bfloat16_read_as_bfloat16_in_all_three_formats(made):
    expected = {w.path: _numpy(w) for w in made["model"].weights if w.dtype == "bfloat16"}
    assert len(expected) == 2
    for cls, name in [
        (KerasArchiveReader, "made.keras"),
        (WeightsH5Reader, "made.weights.h5"),
        (LegacyH5Reader, "made.h5"),  # Keras 3 writes no dtype attr here: bare 2-byte opaque
    ]:
        with cls(made["dir"] / name) as reader:
            got = {}
            for v in reader.variables():
                if v.dtype == "bfloat16" and v.kind == WEIGHT:
                    # Keras's weight path: the name, or an alias where the file's path names it
                    key = next((n for n in (v.name, *v.aliases) if n in expected), v.name)
                    got[key] = reader.read(v.key)
        assert set(got) == set(expected), name
        for key, array in got.items():
            assert array.dtype == ml_dtypes.bfloat16
            _assert_bitwise(array, expected[key], f"{name}: {key}")


def test_keras3_legacy_h5_names_have_no_tensor_suffix(made):
    with LegacyH5Reader(made["dir"] / "made.h5") as reader:
        infos = [v for v in reader.variables() if v.kind == WEIGHT]
        assert reader.model_config()["class_name"] == "Functional"
    assert [v.name for v in infos] == [w.path for w in made["model"].weights]


def test_order_follows_creation_past_ten_layers_without_config(tmp_path):
    model = keras.Sequential([keras.Input((3,))] + [keras.layers.Dense(3) for _ in range(12)])
    model.save_weights(tmp_path / "deep.weights.h5")
    with WeightsH5Reader(tmp_path / "deep.weights.h5") as reader:
        infos = reader.variables()
        # h5py lists dense, dense_1, dense_10, dense_11, dense_2, ...: the reader must not
        assert [reader.read(v.key).tobytes() for v in infos] == [
            _numpy(w).tobytes() for w in model.weights
        ]
        # the layers' own names, in creation order (Sequential paths add the model's name)
        paths = [w.path for w in model.weights]
        assert all(p.endswith(v.name) for v, p in zip(infos, paths, strict=True))


def test_nested_model_alias_is_the_keras_path(tmp_path):
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="inner")
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(inner(inp)))
    model.save(tmp_path / "nested.keras")
    with KerasArchiveReader(tmp_path / "nested.keras") as reader:
        infos = reader.variables()
    assert [v.name for v in infos] == [w.path for w in model.weights]
    assert [v.aliases[0] for v in infos][:2] == ["sequential/dense/kernel", "sequential/dense/bias"]


def test_deflated_keras_member_reads_the_same(tmp_path):
    """A zip tool may recompress the archive: the reader inflates in memory."""
    src = fixture_path("seed_keras")
    dst = tmp_path / "deflated.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
    with KerasArchiveReader(src) as a, KerasArchiveReader(dst) as b:
        assert a._member.stored and not b._member.stored
        assert a.variables() == b.variables()
        for v in a.variables():
            _assert_bitwise(b.read(v.key), a.read(v.key), v.name)
        assert a.model_config() == b.model_config()


def test_large_deflated_keras_member_inflates_to_an_unnamed_file(tmp_path, monkeypatch):
    """A compressed weights member above the memory budget's floor is inflated into an
    anonymous temporary file (no name to leave behind), still checked by the HDF5
    guards, and reads the same as the stored original."""
    from ckpt_tool.readers import hdf5_guard

    src = fixture_path("seed_keras")
    dst = tmp_path / "deflated.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    monkeypatch.setattr(zip_member, "INFLATE_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr("tempfile.tempdir", str(spool_dir))
    with KerasArchiveReader(src) as a, KerasArchiveReader(dst) as b:
        assert not isinstance(b._member.file, io.BytesIO)
        assert list(spool_dir.iterdir()) == []
        with hdf5_guard._image(b._member.file) as (image, start, end):
            size = zipfile.ZipFile(dst).getinfo("model.weights.h5").file_size
            assert image is not None and (start, end) == (0, size)
        assert a.variables() == b.variables()
        for v in a.variables():
            _assert_bitwise(b.read(v.key), a.read(v.key), v.name)
    assert list(spool_dir.iterdir()) == []


def test_legacy_split_attributes(tmp_path):
    """Long attribute lists are split as weight_names0, weight_names1 ... (tf-keras)."""
    from tf_keras.src.saving.legacy.hdf5_format import load_attributes_from_hdf5_group

    path = tmp_path / "split.h5"
    shutil.copy(fixture_path("seed_legacy_h5"), path)
    with LegacyH5Reader(path) as reader:
        before = [(v.name, v.key) for v in reader.variables()]
    with h5py.File(path, "r+") as f:
        for group in (f["model_weights"], f["model_weights/multi_head_attention"]):
            name = "layer_names" if "layer_names" in group.attrs else "weight_names"
            values = group.attrs[name]
            del group.attrs[name]
            for i, chunk in enumerate(np.array_split(values, 3)):
                group.attrs[f"{name}{i}"] = chunk
        tf_keras_list = load_attributes_from_hdf5_group(
            f["model_weights/multi_head_attention"], "weight_names"
        )
    with LegacyH5Reader(path) as reader:
        after = [(v.name, v.key) for v in reader.variables()]
    assert after == before
    mha = [k for _, k in after if k.startswith("model_weights/multi_head_attention/")]
    assert [k.split("/", 2)[2] for k in mha] == tf_keras_list


def test_legacy_weights_only_file(tmp_path):
    model = tf_keras.models.load_model(fixture_path("seed_legacy_h5"), compile=False)
    model.save_weights(tmp_path / "w.h5")
    assert LegacyH5Reader.sniff(tmp_path / "w.h5")
    assert not WeightsH5Reader.sniff(tmp_path / "w.h5")
    with LegacyH5Reader(tmp_path / "w.h5") as reader:
        infos = reader.variables()
        assert reader.model_config() is None
        assert [v.extra["weight_name"] for v in infos] == [w.name for w in model.weights]
        for info, w in zip(infos, model.weights, strict=True):
            _assert_bitwise(reader.read(info.key), w.numpy(), info.name)
    assert infos[0].name == "multi_head_attention/query/kernel"


def test_model_config_is_config_json():
    path = fixture_path("seed_keras")
    with zipfile.ZipFile(path) as zf:
        import json

        expected = json.loads(zf.read("config.json"))
    with KerasArchiveReader(path) as reader:
        assert reader.model_config() == expected
        assert reader.metadata["keras_version"].startswith("3.")


# --------------------------------------------------------------------------
# Bad input: always a CkptToolError that names the file


def _raises(exc_type, fn, path):
    with pytest.raises(exc_type) as info:
        fn()
    assert info.value.path == str(path)
    return info.value


def test_truncated_hdf5(tmp_path):
    for fixture_id, cls, name in [
        ("seed_weights_h5", WeightsH5Reader, "cut.weights.h5"),
        ("seed_legacy_h5", LegacyH5Reader, "cut.h5"),
    ]:
        data = fixture_path(fixture_id).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        assert cls.sniff(path)  # the right reader claims it, to say what is wrong

        def open_and_read(cls=cls, path=path):
            with cls(path) as reader:
                for v in reader.variables():
                    reader.read(v.key)

        _raises(CorruptFileError, open_and_read, path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    _raises(CorruptFileError, lambda: LegacyH5Reader(path), path)
    other = tmp_path / "text.h5"
    other.write_text("hello")
    assert not LegacyH5Reader.sniff(other) and not WeightsH5Reader.sniff(other)
    _raises(CorruptFileError, lambda: WeightsH5Reader(other), other)
    _raises(
        NotFoundError, lambda: WeightsH5Reader(tmp_path / "missing.h5"), tmp_path / "missing.h5"
    )


def test_hdf5_without_weights(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    assert LegacyH5Reader.sniff(path) and not WeightsH5Reader.sniff(path)
    err = _raises(UnsupportedFormatError, lambda: LegacyH5Reader(path), path)
    assert "no Keras weights" in err.message
    _raises(UnsupportedFormatError, lambda: WeightsH5Reader(path), path)


def test_object_and_vlen_datasets_are_refused(tmp_path):
    path = tmp_path / "strings.weights.h5"
    shutil.copy(fixture_path("seed_weights_h5"), path)
    with h5py.File(path, "r+") as f:
        del f["layers/dense/vars/1"]
        f.create_dataset("layers/dense/vars/1", data=["a", "bc"], dtype=h5py.string_dtype())
    with WeightsH5Reader(path) as reader:
        err = _raises(UnsupportedFormatError, reader.variables, path)
    assert "layers/dense/vars/1" in err.message


def test_unknown_key(tmp_path):
    with WeightsH5Reader(fixture_path("seed_weights_h5")) as reader:
        _raises(NotFoundError, lambda: reader.read("nope"), fixture_path("seed_weights_h5"))


def _rezip(src: Path, dst: Path, drop=(), replace: dict | None = None) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in drop:
                continue
            zout.writestr(
                item.filename, (replace or {}).get(item.filename, zin.read(item.filename))
            )


def test_bad_archives(tmp_path):
    src = fixture_path("seed_keras")

    bad_zip = tmp_path / "bad.keras"
    bad_zip.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    assert KerasArchiveReader.sniff(bad_zip)
    _raises(CorruptFileError, lambda: KerasArchiveReader(bad_zip), bad_zip)

    cut = tmp_path / "cut.keras"
    cut.write_bytes(src.read_bytes()[:-300])  # central directory gone
    _raises(CorruptFileError, lambda: KerasArchiveReader(cut), cut)

    no_weights = tmp_path / "no_weights.keras"
    _rezip(src, no_weights, drop=("model.weights.h5",))
    err = _raises(CorruptFileError, lambda: KerasArchiveReader(no_weights), no_weights)
    assert "model.weights.h5" in err.message

    npz_weights = tmp_path / "npz_weights.keras"
    _rezip(src, npz_weights, drop=("model.weights.h5",), replace={})
    with zipfile.ZipFile(npz_weights, "a") as zf:
        zf.writestr("model.weights.npz", b"PK")
    err = _raises(UnsupportedFormatError, lambda: KerasArchiveReader(npz_weights), npz_weights)
    assert "pickle" in err.message

    bad_json = tmp_path / "bad_json.keras"
    _rezip(src, bad_json, replace={"config.json": b"{not json"})
    err = _raises(CorruptFileError, lambda: KerasArchiveReader(bad_json), bad_json)
    assert "config.json" in err.message

    bad_h5 = tmp_path / "bad_h5.keras"
    _rezip(src, bad_h5, replace={"model.weights.h5": b"\x89HDF\r\n\x1a\nnope"})
    err = _raises(CorruptFileError, lambda: KerasArchiveReader(bad_h5), bad_h5)
    assert "model.weights.h5" in err.message


def test_member_size_limits(tmp_path):
    path = fixture_path("seed_keras")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.weights.h5")
        info.file_size = 17 << 30  # what a hostile central directory may declare
        err = _raises(
            CorruptFileError,
            lambda: zip_member.check_member(zf, info, path, zip_member.MAX_MEMBER_BYTES),
            path,
        )
        assert "model.weights.h5" in err.message
        _raises(CorruptFileError, lambda: zip_member.read_member(zf, "config.json", path, 10), path)


def test_every_error_is_a_ckpt_tool_error(tmp_path):
    """Random corruption of a real file never lets another exception escape."""
    data = bytearray(fixture_path("seed_weights_h5").read_bytes())
    rng = np.random.default_rng(0)
    for trial in range(20):
        corrupted = bytearray(data)
        for pos in rng.integers(0, len(data), size=20):
            corrupted[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"c{trial}.weights.h5"
        path.write_bytes(bytes(corrupted))
        try:
            with WeightsH5Reader(path) as reader:
                for v in reader.variables():
                    reader.read(v.key)
        except CkptToolError as e:
            assert e.path == str(path)


def test_open_reader_dispatches_on_structure_not_extension(tmp_path):
    from ckpt_tool.readers import open_reader

    renamed = {
        "seed_keras": ("model.zip", "keras"),
        "seed_weights_h5": ("weights.h5", "weights-h5"),
        "seed_legacy_h5": ("legacy.weights.h5", "h5"),
    }
    for fixture_id, (name, fmt) in renamed.items():
        path = tmp_path / name
        shutil.copy(fixture_path(fixture_id), path)
        reader = open_reader(path)
        try:
            assert reader.format_name == fmt, name
            assert reader.variables()
        finally:
            reader.close()
