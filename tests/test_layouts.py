"""`export --layout torch|torch-mha|haiku`: each layout is proven by running the target
computation on the exported arrays and comparing with the Keras model itself.

- torch: small PyTorch modules written here (nn.Linear projections, nn.LayerNorm) load the
  export with `load_state_dict(strict=True)` and reproduce the Keras outputs;
- torch-mha: `torch.nn.MultiheadAttention` loads it and reproduces them;
- haiku: AlphaFold's own loading, `flat_params_to_haiku(np.load(export))`, then AlphaFold
  2.0's `Attention` and `Linear` and `haiku.LayerNorm` under `hk.transform`
  (tests/alphafold_reference.py) reproduce them.

Layouts with a standard loader keep the manifest beside the archive, so that every member
is a parameter: the arrays load as they are.
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

from ckpt_tool.diff import match_tensors
from ckpt_tool.errors import CorruptFileError, UsageError
from ckpt_tool.export import MANIFEST_KEY, ExportOptions, export_npz, manifest_beside
from ckpt_tool.layouts import STANDARD_LOADERS, LayoutRefused
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
    """Export `src` with `layout`, then read it back as a user would (np.load). A layout
    with a standard loader has only parameters in the archive, its manifest beside it."""
    options = ExportOptions(layout=layout, force=True, torch_prefix=torch_prefix)
    with open_reader(src) as reader:
        export_npz(reader, out, options)
    with np.load(out, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if layout in STANDARD_LOADERS:
        assert MANIFEST_KEY not in arrays
        return json.loads(manifest_beside(out).read_text()), arrays
    assert not manifest_beside(out).exists()
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
    manifest = json.loads(manifest_beside(tmp_path / "b.npz").read_text())
    with np.load(tmp_path / "b.npz") as z:
        assert z.files == list(expected)
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


# --- haiku (AlphaFold 2.0) ------------------------------------------------------------------
# The exported file goes through AlphaFold's own loading (`flat_params_to_haiku(np.load(f))`)
# and AlphaFold 2.0's modules under `hk.transform` (tests/alphafold_reference.py): the
# parameters the modules create must be exactly the exported names and shapes, and their
# outputs must be Keras's to float32 rounding.


@pytest.fixture(scope="module")
def af():
    """AlphaFold 2.0's modules (jax and Haiku on CPU, imported once)."""
    from tests import alphafold_reference

    return alphafold_reference


def shapes(params) -> dict:
    return {scope: {k: tuple(v.shape) for k, v in p.items()} for scope, p in params.items()}


def haiku_run(af, build, params, *args):
    """Run `build(*args)` under hk.transform with `params` (jitted), after checking that it
    creates exactly the parameters given (names and shapes, traced without running)."""
    import haiku as hk
    import jax

    fn = hk.transform(build)
    assert shapes(jax.eval_shape(fn.init, jax.random.PRNGKey(0), *args)) == shapes(params)
    return np.asarray(jax.jit(fn.apply)(params, None, *args))


def attention_module(af, entry: dict):
    """AlphaFold's Attention built as the manifest's `modules` entry says."""
    assert af.MODULES[entry["module"]] is af.Attention
    a = entry["args"]
    config, global_config = af.Config(a["config"]), af.Config(a["global_config"])
    return af.Attention(config, global_config, a["output_dim"], name=entry["prefix"])


def padding_bias(mask: np.ndarray) -> np.ndarray:
    """A (B,K) key mask as AlphaFold 2.0 passes it to Attention: (1e9 * (mask - 1))[:, None,
    None, :] (MSARowAttentionWithPairBias)."""
    return (1e9 * (mask.astype("float32") - 1.0))[:, None, None, :]


def zero_qkv_biases(mha) -> None:
    """Random weights, query/key/value biases zero (AlphaFold has none)."""
    rng = np.random.default_rng(3)
    weights = []
    for var in mha.weights:
        part = var.path.split("/")[-2]
        value = rng.normal(0, 0.5, var.shape).astype("float32")
        is_qkv_bias = var.path.endswith("bias") and part in ("query", "key", "value")
        weights.append(np.zeros(var.shape, "float32") if is_qkv_bias else value)
    mha.set_weights(weights)


@pytest.fixture(scope="module")
def gated_cross_attention(tmp_path_factory) -> Path:
    """MultiHeadAttention(use_gate=True) from queries (B,4,6) to values (B,5,10), value_dim
    3 != key_dim 4, output_shape 7, zero query/key/value biases, saved as .keras."""
    query, value = keras.Input((4, 6), name="query"), keras.Input((5, 10), name="value")
    mha = keras.layers.MultiHeadAttention(
        num_heads=2, key_dim=4, value_dim=3, output_shape=7, use_gate=True, name="attention"
    )
    model = keras.Model([query, value], mha(query, value))
    zero_qkv_biases(mha)
    path = tmp_path_factory.mktemp("haiku") / "gated.keras"
    model.save(path)
    return path


def test_haiku_gated_cross_attention_with_masks(
    af, gated_cross_attention: Path, tmp_path: Path
) -> None:
    out = tmp_path / "af.npz"
    manifest, _ = export(gated_cross_attention, out, "haiku")
    params = af.flat_params_to_haiku(np.load(out))  # AlphaFold's own call, as it is
    assert shapes(params) == {
        "attention": {
            "query_w": (6, 2, 4),
            "key_w": (10, 2, 4),
            "value_w": (10, 2, 3),
            "gating_w": (6, 2, 3),
            "gating_b": (2, 3),
            "output_w": (2, 3, 7),
            "output_b": (7,),
        }
    }
    (entry,) = manifest["modules"]
    assert entry["args"]["config"] == {"num_head": 2, "key_dim": 8, "value_dim": 6, "gating": True}
    model = keras.saving.load_model(gated_cross_attention)
    mha = model.get_layer("attention")
    rng = np.random.default_rng(5)
    q = rng.normal(size=(3, 4, 6)).astype("float32")
    m = rng.normal(size=(3, 5, 10)).astype("float32")

    def run(bias, nonbatched_bias=None):
        build = lambda q, m, b, nb: attention_module(af, entry)(q, m, b, nb)  # noqa: E731
        return haiku_run(af, build, params, q, m, bias, nonbatched_bias)

    no_bias = np.zeros((4, 5), "float32")
    assert_close(run(np.zeros((3, 1, 1, 5), "float32"), no_bias), np.asarray(model([q, m])))
    # A key padding mask per example as AlphaFold builds its bias, and a mask shared by
    # the batch as its nonbatched_bias, against Keras's attention_mask (B,Q,K).
    keys = np.ones((3, 5), bool)
    keys[0, 3:], keys[2, 1] = False, False
    shared = np.tril(np.ones((4, 5), bool), k=1)
    keras_masked = np.asarray(mha(q, m, attention_mask=keys[:, None, :] & shared))
    shared_bias = np.where(shared, 0.0, -1e9).astype("float32")
    assert_close(run(padding_bias(keys), shared_bias), keras_masked)
    assert np.abs(keras_masked - np.asarray(model([q, m]))).max() > 1e-2  # the masks matter


def test_haiku_ungated_attention_without_biases(af, tmp_path: Path) -> None:
    """No gate: exported without gating_w/b (AlphaFold's gating=False); no output bias in
    Keras (use_bias=False): output_b is written as zeros."""
    src = fixture_path("mha_nobias_keras")
    out = tmp_path / "af.npz"
    manifest, _ = export(src, out, "haiku")
    params = af.flat_params_to_haiku(np.load(out))
    assert sorted(params["attention"]) == ["key_w", "output_b", "output_w", "query_w", "value_w"]
    assert not np.asarray(params["attention"]["output_b"]).any()
    (entry,) = manifest["modules"]
    assert entry["args"]["config"]["gating"] is False
    x = inputs("mha_nobias")["x"]
    build = lambda x, b: attention_module(af, entry)(x, x, b)  # noqa: E731
    actual = haiku_run(af, build, params, x, np.zeros((1, 1, 1, 5), "float32"))
    assert_close(actual, keras_output(src, x))


def test_haiku_transformer_block(af, tmp_path: Path) -> None:
    """The whole block as AlphaFold 2.0's modules, each built from its manifest entry:
    Attention, haiku.LayerNorm, common_modules.Linear. AlphaFold's Attention has no
    query/key/value biases: the trained block (biases non-zero) is refused, and a copy
    with those biases zeroed (saved by Keras) ports exactly."""
    import jax

    trained = fixture_path("transformer_block_keras")
    with open_reader(trained) as reader, pytest.raises(LayoutRefused, match="non-zero"):
        export_npz(reader, tmp_path / "refused.npz", ExportOptions(layout="haiku"))
    model = keras.saving.load_model(trained)
    mha = model.get_layer("attention")
    for part in (mha._query_dense, mha._key_dense, mha._value_dense):
        part.bias.assign(np.zeros(part.bias.shape, np.float32))
    src = tmp_path / "no_qkv_biases.keras"
    model.save(src)
    out = tmp_path / "af.npz"
    manifest, _ = export(src, out, "haiku")
    params = af.flat_params_to_haiku(np.load(out))
    modules = {m["layer"]: m for m in manifest["modules"]}
    assert {m["module"] for m in modules.values()} == {
        "alphafold.model.modules.Attention",
        "haiku.LayerNorm",
        "alphafold.model.common_modules.Linear",
    }

    def build(name: str):
        """The module the manifest names, with its arguments, then any activation."""
        entry = modules[name]
        module = af.MODULES[entry["module"]](**entry["args"], name=entry["prefix"])
        activation = {"gelu": lambda t: jax.nn.gelu(t, approximate=False), "linear": None}
        act = activation[entry.get("activation", "linear")]  # Keras "gelu": the erf form
        return (lambda t: act(module(t))) if act else module

    def block(x, bias):
        a = attention_module(af, modules["attention"])(x, x, bias)
        h = build("attention_norm")(x + a)
        f = build("ffn_out")(build("ffn_in")(h))
        return build("ffn_norm")(h + f)

    x = inputs("transformer_block")["x"]
    actual = haiku_run(af, block, params, x, np.zeros((1, 1, 1, 5), "float32"))
    assert_close(actual, keras_output(src, x))


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


def _called_with_key(path: Path, separate: bool) -> Path:
    """MultiHeadAttention(q, v, key=k): k a tensor of its own (of v's width) or v itself."""
    query, value = keras.Input((4, 8), name="query"), keras.Input((5, 8), name="value")
    key = keras.Input((5, 8), name="key_input") if separate else value
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attention")
    inputs_ = [query, value, key] if separate else [query, value]
    model = keras.Model(inputs_, mha(query, value, key=key))
    zero_qkv_biases(mha)
    model.save(path)
    return path


def test_haiku_refuses_a_separate_key_input(tmp_path: Path) -> None:
    """AlphaFold computes keys from m_data (Keras's value): a model that passes a key tensor
    of its own is refused in one line, exit 2, nothing written; key=value is fine."""
    from click.testing import CliRunner

    from ckpt_tool.cli import cli

    src = _called_with_key(tmp_path / "separate.keras", separate=True)
    out = tmp_path / "out" / "af.npz"
    out.parent.mkdir()
    args = ["export", str(src), "-o", str(out), "--layout", "haiku"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "key tensor of its own (key from 'key_input', value from 'value')" in lines[0]
    assert os.listdir(out.parent) == []

    same = _called_with_key(tmp_path / "same.keras", separate=False)
    manifest, _ = export(same, tmp_path / "same.npz", "haiku")
    assert [m["layer"] for m in manifest["modules"]] == ["attention"]
    assert not any("how it is called" in note for note in manifest.get("notes", []))


def test_haiku_notes_masks_and_axes_the_caller_must_give(tmp_path: Path) -> None:
    """Keras applies a causal mask, a sliding window and attention axes itself; AlphaFold's
    Attention takes them from its caller: the manifest's notes say so."""
    x = keras.Input((3, 5, 8), name="x")
    mha = keras.layers.MultiHeadAttention(
        num_heads=2, key_dim=4, sliding_window=2, attention_axes=(2,), name="attention"
    )
    model = keras.Model(x, mha(x, x, use_causal_mask=True))
    zero_qkv_biases(mha)
    model.save(tmp_path / "masked.keras")
    manifest, _ = export(tmp_path / "masked.keras", tmp_path / "af.npz", "haiku")
    notes = "\n".join(manifest["notes"])
    assert "the causal mask (use_causal_mask=True) and the band of sliding_window=2" in notes
    assert "attends over axes [2]" in notes


def test_haiku_without_a_config_says_what_it_assumes(tmp_path: Path) -> None:
    """Weights alone (a SavedModel's variables read as a plain checkpoint: no config, no
    serving graph) cannot tell the call: the manifest says what the port assumes."""
    variables = fixture_path("mha_nobias_savedmodel") / "variables" / "variables"
    manifest, _ = export(variables, tmp_path / "af.npz", "haiku")
    assert any("computes keys from its m_data" in note for note in manifest["notes"])


@pytest.mark.parametrize("layout", ["torch", "torch-mha", "haiku"])
def test_standard_loader_layouts_keep_the_manifest_beside(layout: str, tmp_path: Path) -> None:
    """Every member is a parameter; `list` and `diff` still read names, roles and source
    keys from OUT.manifest.json."""
    src = fixture_path("mha_nobias_keras")
    out = tmp_path / "out.npz"
    manifest, arrays = export(src, out, layout)
    with open_reader(out) as reader:
        back = reader.variables()
    assert [i.key for i in back] == list(arrays)
    assert [i.name for i in back] == [v["name"] for v in manifest["variables"]]
    assert all(i.extra["role"]["layer"] == "attention" for i in back)
    if layout == "haiku":  # verbatim arrays: diff pairs them with the source by source key
        assert pairs(src, out)["attention//query_w"] == "attention/query/kernel"
        manifest_beside(out).unlink()
        assert "attention//query_w" not in pairs(src, out)


def pairs(a: Path, b: Path) -> dict[str, str]:
    """What `diff A B` pairs: B's key -> A's name."""
    with open_reader(a) as ra, open_reader(b) as rb:
        matches, _, _ = match_tensors(ra.variables(), rb.variables())
    return {m.b.key: m.a.name for m in matches}


def test_manifest_beside_belongs_to_its_archive(tmp_path: Path) -> None:
    """OUT.manifest.json is part of OUT: refused without --force, removed when a --force
    export puts the manifest inside, and one naming other arrays is refused on reading."""
    src = fixture_path("seed_keras")
    out = tmp_path / "seed.npz"
    export(src, out, "torch")
    side = manifest_beside(out)
    out.unlink()
    with open_reader(src) as reader, pytest.raises(UsageError, match="already exists"):
        export_npz(reader, out, ExportOptions(layout="haiku"))
    export(src, out, "keras")  # --force: the stale manifest beside goes
    assert not side.exists()
    export(src, out, "torch")
    np.savez(out, **{"dense.weight": np.zeros((1, 3), "float32")})
    with pytest.raises(CorruptFileError, match="belongs to another export") as info:
        open_reader(out)
    assert info.value.path == str(side)


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

w = {k: torch.from_numpy(v) for k, v in np.load("seed.npz").items()}
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
    """The walk-through tested above is the one the README shows: a README without it,
    or with an edited copy, fails here (it never skips)."""
    readme = (FIXTURES.parent / "README.md").read_text()
    assert README_EXPORT in readme, "README lacks the tested `export --layout torch` command"
    assert README_SNIPPET in readme, "README's torch snippet differs from the tested one"
