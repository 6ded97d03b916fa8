"""The role parser on anonymous, named and config-backed fixtures, checked against what
Keras itself says each weight is."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

from ckpt_tool.graph import build_graph, chain_graph
from ckpt_tool.readers import open_reader
from ckpt_tool.rolemap import CONFIG, GRAPH, NAMES, SHAPE_ORDER
from ckpt_tool.roles import assign_roles
from ckpt_tool.verify import VerifyOptions, _settle_alternatives, load_layer_weights
from tests.support import fixture, fixture_ids, fixture_path, run_cli

# Keras 3 variable paths end in `<sub-layer>/<param>`; the role parser's names for them.
_KERAS_PART = {
    "query": "query",
    "key": "key",
    "value": "value",
    "gate": "gate",
    "attention_output": "output",
}


def _keras_role(path: str) -> str:
    """The role Keras's own variable path implies: `attention/query/kernel` -> query.kernel."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[-2] in _KERAS_PART:
        return f"{_KERAS_PART[parts[-2]]}.{parts[-1]}"
    return parts[-1]


def _roles_of(fixture_id: str):
    with open_reader(fixture_path(fixture_id)) as reader:
        infos = reader.variables()
        return infos, assign_roles(infos, reader.model_config()), reader.model_config()


def _weights_in_order(infos):
    return sorted((i for i in infos if i.kind == "weight"), key=lambda i: i.order)


@pytest.mark.parametrize(
    "fixture_id",
    [f for f in fixture_ids(format="keras") if not fixture(f).get("custom_objects")],
)
def test_config_backed_roles_match_keras(fixture_id):
    """Every weight of a .keras model gets the role and layer Keras's own paths give it."""
    infos, role_map, _ = _roles_of(fixture_id)
    model = keras.saving.load_model(fixture_path(fixture_id), compile=False, safe_mode=True)
    by_key = role_map.by_key()
    weights = _weights_in_order(infos)
    assert len(weights) == len(model.weights)
    for info, variable in zip(weights, model.weights, strict=True):
        layer, role = by_key[info.key]
        assert layer.evidence == CONFIG
        assert role == _keras_role(variable.path), (info.name, variable.path)
        assert layer.name == variable.path.split("/")[0]
    assert not role_map.unassigned


def test_anonymous_seed_parses_into_mha_and_dense():
    """Keras 3 model.export(): `variables/0..9` with no names at all."""
    infos, role_map, config = _roles_of("seed_keras3_export")
    assert config is None
    assert all(i.name.startswith("variables/") for i in _weights_in_order(infos))
    assert [layer.class_name for layer in role_map.layers] == ["MultiHeadAttention", "Dense"]
    assert all(layer.evidence == SHAPE_ORDER for layer in role_map.layers)
    # The settings the shapes imply are the ones the .keras twin's config states.
    reference = keras.saving.load_model(fixture_path("seed_keras"), compile=False)
    mha_config = reference.get_layer(index=1).get_config()
    mha = role_map.layers[0]
    assert mha.config["num_heads"] == mha_config["num_heads"] == 2
    assert mha.config["key_dim"] == mha_config["key_dim"] == 4
    expected = ["query", "key", "value", "output"]
    keys = [mha.weights[f"{part}.kernel"] for part in expected]
    assert keys == [f"variables/{n}/.ATTRIBUTES/VARIABLE_VALUE" for n in (0, 2, 4, 6)]
    assert role_map.layers[1].config["units"] == 1
    # Equal q/k/v shapes leave other orders open; verify settles them.
    assert mha.alternatives


def test_named_tf_keras_seed_uses_names():
    infos, role_map, _ = _roles_of("seed_tfkeras_savedmodel")
    names = {i.key: i.name for i in infos}
    for layer in role_map.layers:
        assert layer.evidence == NAMES
        for role, key in layer.weights.items():
            part, _, param = role.rpartition(".")
            spelled = {"output": "attention_output"}.get(part, part)
            assert names[key].endswith(f"{spelled}/{param}".lstrip("/")), (role, names[key])


def test_gate_comes_after_key_by_shape_and_order():
    """The export of a functional model keeps layer paths in its SavedVariable names;
    with them taken away, shape and order alone must put the gate after the key."""
    infos, _, _ = _roles_of("mha_gate_savedmodel")
    anonymous = [
        dataclasses.replace(i, name=i.key.split("/.ATTRIBUTES")[0], aliases=()) for i in infos
    ]
    role_map = assign_roles(anonymous)
    mha = next(layer for layer in role_map.layers if layer.class_name == "MultiHeadAttention")
    assert mha.evidence == SHAPE_ORDER
    assert mha.config["use_gate"] is True
    model = keras.saving.load_model(fixture_path("mha_gate_keras"), compile=False)
    weights = _weights_in_order(anonymous)
    by_key = role_map.by_key()
    for info, variable in zip(weights, model.weights, strict=True):
        if by_key[info.key][0] is mha:
            assert by_key[info.key][1] == _keras_role(variable.path)
    # gate and value have the same shape: the swap is an alternative for verify to try
    assert any(
        alt["gate.kernel"] == mha.weights["value.kernel"]
        and alt["value.kernel"] == mha.weights["gate.kernel"]
        for alt in mha.alternatives
    )


def test_ambiguity_only_numbers_settle():
    """Start from a wrong reading that the shapes allow (query and key exchanged) and
    let the numerical check against TensorFlow's output find the right one."""
    from ckpt_tool.original import load_original

    path = fixture_path("seed_keras3_export")
    with open_reader(path) as reader:
        role_map = assign_roles(reader.variables())
        mha = role_map.layers[0]
        right = dict(mha.weights)
        wrong = {
            **right,
            "query.kernel": right["key.kernel"],
            "key.kernel": right["query.kernel"],
            "query.bias": right["key.bias"],
            "key.bias": right["query.bias"],
        }
        mha.alternatives = [right] + [a for a in mha.alternatives if a != wrong]
        mha.weights = wrong
        weights = load_layer_weights(reader, role_map)
    graph = chain_graph(role_map)
    original = load_original(path, "checkpoint")
    x = np.load(fixture_path("seed_keras").parent.parent / "inputs.npz")["x"]
    expected = original([x])
    configs = {layer.name: layer.config for layer in role_map.layers}
    graph, settled = _settle_alternatives(
        graph, role_map, weights, configs, [x], expected, np.float64, VerifyOptions()
    )
    assert mha.weights == right
    assert any("query.kernel" in line for line in settled)


def test_list_roles_json_shows_role_layer_and_evidence():
    result = run_cli("list", str(fixture_path("seed_keras3_export")), "--roles", "--json")
    assert result.returncode == 0, result.stderr
    tensors = json.loads(result.stdout)["tensors"]
    assert [t["role"]["role"] for t in tensors[:2]] == ["query.kernel", "query.bias"]
    # The export's own serving graph decides (shape+order would agree here).
    assert {t["role"]["evidence"] for t in tensors} == {GRAPH}
    assert tensors[-1]["role"]["layer"] == "dense"


def test_roles_file_overrides(tmp_path):
    path = fixture_path("seed_keras3_export")
    roles_file = tmp_path / "roles.yaml"
    roles_file.write_text("variables/0: key.kernel\nvariables/2: query.kernel\n")
    with open_reader(path) as reader:
        role_map = assign_roles(reader.variables(), None, roles_file)
    mha = role_map.layers[0]
    assert mha.weights["key.kernel"].startswith("variables/0/")
    assert mha.weights["query.kernel"].startswith("variables/2/")
    assert mha.evidence == "roles file"


def test_functional_config_graph_has_residuals():
    _, role_map, config = _roles_of("transformer_block_keras")
    graph = build_graph(config, role_map)
    assert graph.source == "config"
    assert [n.class_name for n in graph.nodes].count("Add") == 2


def test_rng_state_is_bookkeeping_and_never_takes_a_role():
    """A Keras 3 export stores each Dropout's SeedGenerator state (int64, shape (2,))
    between the weights: bookkeeping, hidden by `list`, never a LayerNorm's gamma/beta."""
    path = fixture_path("dropout_block_savedmodel")
    with open_reader(path) as reader:
        infos = reader.variables()
    seeds = [i for i in infos if i.name.endswith("seed_generator_state")]
    assert len(seeds) == 2 and all(i.dtype == "int64" for i in seeds)
    assert {i.kind for i in seeds} == {"bookkeeping"}
    # Even offered as weights, integer tensors get no role.
    as_weights = [dataclasses.replace(i, kind="weight") for i in infos]
    role_map = assign_roles(as_weights)
    assigned = role_map.by_key()
    assert all(i.key not in assigned for i in seeds)
    norm = next(layer for layer in role_map.layers if layer.class_name == "LayerNormalization")
    dtypes = {i.key: i.dtype for i in infos}
    assert {dtypes[k] for k in norm.weights.values()} == {"float32"}
    assert {i.key for i in seeds} <= {i.key for i in role_map.unassigned}
