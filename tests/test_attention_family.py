"""The attention family end to end: Luong and Bahdanau attention, gated attention, the
Synthesizers, masks and higher-rank attention. Each fixture verifies against Keras or
TensorFlow, a perturbed copy of its weights fails, and --per-layer names the layer."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

from ckpt_tool.errors import CkptToolError
from ckpt_tool.graph import build_graph, run_graph
from ckpt_tool.original import load_original
from ckpt_tool.readers import open_reader
from ckpt_tool.rolemap import SHAPE_ORDER
from ckpt_tool.roles import assign_roles
from ckpt_tool.verify import VerifyOptions, _settle_alternatives, load_layer_weights, verify
from tests.perturb import write_weights_npz
from tests.support import FIXTURES, fixture, fixture_path, fixtures_where, run_cli

SYNTHESIZER_LAYERS = str(FIXTURES / "synthesizer_layers.py")


def _options(fixture_id: str, tmp_path, **extra) -> VerifyOptions:
    """What a user passes for this fixture: the layer code of a custom layer, and the
    .keras twin's config for an export() SavedModel of a multi-input model."""
    entry = fixture(fixture_id)
    options = VerifyOptions(**extra)
    if entry.get("custom_objects"):
        options.custom_objects = [str(FIXTURES / entry["custom_objects"])]
    if entry["format"] != "keras" and len(entry["inputs"]) > 1:
        twin = next(f for f in fixtures_where(model=entry["model"], format="keras"))
        config = tmp_path / "config.json"
        with zipfile.ZipFile(FIXTURES / twin["path"]) as archive:
            config.write_bytes(archive.read("config.json"))
        options.config_file = str(config)
    return options


# (fixture, tensor to perturb (a substring of its name), layer --per-layer must name,
#  extra verify options). The SavedModels from export() have no Keras layers to probe.
PERTURBED = [
    ("luong_masked_keras", "attention/scale", "dot_attention", {}),
    ("luong_masked_keras", "concat_score_weight", "concat_attention", {}),
    ("luong_masked_keras", "embedding_1/embeddings", "query_embedding", {}),
    ("luong_masked_savedmodel", "key_proj/kernel", None, {}),
    ("attention_dot_keras", "dense_2/kernel", "key_proj", {}),
    ("attention_concat_keras", "concat_score_weight", "attention", {}),
    ("additive_attention_keras", "attention/scale", "attention", {}),
    ("mha_gate_keras", "_gate_dense/bias", "attention", {}),
    ("mha_gate_savedmodel", "attention/gate/kernel", None, {"ignore_names": True}),
    ("mha_masks_keras", "multi_head_attention/key_dense/kernel", "window_attention", {}),
    ("mha_masks_keras", "multi_head_attention_1/output_dense/bias", "explicit_attention", {}),
    ("mha_masks_savedmodel", "explicit_attention/value/bias", None, {}),
    ("mha_axes_keras", "query_dense/kernel", "attention", {}),
    ("mha_axes_savedmodel", "out_proj/bias", None, {}),
    ("dense_synthesizer_keras", "w2/1", "synthesizer", {}),
    ("dense_synthesizer_savedmodel", "synthesizer/w1/kernel", None, {"ignore_names": True}),
    ("random_synthesizer_keras", "random_synthesizer/0", "synthesizer", {}),
    ("random_synthesizer_savedmodel", "synthesizer/value/bias", None, {"ignore_names": True}),
]


@pytest.mark.parametrize(
    ("fixture_id", "tensor", "layer", "extra"),
    PERTURBED,
    ids=[f"{p[0]}-{p[1]}" for p in PERTURBED],
)
def test_fixture_verifies_and_perturbed_copy_fails(fixture_id, tensor, layer, extra, tmp_path):
    path = str(fixture_path(fixture_id))
    per_layer = layer is not None
    report = verify(path, _options(fixture_id, tmp_path, per_layer=per_layer, **extra))
    assert report.passed, [a for r in report.runs for a in r.outputs]
    for agreement in report.runs[0].outputs:  # float32 model, float64 NumPy: rounding only
        assert agreement.max_abs < 1e-5 and agreement.cosine > 0.999999
    if per_layer:
        assert report.runs[0].layers and report.runs[0].first_divergent is None

    copy = tmp_path / "perturbed.npz"
    write_weights_npz(fixture_id, copy, perturb=tensor)
    options = _options(fixture_id, tmp_path, per_layer=per_layer, weights=str(copy), **extra)
    report = verify(path, options)
    assert not report.passed
    assert report.runs[0].first_divergent == layer


def test_cli_exit_codes_and_per_layer_json(tmp_path):
    path = str(fixture_path("luong_masked_keras"))
    copy = tmp_path / "perturbed.npz"
    write_weights_npz("luong_masked_keras", copy, perturb="dense/kernel")
    result = run_cli("verify", path, "--weights", str(copy), "--per-layer", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"][0]["first_divergent_layer"] == "key_proj"


# --------------------------------------------------------------------------- Luong, Bahdanau


def test_luong_outputs_include_the_attention_scores(tmp_path):
    """return_attention_scores: the scores are an output of the model and compared."""
    report = verify(str(fixture_path("luong_masked_keras")), VerifyOptions())
    shapes = [a.shape for a in report.runs[0].outputs]
    assert shapes == [(2, 5, 8), (2, 5, 6), (2, 5, 8), (2, 5, 8)]  # out, scores, concat, additive
    scores = report.runs[0].outputs[1]
    assert scores.passed and scores.max_abs < 1e-6


def test_masks_are_exercised_and_needed(tmp_path):
    """Generated token ids are padded with zeros, so the Embedding(mask_zero=True) masks
    hide keys and zero query rows; NumPy without those masks disagrees with Keras."""
    path = fixture_path("luong_masked_keras")
    report = verify(str(path), VerifyOptions(precision="float32"))
    assert report.passed
    with open_reader(path) as reader:
        config = reader.model_config()
        roles = assign_roles(reader.variables(), config)
        weights = load_layer_weights(reader, roles)
    graph = build_graph(config, roles)
    original = load_original(path, "keras")
    from ckpt_tool.verify import make_inputs

    (_, arrays), *_ = make_inputs(
        original.input_specs,
        VerifyOptions(),
        {0: {"kind": "ids", "vocab": 12, "mask_zero": True}, 1: {"kind": "ids", "vocab": 12}},
    )
    assert (arrays[0] == 0).any()  # padding present
    expected = original(arrays)
    with_masks, _ = run_graph(graph, weights, arrays)
    configs = {n.layer: {**n.config, "mask_zero": False} for n in graph.nodes}
    without, _ = run_graph(graph, weights, arrays, configs=configs)
    assert np.allclose(with_masks[0], expected[0], atol=1e-5)
    assert not np.allclose(without[0], expected[0], atol=1e-3)


@pytest.mark.parametrize("mode", ["padding", "random", "none"])
def test_mask_modes_verify(mode):
    report = verify(str(fixture_path("mha_masks_keras")), VerifyOptions(mask=mode))
    assert report.passed
    assert f"masks {mode}" in report.runs[0].label


def test_user_inputs_with_masks():
    """--inputs: the fixture's own token ids (padded) and explicit attention mask."""
    inputs = FIXTURES / "mha_masks" / "inputs.npz"
    report = verify(str(fixture_path("mha_masks_keras")), VerifyOptions(inputs_file=str(inputs)))
    assert report.passed
    data = np.load(inputs)
    assert (data["token_ids"] == 0).any() and not data["attention_mask"].all()


# --------------------------------------------------------------------------- equivalences

EQUIVALENCES = [
    ("luong_projected", "mha_single_head", True),
    ("luong_projected_unscaled", "mha_single_head", False),
    ("concat_matching", "additive_uniform", True),
    ("concat_matching", "additive_ramp", False),
]


@pytest.mark.parametrize(("ours", "theirs", "same"), EQUIVALENCES)
def test_equivalences_proved_or_refuted(ours, theirs, same):
    """`verify A --against B`: A's weights in NumPy against B run by Keras."""
    options = VerifyOptions(against=str(fixture_path(theirs)), scales=[0.1, 10])
    report = verify(str(fixture_path(ours)), options)
    assert report.passed is same
    random_run = report.runs[0].outputs[0]
    if same:
        assert random_run.max_abs < 1e-5
    else:
        assert random_run.max_abs > 1e-2  # not rounding: a different function


# --------------------------------------------------------------------------- roles by shape and order


def _anonymous(infos):
    return [dataclasses.replace(i, name=i.key.split("/.ATTRIBUTES")[0], aliases=()) for i in infos]


@pytest.mark.parametrize(
    ("fixture_id", "class_name"),
    [
        ("dense_synthesizer_savedmodel", "DenseSynthesizer"),
        ("random_synthesizer_savedmodel", "RandomSynthesizer"),
        ("mha_gate_savedmodel", "MultiHeadAttention"),
    ],
)
def test_shape_and_order_roles_match_keras(fixture_id, class_name):
    """Names taken away, shapes and order give every weight the role Keras gives it."""
    with open_reader(fixture_path(fixture_id)) as reader:
        infos = reader.variables()
    role_map = assign_roles(_anonymous(infos))
    layer = role_map.layers[0]
    assert layer.class_name == class_name and layer.evidence == SHAPE_ORDER
    twin = fixture_path(fixture_id.replace("_savedmodel", "_keras"))
    model = keras.saving.load_model(twin, compile=False)
    keras_layer = next(lyr for lyr in model.layers if lyr.weights)
    by_key = role_map.by_key()
    weights = sorted((i for i in infos if i.kind == "weight"), key=lambda i: i.order)
    for info, variable in zip(weights, keras_layer.weights, strict=False):
        role = by_key[info.key][1]
        *parts, param = variable.path.split("/")[1:]
        spelled = {"logits": "random.logits", "attention_output": "output"}
        expected = spelled.get(param, ".".join([spelled.get(p, p) for p in parts] + [param]))
        assert role == expected, (info.key, variable.path)
    config = keras_layer.get_config()
    for key in ("seq_len", "units", "num_heads", "key_dim", "use_gate"):
        if key in layer.config and key in config:
            assert layer.config[key] == config[key]


def test_gate_and_value_are_told_apart_numerically():
    """Gate (D,N,Hv) and value (D,N,Hv) have one shape: start from the swapped reading
    and let the numbers against TensorFlow restore Keras's order."""
    path = fixture_path("mha_gate_savedmodel")
    with open_reader(path) as reader:
        role_map = assign_roles(reader.variables(), ignore_names=True)
        mha = role_map.layers[0]
        right = dict(mha.weights)
        wrong = {**right}
        for param in ("kernel", "bias"):
            wrong[f"gate.{param}"] = right[f"value.{param}"]
            wrong[f"value.{param}"] = right[f"gate.{param}"]
        mha.alternatives = [right] + [a for a in mha.alternatives if a != wrong]
        mha.weights = wrong
        weights = load_layer_weights(reader, role_map)
    graph = build_graph(None, role_map)
    original = load_original(path, "checkpoint")
    x = np.load(FIXTURES / "mha_gate" / "inputs.npz")["x"]
    configs = {layer.name: layer.config for layer in role_map.layers}
    _, settled = _settle_alternatives(
        graph, role_map, weights, configs, [x], original([x]), np.float64, VerifyOptions()
    )
    assert mha.weights == right
    assert any("gate.kernel" in line for line in settled)


def test_swapped_gate_and_value_fail(tmp_path):
    copy = tmp_path / "swapped.npz"
    write_weights_npz(
        "mha_gate_savedmodel", copy, swap=("attention/gate/kernel", "attention/value/kernel")
    )
    options = VerifyOptions(ignore_names=True, weights=str(copy))
    assert not verify(str(fixture_path("mha_gate_savedmodel")), options).passed


# --------------------------------------------------------------------------- custom layers


def test_custom_layer_needs_its_code(monkeypatch):
    registry = keras.saving.get_custom_objects()  # earlier tests may have imported it
    for name in [k for k in registry if k.endswith("Synthesizer")]:
        monkeypatch.delitem(registry, name)
    with pytest.raises(CkptToolError, match="--custom-objects") as err:
        verify(str(fixture_path("dense_synthesizer_keras")), VerifyOptions())
    assert err.value.exit_code == 2


def test_custom_layer_config_survives_in_keras_file():
    """The registered class keeps its settings in the .keras config; roles come from it."""
    with open_reader(fixture_path("dense_synthesizer_keras")) as reader:
        role_map = assign_roles(reader.variables(), reader.model_config())
    layer = role_map.layer("synthesizer")
    assert layer.class_name == "DenseSynthesizer"
    assert (layer.config["seq_len"], layer.config["units"]) == (6, 8)
    assert sorted(layer.weights) == sorted(
        ["w1.kernel", "w1.bias", "w2.kernel", "w2.bias", "value.kernel", "value.bias"]
    )
    assert layer.weights["w2.kernel"].endswith("w2/vars/0")
    assert SYNTHESIZER_LAYERS.endswith(fixture("dense_synthesizer_keras")["custom_objects"])
