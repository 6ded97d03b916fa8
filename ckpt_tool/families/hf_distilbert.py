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

from ckpt_tool.families.huggingface import (
    DENSE,
    NORM,
    VERBATIM,
    NamedLayers,
    ScopedNodes,
    TransformersFamily,
    dense_config,
    find_prefix,
    heads_note,
    keras_param,
    norm_config,
    original_from_pretrained,
    token_inputs,
    try_other_gelu,
)
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import Layer, RoleMap

EPSILON = 1e-12  # every LayerNormalization of TF DistilBERT
_BLOCK = re.compile(r"^(?P<prefix>(?:.*/)?)transformer/layer_\._(?P<index>\d+)/")
_Q_LIN = re.compile(r"^(?P<prefix>(?:.*/)?)transformer/layer_\._\d+/attention/q_lin/kernel$")
_PROJECTIONS = ("q_lin", "k_lin", "v_lin", "out_lin")
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "relu": "relu"}
ATTENTION = "DistilBertAttention"


class DistilBertFamily(TransformersFamily):
    name = "hf_distilbert"
    title = "DistilBERT (Hugging Face TF)"
    model_type = "distilbert"
    attention_classes = (ATTENTION,)

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
        norm = norm_config(EPSILON)
        act = config.get("activation", "gelu")
        activation = _ACTIVATIONS.get(act, act)

        self._embeddings(named, d)
        for index in named.block_indices(_BLOCK):
            block = f"transformer/layer_._{index}"
            roles = {f"{p}.{w}": f"{p}/{w}" for p in _PROJECTIONS for w in DENSE}
            notes = [heads_note(d, heads, f"({d}, {d}) q_lin/k_lin/v_lin kernels")]
            attention_config = {"num_heads": heads, "hidden_size": d}
            named.take(f"{block}/attention", ATTENTION, roles, attention_config, notes)
            named.take(f"{block}/sa_layer_norm", "LayerNormalization", NORM, norm)
            ffn = named.dense(f"{block}/ffn/lin1", config.get("hidden_dim"), activation)
            if "activation" not in config:
                try_other_gelu(ffn, "no config.json: gelu (erf form) assumed, verify tries tanh")
            named.take(f"{block}/ffn/lin2", "Dense", DENSE, dense_config(d, "linear"))
            named.take(f"{block}/output_layer_norm", "LayerNormalization", NORM, norm)
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
        node = ScopedNodes(role_map)
        ids, mask = ("input_ids", 0, 0), ("attention_mask", 0, 0)
        x = node("embeddings", [ids])
        for attention in self.attention_layers(role_map):
            block = attention.name.removeprefix(node.scope).removesuffix("/attention")
            h = node(f"{block}/attention", [x], attention_mask=mask)
            h = node(f"{block}/sa_residual", [[h, x]], "Add")
            x = node(f"{block}/sa_layer_norm", [h])
            h = node(f"{block}/ffn/lin2", [node(f"{block}/ffn/lin1", [x])])
            h = node(f"{block}/ffn_residual", [[h, x]], "Add")
            x = node(f"{block}/output_layer_norm", [h])
        return node.graph([ids, mask], [x], self.title, ["last_hidden_state"])

    def original(self, path, format_name, role_map):
        """`tf_model.h5` beside its config.json runs with transformers' TFAutoModel; its
        hidden_states are the embeddings, then each block's output."""
        graph = self.graph(role_map)
        blocks = [n.layer for n in graph.nodes if n.layer.endswith("/output_layer_norm")]
        hidden = [graph.nodes[0].layer, *blocks]
        return original_from_pretrained(path, format_name, graph, token_inputs(graph), hidden)

    # -- PyTorch -------------------------------------------------------------------------

    @staticmethod
    def torch_param(role: str, shape: tuple[int, ...]) -> tuple[str, str]:
        """Our role -> DistilBertModel's attribute below the layer's module, and the change."""
        if role in ("word_embeddings", "position_embeddings"):
            return f"{role}.weight", VERBATIM
        return keras_param(role)

    def torch_note(self) -> str:
        return (
            "DistilBERT names: keys follow Hugging Face's DistilBertModel state_dict "
            "(transformer.layer.0.attention.q_lin.weight, ...); --torch-prefix distilbert. "
            "gives DistilBertForMaskedLM's"
        )
