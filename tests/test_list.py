"""`ckpt-tool list` end to end, against TensorFlow's own listing of the same files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

from ckpt_tool.listing import build_listing, tensor_stats
from ckpt_tool.readers import open_reader
from tests.support import fixture_ids, fixture_index, fixture_path, run_cli


def _tf_prefix(path):
    """What tf.train.list_variables accepts for a fixture path."""
    if (path / "saved_model.pb").exists():
        return str(path / "variables" / "variables")
    return str(path)


def _list_json(path, *args):
    with open_reader(path) as reader:
        listing = build_listing(reader, **dict(args))
        return listing.to_json()


@pytest.mark.parametrize("fixture_id", fixture_ids(format="checkpoint"))
def test_list_all_shows_every_key_tensorflow_lists(fixture_id):
    path = fixture_path(fixture_id)
    expected = dict(tf.train.list_variables(_tf_prefix(path)))
    data = _list_json(path, ("show_all", True))
    shown = {}
    for tensor in data["tensors"]:
        for key in (tensor["key"], *tensor["duplicates"]):
            shown[key] = tensor["shape"]
    assert set(shown) == set(expected)
    for key, shape in expected.items():
        assert shown[key] == list(shape), key


def test_seed_savedmodel_resolves_every_anonymous_key():
    """tf-keras SavedModel: `variables/0..9` plus optimizer slots and keras_api metrics."""
    path = fixture_path("seed_tfkeras_savedmodel")
    keys = [k for k, _ in tf.train.list_variables(_tf_prefix(path))]
    assert {f"variables/{n}/.ATTRIBUTES/VARIABLE_VALUE" for n in range(10)} <= set(keys)
    assert any(".OPTIMIZER_SLOT" in k for k in keys)
    assert any(k.startswith("keras_api/metrics") for k in keys)
    result = run_cli("list", str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    weights = {t["key"]: t["name"] for t in data["tensors"]}
    assert set(weights) == {f"variables/{n}/.ATTRIBUTES/VARIABLE_VALUE" for n in range(10)}
    for key, name in weights.items():
        assert name != key
        assert "multi_head_attention/" in name or "dense/" in name, name
    # optimizer slots and bookkeeping are hidden and counted
    assert data["hidden"].get("optimizer", 0) > 0
    assert data["hidden"].get("bookkeeping", 0) > 0
    assert data["totals"]["tensors"] == 10


def test_keras3_export_copies_are_folded_and_counted_once():
    path = fixture_path("seed_keras3_export")
    data = _list_json(path, ("show_all", True))
    copies = [k for t in data["tensors"] for k in t["duplicates"]]
    assert len(copies) == 10 and all(k.startswith("_all_variables/") for k in copies)
    reader = tf.train.load_checkpoint(_tf_prefix(path))
    for tensor in data["tensors"]:
        for copy in tensor["duplicates"]:
            np.testing.assert_array_equal(reader.get_tensor(copy), reader.get_tensor(tensor["key"]))
    weights = _list_json(path)
    assert weights["totals"]["bytes"] == sum(t["bytes"] for t in weights["tensors"])
    assert weights["totals"]["tensors"] == 10


def test_table_output_names_file_and_totals():
    result = run_cli("list", str(fixture_path("seed_keras")))
    assert result.returncode == 0, result.stderr
    assert "multi_head_attention/query/kernel" in result.stdout
    assert "10 tensors, 127 parameters" in result.stdout
    assert "--all shows them" in result.stdout


def test_filter_sort_and_tree():
    path = str(fixture_path("transformer_block_keras"))
    data = json.loads(run_cli("list", path, "--filter", "*norm*", "--json").stdout)
    assert data["tensors"] and all("norm" in t["name"] for t in data["tensors"])
    data = json.loads(run_cli("list", path, "--sort", "size", "--json").stdout)
    sizes = [t["bytes"] for t in data["tensors"]]
    assert sizes == sorted(sizes, reverse=True)
    data = json.loads(run_cli("list", path, "--sort", "name", "--json").stdout)
    names = [t["name"] for t in data["tensors"]]
    assert names == sorted(names)
    tree = run_cli("list", path, "--tree")
    assert tree.returncode == 0
    assert "attention_norm" in tree.stdout or "layer_normalization" in tree.stdout


@pytest.mark.parametrize("fixture_id", ["seed_keras3_export", "edge_dtypes", "edge_partitioned"])
def test_stats_match_numpy_on_tensorflow_values(fixture_id):
    path = fixture_path(fixture_id)
    reader = tf.train.load_checkpoint(_tf_prefix(path))
    result = run_cli("list", str(path), "--stats", "--json")
    assert result.returncode == 0, result.stderr
    for tensor in json.loads(result.stdout)["tensors"]:
        value = np.asarray(reader.get_tensor(tensor["key"]))
        if value.dtype == object or value.dtype.kind in "bSU":
            assert tensor["stats"] is None
            continue
        finite = np.abs(value) if value.dtype.kind == "c" else value
        finite = np.asarray(finite, dtype=np.float64).ravel()
        if finite.size == 0:
            continue
        stats = tensor["stats"]
        assert stats["min"] == pytest.approx(finite.min())
        assert stats["max"] == pytest.approx(finite.max())
        assert stats["mean"] == pytest.approx(finite.mean(), rel=1e-9, abs=1e-12)
        assert stats["std"] == pytest.approx(finite.std(), rel=1e-9, abs=1e-12)


def test_streamed_stats_count_nan_and_inf():
    values = np.array([1.0, np.nan, 3.0, np.inf, -np.inf, 5.0], dtype=np.float32)
    stats = tensor_stats(np.tile(values, 400_000))  # spans several chunks
    assert stats["nan"] == 400_000 and stats["inf"] == 800_000
    assert stats["mean"] == pytest.approx(3.0)
    assert stats["std"] == pytest.approx(np.std([1.0, 3.0, 5.0]))


@pytest.mark.parametrize("entry", fixture_index(), ids=lambda e: e["id"])
def test_every_fixture_lists(entry):
    result = run_cli("list", str(fixture_path(entry["id"])), "--all", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "ckpt-tool.list/1"
    assert data["format"] == entry["format"]
    assert data["totals"]["tensors"] > 0


def test_format_can_be_forced_and_errors_are_one_line(tmp_path):
    path = str(fixture_path("seed_weights_h5"))
    assert run_cli("list", path, "--format", "weights-h5").returncode == 0
    wrong = run_cli("list", path, "--format", "npz")
    assert wrong.returncode == 2
    assert "Traceback" not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    missing = run_cli("list", str(tmp_path / "nothing"))
    assert missing.returncode == 2
    assert str(tmp_path / "nothing") in missing.stderr
