"""Google-BERT-style TF1 name-based checkpoints: roles by names, the number of heads
from bert_config.json or --num-heads, verify against BERT rebuilt as a TF1 graph, and
the Hugging Face names of every weight."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch

from ckpt_tool.families import load_json_config
from ckpt_tool.graph import build_graph, run_graph
from ckpt_tool.original import load_original
from ckpt_tool.readers import open_reader
from ckpt_tool.rolemap import NAMES
from ckpt_tool.roles import assign_roles
from ckpt_tool.verify import VerifyOptions, load_layer_weights, verify
from tests.perturb import write_weights_npz
from tests.support import FIXTURES, fixture_path, run_cli

CHECKPOINT = fixture_path("bert_tf1")
GRAPH = fixture_path("bert_tf1_savedmodel")
INPUTS = FIXTURES / "bert_tf1" / "inputs.npz"


@pytest.fixture(scope="module")
def bert():
    """The checkpoint's role map and weights, and the TF1 graph as TensorFlow runs it."""
    config = load_json_config(CHECKPOINT.parent / "bert_config.json")
    with open_reader(CHECKPOINT) as reader:
        infos = reader.variables()
        role_map = assign_roles(infos, None, family_config=config)
        weights = load_layer_weights(reader, role_map)
        arrays = {i.key: np.array(reader.read(i.key)) for i in infos if i.kind == "weight"}
    original = load_original(GRAPH, "checkpoint")
    data = np.load(INPUTS)
    feeds = {name: data[name] for name in ("input_ids", "token_type_ids", "attention_mask")}
    return {
        "config": config,
        "infos": infos,
        "roles": role_map,
        "weights": weights,
        "arrays": arrays,
        "original": original,
        "feeds": feeds,
    }


def _run_original(bert) -> dict[str, np.ndarray]:
    original = bert["original"]
    outputs = original([bert["feeds"][s.name] for s in original.input_specs])
    return dict(zip(original.output_names, outputs, strict=True))


def test_roles_by_names(bert):
    role_map = bert["roles"]
    classes = [layer.class_name for layer in role_map.layers]
    layers = bert["config"]["num_hidden_layers"]
    assert classes[0] == "BertEmbeddings" and classes[-1] == "BertPooler"
    assert classes.count("BertSelfAttention") == layers
    assert classes.count("LayerNormalization") == 2 * layers
    assert classes.count("Dense") == 3 * layers
    assert all(layer.evidence == NAMES for layer in role_map.layers)
    attention = role_map.layer("bert/encoder/layer_0/attention/self")
    assert attention.config["num_heads"] == bert["config"]["num_attention_heads"]
    assert attention.weights["key.kernel"] == "bert/encoder/layer_0/attention/self/key/kernel"
    # every weight has a role (global_step is bookkeeping, not a weight)
    assert [i.name for i in role_map.unassigned] == []
    assigned = set(role_map.by_key())
    assert {k for k in bert["arrays"] if bert["arrays"][k].dtype == np.float32} <= assigned


def test_without_config_the_head_count_is_unknown(bert, tmp_path):
    """(D, D) kernels fit every head count dividing D: say so; verify tries each count
    against the original, and takes --num-heads."""
    role_map = assign_roles(bert["infos"], None)
    attention = role_map.layer("bert/encoder/layer_0/attention/self")
    assert attention.config["num_heads"] is None
    assert any("--num-heads" in note for note in attention.notes)

    graph = tmp_path / "bert_savedmodel"
    shutil.copytree(GRAPH, graph)
    (graph / "bert_config.json").unlink()
    settled = verify(str(graph), VerifyOptions())
    assert settled.passed
    assert any("num_heads=2" in line for line in settled.settled), settled.settled
    assert verify(str(graph), VerifyOptions(num_heads=2)).passed
    wrong = verify(str(graph), VerifyOptions(num_heads=4))
    assert not wrong.passed  # the head count matters: 4 heads compute something else


def test_verify_tf1_graph_per_layer():
    report = verify(str(GRAPH), VerifyOptions(per_layer=True, scales=[0.1]))
    assert report.passed
    run = report.runs[0]
    assert [a.name for a in run.outputs] == ["sequence_output", "pooled_output"]
    names = [a.name for a in run.layers]
    # every mapped layer and residual add is found as a name scope of the TF1 graph
    assert names[0] == "bert/embeddings" and names[-1] == "bert/pooler/dense"
    assert "bert/encoder/layer_1/attention/output/add" in names
    assert len(names) == 1 + 2 * 8 + 1
    assert all(a.passed for a in run.layers)
    assert "masks padding" in run.label  # the attention mask pads some rows


def test_checkpoint_against_tf1_graph_and_perturbed_copy(tmp_path):
    """The bare name-based checkpoint, verified against the graph it belongs to."""
    report = verify(str(CHECKPOINT), VerifyOptions(against=str(GRAPH)))
    assert report.passed
    assert report.graph_source.startswith("BERT")
    copy = tmp_path / "perturbed.npz"
    write_weights_npz("bert_tf1", copy, perturb="layer_1/intermediate/dense/kernel")
    result = run_cli(
        "verify",
        str(CHECKPOINT),
        "--against",
        str(GRAPH),
        "--weights",
        str(copy),
        "--per-layer",
        "--json",
    )
    assert result.returncode == 1, result.stderr
    run = json.loads(result.stdout)["runs"][0]
    assert run["first_divergent_layer"] == "bert/encoder/layer_1/intermediate/dense"


def test_user_inputs(bert):
    report = verify(str(GRAPH), VerifyOptions(inputs_file=str(INPUTS)))
    assert report.passed


def test_gelu_is_the_tanh_form(bert):
    """bert_config says "gelu": Google's TF code means the tanh form; the erf form
    (Hugging Face's "gelu") disagrees with the TF1 graph beyond rounding."""
    graph = build_graph(None, bert["roles"])
    feeds = bert["feeds"]
    arrays = [feeds["input_ids"], feeds["token_type_ids"], feeds["attention_mask"]]
    expected = _run_original(bert)["sequence_output"]
    tanh_form, _ = run_graph(graph, bert["weights"], arrays)
    configs = {
        layer.name: {**layer.config, "activation": "gelu"}
        if layer.name.endswith("intermediate/dense")
        else layer.config
        for layer in bert["roles"].layers
    }
    erf_form, _ = run_graph(graph, bert["weights"], arrays, configs=configs)
    assert np.abs(tanh_form[0] - expected).max() < 1e-5
    assert np.abs(erf_form[0] - expected).max() > 1e-4


# --------------------------------------------------------------------------- Hugging Face


def _torch_export(tmp_path, *extra: str) -> dict[str, np.ndarray]:
    out = tmp_path / "bert_torch.npz"
    args = ("-o", str(out), "--force", "--layout", "torch", *extra)
    result = run_cli("export", str(CHECKPOINT), *args)
    assert result.returncode == 0, result.stderr
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if not k.startswith("__")}


def _bert_model(bert):
    from transformers import BertConfig, BertModel

    c = bert["config"]
    # Google's "gelu" is the tanh form; Hugging Face calls that "gelu_new".
    config = BertConfig(**{**c, "hidden_act": "gelu_new"})
    return BertModel(config).eval()


def test_torch_layout_loads_into_bert_model(bert, tmp_path):
    """`--layout torch` is the state_dict of transformers' BertModel itself: it loads
    with strict=True, and BertModel's forward computes what the TF1 graph computes."""
    arrays = _torch_export(tmp_path)
    model = _bert_model(bert)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    feeds = {k: torch.as_tensor(v, dtype=torch.long) for k, v in bert["feeds"].items()}
    with torch.no_grad():
        out = model(**feeds)
    expected = _run_original(bert)
    np.testing.assert_allclose(
        out.last_hidden_state.numpy(), expected["sequence_output"], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        out.pooler_output.numpy(), expected["pooled_output"], atol=1e-5, rtol=0
    )


def test_torch_prefix_names_bert_for_pretraining(bert, tmp_path):
    """--torch-prefix bert. gives the keys of BertForPreTraining's encoder part, as
    Hugging Face's load_tf_weights_in_bert names them."""
    bare = _torch_export(tmp_path)
    prefixed = _torch_export(tmp_path, "--torch-prefix", "bert.")
    assert set(prefixed) == {f"bert.{k}" for k in bare}
    model = _bert_model(bert)
    assert set(bare) == set(model.state_dict())
