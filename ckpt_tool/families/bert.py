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

import numpy as np

from ckpt_tool.errors import UsageError
from ckpt_tool.families.base import Family, MissingDefault
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import NAMES, Layer, RoleMap

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
_DENSE = {"kernel": "kernel", "bias": "bias"}
_GOOGLE_OUTPUTS = ("sequence_output", "pooled_output")
_NORM = {"gamma": "gamma", "beta": "beta"}


class BertFamily(Family):
    name = "bert"
    title = "BERT encoder (Google modeling.py / Hugging Face TF)"
    config_files = ("bert_config.json", "config.json")

    def accepts_config(self, config: dict) -> bool:
        kind = config.get("model_type")
        return kind is None or kind in ("bert", "roberta", "electra", "camembert", "xlm-roberta")

    # -- roles ---------------------------------------------------------------------------

    def layers(
        self, infos: Sequence[VariableInfo], config: dict | None
    ) -> tuple[list[Layer], list[VariableInfo]]:
        found = _prefix(infos)
        if found is None:
            return [], list(infos)
        prefix, hf = found
        config = config or {}
        heads = config.get("num_attention_heads")
        by_name = MissingDefault({info.name: info for info in infos})
        used: set[str] = set()
        layers: list[Layer] = []

        def take(layer: str, class_name: str, roles: dict[str, tuple[str, ...] | str], cfg: dict):
            found: dict[str, VariableInfo] = {}
            for role, names in roles.items():
                for name in (names,) if isinstance(names, str) else names:
                    if by_name[f"{layer}/{name}"] is not None:
                        found[role] = by_name[f"{layer}/{name}"]
                        break
            if not found:
                return None
            used.update(info.key for info in found.values())
            weights = {role: info.key for role, info in found.items()}
            if "kernel" in found and "units" in cfg:  # the width the kernel has
                cfg = {**cfg, "units": int(found["kernel"].shape[-1])}
            entry = Layer(layer, class_name, cfg, weights, NAMES)
            layers.append(entry)
            return entry

        eps = float(config.get("layer_norm_eps", EPSILON))
        emb = f"{prefix}embeddings"
        d = _hidden_size(infos, prefix, config)
        embeddings = take(
            emb,
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
        take(f"{prefix}embeddings_project", "Dense", _DENSE, _dense_config(d, "linear"))
        act = config.get("hidden_act", "gelu")
        activation = (_HF_ACTIVATIONS if hf else _GOOGLE_ACTIVATIONS).get(act, act)
        sep = "layer_._" if hf else "layer_"
        for index in _layer_indices(infos, prefix):
            base = f"{prefix}encoder/{sep}{index}"
            qkv = {f"{p}.{w}": f"{p}/{w}" for p in ("query", "key", "value") for w in _DENSE}
            attention = take(
                f"{base}/attention/self",
                "BertSelfAttention",
                qkv,
                {"num_heads": heads, "hidden_size": d},
            )
            if attention is not None:
                if heads is None:
                    attention.notes.append(_heads_note(d))
                else:
                    attention.notes.append(f"num_heads {heads} from the model's config file")
            ln_config = {"axis": -1, "epsilon": eps, "center": True, "scale": True}
            take(f"{base}/attention/output/dense", "Dense", _DENSE, _dense_config(d, "linear"))
            take(f"{base}/attention/output/LayerNorm", "LayerNormalization", _NORM, ln_config)
            inter = take(
                f"{base}/intermediate/dense",
                "Dense",
                _DENSE,
                _dense_config(config.get("intermediate_size"), activation),
            )
            if inter is not None and act == "gelu":
                other = "gelu" if activation == "gelu_approximate" else "gelu_approximate"
                inter.config_alternatives.append({"activation": other})
                inter.notes.append(
                    "hidden_act 'gelu' is the tanh form in Google's TensorFlow BERT and the "
                    "erf form in Hugging Face's: verify tries both"
                )
            take(f"{base}/output/dense", "Dense", _DENSE, _dense_config(d, "linear"))
            take(f"{base}/output/LayerNorm", "LayerNormalization", _NORM, ln_config)
        take(f"{prefix}pooler/dense", "BertPooler", _DENSE, {})
        for layer in layers:
            layer.scope = prefix
        return layers, [info for info in infos if info.key not in used]

    def problem(self, role_map: RoleMap) -> str | None:
        for layer in _attention_layers(role_map):
            if not layer.config.get("num_heads"):
                d = layer.config.get("hidden_size")
                return (
                    f"the number of attention heads is not in the weights: the ({d}, {d}) "
                    f"query/key/value kernels of {layer.name} fit any head count dividing {d}. "
                    "Put the model's bert_config.json (or config.json) beside the weights "
                    "or pass --num-heads N"
                )
        return None

    def try_unknown_settings(self, role_map: RoleMap) -> bool:
        """For `verify`: when no file tells the head count, try every count that divides
        the width (the first that fits runs first). False if nothing was unknown."""
        changed = False
        for layer in _attention_layers(role_map):
            d = layer.config.get("hidden_size")
            if layer.config.get("num_heads") or not d:
                continue
            fits = [n for n in range(1, d + 1) if d % n == 0]
            preferred = sorted(fits, key=lambda n: (abs(d // n - 64), n))  # BERT's H=64 first
            layer.config = {**layer.config, "num_heads": preferred[0]}
            layer.config_alternatives += [{"num_heads": n} for n in preferred[1:]]
            changed = True
        return changed

    def set_num_heads(self, role_map: RoleMap, num_heads: int) -> bool:
        layers = _attention_layers(role_map)
        for layer in layers:
            d = layer.config.get("hidden_size")
            if num_heads <= 0 or (d and d % num_heads):
                raise UsageError(
                    f"--num-heads {num_heads} does not divide the hidden size {d} of {layer.name}"
                )
            layer.config = {**layer.config, "num_heads": num_heads}
            layer.notes = [n for n in layer.notes if "heads" not in n]
            layer.notes.append(f"num_heads {num_heads} given by the user")
        return bool(layers)

    def original(self, path, format_name, role_map):
        """A `save_pretrained` directory (`tf_model.h5` + `config.json`) runs with
        transformers; everything else with TensorFlow alone."""
        from ckpt_tool.families.huggingface import TransformersTFModel, pretrained_dir
        from ckpt_tool.original import InputSpec

        folder = pretrained_dir(path) if format_name == "h5" else None
        if folder is None:
            return None
        graph = self.graph(role_map)
        specs = [InputSpec(name, (None, None), "int32") for name in graph.input_names]
        # hidden_states: the embeddings' output (after ELECTRA's projection), then each block's
        blocks = [n.layer for n in graph.nodes if n.layer.endswith("/output/LayerNorm")]
        blocks = [n for n in blocks if "/attention/output/" not in n]
        first = next(n.layer for n in graph.nodes if n.class_name != "BertEmbeddings")
        embedded = graph.nodes[[n.layer for n in graph.nodes].index(first) - 1].layer
        return TransformersTFModel(folder, specs, graph.output_names or [], [embedded, *blocks])

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
        for attention in _attention_layers(role_map):
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
        from ckpt_tool.layouts.base import derived, verbatim

        scope = lt.layer.scope
        if scope is None or lt.layer.evidence != NAMES:
            return None
        base = torch_module_name(lt.layer.name, scope)
        arrays = []
        for role, info in sorted(lt.tensors.items(), key=lambda item: item[1].order):
            name = f"{base}.{_torch_param(role)}"
            if is_linear_weight(name) and len(info.shape) == 2:
                shape = (info.shape[1], info.shape[0])
                arrays.append(derived(inp, name, [info], np.transpose, shape, "transpose"))
            else:
                arrays.append(verbatim(inp, name, info))
        return arrays

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


def _torch_param(role: str) -> str:
    """Our role -> Hugging Face's attribute path below the layer."""
    part, _, param = role.rpartition(".")
    hf = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}.get(param)
    if hf is None:  # embedding tables: word_embeddings -> word_embeddings.weight
        return f"{role}.weight"
    return f"{part}.{hf}" if part else hf


def is_linear_weight(torch_name: str) -> bool:
    """True for the (out, in) weights of torch.nn.Linear (transposed from TF kernels)."""
    return torch_name.endswith(".weight") and not (
        "LayerNorm" in torch_name or torch_name.endswith("_embeddings.weight")
    )


def _prefix(infos: Sequence[VariableInfo]) -> tuple[str, bool] | None:
    """The scope BERT's variables live under and whether it is Hugging Face's spelling."""
    for info in infos:
        for name in (info.name, *info.aliases):
            m = _QUERY.match(name)
            if m:
                return m.group("prefix"), bool(m.group("hf"))
    return None


def _position_settings(config: dict) -> dict:
    """RoBERTa numbers positions from padding_idx + 1, skipping padding tokens."""
    if config.get("model_type") in ("roberta", "camembert", "xlm-roberta"):
        return {"position_padding_idx": int(config.get("pad_token_id", 1))}
    return {}


def _attention_layers(role_map: RoleMap) -> list[Layer]:
    return [layer for layer in role_map.layers if layer.class_name == "BertSelfAttention"]


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


def _dense_config(units: int | None, activation: str) -> dict:
    return {"units": units, "activation": activation, "use_bias": True}


def _heads_note(d: int | None) -> str:
    fits = [n for n in range(1, (d or 0) + 1) if d and d % n == 0]
    return (
        f"number of heads unknown: the ({d}, {d}) kernels fit {', '.join(map(str, fits))} "
        "heads alike; give the model's config file beside the weights or --num-heads "
        "(verify tries each)"
    )
