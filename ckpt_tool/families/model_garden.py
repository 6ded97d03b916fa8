"""TF Model Garden BERT encoders (`official.nlp.modeling.networks.BertEncoder` and
`BertEncoderV2`), whichever way a file spells their weights:

    variable names:   [scope/]word_embeddings/embeddings, position_embedding/embeddings,
                      type_embeddings/embeddings, embeddings/layer_norm/{gamma,beta},
                      transformer/layer_N/self_attention/{query,key,value,attention_output}/...,
                      transformer/layer_N/{self_attention_layer_norm,intermediate,output,
                      output_layer_norm}/..., pooler_transform/{kernel,bias}
    attribute paths:  .../_embedding_layer/embeddings, _position_embedding_layer, _type_embedding_layer,
    (BertEncoderV2)   _embedding_norm_layer, _transformer_layers/N/_attention_layer/_query_dense/kernel,
                      ..._attention_layer_norm, _intermediate_dense, _output_dense,
                      _output_layer_norm, _pooler_layer
    positions:        .../layer_with_weights-K/... (a BertEncoder checkpoint without names):
    (BertEncoder)     blocks by their attributes, numbered in layer order; before the first
                      block the tables (word, position, type, in creation order) and the
                      embedding LayerNorm, after the last the (D, D) pooler

Layers: `embeddings` (BertEmbeddings: the three tables and their LayerNorm), per block
`self_attention` (MultiHeadAttention, (D, N, H) query/key/value and (N, H, D) output
kernels: the head count is in the shapes), `self_attention_layer_norm`, `intermediate`
(Dense, tanh-approximate GELU: Model Garden's "gelu"), `output` (Dense),
`output_layer_norm`, then `pooler_transform` (tanh of the first token). Post-LayerNorm
blocks, epsilon 1e-12 everywhere, as `TransformerEncoderBlock` builds them.

PyTorch names are those of transformers' `BertModel` (hidden_act "gelu_new").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ckpt_tool.errors import CkptToolError
from ckpt_tool.families.base import Family
from ckpt_tool.original import OriginalModel
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import NAMES, SHAPE_ORDER, Layer, RoleMap

EPSILON = 1e-12  # TransformerEncoderBlock's norm_epsilon and the embedding LayerNorm's
ACTIVATION = "gelu_approximate"  # official.modeling.tf_utils.get_activation("gelu")
OUTPUTS = ("sequence_output", "pooled_output")
INPUTS = ("input_ids", "token_type_ids", "attention_mask")  # verify's names for MG's

_W = r"(?P<w>kernel|bias)"
_N = r"(?P<w>gamma|beta)"
_QKV = r"(?P<p>query|key|value)"

# Inside one block: (variable name, attribute path, layer, role template).
_BLOCK_RULES = (
    (rf"self_attention/{_QKV}/{_W}", rf"_attention_layer/_{_QKV}_dense/{_W}", "self_attention", "{p}.{w}"),
    (rf"self_attention/attention_output/{_W}", rf"_attention_layer/_output_dense/{_W}", "self_attention", "output.{w}"),
    (rf"self_attention_layer_norm/{_N}", rf"_attention_layer_norm/{_N}", "self_attention_layer_norm", "{w}"),
    (rf"intermediate/{_W}", rf"_intermediate_dense/{_W}", "intermediate", "{w}"),
    (rf"output/{_W}", rf"_output_dense/{_W}", "output", "{w}"),
    (rf"output_layer_norm/{_N}", rf"_output_layer_norm/{_N}", "output_layer_norm", "{w}"),
)  # fmt: skip
# Outside the blocks: (variable name, attribute path, layer, role template).
_TOP_RULES = (
    ("word_embeddings/embeddings", "_embedding_layer/embeddings", "embeddings", "word_embeddings"),
    ("position_embedding/embeddings", "_position_embedding_layer/embeddings", "embeddings", "position_embeddings"),
    ("type_embeddings/embeddings", "_type_embedding_layer/embeddings", "embeddings", "token_type_embeddings"),
    (f"embeddings/layer_norm/{_N}", f"_embedding_norm_layer/{_N}", "embeddings", "LayerNorm.{w}"),
    (f"pooler_transform/{_W}", f"_pooler_layer/{_W}", "pooler_transform", "{w}"),
)  # fmt: skip
# Where the blocks sit in each spelling; `scope` is anything before.
_BLOCK_PREFIX = {
    "names": r"(?P<scope>(?:.*/)?)transformer/layer_(?P<i>\d+)/(?P<rest>.+)",
    "attributes": r"(?P<scope>(?:.*/)?)_transformer_layers/(?P<i>\d+)/(?P<rest>.+)",
    "positions": r"(?P<scope>(?:.*/)?)layer_with_weights-(?P<i>\d+)/(?P<rest>.+)",
}
# A text every name of a spelling's blocks holds.
_BLOCK_LITERAL = {
    "names": "transformer/layer_",
    "attributes": "_transformer_layers/",
    "positions": "layer_with_weights-",
}
# A positional (`layer_with_weights-K/<weight>`) layer outside the blocks, by its weights.
_POSITIONAL_TOP = (
    r"(?P<scope>(?:.*/)?)layer_with_weights-(?P<k>\d+)/(?P<w>embeddings|gamma|beta|kernel|bias)"
)
_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")  # creation order

# Layer part -> the class whose kernel runs it, in forward order within a block.
_CLASSES = {
    "embeddings": "BertEmbeddings",
    "self_attention": "MultiHeadAttention",
    "self_attention_layer_norm": "LayerNormalization",
    "intermediate": "Dense",
    "output": "Dense",
    "output_layer_norm": "LayerNormalization",
    "pooler_transform": "BertPooler",
}
_ACTIVATION_ALTERNATIVES = ({"activation": "gelu"}, {"activation": "relu"})


@dataclass(frozen=True)
class _Slot:
    """Where one tensor goes: its block (None outside the blocks), layer part and role."""

    scope: str
    block: int | None
    part: str
    role: str


# -- PyTorch names ---------------------------------------------------------------------


def _t(a: np.ndarray) -> np.ndarray:  # Dense kernel (in, out) -> nn.Linear weight (out, in)
    return a.T


def _in_linear(a: np.ndarray) -> np.ndarray:  # (D, N, H) -> (N*H, D)
    return a.reshape(a.shape[0], -1).T


def _out_linear(a: np.ndarray) -> np.ndarray:  # (N, H, D) -> (D, N*H)
    return a.reshape(-1, a.shape[-1]).T


def _flat(a: np.ndarray) -> np.ndarray:  # (N, H) -> (N*H,)
    return a.reshape(-1)


# transform -> (function, what the export manifest calls it)
_TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "T": (_t, "transpose"),
    "in": (_in_linear, "reshape (D, N*H), transpose"),
    "out": (_out_linear, "reshape (N*H, D), transpose"),
    "flat": (_flat, "reshape (N*H,)"),
}
_SELF, _ATT_OUT = "encoder.layer.{i}.attention.self", "encoder.layer.{i}.attention.output"
# (layer part, role) -> (BertModel parameter, transform; "" keeps the tensor as it is)
_TORCH: dict[tuple[str, str], tuple[str, str]] = {
    ("embeddings", "word_embeddings"): ("embeddings.word_embeddings.weight", ""),
    ("embeddings", "position_embeddings"): ("embeddings.position_embeddings.weight", ""),
    ("embeddings", "token_type_embeddings"): ("embeddings.token_type_embeddings.weight", ""),
    ("embeddings", "LayerNorm.gamma"): ("embeddings.LayerNorm.weight", ""),
    ("embeddings", "LayerNorm.beta"): ("embeddings.LayerNorm.bias", ""),
    **{("self_attention", f"{p}.kernel"): (f"{_SELF}.{p}.weight", "in") for p in ("query", "key", "value")},
    **{("self_attention", f"{p}.bias"): (f"{_SELF}.{p}.bias", "flat") for p in ("query", "key", "value")},
    ("self_attention", "output.kernel"): (f"{_ATT_OUT}.dense.weight", "out"),
    ("self_attention", "output.bias"): (f"{_ATT_OUT}.dense.bias", ""),
    ("self_attention_layer_norm", "gamma"): (f"{_ATT_OUT}.LayerNorm.weight", ""),
    ("self_attention_layer_norm", "beta"): (f"{_ATT_OUT}.LayerNorm.bias", ""),
    ("intermediate", "kernel"): ("encoder.layer.{i}.intermediate.dense.weight", "T"),
    ("intermediate", "bias"): ("encoder.layer.{i}.intermediate.dense.bias", ""),
    ("output", "kernel"): ("encoder.layer.{i}.output.dense.weight", "T"),
    ("output", "bias"): ("encoder.layer.{i}.output.dense.bias", ""),
    ("output_layer_norm", "gamma"): ("encoder.layer.{i}.output.LayerNorm.weight", ""),
    ("output_layer_norm", "beta"): ("encoder.layer.{i}.output.LayerNorm.bias", ""),
    ("pooler_transform", "kernel"): ("pooler.dense.weight", "T"),
    ("pooler_transform", "bias"): ("pooler.dense.bias", ""),
}  # fmt: skip
_LAYER_NAME = re.compile(r"(?:transformer/layer_(?P<i>\d+)/)?(?P<part>[a-z_]+)")

# The SavedModel output that is each graph output: by name (Model Garden's own, or the
# Keras layer that made it, `_1`... when Keras de-duplicated it), else the only one of
# its rank.
_OUTPUT_NAMES = {
    "sequence_output": (r"sequence_output", r"transformer/layer_{last}(?:_\d+)?"),
    "pooled_output": (r"pooled_output", r"pooler_transform(?:_\d+)?"),
}
_OUTPUT_RANKS = {"sequence_output": 3, "pooled_output": 2}


class ModelGardenBertFamily(Family):
    name = "model_garden_bert"
    title = "TF Model Garden BERT encoder (BertEncoder / BertEncoderV2)"

    # -- roles ---------------------------------------------------------------------------

    def layers(
        self, infos: Sequence[VariableInfo], config: dict | None
    ) -> tuple[list[Layer], list[VariableInfo]]:
        for spelling in _BLOCK_PREFIX:
            slots = _slots(infos, spelling)
            if any(s.part == "self_attention" and s.role == "query.kernel" for s in slots.values()):
                break
        else:
            return [], list(infos)
        evidence = SHAPE_ORDER if spelling == "positions" else NAMES
        layers = _build_layers(infos, slots, evidence)
        used = {key for layer in layers for key in layer.weights.values()}
        return layers, [info for info in infos if info.key not in used]

    # -- the original model ----------------------------------------------------------------

    def original(self, path, format_name, role_map):
        """A SavedModel's signature with its outputs picked and named as the graph's
        (a tf-keras `model.save` names them after Keras layers)."""
        from ckpt_tool.original import load_original

        if format_name != "checkpoint" or not (path / "saved_model.pb").is_file():
            return None  # a bare checkpoint: the generic loader says what to do
        blocks = len(_attention_layers(role_map))
        return _EncoderOutputs(load_original(path, format_name), blocks - 1)

    # -- graph ---------------------------------------------------------------------------

    def graph(self, role_map: RoleMap):
        """Inputs input_ids, token_type_ids, attention_mask (B, S) (Model Garden's
        input_word_ids, input_type_ids, input_mask); outputs sequence_output (B, T, D)
        and pooled_output (B, D). Each block is post-LayerNorm:
        x = LN(x + MHA(x, x)); x = LN(x + Dense(Dense_gelu(x))). The padding mask goes
        in as MultiHeadAttention's key_mask, (B, 1, S): every query sees the same keys,
        as the (B, T, S) mask of Model Garden's SelfAttentionMask says."""
        from ckpt_tool.graph import Graph, Node

        layers = {layer.name: layer for layer in role_map.layers}
        nodes: list[Node] = []
        inputs = [(name, 0, 0) for name in INPUTS]
        ids, types, mask = inputs

        def node(name: str, args: list, kwargs: dict | None = None, cls: str = "") -> tuple:
            layer = layers.get(name)
            if layer is None and not cls:
                raise CkptToolError(f"the encoder has no weights for {name}")
            config = layer.config if layer is not None else {"name": name}
            nodes.append(Node(name, cls or layer.class_name, config, 0, args, kwargs or {}))
            return (name, 0, 0)

        embeddings = next((la for la in role_map.layers if la.class_name == "BertEmbeddings"), None)
        if embeddings is None:
            return None  # no tables: the generic graph (or its error) instead
        x = node(embeddings.name, [ids, types])
        for attention in _attention_layers(role_map):
            base = attention.name.removesuffix("/self_attention")
            h = node(attention.name, [x, x], {"key_mask": mask})
            h = node(f"{base}/attention_add", [[h, x]], cls="Add")
            x = node(f"{base}/self_attention_layer_norm", [h])
            h = node(f"{base}/intermediate", [x])
            h = node(f"{base}/output", [h])
            h = node(f"{base}/output_add", [[h, x]], cls="Add")
            x = node(f"{base}/output_layer_norm", [h])
        outputs, names = [x], [OUTPUTS[0]]
        pooler = next((la for la in role_map.layers if la.class_name == "BertPooler"), None)
        if pooler is not None:
            outputs.append(node(pooler.name, [x]))
            names.append(OUTPUTS[1])
        return Graph(inputs, nodes, outputs, self.title, list(INPUTS), output_names=names)

    # -- PyTorch -------------------------------------------------------------------------

    def torch_arrays(self, inp, lt):
        from ckpt_tool.layouts.base import derived, verbatim

        m = _LAYER_NAME.fullmatch(lt.layer.name.removeprefix(lt.layer.scope or ""))
        if lt.layer.scope is None or m is None:
            return None
        arrays = []
        for role, info in sorted(lt.tensors.items(), key=lambda item: item[1].order):
            target = _TORCH.get((m.group("part"), role))
            if target is None:
                return None
            template, how = target
            name = template.format(i=m.group("i"))
            if not how:
                arrays.append(verbatim(inp, name, info))
                continue
            fn, label = _TRANSFORMS[how]
            shape = fn(np.empty(info.shape, np.float32)).shape
            arrays.append(derived(inp, name, [info], fn, shape, label))
        return arrays

    def torch_note(self) -> str:
        return (
            "Model Garden BERT: keys follow transformers' BertModel state_dict "
            "(encoder.layer.0.attention.self.query.weight, ...; hidden_act gelu_new)"
        )


# -- roles ---------------------------------------------------------------------------------


def _names(info: VariableInfo) -> list[str]:
    key = info.key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
    return [info.name, *info.aliases, key]


def _slots(infos: Sequence[VariableInfo], spelling: str) -> dict[str, _Slot]:
    """Variable key -> slot for the tensors a spelling places (one encoder: the scope
    of the first block decides)."""
    blocks = {}
    for info in infos:
        slot = _block_slot(info, spelling)
        if slot is not None:
            blocks[info.key] = slot
    if not blocks:
        return {}
    scope = next(iter(blocks.values())).scope
    blocks = {key: slot for key, slot in blocks.items() if slot.scope == scope}
    if spelling == "positions":
        return {**_renumber(blocks), **_positional_top(infos, blocks, scope)}
    return {**blocks, **_top_slots(infos, spelling, scope)}


def _block_slot(info: VariableInfo, spelling: str) -> _Slot | None:
    column = 0 if spelling == "names" else 1
    literal = _BLOCK_LITERAL[spelling]
    for name in _names(info):
        if literal not in name:
            continue  # cannot match (checked first: an index can hold a million names)
        m = re.fullmatch(_BLOCK_PREFIX[spelling], name)
        if m is None:
            continue
        for rule in _BLOCK_RULES:
            r = re.fullmatch(rule[column], m.group("rest"))
            if r is not None:
                role = rule[3].format(**r.groupdict())
                return _Slot(m.group("scope"), int(m.group("i")), rule[2], role)
    return None


def _top_slots(infos: Sequence[VariableInfo], spelling: str, scope: str) -> dict[str, _Slot]:
    """The embeddings and the pooler, by name under the blocks' scope."""
    column = 0 if spelling == "names" else 1
    slots = {}
    for info in infos:
        for name, rule in ((n, r) for n in _names(info) for r in _TOP_RULES):
            if not name.startswith(scope):
                continue
            m = re.fullmatch(rule[column], name.removeprefix(scope))
            if m is not None:
                slots[info.key] = _Slot(scope, None, rule[2], rule[3].format(**m.groupdict()))
                break
    return slots


def _renumber(blocks: dict[str, _Slot]) -> dict[str, _Slot]:
    """`layer_with_weights-K` counts every layer with weights: the blocks are 0, 1, ...
    in that order."""
    order = sorted({slot.block for slot in blocks.values()})
    return {k: _Slot(s.scope, order.index(s.block), s.part, s.role) for k, s in blocks.items()}


def _positional_top(
    infos: Sequence[VariableInfo], blocks: dict[str, _Slot], scope: str
) -> dict[str, _Slot]:
    """`layer_with_weights-K/<weight>` outside the blocks: before the first block the
    tables (word, position, type: their creation order) and the embedding LayerNorm,
    after the last the pooler, whose kernel is (D, D)."""
    first = min(slot.block for slot in blocks.values())
    last = max(slot.block for slot in blocks.values())
    queries = (i for i in infos if i.key in blocks and blocks[i.key].role == "query.kernel")
    d = next((i.shape[0] for i in queries), None)  # None: no block names a query (not ours)
    found = [
        (k, w, info) for info in infos for k, w in [_positional_top_key(info, scope)] if k >= 0
    ]
    tables = sorted({k for k, w, _ in found if w == "embeddings" and k < first})[: len(_TABLES)]
    slots = {}
    for k, w, info in found:
        if k in tables:
            slots[info.key] = _Slot(scope, None, "embeddings", _TABLES[tables.index(k)])
        elif k < first and w in ("gamma", "beta"):
            slots[info.key] = _Slot(scope, None, "embeddings", f"LayerNorm.{w}")
        elif k > last and w in ("kernel", "bias") and info.shape in ((d, d), (d,)):
            slots[info.key] = _Slot(scope, None, "pooler_transform", w)
    return slots


def _positional_top_key(info: VariableInfo, scope: str) -> tuple[int, str]:
    """(K, weight) of a key `<scope>layer_with_weights-K/<weight>`, else (-1, "")."""
    key = info.key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
    m = re.fullmatch(_POSITIONAL_TOP, key)
    if m is None or m.group("scope") != scope:
        return -1, ""
    return int(m.group("k")), m.group("w")


def _build_layers(
    infos: Sequence[VariableInfo], slots: dict[str, _Slot], evidence: str
) -> list[Layer]:
    """The layers in forward order: embeddings, each block's parts, the pooler."""
    by_key = {info.key: info for info in infos}
    scope = next(iter(slots.values())).scope if evidence == NAMES else ""
    grouped: dict[tuple[int | None, str], dict[str, str]] = {}
    for key, slot in sorted(slots.items(), key=lambda item: by_key[item[0]].order):
        grouped.setdefault((slot.block, slot.part), {})[slot.role] = key
    layers = []
    for block, part in sorted(grouped, key=_forward_order):
        weights = grouped[(block, part)]
        prefix = "" if block is None else f"transformer/layer_{block}/"
        shapes = {role: by_key[key].shape for role, key in weights.items()}
        layer = Layer(
            f"{scope}{prefix}{part}",
            _CLASSES[part],
            _config(part, shapes),
            weights,
            evidence,
            scope=scope,
        )
        if part == "intermediate":
            layer.config_alternatives = [dict(a) for a in _ACTIVATION_ALTERNATIVES]
            layer.notes.append(
                "activation not in the weights: Model Garden's 'gelu' (tanh approximation); "
                "verify also tries erf GELU and ReLU"
            )
        layers.append(layer)
    return layers


def _forward_order(group: tuple[int | None, str]) -> tuple[int, int, int]:
    block, part = group
    where = 0 if part == "embeddings" else 2 if block is None else 1
    return where, block or 0, list(_CLASSES).index(part)


def _config(part: str, shapes: dict[str, tuple[int, ...]]) -> dict:
    """The layer's settings: from the shapes, plus Model Garden's defaults."""
    norm = {"axis": -1, "epsilon": EPSILON, "center": True, "scale": True}
    if part == "embeddings":
        word = shapes.get("word_embeddings", (None, None))
        types = shapes.get("token_type_embeddings", (0,))
        return {"epsilon": EPSILON, "hidden_size": word[-1], "type_vocab_size": types[0]}
    if part == "self_attention":
        _, n, h = shapes.get("query.kernel", (None, None, None))
        return {
            "num_heads": n,
            "key_dim": h,
            "value_dim": h,
            "use_bias": "query.bias" in shapes,
            "dropout": 0.0,
            "softmax_robust_masking": False,  # tf-keras MultiHeadAttention
        }
    if part.endswith("layer_norm"):
        return norm
    if part in ("intermediate", "output"):
        units = shapes["kernel"][-1] if "kernel" in shapes else None
        activation = ACTIVATION if part == "intermediate" else "linear"
        return {"units": units, "activation": activation, "use_bias": "bias" in shapes}
    return {}


def _attention_layers(role_map: RoleMap) -> list[Layer]:
    return [la for la in role_map.layers if la.class_name == "MultiHeadAttention"]


# -- the original's outputs ----------------------------------------------------------------


class _EncoderOutputs(OriginalModel):
    """The SavedModel of an encoder, returning (sequence_output, pooled_output)."""

    def __init__(self, inner: OriginalModel, last_block: int):
        self._inner = inner
        self._last = last_block
        self.input_specs = inner.input_specs
        self.description = inner.description
        self.output_names = list(OUTPUTS)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs = self._inner(inputs)
        names = self._inner.output_names or [f"output_{i}" for i in range(len(outputs))]
        named = dict(zip(names, outputs, strict=True))
        return [self._pick(named, output) for output in OUTPUTS]

    def layer_outputs(self, inputs, names=()):
        return self._inner.layer_outputs(inputs, names)

    def _pick(self, named: dict[str, np.ndarray], output: str) -> np.ndarray:
        for pattern in _OUTPUT_NAMES[output]:
            regex = re.compile(pattern.format(last=self._last))
            found = [name for name in named if regex.fullmatch(name)]
            if found:
                return named[found[0]]
        of_rank = [name for name in named if np.ndim(named[name]) == _OUTPUT_RANKS[output]]
        if len(of_rank) == 1:
            return named[of_rank[0]]
        raise CkptToolError(
            f"cannot tell which output of {self.description} ({', '.join(named)}) is the "
            f"encoder's {output}"
        )
