"""A SavedModel's serving graph tells roles, wiring and settings (fixtures/graph).

Each SavedModel is rebuilt from the roles and wiring its own graph states and compared
with TensorFlow's forward pass of the same SavedModel (verify loads it with TensorFlow).
Role checks compare with the variable names TensorFlow itself recorded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ckpt_tool.compare import compare
from ckpt_tool.graph import build_graph, run_graph
from ckpt_tool.model import ModelOptions, load_model_config, open_model
from ckpt_tool.original import load_original
from ckpt_tool.readers import open_reader
from ckpt_tool.rolemap import GRAPH
from ckpt_tool.roles import assign_roles
from ckpt_tool.verify import VerifyOptions, load_layer_weights, make_inputs, verify
from tests.support import FIXTURES, ROOT

GRAPH_FIXTURES = FIXTURES / "graph"
MODELS = ("key_first", "gate", "causal", "cross")
FORMS = ("export", "tfsave")
# MultiHeadAttention roles -> the sub-layer Keras names in the variable's own name.
_SUBLAYER = {"query": "query", "key": "key", "value": "value", "gate": "gate"}
_SUBLAYER["output"] = "attention_output"


def _path(model: str, form: str) -> str:
    return str(GRAPH_FIXTURES / f"{model}_{form}")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("model", MODELS)
def test_verifies_with_no_options(model: str, form: str) -> None:
    report = verify(_path(model, form), VerifyOptions())
    assert report.passed, [a.to_json() for run in report.runs for a in run.outputs]
    assert report.graph_source == "SavedModel serving graph"  # not a guessed chain
    assert {layer.evidence for layer in report.roles.layers} == {GRAPH}
    assert not report.roles.unassigned


@pytest.mark.parametrize(
    "fixture_dir",
    [
        "luong_masked/luong_masked_savedmodel",  # Keras masks, causal Luong, scores output
        "mha_masks/mha_masks_savedmodel",  # sliding window, mask input, scores output
        "attention_concat/attention_concat_savedmodel",
        "additive_attention/additive_attention_savedmodel",
    ],
)
def test_multi_input_attention_fixtures_need_no_config(fixture_dir: str) -> None:
    """These exited asking for --config; their serving graphs tell the wiring."""
    report = verify(str(FIXTURES / fixture_dir), VerifyOptions())
    assert report.passed, [a.to_json() for run in report.runs for a in run.outputs]
    assert {layer.evidence for layer in report.roles.layers} == {GRAPH}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("model", ("key_first", "gate"))
def test_roles_agree_with_tensorflows_names(model: str, form: str) -> None:
    """Creation order misleads shape+order here; the graph's roles match the names
    TensorFlow recorded for each variable."""
    with open_reader(_path(model, form)) as reader:
        roles = open_model(reader).roles
        infos = {info.key: info for info in reader.variables()}
        by_shapes = assign_roles(list(infos.values()), ignore_names=True)
    mha = next(layer for layer in roles.layers if layer.class_name == "MultiHeadAttention")
    for role, key in mha.weights.items():
        part, param = role.split(".")
        saved = infos[key].extra["saved_variable_name"]
        assert saved.endswith(f"{_SUBLAYER[part]}/{param}"), (role, saved)
    dense = {layer.name: layer for layer in roles.layers if layer.class_name == "Dense"}
    for name, layer in dense.items():
        assert infos[layer.weights["kernel"]].extra["saved_variable_name"].startswith(name)
    # Shapes and order alone read these files differently: the graph is what decides.
    assert by_shapes.by_key() != roles.by_key() or len(by_shapes.layers) != len(roles.layers)


def test_where_the_graph_overrules_other_evidence_the_roles_say_so(tmp_path) -> None:
    """Other evidence that swapped query and key (here a roles file) is overruled by the
    graph, one note per moved variable."""
    import json

    from ckpt_tool.graph_trace import disagreements, trace_model

    with open_reader(_path("gate", "export")) as reader:
        infos = reader.variables()
        traced = trace_model(reader, infos)
    mha = traced.roles.layer("attention")
    swapped = tmp_path / "roles.json"
    query, key = mha.weights["query.kernel"], mha.weights["key.kernel"]
    swapped.write_text(json.dumps({query: "key.kernel", key: "query.kernel"}))
    before = assign_roles(infos, roles_file=swapped)
    notes = disagreements(before, traced.roles)
    assert len(notes) == 2 and all(n.startswith("graph wins: ") for n in notes)
    assert f"graph wins: {query} is attention query.kernel; roles file said" in notes[0]


def test_wiring_of_a_two_input_cross_attention() -> None:
    with open_reader(_path("cross", "export")) as reader:
        model = open_model(reader)
    mha = model.roles.layer("cross_attention")
    assert "graph wiring: query from input 'tokens', key and value from input 'memory'" in (
        mha.notes
    )
    graph = build_graph(model.config, model.roles)
    assert graph.input_names == ["tokens", "memory"]  # the model's own input order


@pytest.fixture(scope="module")
def causal() -> dict:
    """The causal fixture opened once, with TensorFlow's outputs for one input set."""
    path = _path("causal", "export")
    with open_reader(path) as reader:
        model = open_model(reader)
        weights = load_layer_weights(reader, model.roles)
    original = load_original(Path(path), "checkpoint")
    inputs = make_inputs(original.input_specs, VerifyOptions(seed=3))[0][1]
    return {"model": model, "weights": weights, "inputs": inputs, "expected": original(inputs)}


def test_causal_mask_epsilon_and_activation_come_from_the_graph(causal: dict) -> None:
    model = causal["model"]
    mha = next(ly for ly in model.roles.layers if ly.class_name == "MultiHeadAttention")
    assert any("causal mask" in note for note in mha.notes)
    norm = next(ly for ly in model.roles.layers if ly.class_name == "LayerNormalization")
    assert norm.config["epsilon"] == pytest.approx(1e-5)
    dense = next(ly for ly in model.roles.layers if ly.class_name == "Dense")
    assert dense.config["activation"] == "relu"
    assert not dense.config_alternatives  # nothing left to guess

    def run(config: dict) -> np.ndarray:
        graph = build_graph(config, model.roles)
        actual, _ = run_graph(graph, causal["weights"], causal["inputs"])
        return actual[0]

    expected = causal["expected"][0]
    assert compare("out", run(model.config), expected).passed
    # Without the mask the graph stated, the rebuild attends to the future and fails.
    import copy

    unmasked = copy.deepcopy(model.config)
    for layer in unmasked["config"]["layers"]:
        for node in layer["inbound_nodes"]:
            node["kwargs"].pop("use_causal_mask", None)
    assert not compare("out", run(unmasked), expected).passed


def _run_list_roles(path: str) -> subprocess.CompletedProcess:
    """`list --roles` in a fresh process that must not import TensorFlow."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from ckpt_tool.cli import cli\n"
        f"result = CliRunner().invoke(cli, ['list', '--roles', {path!r}])\n"
        "print(result.output)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'torch') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(result.exit_code)\n"
    )
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_list_roles_shows_graph_evidence_mask_and_wiring_without_tensorflow() -> None:
    result = _run_list_roles(_path("causal", "tfsave"))
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert " graph " in result.stdout or "graph\n" in result.stdout
    assert "causal mask" in result.stdout
    assert "graph wiring: query from input" in result.stdout
    assert "epsilon 1e-05 from the graph" in result.stdout


def test_a_stripped_graph_falls_back_and_says_why(tmp_path) -> None:
    """saved_model.pb without its function library: roles from the other evidence,
    and one line saying why."""
    from tensorflow.core.protobuf import saved_model_pb2

    copy = tmp_path / "stripped"
    shutil.copytree(_path("cross", "export"), copy)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((copy / "saved_model.pb").read_bytes())
    del proto.meta_graphs[0].graph_def.library.function[:]
    (copy / "saved_model.pb").write_bytes(proto.SerializeToString())
    with open_reader(copy) as reader:
        roles = open_model(reader).roles
    assert len(roles.notes) == 1
    assert roles.notes[0].startswith("the serving graph was not used (")
    assert "\n" not in roles.notes[0]
    assert all(layer.evidence != GRAPH for layer in roles.layers)


def test_config_accepts_a_keras_file() -> None:
    keras_file = FIXTURES / "cross_attention" / "cross_attention_keras" / "model.keras"
    config = load_model_config(keras_file)
    assert config["class_name"] == "Functional"
    path = str(FIXTURES / "cross_attention" / "cross_attention_savedmodel")
    report = verify(path, VerifyOptions(config_file=str(keras_file)))
    assert report.passed
    assert {layer.evidence for layer in report.roles.layers} == {"config"}
    with open_reader(path) as reader:  # the same roles without it, from the graph
        graph_roles = open_model(reader, ModelOptions()).roles
    assert {k for k in graph_roles.by_key()} == {k for k in report.roles.by_key()}
