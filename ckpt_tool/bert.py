"""Google BERT's TF1 name-based checkpoints: roles by names, the forward graph, and
the Hugging Face names of every weight.

Names (Google's `modeling.py`; the `bert/` prefix may be absent or different):

    bert/embeddings/{word,token_type,position}_embeddings, bert/embeddings/LayerNorm/{gamma,beta}
    bert/encoder/layer_N/attention/self/{query,key,value}/{kernel (D,D), bias (D,)}
    bert/encoder/layer_N/attention/output/dense/{kernel,bias}, .../attention/output/LayerNorm
    bert/encoder/layer_N/intermediate/dense/{kernel (D,I),bias}
    bert/encoder/layer_N/output/dense/{kernel (I,D),bias}, .../output/LayerNorm
    bert/pooler/dense/{kernel,bias}

The 2-D (D, D) attention kernels hold every head side by side: their shapes fit any
number of heads that divides D, so the count comes from `bert_config.json`
(`num_attention_heads`) or the user. `hidden_act: "gelu"` means the tanh
approximation in Google's TensorFlow code (and the erf form in Hugging Face's);
verify tries both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ckpt_tool.errors import UsageError
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.roles import NAMES, Layer, RoleMap

CONFIG_FILE = "bert_config.json"
EPSILON = 1e-12  # contrib layer_norm, as BERT uses it

_LAYER = re.compile(r"^(?P<prefix>(?:.*/)?)encoder/layer_(?P<index>\d+)/(?P<rest>.+)$")
_QUERY = re.compile(r"^(?P<prefix>(?:.*/)?)encoder/layer_\d+/attention/self/query/kernel$")
_PARAM = {"kernel": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta"}
# Google's activation names -> our kernels; "gelu" is the tanh form in Google's code.
_ACTIVATIONS = {"gelu": "gelu_approximate", "gelu_new": "gelu_approximate"}


# --------------------------------------------------------------------------- config


def find_bert_config(path: str | Path) -> Path | None:
    """`bert_config.json` beside a checkpoint prefix, in a SavedModel or its assets."""
    path = Path(path)
    places = [path, path / "assets", path.parent] if path.is_dir() else [path.parent]
    for place in places:
        candidate = place / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def load_bert_config(path: str | Path) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the BERT config: {exc.strerror}", path) from None
    except ValueError as exc:
        raise UsageError(f"the BERT config is not JSON: {exc}", path) from None
    if not isinstance(config, dict):
        raise UsageError("the BERT config is not a JSON object", path)
    return config


def bert_prefix(infos: Sequence[VariableInfo]) -> str | None:
    """The scope BERT's variables live under (`bert/`, `""`, ...), None if not BERT."""
    for info in infos:
        for name in (info.name, *info.aliases):
            m = _QUERY.match(name)
            if m:
                return m.group("prefix")
    return None


# --------------------------------------------------------------------------- roles


def bert_layers(
    infos: Sequence[VariableInfo], bert_config: dict | None
) -> tuple[list[Layer], list[VariableInfo]]:
    """The BERT layers among `infos` (roles by names), and the variables left over."""
    prefix = bert_prefix(infos)
    if prefix is None:
        return [], list(infos)
    config = bert_config or {}
    heads = config.get("num_attention_heads")
    by_name = _Default({info.name: info for info in infos})
    used: set[str] = set()
    layers: list[Layer] = []

    def take(layer: str, class_name: str, roles: dict[str, str], cfg: dict) -> Layer | None:
        found = {role: by_name[f"{layer}/{name}"] for role, name in roles.items()}
        found = {role: info for role, info in found.items() if info is not None}
        if not found:
            return None
        used.update(info.key for info in found.values())
        weights = {role: info.key for role, info in found.items()}
        if "kernel" in found:  # the width the kernel has, whatever a config says
            cfg = {**cfg, "units": int(found["kernel"].shape[-1])} if "units" in cfg else cfg
        entry = Layer(layer.rstrip("/"), class_name, cfg, weights, NAMES)
        layers.append(entry)
        return entry

    emb = f"{prefix}embeddings"
    d = _hidden_size(infos, prefix, config)
    embeddings = take(
        emb,
        "BertEmbeddings",
        {
            "word_embeddings": "word_embeddings",
            "token_type_embeddings": "token_type_embeddings",
            "position_embeddings": "position_embeddings",
            "LayerNorm.gamma": "LayerNorm/gamma",
            "LayerNorm.beta": "LayerNorm/beta",
        },
        {"epsilon": EPSILON, "hidden_size": d},
    )
    if embeddings is not None:  # some BERTs have no token types
        types = by_name[f"{emb}/token_type_embeddings"]
        embeddings.config["type_vocab_size"] = int(types.shape[0]) if types else 0
    act = config.get("hidden_act", "gelu")
    activation = _ACTIVATIONS.get(act, act)
    for index in _layer_indices(infos, prefix):
        base = f"{prefix}encoder/layer_{index}"
        attention = take(
            f"{base}/attention/self",
            "BertSelfAttention",
            {f"{p}.{w}": f"{p}/{w}" for p in ("query", "key", "value") for w in ("kernel", "bias")},
            {"num_heads": heads, "hidden_size": d},
        )
        if attention is not None:
            if heads is None:
                attention.notes.append(_heads_note(d))
            else:
                attention.notes.append(f"num_heads {heads} from {CONFIG_FILE}")
        dense = {"kernel": "kernel", "bias": "bias"}
        norm = {"gamma": "gamma", "beta": "beta"}
        ln_config = {"axis": -1, "epsilon": EPSILON, "center": True, "scale": True}
        take(f"{base}/attention/output/dense", "Dense", dense, _dense_config(d, "linear"))
        take(f"{base}/attention/output/LayerNorm", "LayerNormalization", norm, ln_config)
        inter = take(
            f"{base}/intermediate/dense",
            "Dense",
            dense,
            _dense_config(config.get("intermediate_size"), activation),
        )
        if inter is not None and act == "gelu":
            inter.config_alternatives.append({"activation": "gelu"})
            inter.notes.append(
                "hidden_act 'gelu' is the tanh form in Google's TensorFlow BERT "
                "(Hugging Face: the erf form): verify tries both"
            )
        take(f"{base}/output/dense", "Dense", dense, _dense_config(d, "linear"))
        take(f"{base}/output/LayerNorm", "LayerNormalization", norm, ln_config)
    take(f"{prefix}pooler/dense", "BertPooler", {"kernel": "kernel", "bias": "bias"}, {})
    rest = [info for info in infos if info.key not in used]
    return layers, rest


class _Default(dict):
    def __missing__(self, key: str) -> None:
        return None


def _hidden_size(infos: Sequence[VariableInfo], prefix: str, config: dict) -> int | None:
    for info in infos:
        if info.name == f"{prefix}encoder/layer_0/attention/self/query/kernel":
            return int(info.shape[-1])
    return config.get("hidden_size")


def _layer_indices(infos: Sequence[VariableInfo], prefix: str) -> list[int]:
    found = set()
    for info in infos:
        m = _LAYER.match(info.name)
        if m and m.group("prefix") == prefix:
            found.add(int(m.group("index")))
    return sorted(found)


def _dense_config(units: int | None, activation: str) -> dict:
    return {"units": units, "activation": activation, "use_bias": True}


def _heads_note(d: int | None) -> str:
    fits = [n for n in range(1, (d or 0) + 1) if d and d % n == 0]
    return (
        f"number of heads unknown: the ({d}, {d}) kernels fit {', '.join(map(str, fits))} "
        f"heads alike; give {CONFIG_FILE} beside the checkpoint or --num-heads"
    )


def missing_heads(role_map: RoleMap) -> str | None:
    """Why BERT's attention cannot run yet (no head count), or None."""
    for layer in role_map.layers:
        if layer.class_name == "BertSelfAttention" and not layer.config.get("num_heads"):
            d = layer.config.get("hidden_size")
            return (
                f"the number of attention heads is not in the weights: the ({d}, {d}) "
                f"query/key/value kernels of {layer.name} fit any head count dividing {d}. "
                f"Put the model's {CONFIG_FILE} beside the checkpoint or pass --num-heads N"
            )
    return None


def set_num_heads(role_map: RoleMap, num_heads: int) -> None:
    """Use `num_heads` for every BERT attention layer (the user's --num-heads)."""
    for layer in role_map.layers:
        if layer.class_name == "BertSelfAttention":
            d = layer.config.get("hidden_size")
            if num_heads <= 0 or (d and d % num_heads):
                raise UsageError(
                    f"--num-heads {num_heads} does not divide the hidden size {d} of {layer.name}"
                )
            layer.config = {**layer.config, "num_heads": num_heads}
            layer.notes = [n for n in layer.notes if "heads" not in n]
            layer.notes.append(f"num_heads {num_heads} given by the user")


def is_bert(role_map: RoleMap) -> bool:
    return any(layer.class_name == "BertSelfAttention" for layer in role_map.layers)


# --------------------------------------------------------------------------- graph


def bert_graph(role_map: RoleMap):
    """BERT's forward pass over the mapped layers: inputs input_ids, token_type_ids,
    attention_mask; outputs sequence_output (B,T,D) and pooled_output (B,D) (when
    the checkpoint has a pooler). Residual adds are named as in Google's TF1 graph
    (`.../attention/output/add`, `.../output/add`)."""
    from ckpt_tool.graph import Graph, Node

    names = {layer.name: layer for layer in role_map.layers}
    nodes: list[Node] = []
    inputs = [("input_ids", 0, 0), ("token_type_ids", 0, 0), ("attention_mask", 0, 0)]
    mask = inputs[2]

    def node(name: str, args: list, class_name: str | None = None) -> tuple[str, int, int]:
        layer = names.get(name)
        cls = class_name or layer.class_name  # type: ignore[union-attr]
        config = layer.config if layer is not None else {"name": name}
        nodes.append(Node(name, cls, config, 0, args))
        return (name, 0, 0)

    emb = next(layer for layer in role_map.layers if layer.class_name == "BertEmbeddings")
    x = node(emb.name, [inputs[0], inputs[1]])
    attention_layers = [
        layer for layer in role_map.layers if layer.class_name == "BertSelfAttention"
    ]
    for attention in attention_layers:
        base = attention.name.removesuffix("/attention/self")
        layer_input = x
        ctx = node(attention.name, [x, mask])
        h = node(f"{base}/attention/output/dense", [ctx])
        h = node(f"{base}/attention/output/add", [[h, layer_input]], "Add")
        attention_output = node(f"{base}/attention/output/LayerNorm", [h])
        h = node(f"{base}/intermediate/dense", [attention_output])
        h = node(f"{base}/output/dense", [h])
        h = node(f"{base}/output/add", [[h, attention_output]], "Add")
        x = node(f"{base}/output/LayerNorm", [h])
    outputs = [x]
    output_names = ["sequence_output"]
    pooler = next((layer for layer in role_map.layers if layer.class_name == "BertPooler"), None)
    if pooler is not None:
        outputs.append(node(pooler.name, [x]))
        output_names.append("pooled_output")
    return Graph(
        inputs,
        nodes,
        outputs,
        "BERT (Google modeling.py)",
        [r[0] for r in inputs],
        output_names=output_names,
    )


# --------------------------------------------------------------------------- Hugging Face


def hf_bert_state_dict_names(role_map: RoleMap) -> dict[str, str]:
    """Variable key -> the name Hugging Face's BERT (`BertModel`, `BertForPreTraining`)
    gives that weight in its state_dict, e.g.

        bert/encoder/layer_0/attention/self/query/kernel -> bert.encoder.layer.0.attention.self.query.weight
        bert/embeddings/LayerNorm/gamma                  -> bert.embeddings.LayerNorm.weight

    The TF scope prefix is kept (`bert/` -> `bert.`, no prefix -> none), as
    Hugging Face's `load_tf_weights_in_bert` does. Every `*.weight` of a Linear
    (`hf_bert_is_linear_weight`) must be transposed: TF kernels are (in, out),
    `torch.nn.Linear.weight` is (out, in). Embedding tables and LayerNorm keep their shape."""
    names: dict[str, str] = {}
    for layer in role_map.layers:
        if layer.class_name not in _HF_CLASSES or layer.evidence != NAMES:
            continue
        base = layer.name.replace("/", ".")
        base = re.sub(r"\.layer_(\d+)\.", r".layer.\1.", base)
        for role, key in layer.weights.items():
            names[key] = f"{base}.{_hf_param(role)}"
    return names


_HF_CLASSES = ("BertEmbeddings", "BertSelfAttention", "Dense", "LayerNormalization", "BertPooler")


def _hf_param(role: str) -> str:
    """Our role -> Hugging Face's attribute path below the layer."""
    part, _, param = role.rpartition(".")
    hf = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}.get(param)
    if hf is None:  # embedding tables: word_embeddings -> word_embeddings.weight
        return f"{role}.weight"
    return f"{part}.{hf}" if part else hf


def hf_bert_is_linear_weight(hf_name: str) -> bool:
    """True for the (out, in) weights of torch.nn.Linear (transposed from TF kernels)."""
    return hf_name.endswith(".weight") and not (
        "LayerNorm" in hf_name or hf_name.endswith("_embeddings.weight")
    )


def hf_bert_state_dict(
    role_map: RoleMap, read: Callable[[str], np.ndarray]
) -> dict[str, np.ndarray]:
    """The Hugging Face state_dict itself: names from `hf_bert_state_dict_names`,
    Linear weights transposed to (out, in), everything else as stored."""
    out = {}
    for key, hf_name in hf_bert_state_dict_names(role_map).items():
        array = np.asarray(read(key))
        out[hf_name] = np.ascontiguousarray(array.T) if hf_bert_is_linear_weight(hf_name) else array
    return out
