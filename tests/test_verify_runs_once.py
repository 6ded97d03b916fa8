"""verify runs each side once per input set, and the NumPy graph frees what it no longer
needs unless per-layer outputs are asked for."""

from __future__ import annotations

import numpy as np
import pytest

import ckpt_tool.verify as verify_module
from ckpt_tool.graph import _last_uses, build_graph, run_graph
from ckpt_tool.model import ModelOptions, open_model
from ckpt_tool.readers import open_reader
from ckpt_tool.verify import VerifyOptions, load_layer_weights, verify
from tests.support import fixture_path

FIXTURE = "transformer_block_keras"


class _Counting:
    """Counts the calls of the original model (TensorFlow, run for real)."""

    def __init__(self, original):
        self._original = original
        self.calls = 0

    def __call__(self, arrays):
        self.calls += 1
        return self._original(arrays)

    def __getattr__(self, name):
        return getattr(self._original, name)


@pytest.fixture
def counted(monkeypatch):
    counts = {"ours": 0, "theirs": []}
    real_run_graph, real_load = verify_module.run_graph, verify_module.load_original

    def run_graph_counted(*args, **kwargs):
        counts["ours"] += 1
        return real_run_graph(*args, **kwargs)

    def load_counted(*args, **kwargs):
        original = _Counting(real_load(*args, **kwargs))
        counts["theirs"].append(original)
        return original

    monkeypatch.setattr(verify_module, "run_graph", run_graph_counted)
    monkeypatch.setattr(verify_module, "load_original", load_counted)
    return counts


def test_each_side_runs_once_per_input_set(counted):
    scales = [0.5, 2.0]
    report = verify(str(fixture_path(FIXTURE)), VerifyOptions(scales=scales))
    assert report.passed
    sets = 1 + len(scales)
    assert len(report.runs) == sets
    assert counted["ours"] == sets
    assert [o.calls for o in counted["theirs"]] == [sets]


def test_per_layer_reuses_the_first_run(counted):
    report = verify(str(fixture_path(FIXTURE)), VerifyOptions(per_layer=True))
    assert report.passed and report.runs[0].layers
    assert counted["ours"] == 1


def _graph_and_weights():
    with open_reader(fixture_path(FIXTURE)) as reader:
        model = open_model(reader, ModelOptions())
        weights = load_layer_weights(reader, model.roles)
    return build_graph(model.config, model.roles), weights


def _refs(value):
    if isinstance(value, tuple):
        yield (value[0], value[1])
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_freeing_intermediates_gives_the_same_outputs():
    graph, weights = _graph_and_weights()
    width = weights["attention"]["output.bias"].shape[0]  # the block's model width
    inputs = [np.random.default_rng(0).standard_normal((2, 5, width)).astype(np.float32)]
    kept, layers = run_graph(graph, weights, inputs, dtype=np.float32)
    freed, none = run_graph(graph, weights, inputs, dtype=np.float32, keep_layers=False)
    assert len(layers) == len(graph.nodes) and none == {}
    for a, b in zip(kept, freed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_intermediate_is_freed_once_after_its_last_reader():
    graph, _ = _graph_and_weights()
    freed = _last_uses(graph)
    keys = [key for position in sorted(freed) for key in freed[position]]
    made = [(r[0], r[1]) for r in graph.inputs] + [(n.layer, n.node_index) for n in graph.nodes]
    outputs = {(r[0], r[1]) for r in graph.outputs}
    assert sorted(keys) == sorted(set(made) - outputs)  # each once, the outputs kept
    for position in freed:
        for later in graph.nodes[position + 1 :]:
            read = {key for value in [*later.args, *later.kwargs.values()] for key in _refs(value)}
            assert not read & set(freed[position])
