"""keras-hub backbones (fixtures/keras_hub): names as Keras gives them, roles for every
attention, embedding and norm tensor, and a torch export that the transformers model of
the same architecture loads strictly and runs to the Keras outputs."""

from __future__ import annotations

import json
import os
import re
from functools import cache

import numpy as np
import pytest

from ckpt_tool.model import open_model
from ckpt_tool.readers import open_reader
from tests.support import FIXTURES, run_cli

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

MANIFEST = json.loads((FIXTURES / "keras_hub" / "manifest.json").read_text())
MODELS = ("bert", "gpt2", "llama", "distilbert", "vit")
RECORDS = [r for r in MANIFEST if r["model"] in MODELS and not r.get("missing_weights")]
NAMED = [r for r in RECORDS if r["format"] in ("keras", "weights_h5")]
# Tensors that must have a role: attention projections, embeddings, norms.
NEEDS_ROLE = re.compile(
    r".*/(query|key|value|attention_output)/(kernel|bias)$|.*embedding.*|.*(norm|ln)[^/]*/"
    r"(gamma|beta|scale)$|.*class_token$"
)


def _ids(records: list[dict]) -> list[str]:
    return [r["id"] for r in records]


@cache
def keras_paths(model: str) -> list[str]:
    """`w.path` of every weight of the backbone, as keras-hub loads it."""
    import keras
    import keras_hub  # noqa: F401  (registers the backbone classes)

    path = FIXTURES / "keras_hub" / model / f"{model}.keras"
    return [w.path for w in keras.saving.load_model(path).weights]


def _path(rec: dict):
    return FIXTURES / rec["path"]


@pytest.mark.parametrize("rec", NAMED, ids=_ids(NAMED))
def test_names_are_the_library_weight_paths(rec):
    with open_reader(_path(rec)) as reader:
        infos = sorted(reader.variables(), key=lambda i: i.order)
        names = [i.name for i in infos if i.kind == "weight"]
    assert names == keras_paths(rec["model"])


@pytest.mark.parametrize("rec", RECORDS, ids=_ids(RECORDS))
def test_roles_for_attention_embeddings_and_norms(rec):
    from ckpt_tool.families.keras_hub import keras_path

    with open_reader(_path(rec)) as reader:
        model = open_model(reader)
        assert model.roles.family == "keras_hub"
        by_key = model.roles.by_key()
        paths = {}
        for info in model.infos:
            if info.kind != "weight":
                continue
            path = keras_path(info)
            if not info.dtype.startswith("float"):
                assert info.key not in by_key, f"integer tensor {info.name} got a role"
            elif path is not None and NEEDS_ROLE.match(path):
                assert info.key in by_key, f"{path} has no role"
                paths[path] = by_key[info.key]
    # every library weight is found (the SavedModel through its variables' own names)
    assert sorted(paths) == sorted(p for p in keras_paths(rec["model"]) if NEEDS_ROLE.match(p))
    classes = {layer.class_name for layer, _ in paths.values() if "attention" in layer.name}
    attention = [layer for layer, role in paths.values() if role == "query.kernel"]
    assert attention and all(layer.class_name == "MultiHeadAttention" for layer in attention)
    assert "MultiHeadAttention" in classes or rec["model"] == "vit"


# -- torch -----------------------------------------------------------------------------------


def _hf_model(rec: dict):
    """The transformers model of the backbone's architecture, from the manifest config."""
    import transformers

    c = rec["config"]
    model = rec["model"]
    if model == "bert":
        cfg = transformers.BertConfig(
            vocab_size=c["vocabulary_size"],
            hidden_size=c["hidden_dim"],
            num_hidden_layers=c["num_layers"],
            num_attention_heads=c["num_heads"],
            intermediate_size=c["intermediate_dim"],
            max_position_embeddings=c["max_sequence_length"],
            type_vocab_size=c["num_segments"],
            hidden_act="gelu",
            layer_norm_eps=1e-12,
        )
        return transformers.BertModel(cfg)
    if model == "distilbert":
        cfg = transformers.DistilBertConfig(
            vocab_size=c["vocabulary_size"],
            dim=c["hidden_dim"],
            n_layers=c["num_layers"],
            n_heads=c["num_heads"],
            hidden_dim=c["intermediate_dim"],
            max_position_embeddings=c["max_sequence_length"],
            activation="gelu",
        )
        return transformers.DistilBertModel(cfg)
    if model == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=c["vocabulary_size"],
            n_positions=c["max_sequence_length"],
            n_embd=c["hidden_dim"],
            n_layer=c["num_layers"],
            n_head=c["num_heads"],
            n_inner=c["intermediate_dim"],
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
        )
        return transformers.GPT2Model(cfg)
    if model == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=c["vocabulary_size"],
            hidden_size=c["hidden_dim"],
            intermediate_size=c["intermediate_dim"],
            num_hidden_layers=c["num_layers"],
            num_attention_heads=c["num_query_heads"],
            num_key_value_heads=c["num_key_value_heads"],
            rms_norm_eps=c["layer_norm_epsilon"],
            rope_theta=c["rope_max_wavelength"],
        )
        return transformers.LlamaModel(cfg)
    if model == "vit":
        cfg = transformers.ViTConfig(
            image_size=c["image_shape"][0],
            patch_size=c["patch_size"][0],
            num_channels=c["image_shape"][2],
            hidden_size=c["hidden_dim"],
            num_hidden_layers=c["num_layers"],
            num_attention_heads=c["num_heads"],
            intermediate_size=c["mlp_dim"],
            layer_norm_eps=c["layer_norm_epsilon"],
            hidden_act="gelu",
            qkv_bias=c["use_mha_bias"],
        )
        return transformers.ViTModel(cfg, add_pooling_layer=False)
    raise ValueError(model)


def _hf_outputs(rec: dict, hf, data) -> dict[str, np.ndarray]:
    """The transformers forward on the fixture inputs, outputs named as keras-hub's."""
    import torch

    if rec["model"] == "vit":
        pixels = torch.from_numpy(data["images"].transpose(0, 3, 1, 2).copy())
        out = hf(pixel_values=pixels)
        return {"expected_sequence_output": out.last_hidden_state.numpy()}
    kwargs = {
        "input_ids": torch.from_numpy(data["token_ids"].astype(np.int64)),
        "attention_mask": torch.from_numpy(data["padding_mask"].astype(np.int64)),
    }
    if "segment_ids" in data:
        kwargs["token_type_ids"] = torch.from_numpy(data["segment_ids"].astype(np.int64))
    out = hf(**kwargs)
    outputs = {"expected_sequence_output": out.last_hidden_state.numpy()}
    if getattr(out, "pooler_output", None) is not None:
        outputs["expected_pooled_output"] = out.pooler_output.numpy()
    return outputs


@pytest.mark.parametrize("rec", RECORDS, ids=_ids(RECORDS))
def test_torch_export_loads_strict_and_matches_keras(rec, tmp_path):
    import torch

    out = tmp_path / "out.npz"
    result = run_cli("export", str(_path(rec)), "-o", str(out), "--layout", "torch")
    assert result.returncode == 0, result.stderr
    with np.load(out) as npz:
        arrays = {k: npz[k] for k in npz.files}
    # the export's manifest rides along as a string entry
    state = {k: torch.from_numpy(a.copy()) for k, a in arrays.items() if a.dtype.kind == "f"}
    hf = _hf_model(rec).eval()
    hf.load_state_dict(state, strict=True)
    data = np.load(FIXTURES / rec["inputs"]["path"])
    with torch.no_grad():
        got = _hf_outputs(rec, hf, data)
    assert sorted(got) == sorted(rec["expected"])
    for name, value in got.items():
        np.testing.assert_allclose(value, data[name], rtol=1e-4, atol=2e-5, err_msg=name)


# -- verify ----------------------------------------------------------------------------------

# Runnable by TensorFlow: the .keras files and the model.export() SavedModels.
RUNNABLE = [r for r in MANIFEST if r["model"] in MODELS and r["format"] in ("keras", "export")]
# Second block's query and key kernels in each .weights.h5 (same shapes; not Llama's GQA).
SWAPS = {
    "bert": ("transformer_encoder_1", "transformer_layer_1"),
    "distilbert": ("transformer_encoder_1", "transformer_layer_1"),
    "gpt2": ("transformer_decoder_1", "transformer_layer_1"),
}


@pytest.mark.parametrize("rec", RUNNABLE, ids=_ids(RUNNABLE))
def test_verify_passes_without_options(rec):
    result = run_cli("verify", str(_path(rec)), "--json")
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    report = json.loads(result.stdout)
    assert report["passed"] and report["graph"].startswith("keras-hub backbone")
    expected = sorted(name.removeprefix("expected_") for name in rec["expected"])
    assert sorted(o["name"] for o in report["runs"][0]["outputs"]) == expected


def _swapped_weights(model: str, group: str, tmp_path):
    """A copy of the model's .weights.h5 with one block's query and key kernels swapped."""
    import shutil

    import h5py

    copy = tmp_path / f"{model}_swapped.weights.h5"
    shutil.copy(FIXTURES / "keras_hub" / model / f"{model}.weights.h5", copy)
    base = f"layers/{group}/_self_attention_layer"
    with h5py.File(copy, "r+") as f:
        query, key = f[f"{base}/query_dense/vars/0"], f[f"{base}/key_dense/vars/0"]
        q, k = query[()], key[()]
        query[...], key[...] = k, q
    return copy


@pytest.mark.parametrize("model", sorted(SWAPS))
def test_swapped_query_and_key_fail_at_their_layer(model, tmp_path):
    group, layer = SWAPS[model]
    original = FIXTURES / "keras_hub" / model / f"{model}.keras"
    # the untouched weights file runs like the model itself
    same = run_cli("verify", str(original), "--weights", str(original.with_suffix(".weights.h5")))
    assert same.returncode == 0, same.stderr + same.stdout[-3000:]
    copy = _swapped_weights(model, group, tmp_path)
    result = run_cli("verify", str(original), "--weights", str(copy), "--per-layer", "--json")
    assert result.returncode == 1, result.stderr + result.stdout[-3000:]
    run = json.loads(result.stdout)["runs"][0]
    assert not run["passed"]
    assert run["first_divergent_layer"] == layer
    passed = [a["name"] for a in run["layers"] if a["passed"]]
    assert "transformer_layer_0" in passed
