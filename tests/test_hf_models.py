"""Hugging Face transformers TF models (fixtures/hf, made by transformers itself): names and
roles, the `torch` layout as the transformers PyTorch model's own state_dict, and `verify`
with no options."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import h5py
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch

from ckpt_tool.model import open_model
from ckpt_tool.readers import open_reader
from tests.support import FIXTURES, run_cli

MANIFEST = json.loads((FIXTURES / "hf" / "manifest.json").read_text())
# The models ckpt-tool supports end to end (BERT names: BERT, RoBERTa, ELECTRA).
SUPPORTED = ("bert", "roberta", "electra", "distilbert", "gpt2", "vit")
ENTRIES = [e for e in MANIFEST if e["model"] in SUPPORTED]
H5 = [e for e in ENTRIES if e["format"] == "tf_model_h5"]
ATTENTION_ROLES = {f"{p}.{w}" for p in ("query", "key", "value") for w in ("kernel", "bias")}
DISTILBERT_ROLES = {
    f"{p}.{w}" for p in ("q_lin", "k_lin", "v_lin", "out_lin") for w in ("kernel", "bias")
}
GPT2_ROLES = {f"{p}.{w}" for p in ("c_attn", "c_proj") for w in ("kernel", "bias")}


@dataclass(frozen=True)
class Spec:
    """What a model's role map looks like."""

    family: str
    first_class: str  # the embeddings' layer kind
    attention_class: str
    attention_roles: set[str]
    layers_key: str  # the config key of the number of blocks
    tf_param: dict[str, str] = field(default_factory=dict)  # role param -> TF name's last part
    # the TF names of layer 0's query and key kernels, below .../<block 0>/
    query_key: tuple[str, str] = ("attention/self/query/kernel", "attention/self/key/kernel")


BERT_SPEC = Spec(
    "bert", "BertEmbeddings", "BertSelfAttention", ATTENTION_ROLES, "num_hidden_layers"
)
SPECS = {
    "bert": BERT_SPEC,
    "roberta": BERT_SPEC,
    "electra": BERT_SPEC,
    "distilbert": Spec(
        "hf_distilbert",
        "BertEmbeddings",
        "DistilBertAttention",
        DISTILBERT_ROLES,
        "n_layers",
        query_key=("attention/q_lin/kernel", "attention/k_lin/kernel"),
    ),
    "gpt2": Spec(
        "hf_gpt2",
        "Embedding",
        "GPT2Attention",
        GPT2_ROLES,
        "n_layer",
        {"kernel": "weight"},
        query_key=("attn/c_attn/weight", "attn/c_attn/weight"),  # one fused kernel
    ),
    "vit": Spec(
        "hf_vit",
        "ViTEmbeddings",
        "BertSelfAttention",
        ATTENTION_ROLES,
        "num_hidden_layers",
        query_key=("attention/attention/query/kernel", "attention/attention/key/kernel"),
    ),
}
# Block 0's scope in each model's TF names.
BLOCK_0 = {"gpt2": "h_._0/", "distilbert": "layer_._0/", "vit": "layer_._0/"}
NEW = [e for e in ENTRIES if e["model"] in BLOCK_0]

torch.set_grad_enabled(False)


def _path(entry: dict) -> Path:
    return FIXTURES / entry["path"]


def _inputs(entry: dict) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / entry["inputs"]["path"]) as z:
        return {k: z[k] for k in z.files}


@cache
def _torch_model(model: str):
    """The transformers PyTorch model of the fixture's architecture and config."""
    import transformers

    entry = next(e for e in H5 if e["model"] == model)
    config = getattr(transformers, entry["config_class"]).from_dict(entry["config"])
    return getattr(transformers, entry["torch_class"])(config).eval()


@cache
def _transformers_conversion(model: str):
    """transformers' own TF->PyTorch conversion of the fixture's tf_model.h5
    (from_pretrained(from_tf=True) leaves meta tensors in 4.57)."""
    import transformers

    entry = next(e for e in H5 if e["model"] == model)
    reference = getattr(transformers, entry["torch_class"])(_torch_model(model).config)
    return transformers.load_tf2_checkpoint_in_pytorch_model(reference, str(_path(entry)))


def _torch_input(array: np.ndarray) -> torch.Tensor:
    """Token ids and masks as int64, images as they are (float32)."""
    if np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(array)
    return torch.as_tensor(array, dtype=torch.long)


def _export_torch(src: Path, out: Path) -> dict[str, np.ndarray]:
    result = run_cli("export", str(src), "-o", str(out), "--force", "--layout", "torch")
    assert result.returncode == 0, result.stderr
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if not k.startswith("__")}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["id"])
def test_every_weight_has_its_role(entry):
    with open_reader(_path(entry)) as reader:
        model = open_model(reader)
    spec = SPECS[entry["model"]]
    roles, weights = model.roles, [i for i in model.infos if i.kind == "weight"]
    assert roles.family == spec.family
    assert roles.unassigned == []
    assert len(roles.by_key()) == len(weights)
    attention = [la for la in roles.layers if la.class_name == spec.attention_class]
    assert len(attention) == entry["config"][spec.layers_key]
    names = {i.key: i.name for i in model.infos}
    for layer in attention:
        assert set(layer.weights) == spec.attention_roles
        # the weight named .../<part>/<param> has role <part>.<param>
        for role, key in layer.weights.items():
            part, param = role.split(".")
            tail = f"/{part}/{spec.tf_param.get(param, param)}"
            assert names[key].endswith(tail), (role, names[key])
        assert any("heads" in note for note in layer.notes)
    if entry["model"] == "gpt2":  # the fused kernel's parts are told
        d = entry["config"]["n_embd"]
        split = f"columns 0:{d} query, {d}:{2 * d} key, {2 * d}:{3 * d} value"
        assert all(any(split in note for note in la.notes) for la in attention)
    assert roles.layers[0].class_name == spec.first_class


@pytest.mark.parametrize("entry", H5, ids=lambda e: e["id"])
def test_torch_layout_is_the_transformers_state_dict(entry, tmp_path):
    """Loads with strict=True, equals transformers' own TF->PyTorch conversion array for
    array, and the PyTorch forward matches the TF model's outputs."""
    arrays = _export_torch(_path(entry), tmp_path / "out.npz")
    model = _torch_model(entry["model"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)

    converted = _transformers_conversion(entry["model"]).state_dict()
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, converted[name].numpy(), err_msg=name)

    data = _inputs(entry)
    feeds = {n: _torch_input(data[n]) for n in entry["inputs"]["names"]}
    out = model(**feeds)
    for name in entry["inputs"]["expected"]:
        ours = getattr(out, name.removeprefix("expected_")).numpy()
        np.testing.assert_allclose(ours, data[name], atol=2e-5, rtol=0, err_msg=name)


def _first_divergent_layer(entry: dict, weights: Path) -> str | None:
    """verify of the entry with `weights` instead of its own fails; --per-layer's first
    divergent layer."""
    args = ("--weights", str(weights), "--per-layer", "--json")
    result = run_cli("verify", str(_path(entry)), *args)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    report = json.loads(result.stdout)
    assert not report["passed"]
    return report["runs"][0]["first_divergent_layer"]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["id"])
def test_verify_with_no_options(entry):
    result = run_cli("verify", str(_path(entry)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "PASS" in result.stdout


def test_verify_catches_swapped_query_and_key(tmp_path):
    """Weights with layer 1's query and key kernels swapped, run against the original,
    fail; --per-layer names layer 1 as the first block that diverges."""
    entry = next(e for e in H5 if e["model"] == "bert")
    copy = tmp_path / "swapped.h5"
    shutil.copy(_path(entry), copy)
    with h5py.File(copy, "r+") as f:
        names: list[str] = []
        f.visit(names.append)
        q = next(n for n in names if "layer_._1/attention/self/query/kernel" in n)
        k = q.replace("/query/", "/key/")
        f[q][...], f[k][...] = np.array(f[k]), np.array(f[q])
    first = _first_divergent_layer(entry, copy)
    assert first is not None and "layer_._1/" in first, first


@pytest.mark.parametrize(
    "entry", [e for e in NEW if e["format"] != "tf_model_h5"], ids=lambda e: e["id"]
)
def test_saved_model_exports_the_torch_arrays_of_its_tf_model_h5(entry, tmp_path):
    """A SavedModel (names from its object graph) gives the same state_dict as the
    model's tf_model.h5."""
    h5 = next(e for e in H5 if e["model"] == entry["model"])
    ours = _export_torch(_path(entry), tmp_path / "saved_model.npz")
    theirs = _export_torch(_path(h5), tmp_path / "h5.npz")
    assert sorted(ours) == sorted(theirs)
    for name, array in ours.items():
        np.testing.assert_array_equal(array, theirs[name], err_msg=name)


def _swap_query_and_key(src: Path, copy: Path, model: str) -> None:
    """A copy of a tf_model.h5 with block 0's query and key kernels swapped (GPT-2: the
    query and key column blocks of its fused c_attn kernel)."""
    shutil.copy(src, copy)
    query, key = SPECS[model].query_key
    with h5py.File(copy, "r+") as f:
        names: list[str] = []
        f.visit(names.append)
        q = next(n for n in names if n.endswith(BLOCK_0[model] + query + ":0"))
        k = q.replace(query, key)
        if q == k:  # fused (D, 3D): columns 0:D query, D:2D key
            kernel = np.array(f[q])
            d = kernel.shape[1] // 3
            kernel[:, : 2 * d] = np.concatenate([kernel[:, d : 2 * d], kernel[:, :d]], axis=1)
            f[q][...] = kernel
        else:
            f[q][...], f[k][...] = np.array(f[k]), np.array(f[q])


@pytest.mark.parametrize("entry", [e for e in H5 if e["model"] in BLOCK_0], ids=lambda e: e["id"])
def test_verify_catches_swapped_query_and_key_in_block_0(entry, tmp_path):
    """Block 0's query and key swapped: verify fails, and --per-layer (transformers'
    hidden_states) names block 0 as the first that diverges."""
    copy = tmp_path / "swapped.h5"
    _swap_query_and_key(_path(entry), copy, entry["model"])
    first = _first_divergent_layer(entry, copy)
    assert first is not None and BLOCK_0[entry["model"]] in first, first


@pytest.mark.parametrize(
    "entry", [e for e in NEW if e["format"] != "tf_model_h5"], ids=lambda e: e["id"]
)
def test_saved_model_verify_catches_swapped_weights(entry, tmp_path):
    """The SavedModel run by its serving signature, with weights from a tf_model.h5 copy
    whose block 0 has query and key swapped: verify fails."""
    h5 = next(e for e in H5 if e["model"] == entry["model"])
    copy = tmp_path / "swapped.h5"
    _swap_query_and_key(_path(h5), copy, entry["model"])
    result = run_cli("verify", str(_path(entry)), "--weights", str(copy))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    assert "FAIL" in result.stdout


@pytest.mark.parametrize("model", ["gpt2", "bert"])
def test_verify_a_transformers_port_saved_as_safetensors(model, tmp_path):
    """A finished port checked against the TensorFlow original: transformers' own PyTorch
    conversion, saved with safetensors.torch.save_file (PyTorch names, no manifest),
    passes `verify tf_model.h5 --weights port.safetensors` (GPT-2's fused c_attn is
    unpacked through the layout); one perturbed tensor fails."""
    import safetensors.torch

    from ckpt_tool.verify import VerifyOptions, verify

    entry = next(e for e in H5 if e["model"] == model)
    state = {
        k: v.detach().clone().contiguous()
        for k, v in _transformers_conversion(model).state_dict().items()
    }
    port = tmp_path / "port.safetensors"
    safetensors.torch.save_file(state, str(port))
    assert verify(str(_path(entry)), VerifyOptions(weights=str(port))).passed
    name = (
        "h.1.attn.c_attn.weight" if model == "gpt2" else "encoder.layer.1.attention.self.key.weight"
    )
    state[name][0, :] += 0.1
    safetensors.torch.save_file(state, str(port))
    assert not verify(str(_path(entry)), VerifyOptions(weights=str(port))).passed
