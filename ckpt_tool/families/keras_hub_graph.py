"""The forward graphs of keras-hub backbones over the layers `KerasHubFamily` maps.

Each graph follows the backbone's `__init__` in keras-hub 0.32 (`models/*/..._backbone.py`)
and its blocks (`TransformerEncoder`, `TransformerDecoder`, `LlamaTransformerDecoder`,
`ViTEncoderBlock`), built from the existing kernels:

    BERT        token + position + segment embeddings -> LN -> post-LN encoder blocks;
                pooled_output = tanh(dense(x[:, 0]))
    DistilBERT  token + position embeddings -> LN -> post-LN encoder blocks
    GPT-2       token + position embeddings -> pre-LN causal decoder blocks -> LN
    Llama       token embedding -> pre-RMSNorm blocks (rotary GQA, SwiGLU) -> RMSNorm
    ViT         patch Conv2D, class token, positions -> pre-LN blocks -> LN

Inputs are named as the backbone's (`token_ids`, `segment_ids`, `padding_mask`,
`images`). The padding mask masks keys (keras-hub's `merge_padding_and_attention_mask`:
(B, 1, S)), ANDed with the causal triangle in the decoders. Nodes that carry no weights
are named after the Keras layer whose output they are: each block ends in an identity
node named as the block (`transformer_layer_0`), so `verify --per-layer` compares it
with the Keras layer's output.
"""

from __future__ import annotations

import re

from ckpt_tool.graph import Graph, Node, Ref
from ckpt_tool.rolemap import Layer, RoleMap


class _Builder:
    """Appends nodes; a node named as a mapped layer runs with that layer's weights."""

    def __init__(self, role_map: RoleMap):
        self.layers: dict[str, Layer] = {layer.name: layer for layer in role_map.layers}
        self.nodes: list[Node] = []

    def __call__(self, name: str, class_name: str, args: list, kwargs: dict | None = None) -> Ref:
        layer = self.layers.get(name)
        config = layer.config if layer is not None else {"name": name}
        self.nodes.append(Node(name, class_name, config, 0, args, kwargs or {}))
        return (name, 0, 0)

    def has(self, name: str) -> bool:
        return name in self.layers

    def identity(self, name: str, x: Ref) -> Ref:
        """The output of a Keras layer the graph spells out in parts."""
        self.nodes.append(Node(name, "Activation", {"activation": "linear"}, 0, [x]))
        return (name, 0, 0)

    def blocks(self, pattern: str) -> list[str]:
        """Block names matching `pattern` (group 1 the index), in index order."""
        found = {}
        for name in self.layers:
            m = re.match(pattern, name)
            if m:
                found[int(m.group(2))] = m.group(1)
        return [found[i] for i in sorted(found)]


def _inputs(*names: str) -> list[Ref]:
    return [(name, 0, 0) for name in names]


def _graph(b: _Builder, inputs: list[Ref], outputs: list[Ref], names: list[str], title: str):
    return Graph(inputs, b.nodes, outputs, title, [r[0] for r in inputs], output_names=names)


# -- blocks ----------------------------------------------------------------------------------


def _post_ln_encoder(b: _Builder, name: str, x: Ref, padding: Ref) -> Ref:
    """TransformerEncoder(normalize_first=False): x = LN(x + attn(x)); x = LN(x + ffn(x))."""
    attn = b(f"{name}/self_attention_layer", "MultiHeadAttention", [x, x], {"key_mask": padding})
    h = b(f"{name}/self_attention_add", "Add", [[attn, x]])
    h = b(f"{name}/self_attention_layer_norm", "LayerNormalization", [h])
    f = b(f"{name}/feedforward_intermediate_dense", "Dense", [h])
    f = b(f"{name}/feedforward_output_dense", "Dense", [f])
    out = b(f"{name}/feedforward_add", "Add", [[f, h]])
    out = b(f"{name}/feedforward_layer_norm", "LayerNormalization", [out])
    return b.identity(name, out)


def _pre_ln_decoder(b: _Builder, name: str, x: Ref, padding: Ref) -> Ref:
    """TransformerDecoder(normalize_first=True), no cross-attention, causal:
    x = x + attn(LN(x)); x = x + ffn(LN(x))."""
    n = b(f"{name}/self_attention_layer_norm", "LayerNormalization", [x])
    mask = {"key_mask": padding, "use_causal_mask": True}
    attn = b(f"{name}/self_attention", "MultiHeadAttention", [n, n], mask)
    h = b(f"{name}/self_attention_add", "Add", [[attn, x]])
    n = b(f"{name}/feedforward_layer_norm", "LayerNormalization", [h])
    f = b(f"{name}/feedforward_intermediate_dense", "Dense", [n])
    f = b(f"{name}/feedforward_output_dense", "Dense", [f])
    return b.identity(name, b(f"{name}/feedforward_add", "Add", [[f, h]]))


def _llama_decoder(b: _Builder, name: str, x: Ref, padding: Ref) -> Ref:
    """LlamaTransformerDecoder: x = x + attn(RMS(x)); x = x + down(up(RMS(x)) * silu(gate(.)))."""
    n = b(f"{name}/self_attention_layernorm", "RMSNormalization", [x])
    mask = {"key_mask": padding, "use_causal_mask": True}
    attn = b(f"{name}/self_attention", "LlamaAttention", [n], mask)
    h = b(f"{name}/self_attention_add", "Add", [[attn, x]])
    n = b(f"{name}/feedforward_layernorm", "RMSNormalization", [h])
    gate = b(f"{name}/feedforward_gate_dense", "Dense", [n])
    up = b(f"{name}/feedforward_intermediate_dense", "Dense", [n])
    f = b(f"{name}/feedforward_multiply", "Multiply", [[up, gate]])
    f = b(f"{name}/feedforward_output_dense", "Dense", [f])
    return b.identity(name, b(f"{name}/feedforward_add", "Add", [[f, h]]))


def _vit_block(b: _Builder, name: str, x: Ref) -> Ref:
    """ViTEncoderBlock: x = x + mha(LN1(x)); x = x + mlp(LN2(x)), no mask."""
    n = b(f"{name}/ln_1", "LayerNormalization", [x])
    attn = b(f"{name}/mha", "MultiHeadAttention", [n, n])
    h = b(f"{name}/attention_add", "Add", [[attn, x]])
    n = b(f"{name}/ln_2", "LayerNormalization", [h])
    f = b(f"{name}/mlp/dense_1", "Dense", [n])
    f = b(f"{name}/mlp/dense_2", "Dense", [f])
    return b.identity(name, b(f"{name}/mlp_add", "Add", [[h, f]]))


# -- backbones -------------------------------------------------------------------------------

_BLOCK = r"((?:.*/)?transformer_layer_(\d+))/"


def _bert(b: _Builder, title: str) -> Graph:
    inputs = _inputs("token_ids", "segment_ids", "padding_mask")
    tokens, segments, padding = inputs
    tok = b("token_embedding", "Embedding", [tokens])
    pos = b("position_embedding", "PositionEmbedding", [tok])
    seg = b("segment_embedding", "Embedding", [segments])
    x = b("embeddings_add", "Add", [[tok, pos, seg]])
    x = b("embeddings_layer_norm", "LayerNormalization", [x])
    for name in b.blocks(_BLOCK):
        x = _post_ln_encoder(b, name, x, padding)
    outputs, names = [x], ["sequence_output"]
    if b.has("pooled_dense"):  # tanh(dense(x[:, 0]))
        outputs.append(b("pooled_dense", "BertPooler", [x]))
        names.append("pooled_output")
    return _graph(b, inputs, outputs, names, title)


def _distilbert(b: _Builder, title: str) -> Graph:
    inputs = _inputs("token_ids", "padding_mask")
    tokens, padding = inputs
    scope = "token_and_position_embedding"
    tok = b(f"{scope}/token_embedding", "Embedding", [tokens])
    pos = b(f"{scope}/position_embedding", "PositionEmbedding", [tok])
    x = b(scope, "Add", [[tok, pos]])
    x = b("embeddings_layer_norm", "LayerNormalization", [x])
    for name in b.blocks(_BLOCK):
        x = _post_ln_encoder(b, name, x, padding)
    return _graph(b, inputs, [x], ["sequence_output"], title)


def _gpt2(b: _Builder, title: str) -> Graph:
    inputs = _inputs("token_ids", "padding_mask")
    tokens, padding = inputs
    tok = b("token_embedding", "Embedding", [tokens])
    pos = b("position_embedding", "PositionEmbedding", [tok])
    x = b("embeddings_add", "Add", [[tok, pos]])
    for name in b.blocks(_BLOCK):
        x = _pre_ln_decoder(b, name, x, padding)
    x = b("layer_norm", "LayerNormalization", [x])
    return _graph(b, inputs, [x], ["sequence_output"], title)


def _llama(b: _Builder, title: str) -> Graph:
    inputs = _inputs("token_ids", "padding_mask")
    tokens, padding = inputs
    x = b("token_embedding", "Embedding", [tokens])
    for name in b.blocks(_BLOCK):
        x = _llama_decoder(b, name, x, padding)
    x = b("sequence_output_layernorm", "RMSNormalization", [x])
    return _graph(b, inputs, [x], ["sequence_output"], title)


def _vit(b: _Builder, title: str) -> Graph:
    inputs = _inputs("images")
    scope = "vit_patching_and_embedding"
    patches = b(f"{scope}/patch_embedding", "Conv2D", [inputs[0]])  # (B, h, w, D)
    positions = b(f"{scope}/position_embedding", "PositionEmbedding", [patches])  # (1, T, D)
    x = b(scope, "ViTPatchingAndEmbedding", [patches, positions])  # (B, T, D)
    for name in b.blocks(r"(vit_encoder/transformer_block_(\d+))/"):
        x = _vit_block(b, name, x)
    x = b.identity("vit_encoder", b("vit_encoder/ln", "LayerNormalization", [x]))
    return _graph(b, inputs, [x], ["sequence_output"], title)


_GRAPHS = {"bert": _bert, "distilbert": _distilbert, "gpt2": _gpt2, "llama": _llama, "vit": _vit}


def backbone_graph(role_map: RoleMap, backbone: str, title: str) -> Graph | None:
    """The forward graph of one keras-hub backbone (by `Backbone.name`), or None."""
    build = _GRAPHS.get(backbone)
    return None if build is None else build(_Builder(role_map), title)
