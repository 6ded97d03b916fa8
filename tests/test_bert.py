"""Google-BERT-style TF1 name-based checkpoints: roles by names, the number of heads
from bert_config.json or --num-heads, verify against BERT rebuilt as a TF1 graph, and
the Hugging Face names of every weight."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch
import torch.nn.functional as F

from ckpt_tool.bert import (
    find_bert_config,
    hf_bert_is_linear_weight,
    hf_bert_state_dict,
    hf_bert_state_dict_names,
    load_bert_config,
)
from ckpt_tool.errors import UsageError
from ckpt_tool.graph import build_graph, run_graph
from ckpt_tool.original import load_original
from ckpt_tool.readers import open_reader
from ckpt_tool.roles import NAMES, assign_roles
from ckpt_tool.verify import VerifyOptions, load_layer_weights, verify
from tests.perturb import write_weights_npz
from tests.support import FIXTURES, fixture_path, run_cli

CHECKPOINT = fixture_path("bert_tf1")
GRAPH = fixture_path("bert_tf1_savedmodel")
INPUTS = FIXTURES / "bert_tf1" / "inputs.npz"


@pytest.fixture(scope="module")
def bert():
    """The checkpoint's role map and weights, and the TF1 graph as TensorFlow runs it."""
    config = load_bert_config(find_bert_config(CHECKPOINT))
    with open_reader(CHECKPOINT) as reader:
        infos = reader.variables()
        role_map = assign_roles(infos, None, bert_config=config)
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
    """(D, D) kernels fit every head count dividing D: say so, and take --num-heads."""
    role_map = assign_roles(bert["infos"], None)
    attention = role_map.layer("bert/encoder/layer_0/attention/self")
    assert attention.config["num_heads"] is None
    assert any("--num-heads" in note for note in attention.notes)

    graph = tmp_path / "bert_savedmodel"
    shutil.copytree(GRAPH, graph)
    (graph / "bert_config.json").unlink()
    with pytest.raises(UsageError, match="--num-heads") as err:
        verify(str(graph), VerifyOptions())
    assert "bert_config.json" in str(err.value)
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


def _hf_names(layers: int) -> set[str]:
    """Hugging Face BertModel's parameter names (modeling_bert.py module tree), with the
    `bert.` prefix of BertForPreTraining as load_tf_weights_in_bert keeps it."""
    names = {f"bert.embeddings.{t}_embeddings.weight" for t in ("word", "position", "token_type")}
    names |= {"bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias"}
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for module in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ):
            names |= {f"{p}{module}.weight", f"{p}{module}.bias"}
    return names | {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}


def test_hugging_face_names(bert):
    names = hf_bert_state_dict_names(bert["roles"])
    assert set(names.values()) == _hf_names(bert["config"]["num_hidden_layers"])
    for key, hf in names.items():  # the TF path and the HF path name the same module
        tf_path = re.sub(r"/layer_(\d+)/", r"/layer.\1/", key).replace("/", ".")
        tf_path = tf_path.replace("kernel", "weight").replace("gamma", "weight")
        tf_path = tf_path.replace("beta", "bias")
        if "_embeddings" in key:
            tf_path += ".weight"
        assert tf_path == hf, (key, hf)


def _hf_bert_forward(sd: dict[str, torch.Tensor], feeds, heads: int, layers: int):
    """BERT as Hugging Face's modules compute it, from a state_dict with its names:
    torch Linear weights are (out, in)."""
    ids = torch.as_tensor(feeds["input_ids"], dtype=torch.long)
    types = torch.as_tensor(feeds["token_type_ids"], dtype=torch.long)
    mask = torch.as_tensor(feeds["attention_mask"], dtype=torch.float32)
    e = "bert.embeddings."
    t = ids.shape[1]
    x = F.embedding(ids, sd[e + "word_embeddings.weight"])
    x = x + F.embedding(types, sd[e + "token_type_embeddings.weight"])
    x = x + sd[e + "position_embeddings.weight"][:t]
    d = x.shape[-1]

    def norm(h, prefix):
        return F.layer_norm(h, (d,), sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-12)

    def linear(h, prefix):
        return F.linear(h, sd[prefix + ".weight"], sd[prefix + ".bias"])

    x = norm(x, e + "LayerNorm")
    adder = (1.0 - mask)[:, None, None, :] * -10000.0
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."

        def split(h):
            return h.view(h.shape[0], t, heads, d // heads).transpose(1, 2)

        q, k, v = (split(linear(x, p + f"attention.self.{r}")) for r in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5 + adder, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(x.shape)
        a = norm(linear(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        inter = F.gelu(linear(a, p + "intermediate.dense"), approximate="tanh")
        x = norm(linear(inter, p + "output.dense") + a, p + "output.LayerNorm")
    pooled = torch.tanh(linear(x[:, 0], "bert.pooler.dense"))
    return x.numpy(), pooled.numpy()


def test_hugging_face_state_dict_computes_bert(bert):
    """The exported state_dict (Linear weights transposed) run by torch with Hugging
    Face's module structure computes what the TF1 graph computes."""
    sd = hf_bert_state_dict(bert["roles"], bert["arrays"].__getitem__)
    for name, array in sd.items():
        if hf_bert_is_linear_weight(name):
            key = next(k for k, v in hf_bert_state_dict_names(bert["roles"]).items() if v == name)
            assert array.shape == bert["arrays"][key].shape[::-1]
    tensors = {name: torch.from_numpy(np.array(a)) for name, a in sd.items()}
    c = bert["config"]
    sequence, pooled = _hf_bert_forward(
        tensors, bert["feeds"], c["num_attention_heads"], c["num_hidden_layers"]
    )
    expected = _run_original(bert)
    np.testing.assert_allclose(sequence, expected["sequence_output"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(pooled, expected["pooled_output"], atol=1e-5, rtol=0)
