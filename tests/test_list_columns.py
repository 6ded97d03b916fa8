"""`list` made column by column (VariableTable, column_listing, column_text) prints what
the per-variable path prints, byte for byte, on generated TF1 indexes."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_tool import column_listing
from ckpt_tool.cli import cli
from ckpt_tool.readers.checkpoint import CheckpointReader
from tests.hostile_bundles import Entry, float_entry, string_scalar_entry, write_bundle
from tests.support import fixture_path

DT_DOUBLE, DT_INT32, DT_HALF = 2, 3, 19
BERT_TF1_VARIABLES = fixture_path("bert_tf1_savedmodel") / "variables" / "variables"

# Keys of every kind the TF1 rules tell apart, numbers of several widths (with leading
# zeros: equal numbers tie), printable punctuation, and names that sort differently
# by bytes and naturally.
FIXED_KEYS = [
    "dense/kernel",
    "dense/kernel/Adam",
    "dense/kernel/Adam_1",
    "dense/kernel/adam_m",
    "dense/bias/ExponentialMovingAverage",
    "global_step",
    "beta1_power",
    "optimizer/iter",
    "_optimizer/x",
    "save_counter",
    "metrics/acc/total",
    "layer_metrics/x",
    "x/9",
    "x/09",
    "x/009",
    "x/10",
    "a1b22c333",
    "a 1 b",
    "odd name!~{}",
    "n" + "7" * 40,
    "layer_2/Adam/kernel",  # Adam not last: a weight
    "metricsX/y",  # not the bookkeeping word itself
]


def _entry(rng: random.Random, key: str) -> Entry:
    shape = tuple(rng.choice([1, 2, 3]) for _ in range(rng.randrange(4)))
    values = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    kind = rng.randrange(5)
    if kind == 0:
        return float_entry(key, values)
    if kind == 4:
        return string_scalar_entry(key, key.encode() * rng.randrange(3))
    dtype, numpy_dtype = [(DT_DOUBLE, "<f8"), (DT_INT32, "<i4"), (DT_HALF, "<f2")][kind - 1]
    return Entry(key.encode(), dtype, shape, values.astype(numpy_dtype).tobytes())


def _keys(rng: random.Random, n: int) -> list[str]:
    keys = set(FIXED_KEYS)
    parts = ["layer", "block_", "w", "Adam", "adam_v", "metrics", "k", "007", "12", "3"]
    while len(keys) < n:
        depth = rng.randrange(1, 4)
        keys.add("/".join(rng.choice(parts) + str(rng.randrange(120)) for _ in range(depth)))
    return sorted(keys)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> list[str]:
    """Generated indexes, and TensorFlow's own TF1 BERT checkpoint (its `.meta` left
    out, so that its variables are in natural order) and SavedModel variables."""
    tf1 = tmp_path_factory.mktemp("bert_tf1")
    for source in fixture_path("bert_tf1").parent.glob("bert_model.ckpt.*"):
        if source.suffix != ".meta":
            shutil.copy(source, tf1 / source.name)
    out = [str(tf1 / "bert_model.ckpt"), str(BERT_TF1_VARIABLES)]
    for seed, n in [(0, 400), (1, 60), (2, len(FIXED_KEYS))]:
        rng = random.Random(seed)
        prefix = tmp_path_factory.mktemp(f"columns{seed}") / "ckpt"
        write_bundle(prefix, [_entry(rng, key) for key in _keys(rng, n)])
        out.append(str(prefix))
    empty = tmp_path_factory.mktemp("empty") / "ckpt"
    out.append(str(write_bundle(empty, [])))
    return out


def _list(*args: str) -> str:
    result = CliRunner().invoke(cli, ["list", *args], catch_exceptions=False)
    assert result.exit_code == 0
    return result.stdout


OPTIONS = [
    [],
    ["--all"],
    ["--sort", "name"],
    ["--sort", "size"],
    ["--all", "--sort", "size"],
    ["--filter", "*/w1*"],
    ["--all", "--filter", "*Adam*", "--sort", "name"],
    ["--filter", "[!a-k]*"],
    ["--filter", "?/9"],
    ["--filter", "bert/encoder/layer_[0-9]/*"],
    ["--filter", "no such name"],
]


@pytest.mark.parametrize("options", OPTIONS, ids=" ".join)
def test_column_path_prints_what_the_per_variable_path_prints(bundles, monkeypatch, options):
    taken = []
    build = column_listing.build_column_listing
    monkeypatch.setattr(
        "ckpt_tool.commands.list_cmd.build_column_listing",
        lambda *a, **k: taken.append(1) or build(*a, **k),
    )
    columns = [_list(prefix, *options) for prefix in bundles]
    assert len(taken) == len(bundles)  # the column path was taken
    assert "bert/encoder/layer_0" in columns[0] or "--filter" in options
    monkeypatch.setattr(CheckpointReader, "variable_table", lambda self: None)
    per_variable = [_list(prefix, *options) for prefix in bundles]
    assert columns == per_variable
    assert "hidden:" in per_variable[0] or "--all" in options


def test_table_rows_are_the_variables(bundles):
    for prefix in bundles:
        with CheckpointReader(prefix) as reader:
            table = reader.variable_table()
            variables = reader.variables()
        for info in variables:
            info.extra = {}
        assert table.infos() == variables


@pytest.mark.parametrize(
    "key",
    [
        "a/.ATTRIBUTES/VARIABLE_VALUE",  # TF2 keys name through the object graph
        "a/b/.OPTIMIZER_SLOT/c/m",
        "esc..aped",
        "esc.Slash",
        ".hidden",
        "caf\u00e9",
        "tab\there",
        "n" + "7" * 70,  # a number longer than the padded keys take
    ],
)
def test_keys_that_are_not_plain_names_take_the_per_variable_path(tmp_path, key):
    prefix = write_bundle(tmp_path / "ckpt", [float_entry(k, np.ones(2)) for k in ["a/b", key]])
    with CheckpointReader(prefix) as reader:
        assert reader.variable_table() is None
    (tmp_path / "plain").mkdir()
    plain = write_bundle(tmp_path / "plain" / "ckpt", [float_entry("a/b", np.ones(2))])
    with CheckpointReader(plain) as reader:
        assert reader.variable_table() is not None  # (the control)


def test_a_meta_graph_order_takes_the_per_variable_path(tmp_path):
    prefix = write_bundle(tmp_path / "ckpt", [float_entry("a/b", np.ones(2))])
    (tmp_path / "ckpt.meta").write_bytes(b"")
    with CheckpointReader(prefix) as reader:
        assert reader.variable_table() is None


def test_sizes_beyond_int64_total_exactly(tmp_path, monkeypatch):
    """Totals are summed as Python ints: 2**62-byte claims do not wrap around."""
    entries = [float_entry(f"w{i}", np.ones(1)) for i in range(3)]
    for e in entries:
        e.data = None
        e.size, e.offset = 2**62, 0
    prefix = write_bundle(tmp_path / "ckpt", entries)
    with CheckpointReader(prefix) as reader:
        listing = column_listing.build_column_listing(reader, reader.variable_table())
    assert listing.totals["bytes"] == 3 * 2**62
    columns = _list(str(prefix))
    monkeypatch.setattr(CheckpointReader, "variable_table", lambda self: None)
    assert columns == _list(str(prefix))
