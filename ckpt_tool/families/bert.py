"""BERT encoders by name: Google's TF1 `modeling.py` checkpoints and Hugging Face's TF
BERT-likes (`TFBertModel`, `TFRobertaModel`, `TFElectraModel`).

Names (the scope prefix, `bert/`, `tf_bert_model/roberta/`, ..., may be anything):

    Google:  embeddings/{word,token_type,position}_embeddings, embeddings/LayerNorm/{gamma,beta}
             encoder/layer_N/...
    HF TF:   embeddings/word_embeddings/weight, embeddings/{token_type,position}_embeddings/embeddings,
             embeddings/LayerNorm/{gamma,beta}, encoder/layer_._N/..., [embeddings_project (ELECTRA)]
    both:    .../attention/self/{query,key,value}/{kernel (D,D), bias (D,)}
             .../attention/output/dense, .../attention/output/LayerNorm
             .../intermediate/dense (D,I), .../output/dense (I,D), .../output/LayerNorm
             pooler/dense (not in ELECTRA)

The 2-D (D, D) attention kernels hold every head side by side: their shapes fit any
number of heads that divides D, so the count comes from the config beside the weights
(`bert_config.json`, or the `config.json` of `save_pretrained`), the user, or `verify`,
which tries every count that fits. `hidden_act: "gelu"` is the tanh approximation in
Google's TensorFlow code and the erf form in Hugging Face's.

PyTorch names are those of Hugging Face's bare `BertModel` (`RobertaModel`, `ElectraModel`):
`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, ...;
Linear weights are the TF kernels transposed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ckpt_tool.families.base import Family
from ckpt_tool.families.huggingface import (
    DENSE,
    NORM,
    VERBATIM,
    HeadCounts,
    NamedLayers,
    TransformersTFModel,
    find_match,
    heads_note,
    keras_param,
    named_torch_arrays,
    norm_config,
    pretrained_dir,
    token_inputs,
    try_other_gelu,
)
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import Layer, RoleMap

EPSILON = 1e-12  # contrib layer_norm as Google's BERT uses it; HF's default too

# `encoder/layer_N/` (Google) or `encoder/layer_._N/` (Hugging Face TF).
_LAYER = re.compile(r"^(?P<prefix>(?:.*/)?)encoder/layer_(?P<hf>\._)?(?P<index>\d+)/(?P<rest>.+)$")
_QUERY = re.compile(
    r"^(?P<prefix>(?:.*/)?)encoder/layer_(?P<hf>\._)?\d+/attention/self/query/kernel$"
)
# Embedding tables as Google and as Hugging Face's TF layers spell them.
_TABLES = {
    "word_embeddings": ("word_embeddings", "word_embeddings/weight"),
    "token_type_embeddings": ("token_type_embeddings", "token_type_embeddings/embeddings"),
    "position_embeddings": ("position_embeddings", "position_embeddings/embeddings"),
}
# Activation names -> our kernels, by who wrote the file.
_GOOGLE_ACTIVATIONS = {"gelu": "gelu_approximate", "gelu_new": "gelu_approximate"}
_HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
}
_GOOGLE_OUTPUTS = ("sequence_output", "pooled_output")


class BertFamily(HeadCounts, Family):
    name = "bert"
    title = "BERT encoder (Google modeling.py / Hugging Face TF)"
    config_files = ("bert_config.json", "config.json")
    attention_classes = ("BertSelfAttention",)
    kernels_text = "({d}, {d}) query/key/value kernels"
    config_text = "bert_config.json (or config.json)"

    def accepts_config(self, config: dict) -> bool:
        kind = config.get("model_type")
        return kind is None or kind in ("bert", "roberta", "electra", "camembert", "xlm-roberta")

    # -- roles ---------------------------------------------------------------------------

    def layers(
        self, infos: Sequence[VariableInfo], config: dict | None
    ) -> tuple[list[Layer], list[VariableInfo]]:
        m = find_match(infos, _QUERY)
        if m is None:
            return [], list(infos)
        prefix, hf = m.group("prefix"), bool(m.group("hf"))
        config = config or {}
        heads = config.get("num_attention_heads")
        named = NamedLayers(infos, prefix)
        eps = float(config.get("layer_norm_eps", EPSILON))
        norm = norm_config(eps)
        d = _hidden_size(infos, prefix, config)
        embeddings = named.take(
            "embeddings",
            "BertEmbeddings",
            {**_TABLES, "LayerNorm.gamma": "LayerNorm/gamma", "LayerNorm.beta": "LayerNorm/beta"},
            {"epsilon": eps, "hidden_size": d, **_position_settings(config)},
        )
        if embeddings is not None:  # the table's width (ELECTRA's is below the hidden size)
            word = embeddings.weights.get("word_embeddings")
            shape = next((i.shape for i in infos if i.key == word), None)
            embeddings.config["hidden_size"] = int(shape[-1]) if shape else d
        if embeddings is not None:  # some BERTs have no token types
            types = embeddings.weights.get("token_type_embeddings")
            shape = next((i.shape for i in infos if i.key == types), None)
            embeddings.config["type_vocab_size"] = int(shape[0]) if shape else 0
        named.dense("embeddings_project", d, "linear")
        act = config.get("hidden_act", "gelu")
        activation = (_HF_ACTIVATIONS if hf else _GOOGLE_ACTIVATIONS).get(act, act)
        sep = "layer_._" if hf else "layer_"
        for index in _layer_indices(infos, prefix):
            base = f"encoder/{sep}{index}"
            qkv = {f"{p}.{w}": f"{p}/{w}" for p in ("query", "key", "value") for w in DENSE}
            notes = [heads_note(d, heads, f"({d}, {d}) kernels", "config file")]
            attention_config = {"num_heads": heads, "hidden_size": d}
            named.take(f"{base}/attention/self", "BertSelfAttention", qkv, attention_config, notes)
            named.dense(f"{base}/attention/output/dense", d, "linear")
            named.take(f"{base}/attention/output/LayerNorm", "LayerNormalization", NORM, norm)
            inter = named.dense(
                f"{base}/intermediate/dense", config.get("intermediate_size"), activation
            )
            if act == "gelu":
                try_other_gelu(
                    inter,
                    "hidden_act 'gelu' is the tanh form in Google's TensorFlow BERT and the "
                    "erf form in Hugging Face's: verify tries both",
                )
            named.dense(f"{base}/output/dense", d, "linear")
            named.take(f"{base}/output/LayerNorm", "LayerNormalization", NORM, norm)
        named.take("pooler/dense", "BertPooler", DENSE, {})
        return named.layers, named.rest(infos)

    def original(self, path, format_name, role_map):
        """A `save_pretrained` directory (`tf_model.h5` + `config.json`) runs with
        transformers; everything else with TensorFlow alone."""
        folder = pretrained_dir(path) if format_name == "h5" else None
        if folder is None:
            return None
        graph = self.graph(role_map)
        # hidden_states: the embeddings' output (after ELECTRA's projection), then each block's
        blocks = [n.layer for n in graph.nodes if n.layer.endswith("/output/LayerNorm")]
        blocks = [n for n in blocks if "/attention/output/" not in n]
        first = next(n.layer for n in graph.nodes if n.class_name != "BertEmbeddings")
        embedded = graph.nodes[[n.layer for n in graph.nodes].index(first) - 1].layer
        hidden = [embedded, *blocks]
        return TransformersTFModel(folder, token_inputs(graph), graph.output_names or [], hidden)

    # -- graph ---------------------------------------------------------------------------

    def graph(self, role_map: RoleMap):
        """The encoder's forward pass: inputs input_ids, token_type_ids, attention_mask;
        outputs sequence_output (B,T,D) and pooled_output (B,D) (when there is a pooler).
        Residual adds are named as in Google's TF1 graph (`.../attention/output/add`)."""
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
        scope = emb.scope or ""
        if f"{scope}embeddings_project" in names:  # ELECTRA: embedding width -> hidden width
            x = node(f"{scope}embeddings_project", [x])
        for attention in self.attention_layers(role_map):
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
        # Output names as each library spells them.
        hf = any("/layer_._" in layer.name for layer in role_map.layers)
        sequence, pooled = ("last_hidden_state", "pooler_output") if hf else _GOOGLE_OUTPUTS
        outputs, output_names = [x], [sequence]
        pooler = next((la for la in role_map.layers if la.class_name == "BertPooler"), None)
        if pooler is not None:
            outputs.append(node(pooler.name, [x]))
            output_names.append(pooled)
        return Graph(
            inputs, nodes, outputs, self.title, [r[0] for r in inputs], output_names=output_names
        )

    # -- PyTorch -------------------------------------------------------------------------

    def torch_arrays(self, inp, lt):
        return named_torch_arrays(inp, lt, _torch_param, torch_module_name)

    def torch_note(self) -> str:
        return (
            "BERT names: keys follow Hugging Face's bare BertModel state_dict "
            "(encoder.layer.0.attention.self.query.weight, ...); --torch-prefix bert. "
            "gives BertForPreTraining's"
        )


def torch_module_name(layer_name: str, scope: str) -> str:
    """`bert/encoder/layer_0/attention/self` (scope `bert/`) -> `encoder.layer.0.attention.self`."""
    name = layer_name.removeprefix(scope).replace("/", ".")
    return re.sub(r"(^|\.)layer_(?:\._)?(\d+)(?=\.|$)", r"\1layer.\2", name)


def _torch_param(role: str, shape: tuple[int, ...]) -> tuple[str, str]:
    """Our role -> BertModel's attribute below the layer's module, and the change (2-D
    kernels transposed: Linear weights are (out, in))."""
    if role in _TABLES:  # word_embeddings -> word_embeddings.weight
        return f"{role}.weight", VERBATIM
    name, how = keras_param(role)
    return name, how if len(shape) == 2 else VERBATIM


def _position_settings(config: dict) -> dict:
    """RoBERTa numbers positions from padding_idx + 1, skipping padding tokens."""
    if config.get("model_type") in ("roberta", "camembert", "xlm-roberta"):
        return {"position_padding_idx": int(config.get("pad_token_id", 1))}
    return {}


def _hidden_size(infos: Sequence[VariableInfo], prefix: str, config: dict) -> int | None:
    for info in infos:
        m = _QUERY.match(info.name)
        if m and m.group("prefix") == prefix:
            return int(info.shape[-1])
    return config.get("hidden_size")


def _layer_indices(infos: Sequence[VariableInfo], prefix: str) -> list[int]:
    found = set()
    for info in infos:
        m = _LAYER.match(info.name)
        if m and m.group("prefix") == prefix:
            found.add(int(m.group("index")))
    return sorted(found)
