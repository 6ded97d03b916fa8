"""keras-hub backbones (BertBackbone, DistilBertBackbone, GPT2Backbone, LlamaBackbone,
ViTBackbone) by their weight paths, as Keras 3 names them (`w.path`):

    token_embedding/embeddings, transformer_layer_0/self_attention_layer/query/kernel,
    transformer_layer_0/feedforward_layer_norm/gamma, pooled_dense/kernel, ...

The `.keras` and `.weights.h5` readers give these paths (from the `name` of each layer's
`vars` group), a TF2 checkpoint gives them through its object graph and a `model.export()`
SavedModel as each variable's own name (an alias of `variables/N`).

Roles: attention projections (query/key/value (D,N,H), attention_output (N,H,D)) form a
"MultiHeadAttention" layer, norms are "LayerNormalization" (Llama's are
"RMSNormalization": no mean subtracted), tables "Embedding", ViT's patch projection
"Conv2D". Integer tensors (RNG `seed_generator_state`) get no role.

Settings the weights do not store (epsilons, activations, rotary wavelength) come from
the backbone config: a `.keras` file's config.json, or the `config.json` of a keras-hub
preset beside the weights; else keras-hub's defaults for the architecture, with the
common other values left to `verify` as alternatives. The forward graph (`graph`) is
in `keras_hub_graph.py`.

PyTorch names are those of the transformers model of the same architecture (BertModel,
DistilBertModel, GPT2Model, LlamaModel, ViTModel): keras-hub's own converters
(`keras_hub/src/utils/transformers/convert_*.py`) inverted.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckpt_tool.errors import UsageError
from ckpt_tool.families.base import Family, load_json_config
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import NAMES, Layer, RoleMap
from ckpt_tool.safe_json import loads_json
from ckpt_tool.storage import as_path, is_url

# -- roles ---------------------------------------------------------------------------------

# (weight path, layer class, role): the first that matches decides; `layer` is the layer.
_ROLE_RULES: tuple[tuple[re.Pattern, str, str], ...] = tuple(
    (re.compile(pattern), class_name, role)
    for pattern, class_name, role in (
        (
            r"(?P<layer>.+)/(?P<p>query|key|value)/(?P<w>kernel|bias)",
            "MultiHeadAttention",
            "{p}.{w}",
        ),
        (r"(?P<layer>.+)/attention_output/(?P<w>kernel|bias)", "MultiHeadAttention", "output.{w}"),
        (r"(?P<layer>.+)/(?P<w>gamma|beta)", "LayerNormalization", "{w}"),
        (r"(?P<layer>.+)/scale", "RMSNormalization", "scale"),  # Llama's RMS norm
        (r"(?P<layer>.+)/embeddings", "Embedding", "embeddings"),
        (r"(?P<layer>.+/reverse_embeddings)", "Dense", "kernel"),  # untied output head
        (r"(?P<layer>.+)/class_token", "ClassToken", "class_token"),
        (r"(?P<layer>.+patch_embedding)/(?P<w>kernel|bias)", "Conv2D", "{w}"),
        (r"(?P<layer>.+)/(?P<w>kernel|bias)", "Dense", "{w}"),
    )
)
# The last path component of every name a rule matches.
_RULE_LEAVES = frozenset(
    ("kernel", "bias", "gamma", "beta", "scale", "embeddings", "reverse_embeddings", "class_token")
)
# What the weights cannot tell (the backbone config holds it, a bare .weights.h5 has none).
_UNSTORED = {
    "LayerNormalization": "epsilon is not in the weights (the backbone config's, or "
    "keras-hub's default for the architecture)",
    "RMSNormalization": "epsilon is not in the weights (the backbone config's, or "
    "keras-hub's default for the architecture)",
    "Dense": "activation is not in the weights (the backbone config's)",
}


# -- PyTorch names -------------------------------------------------------------------------


def _t(a: np.ndarray) -> np.ndarray:  # Dense kernel (I,O) -> nn.Linear weight (O,I)
    return a.T


def _in_linear(a: np.ndarray) -> np.ndarray:  # (D,N,H) -> (N*H, D)
    return a.reshape(a.shape[0], -1).T


def _out_linear(a: np.ndarray) -> np.ndarray:  # (N,H,D) -> (D, N*H)
    return a.reshape(-1, a.shape[-1]).T


def _flat(a: np.ndarray) -> np.ndarray:  # (N,H) bias -> (N*H,); (N,H,D) -> (N*H, D)
    return a.reshape(-1) if a.ndim == 2 else a.reshape(-1, a.shape[-1])


def _in_conv1d(a: np.ndarray) -> np.ndarray:  # (D,N,H) -> GPT-2 Conv1D (D, N*H)
    return a.reshape(a.shape[0], -1)


def _conv2d(a: np.ndarray) -> np.ndarray:  # (kh,kw,in,out) -> (out,in,kh,kw)
    return a.transpose(3, 2, 0, 1)


def _batch(a: np.ndarray) -> np.ndarray:  # (P,D) -> (1,P,D)
    return a[None]


def _same(a: np.ndarray) -> np.ndarray:
    return a


_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "": _same,
    "T": _t,
    "in": _in_linear,
    "out": _out_linear,
    "flat": _flat,
    "conv1d": _in_conv1d,
    "conv2d": _conv2d,
    "batch": _batch,
}
_W = "(?P<w>kernel|bias|gamma|beta|scale|embeddings)"
_LAYER = r"transformer_layer_(?P<i>\d+)"


@dataclass(frozen=True)
class Backbone:
    """One keras-hub backbone: names that identify it and its PyTorch name rules."""

    name: str
    hf_class: str
    signature: tuple[str, ...]  # weight paths every file of this backbone has
    # (keras path regex, torch name template, transform): `{i}` the block, `{param}` the
    # torch parameter of `w`; tensors that map to one name are concatenated (GPT-2 c_attn).
    torch_rules: tuple[tuple[str, str, str], ...]
    first_block: int = 0  # the index keras-hub gives the first block
    dropped: tuple[str, ...] = ()  # paths the transformers model has no weight for


_BERT = Backbone(
    "bert",
    "BertModel",
    ("token_embedding/embeddings", "segment_embedding/embeddings", "pooled_dense/kernel"),
    (
        ("token_embedding/embeddings", "embeddings.word_embeddings.weight", ""),
        ("position_embedding/embeddings", "embeddings.position_embeddings.weight", ""),
        ("segment_embedding/embeddings", "embeddings.token_type_embeddings.weight", ""),
        (f"embeddings_layer_norm/{_W}", "embeddings.LayerNorm.{param}", ""),
        (
            rf"{_LAYER}/self_attention_layer/(?P<p>query|key|value)/kernel",
            "encoder.layer.{i}.attention.self.{p}.weight",
            "in",
        ),
        (
            rf"{_LAYER}/self_attention_layer/(?P<p>query|key|value)/bias",
            "encoder.layer.{i}.attention.self.{p}.bias",
            "flat",
        ),
        (
            rf"{_LAYER}/self_attention_layer/attention_output/kernel",
            "encoder.layer.{i}.attention.output.dense.weight",
            "out",
        ),
        (
            rf"{_LAYER}/self_attention_layer/attention_output/bias",
            "encoder.layer.{i}.attention.output.dense.bias",
            "",
        ),
        (
            rf"{_LAYER}/self_attention_layer_norm/{_W}",
            "encoder.layer.{i}.attention.output.LayerNorm.{param}",
            "",
        ),
        (
            rf"{_LAYER}/feedforward_intermediate_dense/{_W}",
            "encoder.layer.{i}.intermediate.dense.{param}",
            "T",
        ),
        (rf"{_LAYER}/feedforward_output_dense/{_W}", "encoder.layer.{i}.output.dense.{param}", "T"),
        (
            rf"{_LAYER}/feedforward_layer_norm/{_W}",
            "encoder.layer.{i}.output.LayerNorm.{param}",
            "",
        ),
        (f"pooled_dense/{_W}", "pooler.dense.{param}", "T"),
    ),
)

_DISTILBERT = Backbone(
    "distilbert",
    "DistilBertModel",
    ("token_and_position_embedding/token_embedding/embeddings",),
    (
        (
            "token_and_position_embedding/token_embedding/embeddings",
            "embeddings.word_embeddings.weight",
            "",
        ),
        (
            "token_and_position_embedding/position_embedding/embeddings",
            "embeddings.position_embeddings.weight",
            "",
        ),
        (f"embeddings_layer_norm/{_W}", "embeddings.LayerNorm.{param}", ""),
        (
            rf"{_LAYER}/self_attention_layer/(?P<p>q|k|v)[a-z]+/kernel",
            "transformer.layer.{i}.attention.{p}_lin.weight",
            "in",
        ),
        (
            rf"{_LAYER}/self_attention_layer/(?P<p>q|k|v)[a-z]+/bias",
            "transformer.layer.{i}.attention.{p}_lin.bias",
            "flat",
        ),
        (
            rf"{_LAYER}/self_attention_layer/attention_output/kernel",
            "transformer.layer.{i}.attention.out_lin.weight",
            "out",
        ),
        (
            rf"{_LAYER}/self_attention_layer/attention_output/bias",
            "transformer.layer.{i}.attention.out_lin.bias",
            "",
        ),
        (
            rf"{_LAYER}/self_attention_layer_norm/{_W}",
            "transformer.layer.{i}.sa_layer_norm.{param}",
            "",
        ),
        (
            rf"{_LAYER}/feedforward_intermediate_dense/{_W}",
            "transformer.layer.{i}.ffn.lin1.{param}",
            "T",
        ),
        (rf"{_LAYER}/feedforward_output_dense/{_W}", "transformer.layer.{i}.ffn.lin2.{param}", "T"),
        (
            rf"{_LAYER}/feedforward_layer_norm/{_W}",
            "transformer.layer.{i}.output_layer_norm.{param}",
            "",
        ),
    ),
)

_GPT2 = Backbone(
    "gpt2",
    "GPT2Model",
    ("token_embedding/embeddings", "position_embedding/embeddings", "layer_norm/gamma"),
    (
        ("token_embedding/embeddings", "wte.weight", ""),
        ("position_embedding/embeddings", "wpe.weight", ""),
        # Conv1D weights are (in, out): kernels as they are; q, k, v fused in c_attn.
        (
            rf"{_LAYER}/self_attention/(query|key|value)/kernel",
            "h.{i}.attn.c_attn.weight",
            "conv1d",
        ),
        (rf"{_LAYER}/self_attention/(query|key|value)/bias", "h.{i}.attn.c_attn.bias", "flat"),
        (rf"{_LAYER}/self_attention/attention_output/kernel", "h.{i}.attn.c_proj.weight", "flat"),
        (rf"{_LAYER}/self_attention/attention_output/bias", "h.{i}.attn.c_proj.bias", ""),
        (rf"{_LAYER}/self_attention_layer_norm/{_W}", "h.{i}.ln_1.{param}", ""),
        (rf"{_LAYER}/feedforward_intermediate_dense/{_W}", "h.{i}.mlp.c_fc.{param}", ""),
        (rf"{_LAYER}/feedforward_output_dense/{_W}", "h.{i}.mlp.c_proj.{param}", ""),
        (rf"{_LAYER}/feedforward_layer_norm/{_W}", "h.{i}.ln_2.{param}", ""),
        (f"layer_norm/{_W}", "ln_f.{param}", ""),
    ),
)

_LLAMA = Backbone(
    "llama",
    "LlamaModel",
    ("token_embedding/embeddings", "sequence_output_layernorm/scale"),
    (
        ("token_embedding/embeddings", "embed_tokens.weight", ""),
        (
            rf"{_LAYER}/self_attention/(?P<p>q|k|v)[a-z]+/kernel",
            "layers.{i}.self_attn.{p}_proj.weight",
            "in",
        ),
        (
            rf"{_LAYER}/self_attention/attention_output/kernel",
            "layers.{i}.self_attn.o_proj.weight",
            "out",
        ),
        (rf"{_LAYER}/self_attention_layernorm/scale", "layers.{i}.input_layernorm.weight", ""),
        (rf"{_LAYER}/feedforward_gate_dense/kernel", "layers.{i}.mlp.gate_proj.weight", "T"),
        (rf"{_LAYER}/feedforward_intermediate_dense/kernel", "layers.{i}.mlp.up_proj.weight", "T"),
        (rf"{_LAYER}/feedforward_output_dense/kernel", "layers.{i}.mlp.down_proj.weight", "T"),
        (
            rf"{_LAYER}/feedforward_layernorm/scale",
            "layers.{i}.post_attention_layernorm.weight",
            "",
        ),
        ("sequence_output_layernorm/scale", "norm.weight", ""),
    ),
    dropped=("token_embedding/reverse_embeddings",),  # LlamaForCausalLM's lm_head.weight.T
)

_VIT_BLOCK = r"vit_encoder/transformer_block_(?P<i>\d+)"
_VIT = Backbone(
    "vit",
    "ViTModel",
    ("vit_patching_and_embedding/patch_embedding/kernel",),
    (
        ("vit_patching_and_embedding/class_token", "embeddings.cls_token", ""),
        (
            "vit_patching_and_embedding/patch_embedding/kernel",
            "embeddings.patch_embeddings.projection.weight",
            "conv2d",
        ),
        (
            "vit_patching_and_embedding/patch_embedding/bias",
            "embeddings.patch_embeddings.projection.bias",
            "",
        ),
        (
            "vit_patching_and_embedding/position_embedding/embeddings",
            "embeddings.position_embeddings",
            "batch",
        ),
        (f"{_VIT_BLOCK}/ln_1/{_W}", "encoder.layer.{i}.layernorm_before.{param}", ""),
        (
            rf"{_VIT_BLOCK}/mha/(?P<p>query|key|value)/kernel",
            "encoder.layer.{i}.attention.attention.{p}.weight",
            "in",
        ),
        (
            rf"{_VIT_BLOCK}/mha/(?P<p>query|key|value)/bias",
            "encoder.layer.{i}.attention.attention.{p}.bias",
            "flat",
        ),
        (
            f"{_VIT_BLOCK}/mha/attention_output/kernel",
            "encoder.layer.{i}.attention.output.dense.weight",
            "out",
        ),
        (
            f"{_VIT_BLOCK}/mha/attention_output/bias",
            "encoder.layer.{i}.attention.output.dense.bias",
            "",
        ),
        (f"{_VIT_BLOCK}/ln_2/{_W}", "encoder.layer.{i}.layernorm_after.{param}", ""),
        (f"{_VIT_BLOCK}/mlp/dense_1/{_W}", "encoder.layer.{i}.intermediate.dense.{param}", "T"),
        (f"{_VIT_BLOCK}/mlp/dense_2/{_W}", "encoder.layer.{i}.output.dense.{param}", "T"),
        (f"vit_encoder/ln/{_W}", "layernorm.{param}", ""),
    ),
    first_block=1,
)

BACKBONES: tuple[Backbone, ...] = (_BERT, _DISTILBERT, _GPT2, _LLAMA, _VIT)
_PARAMS = {"kernel": "weight", "gamma": "weight", "scale": "weight", "embeddings": "weight"}


class KerasHubFamily(Family):
    name = "keras_hub"
    title = "keras-hub backbone"
    config_files = ("config.json",)  # a keras-hub preset's backbone config

    def accepts_config(self, config: dict) -> bool:
        return is_keras_hub_config(config)

    def find_config(self, path):
        path = as_path(path)
        if is_url(path):
            return super().find_config(path)
        if path.is_file() and zipfile.is_zipfile(path):  # a .keras file holds its config
            with zipfile.ZipFile(path) as zf:
                return path if "config.json" in zf.namelist() else None
        return super().find_config(path)

    def read_config(self, path: Path) -> dict:
        if not zipfile.is_zipfile(path):
            return load_json_config(path)
        try:
            with zipfile.ZipFile(path) as zf:
                config = loads_json(zf.read("config.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise UsageError(
                f"cannot read the config.json in the .keras file: {exc}", path
            ) from None
        return config if isinstance(config, dict) else {}

    def graph(self, role_map: RoleMap):
        from ckpt_tool.families.keras_hub_graph import backbone_graph

        names = {layer.name for layer in role_map.layers}
        for backbone in BACKBONES:
            if {path.rsplit("/", 1)[0] for path in backbone.signature} <= names:
                return backbone_graph(role_map, backbone.name, f"{self.title} ({backbone.name})")
        return None

    def layers(
        self, infos: Sequence[VariableInfo], config: dict | None
    ) -> tuple[list[Layer], list[VariableInfo]]:
        backbone = _backbone(infos)
        if backbone is None:
            return [], list(infos)
        by_layer: dict[str, Layer] = {}
        used: set[str] = set()
        for info in infos:
            found = _role(info)
            if found is None:
                continue
            layer_name, class_name, role = found
            layer = by_layer.get(layer_name)
            if layer is None:
                layer = Layer(layer_name, class_name, {}, {}, NAMES, scope="")
                by_layer[layer_name] = layer
            layer.weights[role] = info.key
            used.add(info.key)
        shapes = {info.key: info.shape for info in infos}
        settings = backbone_settings(config)
        for layer in by_layer.values():
            layer.config = _layer_config(layer, shapes)
            layer.notes.append(f"keras-hub {backbone.name} backbone, roles by weight path")
            if layer.class_name in _UNSTORED:
                layer.notes.append(_UNSTORED[layer.class_name])
            _apply_settings(backbone, layer, settings)
        return list(by_layer.values()), [info for info in infos if info.key not in used]

    def torch_arrays(self, inp, lt):
        from ckpt_tool.layouts.base import derived

        if lt.layer.scope != "" or lt.layer.evidence != NAMES:
            return None
        backbone = _backbone(inp.infos)
        if backbone is None:
            return None
        targets: dict[str, list[tuple[VariableInfo, str]]] = {}
        for info in lt.infos:
            path = keras_path(info)
            if path in backbone.dropped:
                inp.notes.append(f"{path}: no weight of {backbone.hf_class}, left out")
                continue
            name, how = _torch_target(backbone, path or info.name)
            targets.setdefault(name, []).append((info, how))
        arrays = []
        for name, sources in targets.items():
            fns = [_TRANSFORMS[how] for _, how in sources]
            srcs = [info for info, _ in sources]

            def fn(*arrays, fns=fns):
                parts = [f(a) for f, a in zip(fns, arrays, strict=True)]
                return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

            shapes = [
                f(np.empty(i.shape, np.float32)).shape for f, i in zip(fns, srcs, strict=True)
            ]
            shape = shapes[0] if len(shapes) == 1 else (*shapes[0][:-1], sum(s[-1] for s in shapes))
            label = " + ".join(how or "as is" for _, how in sources)
            arrays.append(derived(inp, name, srcs, fn, tuple(shape), label))
        return arrays

    def torch_note(self) -> str:
        return (
            "keras-hub names: keys follow the state_dict of the transformers model of the "
            "same architecture (BertModel, DistilBertModel, GPT2Model, LlamaModel, ViTModel)"
        )


def keras_path(info: VariableInfo) -> str | None:
    """The Keras weight path among the tensor's names (a SavedModel's `variables/N` has it
    as an alias), or None."""
    for name in (info.name, *info.aliases):
        if name.rpartition("/")[2] not in _RULE_LEAVES:
            continue  # no rule can match (checked first: an index can hold a million names)
        if any(rule.fullmatch(name) for rule, _, _ in _ROLE_RULES):
            return name
    return None


def _backbone(infos: Sequence[VariableInfo]) -> Backbone | None:
    names = {keras_path(info) for info in infos}
    return next((b for b in BACKBONES if set(b.signature) <= names), None)


def _role(info: VariableInfo) -> tuple[str, str, str] | None:
    """(layer, class, role) of one float tensor; None for integers (RNG state) and
    names no rule knows."""
    if not info.dtype.startswith(("float", "bfloat")):
        return None
    path = keras_path(info)
    for rule, class_name, role in _ROLE_RULES:
        m = rule.fullmatch(path or "")
        if m:
            groups = m.groupdict()
            return groups["layer"], class_name, role.format(**groups)
    return None


def _layer_config(layer: Layer, shapes: dict[str, tuple[int, ...]]) -> dict:
    from ckpt_tool.roles import infer_config

    by_role = {role: shapes[key] for role, key in layer.weights.items()}
    if layer.class_name == "MultiHeadAttention" and "query.kernel" not in by_role:
        return {}
    if layer.class_name == "RMSNormalization":
        return {"axis": -1, "epsilon": 1e-6}
    if layer.class_name == "Conv2D" and "kernel" in by_role:
        kh, kw, _, filters = by_role["kernel"]  # a patch projection: strides = kernel size
        return {
            "filters": filters,
            "kernel_size": [kh, kw],
            "strides": [kh, kw],
            "padding": "valid",
            "use_bias": "bias" in by_role,
        }
    config = infer_config(layer.class_name, by_role)
    if layer.class_name == "MultiHeadAttention" and "key.kernel" in by_role:
        kv_heads = by_role["key.kernel"][-2]
        if kv_heads != config["num_heads"]:  # grouped-query attention (Llama)
            config["num_key_value_heads"] = kv_heads
    return config


# -- settings the weights do not store -----------------------------------------------------

# keras-hub's fixed choices per architecture: (layer path regex, config) applied in order.
_FIXED: dict[str, tuple[tuple[str, dict], ...]] = {
    "bert": (
        (r".*norm", {"epsilon": 1e-12}),
        (r".*/feedforward_intermediate_dense", {"activation": "gelu_approximate"}),
        (r"pooled_dense", {"activation": "tanh"}),
    ),
    "distilbert": (
        (r".*norm", {"epsilon": 1e-12}),
        (r".*/feedforward_intermediate_dense", {"activation": "gelu"}),
    ),
    "gpt2": (
        (r".*norm", {"epsilon": 1e-5}),
        (r".*/feedforward_intermediate_dense", {"activation": "gelu_approximate"}),
    ),
    "llama": ((r".*/feedforward_gate_dense", {"activation": "silu"}),),
    "vit": (
        (r".*/mlp/dense_1", {"activation": "gelu"}),
        (r".*/position_embedding", {"whole_table": True}),
    ),
}
# Backbone config keys -> (layer path regex, config key, keras-hub default, others to try).
_FROM_CONFIG: dict[str, tuple[tuple[str, str, str, object, tuple], ...]] = {
    "llama": (
        ("layer_norm_epsilon", r".*layernorm", "epsilon", 1e-6, (1e-5,)),
        ("rope_max_wavelength", r".*/self_attention", "rope_max_wavelength", 10000, (500000,)),
        (
            "rope_position_scaling_factor",
            r".*/self_attention",
            "rope_position_scaling_factor",
            1.0,
            (),
        ),
        (
            "rope_frequency_adjustment_factor",
            r".*/self_attention",
            "rope_frequency_adjustment_factor",
            None,
            (),
        ),
        ("rope_low_freq_factor", r".*/self_attention", "rope_low_freq_factor", None, ()),
        ("rope_high_freq_factor", r".*/self_attention", "rope_high_freq_factor", None, ()),
        (
            "rope_pretraining_sequence_length",
            r".*/self_attention",
            "rope_pretraining_sequence_length",
            None,
            (),
        ),
    ),
    "vit": (("layer_norm_epsilon", r".*(ln|ln_\d)", "epsilon", 1e-6, (1e-12, 1e-5)),),
}


def is_keras_hub_config(config: dict) -> bool:
    """A serialized keras-hub object: its `module` or `registered_name` names keras_hub."""
    return any("keras_hub" in str(config.get(key) or "") for key in ("module", "registered_name"))


def backbone_settings(config: dict | None) -> dict | None:
    """The backbone's constructor arguments in a keras-hub config, or None."""
    if not config or not is_keras_hub_config(config):
        return None
    inner = config.get("config")
    return inner if isinstance(inner, dict) else None


def _apply_settings(backbone: Backbone, layer: Layer, settings: dict | None) -> None:
    """Put the architecture's fixed choices and the backbone config's values (or
    keras-hub's defaults, with alternatives for verify) into the layer's config."""
    for pattern, values in _FIXED.get(backbone.name, ()):
        if re.fullmatch(pattern, layer.name):
            layer.config.update(values)
    for key, pattern, config_key, default, others in _FROM_CONFIG.get(backbone.name, ()):
        if not re.fullmatch(pattern, layer.name):
            continue
        if settings is not None:
            layer.config[config_key] = settings.get(key, default)
            continue
        layer.config[config_key] = default
        if others:
            layer.config_alternatives += [{config_key: v} for v in others]
            layer.notes.append(
                f"{config_key} unknown without the backbone config: keras-hub's default "
                f"{default}, verify also tries {', '.join(map(str, others))}"
            )


def _torch_target(backbone: Backbone, path: str) -> tuple[str, str]:
    """(state_dict name, transform) of one Keras weight path."""
    for pattern, template, how in backbone.torch_rules:
        m = re.fullmatch(pattern, path)
        if m is None:
            continue
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        if "i" in groups:
            groups["i"] = str(int(groups["i"]) - backbone.first_block)
        if "w" in groups:
            groups["param"] = _PARAMS.get(groups["w"], groups["w"])
            groups["param"] = "bias" if groups["w"] == "beta" else groups["param"]
        if groups.get("w") in ("gamma", "beta", "bias", "scale", "embeddings"):
            how = "" if how == "T" else how
        return template.format(**groups), how
    return path.replace("/", "."), ""
