"""DistilBERT by name: Hugging Face's `TFDistilBertModel`.

Names below a scope such as `tf_distil_bert_model/distilbert/` (letters: V vocabulary,
P positions, D width, I inner width):

    embeddings/word_embeddings/weight (V, D), embeddings/position_embeddings/embeddings (P, D),
    embeddings/LayerNorm/{gamma,beta}
    transformer/layer_._N/attention/{q_lin,k_lin,v_lin,out_lin}/{kernel (D, D), bias (D,)}
    transformer/layer_._N/sa_layer_norm/{gamma,beta}
    transformer/layer_._N/ffn/lin1 (D, I), ffn/lin2 (I, D)
    transformer/layer_._N/output_layer_norm/{gamma,beta}

No token types, no pooler. Blocks are post-LN: x = LN(x + attn(x)), x = LN(x + ffn(x));
every LayerNorm has epsilon 1e-12 (fixed in transformers' code). The head count is
`n_heads` in config.json, else `verify` tries every count that fits.

PyTorch names are those of Hugging Face's `DistilBertModel`:
`embeddings.word_embeddings.weight`, `transformer.layer.0.attention.q_lin.weight`, ...;
Linear weights are the TF kernels transposed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ckpt_tool.errors import CkptToolError
from ckpt_tool.families.base import Family
from ckpt_tool.families.huggingface import (
    VERBATIM,
    HeadCounts,
    NamedLayers,
    block_indices,
    family_scope,
    find_prefix,
    heads_note,
    keras_param,
    original_from_pretrained,
    torch_entries,
    torch_module,
)
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import NAMES, Layer, RoleMap

EPSILON = 1e-12  # every LayerNormalization of TF DistilBERT
_BLOCK = re.compile(r"^(?P<prefix>(?:.*/)?)transformer/layer_\._(?P<index>\d+)/")
_Q_LIN = re.compile(r"^(?P<prefix>(?:.*/)?)transformer/layer_\._\d+/attention/q_lin/kernel$")
_DENSE = {"kernel": "kernel", "bias": "bias"}
_NORM = {"gamma": "gamma", "beta": "beta"}
_PROJECTIONS = ("q_lin", "k_lin", "v_lin", "out_lin")
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "relu": "relu"}
ATTENTION = "DistilBertAttention"


class DistilBertFamily(HeadCounts, Family):
    name = "hf_distilbert"
    title = "DistilBERT (Hugging Face TF)"
    config_files = ("config.json",)
    attention_classes = (ATTENTION,)

    def accepts_config(self, config: dict) -> bool:
        return config.get("model_type") in (None, "distilbert")

    # -- roles ---------------------------------------------------------------------------

    def layers(
        self, infos: Sequence[VariableInfo], config: dict | None
    ) -> tuple[list[Layer], list[VariableInfo]]:
        prefix = find_prefix(infos, _Q_LIN)
        if prefix is None:
            return [], list(infos)
        config = config or {}
        named = NamedLayers(infos, prefix)
        q_lin = named.info("transformer/layer_._0/attention/q_lin/kernel")
        d = int(q_lin.shape[-1]) if q_lin is not None else config.get("dim")
        heads = config.get("n_heads")
        norm = {"axis": -1, "epsilon": EPSILON, "center": True, "scale": True}
        act = config.get("activation", "gelu")
        activation = _ACTIVATIONS.get(act, act)

        self._embeddings(named, d)
        prefixed = [i for i in infos if i.name.startswith(prefix)]
        for index in block_indices(prefixed, _BLOCK):
            block = f"transformer/layer_._{index}"
            roles = {f"{p}.{w}": f"{p}/{w}" for p in _PROJECTIONS for w in _DENSE}
            notes = [heads_note(d, heads, f"({d}, {d}) q_lin/k_lin/v_lin kernels")]
            attention_config = {"num_heads": heads, "hidden_size": d}
            named.take(f"{block}/attention", ATTENTION, roles, attention_config, notes)
            named.take(f"{block}/sa_layer_norm", "LayerNormalization", _NORM, norm)
            lin1 = named.info(f"{block}/ffn/lin1/kernel")
            inner = int(lin1.shape[-1]) if lin1 is not None else config.get("hidden_dim")
            lin1_config = {"units": inner, "activation": activation, "use_bias": True}
            ffn = named.take(f"{block}/ffn/lin1", "Dense", _DENSE, lin1_config)
            if ffn is not None and "activation" not in config:
                other = "gelu_approximate" if activation == "gelu" else "gelu"
                ffn.config_alternatives.append({"activation": other})
                ffn.notes.append("no config.json: gelu (erf form) assumed, verify tries tanh")
            lin2_config = {"units": d, "activation": "linear", "use_bias": True}
            named.take(f"{block}/ffn/lin2", "Dense", _DENSE, lin2_config)
            named.take(f"{block}/output_layer_norm", "LayerNormalization", _NORM, norm)
        return named.layers, named.rest(infos)

    @staticmethod
    def _embeddings(named: NamedLayers, d: int | None) -> None:
        """Word and position embeddings, then LayerNorm: BERT's embeddings without token
        types."""
        roles = {
            "word_embeddings": "word_embeddings/weight",
            "position_embeddings": "position_embeddings/embeddings",
            "LayerNorm.gamma": "LayerNorm/gamma",
            "LayerNorm.beta": "LayerNorm/beta",
        }
        config = {"epsilon": EPSILON, "hidden_size": d, "type_vocab_size": 0}
        named.take("embeddings", "BertEmbeddings", roles, config)

    # -- graph ---------------------------------------------------------------------------

    def graph(self, role_map: RoleMap):
        """Inputs input_ids, attention_mask (B, T); output last_hidden_state (B, T, D)."""
        from ckpt_tool.graph import Graph, Node

        scope = family_scope(role_map)
        names = {layer.name: layer for layer in role_map.layers}
        ids, mask = ("input_ids", 0, 0), ("attention_mask", 0, 0)
        nodes: list[Node] = []

        def node(name: str, args: list, class_name: str | None = None, **kwargs):
            layer = names.get(scope + name)
            if layer is None and class_name is None:
                raise CkptToolError(f"no weights found for layer {scope + name!r}")
            config = layer.config if layer is not None else {"name": name}
            nodes.append(
                Node(scope + name, class_name or layer.class_name, config, 0, args, kwargs)
            )
            return (scope + name, 0, 0)

        x = node("embeddings", [ids])
        for attention in self.attention_layers(role_map):
            block = attention.name.removeprefix(scope).removesuffix("/attention")
            h = node(f"{block}/attention", [x], attention_mask=mask)
            h = node(f"{block}/sa_residual", [[h, x]], "Add")
            x = node(f"{block}/sa_layer_norm", [h])
            h = node(f"{block}/ffn/lin2", [node(f"{block}/ffn/lin1", [x])])
            h = node(f"{block}/ffn_residual", [[h, x]], "Add")
            x = node(f"{block}/output_layer_norm", [h])
        return Graph(
            [ids, mask],
            nodes,
            [x],
            self.title,
            ["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
        )

    def original(self, path, format_name, role_map):
        """`tf_model.h5` beside its config.json runs with transformers' TFAutoModel; its
        hidden_states are the embeddings, then each block's output."""
        from ckpt_tool.original import InputSpec

        graph = self.graph(role_map)
        specs = [InputSpec(name, (None, None), "int32") for name in graph.input_names]
        blocks = [n.layer for n in graph.nodes if n.layer.endswith("/output_layer_norm")]
        hidden = [graph.nodes[0].layer, *blocks]
        return original_from_pretrained(path, format_name, graph, specs, hidden)

    # -- PyTorch -------------------------------------------------------------------------

    def torch_arrays(self, inp, lt):
        scope = lt.layer.scope
        if scope is None or lt.layer.evidence != NAMES:
            return None
        return torch_entries(inp, lt, torch_module(lt.layer.name, scope), _torch_param)

    def torch_note(self) -> str:
        return (
            "DistilBERT names: keys follow Hugging Face's DistilBertModel state_dict "
            "(transformer.layer.0.attention.q_lin.weight, ...); --torch-prefix distilbert. "
            "gives DistilBertForMaskedLM's"
        )


def _torch_param(role: str, shape: tuple[int, ...]) -> tuple[str, str]:
    """Our role -> DistilBertModel's attribute below the layer's module, and the change."""
    if role in ("word_embeddings", "position_embeddings"):
        return f"{role}.weight", VERBATIM
    return keras_param(role)
