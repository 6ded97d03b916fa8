"""Vision Transformers by name: Hugging Face's `TFViTModel`.

Names below a scope such as `tf_vi_t_model/vit/` (letters: D width, I inner width,
p patch size, C channels, L patches):

    embeddings/cls_token (1, 1, D), embeddings/position_embeddings (1, 1 + L, D),
    embeddings/patch_embeddings/projection/{kernel (p, p, C, D), bias (D,)}
    encoder/layer_._N/layernorm_before, attention/attention/{query,key,value} (D, D),
    attention/output/dense (D, D), layernorm_after, intermediate/dense (D, I),
    output/dense (I, D)
    layernorm/{gamma,beta}, pooler/dense (D, D) (absent without the pooling layer)

Blocks are pre-LN: x += attn(layernorm_before(x)), x += mlp(layernorm_after(x)); then
layernorm; the pooler is tanh(dense(first token)). The input `pixel_values` is
channels-first (B, C, H, W). Settings the weights lack come from config.json
(`num_attention_heads`, `layer_norm_eps`, `hidden_act`); without it `verify` tries
every head count that fits and both forms of gelu.

PyTorch names are those of Hugging Face's `ViTModel`: `embeddings.cls_token`,
`embeddings.patch_embeddings.projection.weight` (D, C, p, p),
`encoder.layer.0.attention.attention.query.weight`, ...; Linear weights are the TF
kernels transposed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ckpt_tool.families.huggingface import (
    CONV2D,
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
    try_other_gelu,
)
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import Layer, RoleMap

EPSILON = 1e-12  # ViTConfig.layer_norm_eps
_BLOCK = re.compile(r"^(?P<prefix>(?:.*/)?)encoder/layer_\._(?P<index>\d+)/")
_QUERY = re.compile(r"^(?P<prefix>(?:.*/)?)encoder/layer_\._\d+/attention/attention/query/kernel$")
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "relu": "relu"}
_PATCH = "patch_embeddings.projection"
ATTENTION = "BertSelfAttention"  # query, key, value (D, D) kernels; no mask


class ViTFamily(TransformersFamily):
    name = "hf_vit"
    title = "ViT (Hugging Face TF)"
    model_type = "vit"
    attention_classes = (ATTENTION,)

    # -- roles ---------------------------------------------------------------------------

    def layers(
        self, infos: Sequence[VariableInfo], config: dict | None
    ) -> tuple[list[Layer], list[VariableInfo]]:
        prefix = find_prefix(infos, _QUERY)
        if prefix is None:
            return [], list(infos)
        config = config or {}
        named = NamedLayers(infos, prefix)
        query = named.info("encoder/layer_._0/attention/attention/query/kernel")
        d = int(query.shape[-1]) if query is not None else config.get("hidden_size")
        heads = config.get("num_attention_heads")
        norm = norm_config(float(config.get("layer_norm_eps", EPSILON)))
        act = config.get("hidden_act", "gelu")
        activation = _ACTIVATIONS.get(act, act)

        embedding_roles = {
            "cls_token": "cls_token",
            "position_embeddings": "position_embeddings",
            f"{_PATCH}.kernel": "patch_embeddings/projection/kernel",
            f"{_PATCH}.bias": "patch_embeddings/projection/bias",
        }
        embeddings = named.take("embeddings", "ViTEmbeddings", embedding_roles, {})
        if embeddings is not None:
            embeddings.config = _image_settings(named)
        for index in named.block_indices(_BLOCK):
            block = f"encoder/layer_._{index}"
            named.take(f"{block}/layernorm_before", "LayerNormalization", NORM, norm)
            qkv = {f"{p}.{w}": f"{p}/{w}" for p in ("query", "key", "value") for w in DENSE}
            notes = [heads_note(d, heads, f"({d}, {d}) query/key/value kernels")]
            attention_config = {"num_heads": heads, "hidden_size": d}
            named.take(f"{block}/attention/attention", ATTENTION, qkv, attention_config, notes)
            output = f"{block}/attention/output/dense"
            named.take(output, "Dense", DENSE, dense_config(d, "linear"))
            named.take(f"{block}/layernorm_after", "LayerNormalization", NORM, norm)
            inner = config.get("intermediate_size")
            mlp = named.dense(f"{block}/intermediate/dense", inner, activation)
            if "hidden_act" not in config:
                try_other_gelu(mlp, "no config.json: gelu (erf form) assumed, verify tries tanh")
            named.take(f"{block}/output/dense", "Dense", DENSE, dense_config(d, "linear"))
        named.take("layernorm", "LayerNormalization", NORM, norm)
        pooler = named.take("pooler/dense", "BertPooler", DENSE, {})
        pooler_act = config.get("pooler_act", "tanh")
        if pooler is not None and pooler_act != "tanh":
            pooler.config = {"pooler_act": pooler_act}
            pooler.notes.append(f"pooler_act {pooler_act!r}: only tanh is rebuilt")
        return named.layers, named.rest(infos)

    def problem(self, role_map: RoleMap) -> str | None:
        for layer in role_map.layers:
            act = layer.config.get("pooler_act") if layer.class_name == "BertPooler" else None
            if act is not None:
                return f"the pooler's activation {act!r} is not supported (tanh only)"
        return super().problem(role_map)

    # -- graph ---------------------------------------------------------------------------

    def graph(self, role_map: RoleMap):
        """Input pixel_values (B, C, H, W); outputs last_hidden_state (B, 1 + L, D) and,
        with a pooler, pooler_output (B, D)."""
        node = ScopedNodes(role_map)
        pixels = ("pixel_values", 0, 0)
        x = node("embeddings", [pixels])
        for attention in self.attention_layers(role_map):
            block = attention.name.removeprefix(node.scope).removesuffix("/attention/attention")
            h = node(f"{block}/attention/attention", [node(f"{block}/layernorm_before", [x])])
            h = node(f"{block}/attention/output/dense", [h])
            x = node(f"{block}/attention/residual", [[h, x]], "Add")
            h = node(f"{block}/intermediate/dense", [node(f"{block}/layernorm_after", [x])])
            h = node(f"{block}/output/dense", [h])
            x = node(f"{block}/output/residual", [[h, x]], "Add")
        outputs, output_names = [node("layernorm", [x])], ["last_hidden_state"]
        if f"{node.scope}pooler/dense" in node.layers:
            outputs.append(node("pooler/dense", [outputs[0]]))
            output_names.append("pooler_output")
        return node.graph([pixels], outputs, self.title, output_names)

    def original(self, path, format_name, role_map):
        """`tf_model.h5` beside its config.json runs with transformers' TFAutoModel; its
        hidden_states are the embeddings, then each block's output (before layernorm)."""
        from ckpt_tool.original import InputSpec

        graph = self.graph(role_map)
        specs = [InputSpec("pixel_values", _image_shape(role_map), "float32")]
        blocks = [n.layer for n in graph.nodes if n.layer.endswith("/output/residual")]
        hidden = [graph.nodes[0].layer, *blocks]
        return original_from_pretrained(path, format_name, graph, specs, hidden)

    # -- PyTorch -------------------------------------------------------------------------

    @staticmethod
    def torch_param(role: str, shape: tuple[int, ...]) -> tuple[str, str]:
        """Our role -> ViTModel's attribute below the layer's module, and the change."""
        if role in ("cls_token", "position_embeddings"):
            return role, VERBATIM
        if role == f"{_PATCH}.kernel":
            return f"{_PATCH}.weight", CONV2D
        return keras_param(role)

    def torch_note(self) -> str:
        return (
            "ViT names: keys follow Hugging Face's ViTModel state_dict "
            "(embeddings.patch_embeddings.projection.weight (D, C, p, p), "
            "encoder.layer.0.attention.attention.query.weight, ...); --torch-prefix vit. "
            "gives ViTForImageClassification's"
        )


def _image_settings(named: NamedLayers) -> dict:
    """The images the weights fit: C channels from the patch kernel (p, p, C, D), a square
    side p * sqrt(L) from the 1 + L positions."""
    settings: dict = {"channels_first": True}
    kernel = named.info("embeddings/patch_embeddings/projection/kernel")
    positions = named.info("embeddings/position_embeddings")
    if kernel is not None and positions is not None and len(positions.shape) == 3:
        patches = int(positions.shape[1]) - 1
        settings["num_channels"] = int(kernel.shape[2])
        settings["patch_size"] = int(kernel.shape[0])
        if math.isqrt(patches) ** 2 == patches:
            settings["image_size"] = math.isqrt(patches) * int(kernel.shape[0])
    return settings


def _image_shape(role_map: RoleMap) -> tuple[int | None, ...]:
    """(None, C, H, W) for the images the embeddings take."""
    embeddings = next(la for la in role_map.layers if la.class_name == "ViTEmbeddings")
    side = embeddings.config.get("image_size")
    return (None, embeddings.config.get("num_channels"), side, side)
