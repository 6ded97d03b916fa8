"""GPT-2 by name: Hugging Face's `TFGPT2Model` (`save_pretrained` weights and SavedModels).

Names below a scope such as `tfgpt2_model/transformer/` (letters: V vocabulary, P
positions, D width, I inner width):

    wte/embeddings (V, D)  (`wte/weight` in older transformers), wpe/embeddings (P, D)
    h_._N/ln_1/{gamma,beta}, h_._N/attn/c_attn/{weight (D, 3D), bias (1, 3D)},
    h_._N/attn/c_proj/{weight (D, D), bias (1, D)}, h_._N/ln_2/{gamma,beta},
    h_._N/mlp/c_fc/{weight (D, I), bias (1, I)}, h_._N/mlp/c_proj/{weight (I, D), bias (1, D)}
    ln_f/{gamma,beta}

`c_attn` is query, key and value side by side (columns 0:D, D:2D, 2D:3D), each split
into heads; the head count is not in the weights but in `config.json` (`n_head`), else
`verify` tries every count that fits. The blocks are pre-LN: x += attn(ln_1(x)),
x += mlp(ln_2(x)), then ln_f.

PyTorch names are those of Hugging Face's `GPT2Model`: `wte.weight`, `wpe.weight`,
`h.0.attn.c_attn.weight`, ...; its Conv1D weights are (in, out) as in TF, the (1, O)
biases become (O,).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ckpt_tool.families.huggingface import (
    FLATTEN,
    NORM,
    VERBATIM,
    NamedLayers,
    ScopedNodes,
    TransformersFamily,
    family_scope,
    find_prefix,
    heads_note,
    norm_config,
    original_from_pretrained,
    token_inputs,
    try_other_gelu,
)
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import Layer, RoleMap

EPSILON = 1e-5  # GPT2Config.layer_norm_epsilon
# config.json activation_function -> our kernels (transformers' get_tf_activation)
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_approximate",
    "gelu_fast": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
_BLOCK = re.compile(r"^(?P<prefix>(?:.*/)?)h_\._(?P<index>\d+)/")
_C_ATTN = re.compile(r"^(?P<prefix>(?:.*/)?)h_\._\d+/attn/c_attn/weight$")
_CONV1D = {"kernel": "weight", "bias": "bias"}
ATTENTION = "GPT2Attention"


class GPT2Family(TransformersFamily):
    name = "hf_gpt2"
    title = "GPT-2 (Hugging Face TF)"
    model_type = "gpt2"
    attention_classes = (ATTENTION,)

    # -- roles ---------------------------------------------------------------------------

    def layers(
        self, infos: Sequence[VariableInfo], config: dict | None
    ) -> tuple[list[Layer], list[VariableInfo]]:
        prefix = find_prefix(infos, _C_ATTN)
        if prefix is None:
            return [], list(infos)
        config = config or {}
        named = NamedLayers(infos, prefix)
        c_attn = named.info("h_._0/attn/c_attn/weight")
        d = int(c_attn.shape[0]) if c_attn is not None else config.get("n_embd")
        norm = norm_config(float(config.get("layer_norm_epsilon", EPSILON)))
        heads = config.get("n_head")
        act = config.get("activation_function", "gelu_new")
        activation = _ACTIVATIONS.get(act, act)

        wte = named.take("wte", "Embedding", {"embeddings": ("embeddings", "weight")}, {})
        if wte is not None:
            table = named.info("wte/embeddings") or named.info("wte/weight")
            wte.config = {"input_dim": int(table.shape[0]), "output_dim": int(table.shape[1])}
        named.take("wpe", "AddPositionEmbedding", {"embeddings": "embeddings"}, {})
        for index in named.block_indices(_BLOCK):
            block = f"h_._{index}"
            named.take(f"{block}/ln_1", "LayerNormalization", NORM, norm)
            attention_roles = {
                f"{part}.{role}": f"{part}/{name}"
                for part in ("c_attn", "c_proj")
                for role, name in _CONV1D.items()
            }
            notes = [_split_note(d), heads_note(d, heads, "c_attn kernel's query columns")]
            named.take(
                f"{block}/attn",
                ATTENTION,
                attention_roles,
                {"num_heads": heads, "hidden_size": d, "scale": True},
                notes,
            )
            named.take(f"{block}/ln_2", "LayerNormalization", NORM, norm)
            fc = named.take(f"{block}/mlp/c_fc", "HFConv1D", _CONV1D, {"activation": activation})
            if config.get("activation_function") is None:
                try_other_gelu(fc, "no config.json: gelu_new (tanh form) assumed, verify tries erf")
            named.take(f"{block}/mlp/c_proj", "HFConv1D", _CONV1D, {"activation": "linear"})
        named.take("ln_f", "LayerNormalization", NORM, norm)
        return named.layers, named.rest(infos)

    # -- graph ---------------------------------------------------------------------------

    def graph(self, role_map: RoleMap):
        """Inputs input_ids, attention_mask (B, T); output last_hidden_state (B, T, D)."""
        node = ScopedNodes(role_map)
        ids, mask = ("input_ids", 0, 0), ("attention_mask", 0, 0)
        x = node("wpe", [node("wte", [ids])])
        for attention in self.attention_layers(role_map):
            block = attention.name.removeprefix(node.scope).removesuffix("/attn")
            h = node(f"{block}/attn", [node(f"{block}/ln_1", [x])], attention_mask=mask)
            x = node(f"{block}/attn_residual", [[h, x]], "Add")
            h = node(f"{block}/mlp/c_fc", [node(f"{block}/ln_2", [x])])
            h = node(f"{block}/mlp/c_proj", [h])
            x = node(f"{block}/mlp_residual", [[h, x]], "Add")
        x = node("ln_f", [x])
        return node.graph([ids, mask], [x], self.title, ["last_hidden_state"])

    def original(self, path, format_name, role_map):
        """`tf_model.h5` beside its config.json runs with transformers' TFAutoModel; its
        hidden_states are the embeddings, each block's output but the last, then ln_f's."""
        graph = self.graph(role_map)
        residuals = [n.layer for n in graph.nodes if n.layer.endswith("/mlp_residual")]
        scope = family_scope(role_map)
        hidden = [f"{scope}wpe", *residuals[:-1], f"{scope}ln_f"]
        return original_from_pretrained(path, format_name, graph, token_inputs(graph), hidden)

    # -- PyTorch -------------------------------------------------------------------------

    @staticmethod
    def torch_param(role: str, shape: tuple[int, ...]) -> tuple[str, str]:
        """Our role -> GPT2Model's attribute below the layer's module, and the change."""
        part, _, param = role.rpartition(".")
        torch = {"kernel": "weight", "gamma": "weight", "beta": "bias", "embeddings": "weight"}
        name = torch.get(param, param)
        how = FLATTEN if param == "bias" and len(shape) == 2 else VERBATIM
        return (f"{part}.{name}" if part else name), how

    def torch_note(self) -> str:
        return (
            "GPT-2 names: keys follow Hugging Face's GPT2Model state_dict (wte.weight, "
            "h.0.attn.c_attn.weight, ...); Conv1D weights stay (in, out), biases flattened; "
            "--torch-prefix transformer. gives GPT2LMHeadModel's"
        )


def _split_note(d: int | None) -> str:
    if not d:
        return "c_attn holds query | key | value side by side; c_proj is the output projection"
    return (
        f"c_attn.kernel ({d}, {3 * d}) and c_attn.bias (1, {3 * d}) hold query | key | value "
        f"side by side: columns 0:{d} query, {d}:{2 * d} key, {2 * d}:{3 * d} value; "
        "c_proj is the attention output projection"
    )
