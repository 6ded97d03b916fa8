"""TF Model Garden BERT encoders (`BertEncoder`, `BertEncoderV2`) as checkpoints and
SavedModels: roles by names, attribute paths or positions, the BertModel state_dict of
`export --layout torch`, `verify` against TensorFlow, and Keras configs with dict inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from ckpt_tool.graph import build_graph, run_graph
from ckpt_tool.layers import UnknownLayerError
from ckpt_tool.readers import open_reader
from ckpt_tool.rolemap import NAMES, SHAPE_ORDER, RoleMap
from ckpt_tool.roles import assign_roles
from tests.bundle_writer import copy_bundle, rewrite_index
from tests.support import FIXTURES, run_cli

MODEL_GARDEN = FIXTURES / "model_garden"
MANIFEST = json.loads((MODEL_GARDEN / "manifest.json").read_text())["fixtures"]
BY_ID = {entry["id"]: entry for entry in MANIFEST}
SAVED_MODELS = [e["id"] for e in MANIFEST if e["format"] != "checkpoint"]
CHECKPOINTS = [e["id"] for e in MANIFEST if e["format"] == "checkpoint"]

# Model Garden variable name (after any scope) -> (layer below the scope, role), as the
# README of the fixtures describes the encoders. `{i}` is the block.
_BLOCK = r"transformer/layer_(?P<i>\d+)/"
EXPECTED_ROLES = {
    r"word_embeddings/embeddings": ("embeddings", "word_embeddings"),
    r"position_embedding/embeddings": ("embeddings", "position_embeddings"),
    r"type_embeddings/embeddings": ("embeddings", "token_type_embeddings"),
    r"embeddings/layer_norm/(?P<w>gamma|beta)": ("embeddings", "LayerNorm.{w}"),
    _BLOCK + r"self_attention/(?P<p>query|key|value)/(?P<w>kernel|bias)": (
        "transformer/layer_{i}/self_attention",
        "{p}.{w}",
    ),
    _BLOCK + r"self_attention/attention_output/(?P<w>kernel|bias)": (
        "transformer/layer_{i}/self_attention",
        "output.{w}",
    ),
    _BLOCK + r"self_attention_layer_norm/(?P<w>gamma|beta)": (
        "transformer/layer_{i}/self_attention_layer_norm",
        "{w}",
    ),
    _BLOCK + r"(?P<part>intermediate|output)/(?P<w>kernel|bias)": (
        "transformer/layer_{i}/{part}",
        "{w}",
    ),
    _BLOCK + r"output_layer_norm/(?P<w>gamma|beta)": ("transformer/layer_{i}/output_layer_norm", "{w}"),
    r"pooler_transform/(?P<w>kernel|bias)": ("pooler_transform", "{w}"),
}  # fmt: skip
EXPECTED_CLASSES = {
    "embeddings": "BertEmbeddings",
    "self_attention": "MultiHeadAttention",
    "self_attention_layer_norm": "LayerNormalization",
    "intermediate": "Dense",
    "output": "Dense",
    "output_layer_norm": "LayerNormalization",
    "pooler_transform": "BertPooler",
}


def _path(fixture_id: str):
    return FIXTURES / BY_ID[fixture_id]["path"]


def _inputs(fixture_id: str):
    return FIXTURES / BY_ID[fixture_id]["inputs"]["npz"]


def _expected_role(mg_name: str) -> tuple[str, str]:
    """(layer, role) for a Model Garden variable name, scope dropped."""
    for pattern, (layer, role) in EXPECTED_ROLES.items():
        m = re.fullmatch(r"(?:.*/)?" + pattern, mg_name)
        if m is not None:
            groups = m.groupdict()
            return layer.format(**groups), role.format(**groups)
    raise AssertionError(f"no expected role for {mg_name}")


def _role_map(fixture_id: str, strip=None) -> tuple[RoleMap, dict]:
    with open_reader(_path(fixture_id)) as reader:
        infos = reader.variables()
    if strip is not None:
        infos = [strip(info) for info in infos]
    return assign_roles(infos), {info.key: info for info in infos}


def _check_roles(fixture_id: str, role_map: RoleMap, evidence: str) -> None:
    assert role_map.family == "model_garden_bert"
    assert [i.key for i in role_map.unassigned if i.kind == "weight"] == []
    placed = role_map.by_key()
    for variable in BY_ID[fixture_id]["variables"]:
        layer, role = placed[variable["key"]]
        want_layer, want_role = _expected_role(variable["name"])
        assert (layer.name.removeprefix(layer.scope or ""), role) == (want_layer, want_role)
        assert layer.class_name == EXPECTED_CLASSES[want_layer.rpartition("/")[2]]
        assert layer.evidence == evidence


# -- roles -------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture_id", [e["id"] for e in MANIFEST])
def test_every_weight_has_its_role(fixture_id):
    role_map, _ = _role_map(fixture_id)
    _check_roles(fixture_id, role_map, NAMES)
    attention = [la for la in role_map.layers if la.class_name == "MultiHeadAttention"]
    heads = BY_ID[fixture_id]["config"]["num_attention_heads"]
    hidden = BY_ID[fixture_id]["config"]["hidden_size"]
    assert [la.config["num_heads"] for la in attention] == [heads] * 2
    assert [la.config["key_dim"] for la in attention] == [hidden // heads] * 2


def _positional(info):
    """The tensor as a checkpoint without variable names would list it: its key only."""
    key = info.key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
    return dataclasses.replace(info, name=key, aliases=())


def _attribute_paths(info):
    """The tensor under its object path through the encoder's attributes only."""
    paths = tuple(a for a in info.aliases if re.search(r"encoder/_[a-z_]+(/|$)", a))
    return dataclasses.replace(info, name=paths[0] if paths else info.key, aliases=paths)


def test_positional_keys_give_the_same_roles_by_structure():
    """BertEncoder's `encoder/layer_with_weights-N/...`: blocks by their attributes in
    layer order, tables and norms by their place before the blocks, the pooler after."""
    role_map, infos = _role_map("mg_bert_encoder_checkpoint", _positional)
    assert all(
        "layer_with_weights" in info.name for info in infos.values() if info.kind == "weight"
    )
    _check_roles("mg_bert_encoder_checkpoint", role_map, SHAPE_ORDER)


def test_attribute_paths_give_the_same_roles():
    role_map, _ = _role_map("mg_bert_encoder_checkpoint", _attribute_paths)
    _check_roles("mg_bert_encoder_checkpoint", role_map, NAMES)


def test_list_roles_shows_the_family_roles():
    result = run_cli("list", str(_path("mg_bert_encoder_v2_checkpoint")), "--roles", "--json")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for role in ("word_embeddings", "position_embeddings", "token_type_embeddings", "query.kernel"):
        assert f'"{role}"' in text


# -- PyTorch -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_bert():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    def make(hf_config: dict):
        config = transformers.BertConfig(**{**hf_config, "hidden_act": "gelu_new"})
        return transformers.BertModel(config, add_pooling_layer=True).eval()

    return torch, make


@pytest.mark.parametrize("fixture_id", [e["id"] for e in MANIFEST])
def test_torch_export_loads_into_bert_model_and_matches(fixture_id, tmp_path, torch_bert):
    torch, make = torch_bert
    entry = BY_ID[fixture_id]
    out = tmp_path / "torch.npz"
    result = run_cli("export", str(_path(fixture_id)), "-o", str(out), "--layout", "torch")
    assert result.returncode == 0, result.stderr
    with np.load(out) as data:
        state = {k: torch.from_numpy(np.array(data[k])) for k in data.files if k != "__manifest__"}
    with open_reader(_path(fixture_id)) as reader:  # each tensor as the manifest converts it
        for variable in entry["variables"]:
            array = np.array(reader.read(variable["key"]))
            if variable["reshape"]:
                array = array.reshape(variable["reshape"])
            if variable["transpose"]:
                array = array.T
            np.testing.assert_array_equal(state[variable["hf"]].numpy(), array)
    model = make(entry["hf_equivalent"]["config"])
    model.load_state_dict(state, strict=True)
    data = np.load(_inputs(fixture_id))
    with torch.no_grad():
        output = model(
            input_ids=torch.from_numpy(data["input_word_ids"]).long(),
            token_type_ids=torch.from_numpy(data["input_type_ids"]).long(),
            attention_mask=torch.from_numpy(data["input_mask"]).long(),
        )
    np.testing.assert_allclose(
        output.last_hidden_state.numpy(), data["expected_sequence_output"], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        output.pooler_output.numpy(), data["expected_pooled_output"], atol=1e-5, rtol=0
    )


# -- verify --------------------------------------------------------------------------------


def _verify_json(*args: str) -> tuple[int, dict | None, str]:
    result = run_cli("verify", *args, "--json")
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result.returncode, report, result.stderr


def _assert_passed(report: dict) -> None:
    assert report["passed"]
    outputs = report["runs"][0]["outputs"]
    assert [o["name"] for o in outputs] == ["sequence_output", "pooled_output"]
    assert all(o["max_abs"] < 1e-5 for o in outputs)


@pytest.mark.parametrize("fixture_id", SAVED_MODELS)
def test_verify_saved_model_with_tensorflow_alone(fixture_id):
    code, report, stderr = _verify_json(str(_path(fixture_id)))
    assert code == 0, stderr
    _assert_passed(report)
    assert "official" not in stderr


@pytest.mark.parametrize(
    "checkpoint, saved_model",
    [
        ("mg_bert_encoder_checkpoint", "mg_bert_encoder_keras_saved_model"),
        ("mg_bert_encoder_v2_checkpoint", "mg_bert_encoder_v2_tf_saved_model"),
    ],
)
def test_verify_checkpoint_against_its_saved_model(checkpoint, saved_model):
    code, report, stderr = _verify_json(
        str(_path(checkpoint)),
        "--against",
        str(_path(saved_model)),
        "--inputs",
        str(_inputs(checkpoint)),
    )
    assert code == 0, stderr
    _assert_passed(report)


def test_bare_checkpoint_alone_says_what_to_do():
    result = run_cli("verify", str(_path("mg_bert_encoder_v2_checkpoint")))
    assert result.returncode == 2
    assert "--against" in result.stderr
    assert "Traceback" not in result.stderr


def _swap_entries(prefix, key_a: str, key_b: str) -> None:
    """Make the bundle's two (equally shaped) tensors trade places."""
    entries = {}

    def collect(key, entry):
        entries[key.decode()] = (entry.offset, entry.crc32c)

    rewrite_index(prefix, edit_entry=collect)

    def swap(key, entry):
        other = {key_a: key_b, key_b: key_a}.get(key.decode())
        if other is not None:
            entry.offset, entry.crc32c = entries[other]

    rewrite_index(prefix, edit_entry=swap)


def test_weights_with_query_and_key_swapped_fail(tmp_path):
    checkpoint = _path("mg_bert_encoder_checkpoint")
    copy = copy_bundle(checkpoint, tmp_path / "ckpt")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt"\n')
    by_name = {v["name"]: v["key"] for v in BY_ID["mg_bert_encoder_checkpoint"]["variables"]}
    block = "transformer/layer_1/self_attention"
    _swap_entries(copy, by_name[f"{block}/query/kernel"], by_name[f"{block}/key/kernel"])
    saved_model = str(_path("mg_bert_encoder_tf_saved_model"))
    code, report, stderr = _verify_json(saved_model, "--weights", str(copy))
    assert code == 1, stderr
    assert not report["passed"]
    code, report, stderr = _verify_json(saved_model, "--weights", str(checkpoint))
    assert code == 0, stderr  # the untouched checkpoint: the swap is what fails


def test_npz_with_query_and_key_swapped_fails(tmp_path):
    with open_reader(_path("mg_bert_encoder_v2_checkpoint")) as reader:
        infos = [i for i in reader.variables() if i.kind == "weight"]
        arrays = {i.name: np.array(reader.read(i.key)) for i in infos}
    block = "bert_encoder_v2/transformer/layer_0/self_attention"
    query, key = f"{block}/query/kernel", f"{block}/key/kernel"
    arrays[query], arrays[key] = arrays[key], arrays[query]
    np.savez(tmp_path / "swapped.npz", **arrays)
    code, _, stderr = _verify_json(
        str(_path("mg_bert_encoder_v2_keras_saved_model")),
        "--weights",
        str(tmp_path / "swapped.npz"),
    )
    assert code == 1, stderr


# -- Keras configs with dict inputs and outputs -----------------------------------------------


def test_graph_from_a_config_with_dict_inputs_and_outputs():
    """The wrapper around BertEncoderV2: dict `input_layers`, `output_layers` and a dict
    inbound node. Built in Keras's (sorted key) order; running it asks for a kernel the
    custom layer has none of: a CkptToolError, not a KeyError."""
    with open_reader(_path("mg_bert_encoder_v2_keras_saved_model")) as reader:
        config = reader.model_config()
    graph = build_graph(config, RoleMap([], []))
    assert graph.input_names == ["input_mask", "input_type_ids", "input_word_ids"]
    assert graph.outputs == [("bert_encoder_v2", 0, 2), ("bert_encoder_v2", 0, 3)]
    (node,) = graph.nodes
    assert node.args == [[(name, 0, 0) for name in graph.input_names]]
    with pytest.raises(UnknownLayerError):
        run_graph(graph, {}, [np.ones((1, 4), np.int32)] * 3)


def test_verify_functional_model_with_dict_inputs_and_outputs(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    a = tf_keras.Input((4,), name="a")
    b = tf_keras.Input((4,), name="b")
    total = tf_keras.layers.Add(name="add")([a, b])
    outputs = {
        "y": tf_keras.layers.Dense(3, name="dy")(total),
        "z": tf_keras.layers.Dense(2, name="dz")(a),
    }
    tf_keras.Model(inputs={"b": b, "a": a}, outputs=outputs).save(tmp_path / "dict.h5")
    result = run_cli("verify", str(tmp_path / "dict.h5"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_verify_runs_without_model_garden():
    """TensorFlow alone runs the SavedModel: `official` is never imported."""
    from ckpt_tool.verify import VerifyOptions, verify

    report = verify(str(_path("mg_bert_encoder_keras_saved_model")), VerifyOptions())
    assert report.passed
    assert "official" not in sys.modules
