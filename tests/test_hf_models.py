"""Hugging Face transformers TF models (fixtures/hf, made by transformers itself): names and
roles, the `torch` layout as the transformers PyTorch model's own state_dict, and `verify`
with no options."""

from __future__ import annotations

import json
import os
import shutil
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
# The families ckpt-tool supports end to end so far (BERT names: BERT, RoBERTa, ELECTRA).
SUPPORTED = ("bert", "roberta", "electra")
ENTRIES = [e for e in MANIFEST if e["model"] in SUPPORTED]
H5 = [e for e in ENTRIES if e["format"] == "tf_model_h5"]
ATTENTION_ROLES = {f"{p}.{w}" for p in ("query", "key", "value") for w in ("kernel", "bias")}

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


def _export_torch(src: Path, out: Path) -> dict[str, np.ndarray]:
    result = run_cli("export", str(src), "-o", str(out), "--force", "--layout", "torch")
    assert result.returncode == 0, result.stderr
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if not k.startswith("__")}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["id"])
def test_every_weight_has_its_role(entry):
    with open_reader(_path(entry)) as reader:
        model = open_model(reader)
    roles, weights = model.roles, [i for i in model.infos if i.kind == "weight"]
    assert roles.family == "bert"
    assert roles.unassigned == []
    assert len(roles.by_key()) == len(weights)
    attention = [la for la in roles.layers if la.class_name == "BertSelfAttention"]
    assert len(attention) == entry["config"]["num_hidden_layers"]
    for layer in attention:
        assert set(layer.weights) == ATTENTION_ROLES
        # the weight named .../self/<part>/<param> has role <part>.<param>
        names = {i.key: i.name for i in model.infos}
        for role, key in layer.weights.items():
            assert names[key].endswith("/" + role.replace(".", "/")), (role, names[key])
    assert roles.layers[0].class_name == "BertEmbeddings"


@pytest.mark.parametrize("entry", H5, ids=lambda e: e["id"])
def test_torch_layout_is_the_transformers_state_dict(entry, tmp_path):
    """Loads with strict=True, equals transformers' own TF->PyTorch conversion array for
    array, and the PyTorch forward matches the TF model's outputs."""
    import transformers

    arrays = _export_torch(_path(entry), tmp_path / "out.npz")
    model = _torch_model(entry["model"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)

    # transformers' own conversion (from_pretrained(from_tf=True) leaves meta tensors in 4.57)
    reference = getattr(transformers, entry["torch_class"])(model.config)
    reference = transformers.load_tf2_checkpoint_in_pytorch_model(reference, str(_path(entry)))
    converted = reference.state_dict()
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, converted[name].numpy(), err_msg=name)

    data = _inputs(entry)
    feeds = {n: torch.as_tensor(data[n], dtype=torch.long) for n in entry["inputs"]["names"]}
    out = model(**feeds)
    for name in entry["inputs"]["expected"]:
        ours = getattr(out, name.removeprefix("expected_")).numpy()
        np.testing.assert_allclose(ours, data[name], atol=2e-5, rtol=0, err_msg=name)


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
    args = ("--weights", str(copy), "--per-layer", "--json")
    result = run_cli("verify", str(_path(entry)), *args)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    report = json.loads(result.stdout)
    assert not report["passed"]
    first = report["runs"][0]["first_divergent_layer"]
    assert first is not None and "layer_._1/" in first, first
