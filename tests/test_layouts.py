"""`export --layout torch|torch-mha|haiku`: each layout is proven by running the target
computation on the exported arrays and comparing with the Keras model itself.

- torch: small PyTorch modules written here (nn.Linear projections, nn.LayerNorm) load the
  export with `load_state_dict(strict=True)` and reproduce the Keras outputs;
- torch-mha: `torch.nn.MultiheadAttention` loads it and reproduces them;
- haiku: a NumPy transcription of AlphaFold's `Attention` (alphafold/model/modules.py),
  `common_modules.Linear` and `LayerNorm`, fed through the `scope//name` split of
  AlphaFold's `utils.flat_params_to_haiku`, reproduces them.
"""

from __future__ import annotations

import json
import math
import os
from functools import cache
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from torch import nn

from ckpt_tool.export import MANIFEST_KEY, ExportOptions, export_npz
from ckpt_tool.layouts import LayoutRefused
from ckpt_tool.layouts.base import LayerTensors
from ckpt_tool.layouts.pytorch import mha_misfit
from ckpt_tool.readers import open_reader
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import Layer
from tests.support import FIXTURES, fixture, fixture_path, run_cli

# float32 rounding: the exported weights are the same float32 numbers, only the order
# of the sums differs between frameworks.
ATOL, RTOL = 2e-6, 2e-5

torch.set_grad_enabled(False)


def export(
    src: Path, out: Path, layout: str, torch_prefix: str = ""
) -> tuple[dict, dict[str, np.ndarray]]:
    """Export `src` with `layout`, then read it back as a user would (np.load)."""
    options = ExportOptions(layout=layout, force=True, torch_prefix=torch_prefix)
    with open_reader(src) as reader:
        export_npz(reader, out, options)
    with np.load(out, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop(MANIFEST_KEY))), arrays


@cache
def keras_model(path: Path):
    return keras.saving.load_model(path)


def keras_output(path: Path, inputs) -> np.ndarray:
    return np.asarray(keras_model(path)(inputs, training=False))


def inputs(model: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / model / "inputs.npz") as z:
        return {k: z[k] for k in z.files}


def state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def assert_close(actual, expected) -> None:
    actual = actual.numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=RTOL)


def mha_config(path: Path, layer: str) -> dict:
    return keras_model(path).get_layer(layer).get_config()


# --- PyTorch modules mirroring the Keras models (written for these tests) ---------------------


class LinearAttention(nn.Module):
    """Keras MultiHeadAttention from separate nn.Linear projections (the torch layout)."""

    def __init__(self, q_dim, k_dim, v_dim, heads, key_dim, value_dim, out_dim, bias, gate):
        super().__init__()
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.q_proj = nn.Linear(q_dim, heads * key_dim, bias)
        self.k_proj = nn.Linear(k_dim, heads * key_dim, bias)
        self.v_proj = nn.Linear(v_dim, heads * value_dim, bias)
        self.gate_proj = nn.Linear(q_dim, heads * value_dim, bias) if gate else None
        self.out_proj = nn.Linear(heads * value_dim, out_dim, bias)

    @classmethod
    def like(cls, config: dict, q_dim: int, k_dim: int, v_dim: int) -> LinearAttention:
        out = config["output_shape"]
        out_dim = q_dim if out is None else int(np.prod(out))
        value_dim = config["value_dim"] or config["key_dim"]
        return cls(
            q_dim,
            k_dim,
            v_dim,
            config["num_heads"],
            config["key_dim"],
            value_dim,
            out_dim,
            config["use_bias"],
            config.get("use_gate", False),
        )

    def forward(self, query, value, key=None):
        key = value if key is None else key
        q = self.q_proj(query).unflatten(-1, (self.heads, self.key_dim))  # (B,T,N,H)
        k = self.k_proj(key).unflatten(-1, (self.heads, self.key_dim))  # (B,S,N,H)
        v = self.v_proj(value).unflatten(-1, (self.heads, self.value_dim))  # (B,S,N,Hv)
        scores = torch.einsum("btnh,bsnh->bnts", q / math.sqrt(self.key_dim), k)
        ctx = torch.einsum("bnts,bsnh->btnh", scores.softmax(-1), v)  # (B,T,N,Hv)
        if self.gate_proj is not None:
            gate = self.gate_proj(query).unflatten(-1, (self.heads, self.value_dim))
            ctx = ctx * torch.sigmoid(gate)
        return self.out_proj(ctx.flatten(-2))


class SeedModel(nn.Module):
    """The seed model: self-attention (2 heads of 4 on (B,2,3)) then Dense(1)."""

    def __init__(self, config: dict):
        super().__init__()
        self.multi_head_attention = LinearAttention.like(config, 3, 3, 3)
        self.dense = nn.Linear(3, 1)

    def forward(self, x):
        return self.dense(self.multi_head_attention(x, x))


class TransformerBlock(nn.Module):
    """The post-LN transformer block fixture; `attention` is either attention module."""

    def __init__(self, attention: nn.Module, eps: tuple[float, float]):
        super().__init__()
        self.attention = attention
        self.attention_norm = nn.LayerNorm(8, eps=eps[0])
        self.ffn_in = nn.Linear(8, 16)
        self.ffn_out = nn.Linear(16, 8)
        self.ffn_norm = nn.LayerNorm(8, eps=eps[1])

    def forward(self, x):
        if isinstance(self.attention, nn.MultiheadAttention):
            a = self.attention(x, x, x, need_weights=False)[0]
        else:
            a = self.attention(x, x)
        h = self.attention_norm(x + a)
        f = self.ffn_out(nn.functional.gelu(self.ffn_in(h)))  # Keras "gelu": exact erf form
        return self.ffn_norm(h + f)


def wrapped(name: str, module: nn.Module) -> nn.Module:
    """A parent with `module` at attribute `name`, so keys read `<name>.<param>`."""
    parent = nn.Module()
    parent.add_module(name, module)
    return parent


def layer_norm_eps(manifest: dict) -> tuple[float, ...]:
    """LayerNorm epsilons from the manifest's modules (Keras's 1e-3 is not PyTorch's 1e-5)."""
    return tuple(
        m["args"]["eps"] for m in manifest["modules"] if m["module"] == "torch.nn.LayerNorm"
    )


# --- torch ----------------------------------------------------------------------------------


def test_torch_seed_model(tmp_path: Path) -> None:
    src = fixture_path("seed_keras")
    _, arrays = export(src, tmp_path / "seed.npz", "torch")
    assert list(arrays) == [
        f"multi_head_attention.{p}.{w}"
        for p in ("q_proj", "k_proj", "v_proj", "out_proj")
        for w in ("weight", "bias")
    ] + ["dense.weight", "dense.bias"]
    assert arrays["multi_head_attention.q_proj.weight"].shape == (8, 3)  # (N*H, Dq)
    assert arrays["multi_head_attention.out_proj.weight"].shape == (3, 8)  # (Dout, N*Hv)
    model = SeedModel(mha_config(src, "multi_head_attention"))
    model.load_state_dict(state_dict(arrays), strict=True)
    x = inputs("seed")["x"]
    assert_close(model(torch.from_numpy(x)), keras_output(src, x))


def test_torch_anonymous_savedmodel_gives_the_same_arrays(tmp_path: Path) -> None:
    """Keras 3 `model.export()` keeps only variables/N: roles by shape and order give the
    same torch state_dict as the named .keras file, bit for bit."""
    _, named = export(fixture_path("seed_keras"), tmp_path / "a.npz", "torch")
    manifest, anonymous = export(fixture_path("seed_keras3_export"), tmp_path / "b.npz", "torch")
    assert list(anonymous) == list(named)
    for key, value in named.items():
        assert anonymous[key].tobytes() == value.tobytes(), key
    # The export's serving graph names the roles (shape+order agrees on this model).
    assert {v["role"]["evidence"] for v in manifest["variables"]} == {"graph"}


def test_torch_savedmodel_with_config_matches_keras_file(tmp_path: Path) -> None:
    """A SavedModel export holds no config: its torch arrays still equal the .keras file's,
    and --config supplies the settings weights cannot tell (gelu, epsilon)."""
    keras_file = fixture_path("transformer_block_keras")
    config = tmp_path / "config.json"
    config.write_text(keras_model(keras_file).to_json())  # what users pass to --config
    _, expected = export(keras_file, tmp_path / "a.npz", "torch")
    with open_reader(fixture_path("transformer_block_savedmodel")) as reader:
        options = ExportOptions(layout="torch", config_file=str(config))
        export_npz(reader, tmp_path / "b.npz", options)
    with np.load(tmp_path / "b.npz") as z:
        manifest = json.loads(str(z[MANIFEST_KEY]))
        assert [k for k in z.files if k != MANIFEST_KEY] == list(expected)
        for key, value in expected.items():
            assert z[key].tobytes() == value.tobytes(), key
    modules = {m["layer"]: m for m in manifest["modules"]}
    assert modules["ffn_in"]["args"]["activation"] == "gelu"
    assert {m["settings_from"] for m in modules.values()} == {"config"}


def test_torch_transformer_block(tmp_path: Path) -> None:
    src = fixture_path("transformer_block_keras")
    manifest, arrays = export(src, tmp_path / "block.npz", "torch")
    eps = layer_norm_eps(manifest)
    assert eps == (keras_model(src).get_layer("attention_norm").epsilon,) * 2
    attention = LinearAttention.like(mha_config(src, "attention"), 8, 8, 8)
    model = TransformerBlock(attention, eps)
    model.load_state_dict(state_dict(arrays), strict=True)
    x = inputs("transformer_block")["x"]
    assert_close(model(torch.from_numpy(x)), keras_output(src, x))


def test_torch_gated_attention(tmp_path: Path) -> None:
    src = fixture_path("mha_gate_keras")
    _, arrays = export(src, tmp_path / "gate.npz", "torch")
    assert arrays["attention.gate_proj.weight"].shape == (8, 8)
    model = wrapped("attention", LinearAttention.like(mha_config(src, "attention"), 8, 8, 8))
    model.load_state_dict(state_dict(arrays), strict=True)
    x = inputs("mha_gate")["x"]
    expected = keras_output(src, x)
    assert_close(model.attention(torch.from_numpy(x), torch.from_numpy(x)), expected)


def test_torch_cross_attention_with_other_dims(tmp_path: Path) -> None:
    """query dim 6 != heads*key_dim 8, value_dim 3 != key_dim 4, output_shape 7."""
    src = fixture_path("cross_attention_keras")
    _, arrays = export(src, tmp_path / "cross.npz", "torch")
    assert arrays["attention.v_proj.weight"].shape == (6, 10)
    assert arrays["attention.out_proj.weight"].shape == (7, 6)
    config = mha_config(src, "attention")
    model = wrapped("attention", LinearAttention.like(config, 6, 9, 10))
    model.load_state_dict(state_dict(arrays), strict=True)
    feed = inputs("cross_attention")
    t = {k: torch.from_numpy(v) for k, v in feed.items()}
    actual = model.attention(t["query"], t["value"], t["key"])
    assert_close(actual, keras_output(src, feed))


class BertSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, mask):
        q, k, v = (
            f(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            for f in (self.query, self.key, self.value)
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores + (1.0 - mask[:, None, None, :].float()) * -10000.0  # Google BERT
        return (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)


class DenseNorm(nn.Module):
    def __init__(self, d_in: int, d: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d)
        self.LayerNorm = nn.LayerNorm(d, eps=1e-12)


class BertLayer(nn.Module):
    def __init__(self, d: int, heads: int, inner: int):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = BertSelfAttention(d, heads)
        self.attention.output = DenseNorm(d, d)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, inner)
        self.output = DenseNorm(inner, d)

    def forward(self, x, mask):
        a = self.attention.output
        h = a.LayerNorm(x + a.dense(self.attention.self(x, mask)))
        f = nn.functional.gelu(self.intermediate.dense(h), approximate="tanh")
        return self.output.LayerNorm(h + self.output.dense(f))


class Bert(nn.Module):
    """Google's BERT (modeling.py) with Hugging Face's module names."""

    def __init__(self, config: dict):
        super().__init__()
        d, n = config["hidden_size"], config["num_attention_heads"]
        self.embeddings = nn.Module()
        e = self.embeddings
        e.word_embeddings = nn.Embedding(config["vocab_size"], d)
        e.position_embeddings = nn.Embedding(config["max_position_embeddings"], d)
        e.token_type_embeddings = nn.Embedding(config["type_vocab_size"], d)
        e.LayerNorm = nn.LayerNorm(d, eps=1e-12)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            BertLayer(d, n, config["intermediate_size"]) for _ in range(config["num_hidden_layers"])
        )
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(d, d)

    def forward(self, input_ids, token_type_ids, attention_mask):
        e = self.embeddings
        positions = torch.arange(input_ids.shape[1])
        x = e.word_embeddings(input_ids) + e.token_type_embeddings(token_type_ids)
        x = e.LayerNorm(x + e.position_embeddings(positions))
        for layer in self.encoder.layer:
            x = layer(x, attention_mask)
        return x, torch.tanh(self.pooler.dense(x[:, 0]))


def test_torch_bert_uses_hugging_face_names(tmp_path: Path) -> None:
    """A Google BERT TF1 checkpoint exports under Hugging Face's state_dict names (with
    --torch-prefix bert., BertForPreTraining's); a BERT built from those modules
    reproduces the TF1 SavedModel of the same weights."""
    src = fixture_path("bert_tf1")
    manifest, arrays = export(src, tmp_path / "bert.npz", "torch", torch_prefix="bert.")
    assert "bert.encoder.layer.1.attention.self.query.weight" in arrays
    assert any("Hugging Face" in note for note in manifest["notes"])
    assert arrays["bert.encoder.layer.0.intermediate.dense.weight"].shape == (16, 8)
    config_path = FIXTURES / fixture("bert_tf1")["config"]
    model = wrapped("bert", Bert(json.loads(config_path.read_text())))
    model.load_state_dict(state_dict(arrays), strict=True)
    feed = inputs("bert_tf1")
    feed = {k: feed[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    serve = tf.saved_model.load(str(fixture_path("bert_tf1_savedmodel")))
    expected = serve.signatures["serving_default"](**{k: tf.constant(v) for k, v in feed.items()})
    sequence, pooled = model.bert(*(torch.from_numpy(v.astype("int64")) for v in feed.values()))
    assert_close(sequence, expected["sequence_output"].numpy())
    assert_close(pooled, expected["pooled_output"].numpy())


# --- torch-mha ------------------------------------------------------------------------------


def test_torch_mha_transformer_block(tmp_path: Path) -> None:
    src = fixture_path("transformer_block_keras")
    manifest, arrays = export(src, tmp_path / "block.npz", "torch-mha")
    assert arrays["attention.in_proj_weight"].shape == (24, 8)  # rows [Wq; Wk; Wv]
    assert arrays["attention.in_proj_bias"].shape == (24,)
    (mha_args,) = [m["args"] for m in manifest["modules"] if m["layer"] == "attention"]
    assert mha_args == {"embed_dim": 8, "num_heads": 2, "bias": True, "batch_first": True}
    attention = nn.MultiheadAttention(**mha_args)
    model = TransformerBlock(attention, layer_norm_eps(manifest))
    model.load_state_dict(state_dict(arrays), strict=True)
    model.eval()
    x = inputs("transformer_block")["x"]
    assert_close(model(torch.from_numpy(x)), keras_output(src, x))


def test_torch_mha_without_biases(tmp_path: Path) -> None:
    src = fixture_path("mha_nobias_keras")
    _, arrays = export(src, tmp_path / "nobias.npz", "torch-mha")
    assert set(arrays) == {"attention.in_proj_weight", "attention.out_proj.weight"}
    model = wrapped("attention", nn.MultiheadAttention(8, 2, bias=False, batch_first=True))
    model.load_state_dict(state_dict(arrays), strict=True)
    model.eval()
    x = inputs("mha_nobias")["x"]
    t = torch.from_numpy(x)
    assert_close(model.attention(t, t, t, need_weights=False)[0], keras_output(src, x))


def test_torch_mha_separate_kdim_vdim(tmp_path: Path) -> None:
    """Keys (dim 9) and values (dim 10) of other widths than the query (8 = 2 heads x 4):
    nn.MultiheadAttention(kdim=9, vdim=10) keeps q/k/v_proj_weight apart."""
    query = keras.Input((4, 8), name="query")
    value = keras.Input((5, 10), name="value")
    key = keras.Input((5, 9), name="key")
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attention")
    model = keras.Model([query, value, key], mha(query, value, key))
    rng = np.random.default_rng(7)
    mha.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in mha.get_weights()])
    path = tmp_path / "kv.keras"
    model.save(path)
    manifest, arrays = export(path, tmp_path / "kv.npz", "torch-mha")
    assert {k: v.shape for k, v in arrays.items()} == {
        "attention.q_proj_weight": (8, 8),
        "attention.k_proj_weight": (8, 9),
        "attention.v_proj_weight": (8, 10),
        "attention.in_proj_bias": (24,),
        "attention.out_proj.weight": (8, 8),
        "attention.out_proj.bias": (8,),
    }
    (args,) = [m["args"] for m in manifest["modules"]]
    torch_mha = wrapped("attention", nn.MultiheadAttention(**args))
    torch_mha.load_state_dict(state_dict(arrays), strict=True)
    torch_mha.eval()
    feed = {
        "query": rng.normal(size=(2, 4, 8)).astype("float32"),
        "value": rng.normal(size=(2, 5, 10)).astype("float32"),
        "key": rng.normal(size=(2, 5, 9)).astype("float32"),
    }
    t = {k: torch.from_numpy(v) for k, v in feed.items()}
    actual = torch_mha.attention(t["query"], t["key"], t["value"], need_weights=False)[0]
    assert_close(actual, np.asarray(model(feed)))


REFUSALS = [
    ("seed_keras", "torch-mha", "query dim 3 is not num_heads x key_dim = 2x4 = 8"),
    ("mha_gate_keras", "torch-mha", "has a gate (use_gate=True)"),
    ("cross_attention_keras", "torch-mha", "query dim 6 is not"),
    ("mha_gate_keras", "haiku", "non-zero"),
    ("cross_attention_keras", "haiku", "projects keys from dim 9 and values from dim 10"),
]


@pytest.mark.parametrize(("fixture_id", "layout", "why"), REFUSALS)
def test_refusal_is_one_line_exit_2_no_output(
    fixture_id: str, layout: str, why: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.npz"
    result = run_cli("export", str(fixture_path(fixture_id)), "-o", str(out), "--layout", layout)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], result.stderr
    assert "--layout torch" in lines[0]
    assert not out.exists() and os.listdir(tmp_path) == []


def _mha(shapes: dict[str, tuple[int, ...]], **config) -> LayerTensors:
    infos = {
        role: VariableInfo(key=role, name=role, shape=shape, dtype="float32", order=i)
        for i, (role, shape) in enumerate(shapes.items())
    }
    layer = Layer("mha", "MultiHeadAttention", config, {r: r for r in shapes}, "config")
    return LayerTensors(layer, infos)


def _qkvo(d=8, n=2, h=4, hv=4, dout=8, dk=8, dv=8, bias=True) -> dict:
    shapes = {
        "query.kernel": (d, n, h),
        "key.kernel": (dk, n, h),
        "value.kernel": (dv, n, hv),
        "output.kernel": (n, hv, dout),
    }
    if bias:
        shapes |= {"query.bias": (n, h), "key.bias": (n, h), "value.bias": (n, hv)}
        shapes["output.bias"] = (dout,)
    return shapes


@pytest.mark.parametrize(
    ("shapes", "config", "why"),
    [
        (_qkvo(), {}, None),
        (_qkvo(dk=9, dv=10), {}, None),
        (_qkvo(bias=False), {}, None),
        (_qkvo(hv=3), {}, "value heads (2x3) differ from its key heads (2x4)"),
        (_qkvo(dout=7), {}, "output shape [7] is not [embed_dim] = [8]"),
        (_qkvo(d=6), {}, "query dim 6 is not num_heads x key_dim = 2x4 = 8"),
        ({**_qkvo(), "gate.kernel": (8, 2, 4)}, {}, "has a gate"),
        ({k: v for k, v in _qkvo().items() if k != "key.bias"}, {}, "only some projections"),
        (_qkvo(), {"attention_axes": [2]}, "attends over axes [2]"),
        ({k: v for k, v in _qkvo().items() if "output" not in k}, {}, "no output projection"),
    ],
)
def test_torch_mha_fit_rules(shapes: dict, config: dict, why: str | None) -> None:
    misfit = mha_misfit(_mha(shapes, **config))
    assert misfit == why if why is None else why in misfit


# --- haiku (AlphaFold) ------------------------------------------------------------------------

SOFTMAX_MASK = -1e9  # alphafold/model/modules.py _SOFTMAX_MASK


def flat_params_to_haiku(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """alphafold/model/utils.py flat_params_to_haiku: `scope//name` -> params[scope][name]."""
    params: dict[str, dict[str, np.ndarray]] = {}
    for path, array in arrays.items():
        scope, name = path.split("//")
        params.setdefault(scope, {})[name] = array
    return params


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def alphafold_attention(params, q_data, m_data, mask, nonbatched_bias=None, gating=True):
    """AlphaFold's Attention.__call__ (modules.py) in NumPy, float32 as in the model."""
    q_weights, k_weights, v_weights = params["query_w"], params["key_w"], params["value_w"]
    key_dim = q_weights.shape[-1]
    q = np.einsum("bqa,ahc->bqhc", q_data, q_weights) * key_dim ** (-0.5)
    k = np.einsum("bka,ahc->bkhc", m_data, k_weights)
    v = np.einsum("bka,ahc->bkhc", m_data, v_weights)
    logits = np.einsum("bqhc,bkhc->bhqk", q, k)
    if nonbatched_bias is not None:
        logits += np.expand_dims(nonbatched_bias, axis=0)
    logits = np.where(mask, logits, np.float32(SOFTMAX_MASK))
    weights = softmax(logits)
    weighted_avg = np.einsum("bhqk,bkhc->bqhc", weights, v)
    if gating:
        gate_values = np.einsum("bqc, chv->bqhv", q_data, params["gating_w"]) + params["gating_b"]
        weighted_avg *= 1 / (1 + np.exp(-gate_values))
    return np.einsum("bqhc,hco->bqo", weighted_avg, params["output_w"]) + params["output_b"]


def alphafold_linear(params, x):
    """common_modules.Linear with num_input_dims=1: `...a, ah->...h` plus bias."""
    return np.einsum("...a,ah->...h", x, params["weights"]) + params["bias"]


def alphafold_layer_norm(params, x, eps):
    """common_modules.LayerNorm over the last axis with scale and offset (hk.LayerNorm)."""
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * params["scale"] + params["offset"]


@pytest.fixture(scope="module")
def gated_zero_bias_model(tmp_path_factory) -> Path:
    """A Keras MultiHeadAttention(use_gate=True) whose query/key/value biases are zero
    (AlphaFold has none) and whose other weights are random, saved as .keras."""
    x = keras.Input((5, 8), name="x")
    mha = keras.layers.MultiHeadAttention(
        num_heads=2, key_dim=4, value_dim=3, use_gate=True, name="attention"
    )
    model = keras.Model(x, mha(x, x))
    rng = np.random.default_rng(3)
    weights = []
    for var in mha.weights:
        is_qkv_bias = (
            var.path.endswith("bias") and "output" not in var.path and "gate" not in var.path
        )
        value = rng.normal(0, 0.5, var.shape).astype("float32")
        weights.append(np.zeros(var.shape, "float32") if is_qkv_bias else value)
    mha.set_weights(weights)
    path = tmp_path_factory.mktemp("haiku") / "gated.keras"
    model.save(path)
    return path


def test_haiku_gated_attention(gated_zero_bias_model: Path, tmp_path: Path) -> None:
    manifest, arrays = export(gated_zero_bias_model, tmp_path / "af.npz", "haiku")
    params = flat_params_to_haiku(arrays)
    assert {k: v.shape for k, v in params["attention"].items()} == {
        "query_w": (8, 2, 4),
        "key_w": (8, 2, 4),
        "gating_w": (8, 2, 3),
        "gating_b": (2, 3),
        "value_w": (8, 2, 3),
        "output_w": (2, 3, 8),
        "output_b": (8,),
    }
    (args,) = [m["args"] for m in manifest["modules"]]
    assert args == {"num_head": 2, "key_dim": 8, "value_dim": 6, "gating": True, "output_dim": 8}
    model = keras.saving.load_model(gated_zero_bias_model)
    x = np.random.default_rng(5).normal(size=(3, 5, 8)).astype("float32")
    everything = np.ones((3, 1, 5, 5), bool)
    actual = alphafold_attention(params["attention"], x, x, everything)
    assert_close(actual, np.asarray(model(x)))

    # Masks: Keras's attention_mask (B,T,S) against AlphaFold's mask (B,1,T,S), and a
    # mask shared by the batch given as AlphaFold's nonbatched_bias (T,S) instead.
    mha = model.get_layer("attention")
    shared = np.tril(np.ones((5, 5), bool)) | np.eye(5, k=2, dtype=bool)
    keras_masked = np.asarray(mha(x, x, attention_mask=np.broadcast_to(shared, (3, 5, 5))))
    by_mask = alphafold_attention(params["attention"], x, x, shared[None, None])
    assert_close(by_mask, keras_masked)
    bias = np.where(shared, 0.0, SOFTMAX_MASK).astype("float32")
    by_bias = alphafold_attention(params["attention"], x, x, everything, nonbatched_bias=bias)
    assert_close(by_bias, keras_masked)


def test_haiku_ungated_attention_without_biases(tmp_path: Path) -> None:
    """No gate: exported without gating_w/b (AlphaFold's gating=False); no output bias in
    Keras (use_bias=False): output_b is written as zeros."""
    src = fixture_path("mha_nobias_keras")
    manifest, arrays = export(src, tmp_path / "af.npz", "haiku")
    params = flat_params_to_haiku(arrays)["attention"]
    assert sorted(params) == ["key_w", "output_b", "output_w", "query_w", "value_w"]
    assert not params["output_b"].any()
    (args,) = [m["args"] for m in manifest["modules"]]
    assert args["gating"] is False
    x = inputs("mha_nobias")["x"]
    actual = alphafold_attention(params, x, x, np.ones((1, 1, 5, 5), bool), gating=False)
    assert_close(actual, keras_output(src, x))


def test_haiku_transformer_block(tmp_path: Path) -> None:
    """The whole block in AlphaFold's modules: Attention, LayerNorm, Linear."""
    src = fixture_path("transformer_block_keras")
    manifest, arrays = export(src, tmp_path / "af.npz", "haiku")
    p = flat_params_to_haiku(arrays)
    eps = {m["layer"]: m["args"]["eps"] for m in manifest["modules"] if "eps" in m["args"]}
    x = inputs("transformer_block")["x"]
    a = alphafold_attention(p["attention"], x, x, np.ones((1, 1, 5, 5), bool), gating=False)
    h = alphafold_layer_norm(p["attention_norm"], x + a, eps["attention_norm"])
    f = alphafold_linear(p["ffn_in"], h)
    f = 0.5 * f * (1 + np.vectorize(math.erf)(f / math.sqrt(2)))  # exact gelu
    f = alphafold_linear(p["ffn_out"], f.astype("float32"))
    out = alphafold_layer_norm(p["ffn_norm"], h + f, eps["ffn_norm"])
    assert_close(out, keras_output(src, x))


def test_haiku_refusal_names_the_largest_bias(tmp_path: Path) -> None:
    src = fixture_path("mha_gate_keras")
    mha = keras_model(src).get_layer("attention")
    peaks = {}
    for part in ("query", "key", "value"):
        bias = getattr(mha, f"_{part}_dense").bias
        peaks[f"{part}.bias"] = float(np.max(np.abs(np.asarray(bias))))
    worst = max(peaks, key=peaks.get)
    assert peaks[worst] > 0
    with open_reader(src) as reader, pytest.raises(LayoutRefused) as info:
        export_npz(reader, tmp_path / "af.npz", ExportOptions(layout="haiku"))
    assert f"non-zero {worst} (max |b| = {peaks[worst]:.4g})" in info.value.message
    assert not (tmp_path / "af.npz").exists()


# --- keras layout: roles in the manifest, names for anonymous tensors -----------------------


def test_keras_layout_names_anonymous_tensors_by_role(tmp_path: Path) -> None:
    manifest, arrays = export(fixture_path("seed_keras3_export"), tmp_path / "a.npz", "keras")
    _, named = export(fixture_path("seed_legacy_h5"), tmp_path / "b.npz", "keras")
    assert list(arrays) == list(named)  # multi_head_attention/query/kernel, ...
    for key, value in named.items():
        assert arrays[key].tobytes() == value.tobytes(), key
    first = manifest["variables"][0]
    assert first["key"] == first["name"] == "multi_head_attention/query/kernel"
    assert first["source_key"] == "variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    assert first["source_names"] == ["variables/0"]
    assert first["role"] == {
        "layer": "multi_head_attention",
        "class": "MultiHeadAttention",
        "role": "query.kernel",
        "evidence": "graph",
    }


def test_keras_layout_roles_from_config(tmp_path: Path) -> None:
    manifest, _ = export(fixture_path("transformer_block_keras"), tmp_path / "a.npz", "keras")
    roles = {v["name"]: v["role"] for v in manifest["variables"]}
    assert roles["attention/query/kernel"] == {
        "layer": "attention",
        "class": "MultiHeadAttention",
        "role": "query.kernel",
        "evidence": "config",
    }
    assert roles["ffn_norm/beta"]["layer"] == "ffn_norm"
    assert all(v["transform"] is None for v in manifest["variables"])


@pytest.mark.parametrize("layout", ["torch-mha", "haiku"])
def test_partial_attention_layer_is_refused(layout: str, tmp_path: Path) -> None:
    """--filter picking only some projections of an attention layer that these layouts
    must see whole (packed q/k/v; AlphaFold's fixed parameter set)."""
    src = fixture_path("transformer_block_keras")
    options = ExportOptions(layout=layout, pattern="*query*")
    with open_reader(src) as reader, pytest.raises(LayoutRefused, match="part"):
        export_npz(reader, tmp_path / "p.npz", options)
    assert not (tmp_path / "p.npz").exists()


def test_ported_layouts_refuse_optimizer_state(tmp_path: Path) -> None:
    with open_reader(fixture_path("seed_keras")) as reader, pytest.raises(LayoutRefused):
        options = ExportOptions(layout="torch", include_optimizer=True)
        export_npz(reader, tmp_path / "o.npz", options)


# --- the README walk-through ------------------------------------------------------------------

README_EXPORT = "ckpt-tool export fixtures/seed/seed_keras/seed.keras --layout torch -o seed.npz"
README_SNIPPET = """\
import numpy as np, torch, torch.nn.functional as F

w = {k: torch.from_numpy(v) for k, v in np.load("seed.npz").items() if k != "__manifest__"}
x = torch.from_numpy(np.load("fixtures/seed/inputs.npz")["x"])  # (batch, 2, 3)
fc = lambda name, t: F.linear(t, w[f"{name}.weight"], w[f"{name}.bias"])
q, k, v = (fc(f"multi_head_attention.{p}_proj", x).unflatten(-1, (2, 4)).transpose(1, 2) for p in "qkv")
y = fc("dense", fc("multi_head_attention.out_proj", F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)))
"""


def test_readme_walkthrough(tmp_path: Path) -> None:
    """The README's commands, run as written from a directory holding `fixtures/`."""
    (tmp_path / "fixtures").symlink_to(FIXTURES)
    result = run_cli(*README_EXPORT.split()[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    namespace: dict = {}
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        exec(README_SNIPPET, namespace)  # the five lines, exactly as the README shows them
    finally:
        os.chdir(cwd)
    x = inputs("seed")["x"]
    assert_close(namespace["y"], keras_output(fixture_path("seed_keras"), x))


def test_readme_shows_the_tested_walkthrough() -> None:
    readme = (FIXTURES.parent / "README.md").read_text()
    if "--layout torch" not in readme:
        pytest.skip("README has no torch walk-through yet")
    assert README_EXPORT in readme
    assert README_SNIPPET in readme
