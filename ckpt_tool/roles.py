"""Which variable is which: assign every weight to a layer and a role within it.

Evidence, strongest first (each assignment records which one decided):
1. "config": a Keras model config names the layer and gives its class and settings;
2. "names": the variable's path spells the layer and the role
   (`multi_head_attention/query/kernel`, `layer_with_weights-0/_query_dense/kernel`);
3. "shape+order": anonymous `variables/N` are parsed as a sequence of layers, each
   layer a pattern of shapes in Keras's weight-creation order, e.g. MultiHeadAttention
   `(D,N,H),(N,H)` for query, key, [gate], value, then `(N,Hv,Dout),(Dout,)`.
Where the evidence leaves alternatives (equal q/k/v shapes ordered only by position,
a gate with the value's shape), the layer lists them and `verify` settles them.

Model families (`ckpt_tool.families`: Google's and Hugging Face's BERT names, ...) read
their own names before the generic name rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ckpt_tool.errors import UsageError
from ckpt_tool.readers.base import WEIGHT, VariableInfo
from ckpt_tool.rolemap import (
    CONFIG,
    CONFIG_ORDER,
    NAMES,
    USER,
    Layer,
    RoleMap,
)
from ckpt_tool.safe_json import loads_json, one_line, read_config_text

# Sub-layer names of MultiHeadAttention across Keras 3, Keras 3.0.x, tf-keras and BERT.
_MHA_PARTS = {
    "query": "query",
    "_query_dense": "query",
    "query_dense": "query",
    "key": "key",
    "_key_dense": "key",
    "key_dense": "key",
    "value": "value",
    "_value_dense": "value",
    "value_dense": "value",
    "gate": "gate",
    "_gate_dense": "gate",
    "gate_dense": "gate",
    "attention_output": "output",
    "_output_dense": "output",
    "output_dense": "output",
}
# Sub-layers of the Synthesizer layers (DenseSynthesizer w1, w2, value).
_SUBLAYER_PARTS = {**_MHA_PARTS, "w1": "w1", "w2": "w2"}
_PARAMS = (
    "kernel",
    "bias",
    "gamma",
    "beta",
    "scale",
    "concat_score_weight",
    "embeddings",
    "logits",
)
# A weight's own name that our role for it spells differently.
_ROLE_ALIASES = {"logits": "random.logits"}
_ANONYMOUS_LISTS = {"variables", "_all_variables", "trainable_variables", "non_trainable_variables"}


# --------------------------------------------------------------------------- entry point


def assign_roles(
    infos: Sequence[VariableInfo],
    model_config: dict | None = None,
    roles_file: str | Path | None = None,
    *,
    source: str | Path | None = None,
    family_config: dict | None = None,
    ignore_names: bool = False,
) -> RoleMap:
    """Assign every WEIGHT variable (in model order) to a layer and a role.

    A model family (`ckpt_tool.families`) that recognises the names claims its layers
    first; it reads its own config file beside `source` (`bert_config.json`, a Hugging
    Face `config.json`) unless `family_config` gives one. `ignore_names` uses shapes and
    order alone, as if every variable were anonymous.
    """
    from ckpt_tool.families import claim_layers

    weights = sorted((i for i in infos if i.kind == WEIGHT), key=lambda i: i.order)
    # Every role is a floating tensor's: integer or string state never takes one.
    not_float = [i for i in weights if not _is_float(i.dtype)]
    weights = [i for i in weights if _is_float(i.dtype)]
    layer_configs = _layer_configs(model_config) if model_config and not ignore_names else {}
    layers: list[Layer] = []
    family_layers: list[Layer] = []
    family = None
    rest = weights
    if layer_configs:
        found, rest = _from_config(rest, layer_configs, _keras_paths(model_config))
        layers += found
        named = {layer.name for layer in found}
        found, rest = _from_config_order(rest, layer_configs, named)
        layers += found
    if not ignore_names:
        family, family_layers, rest = claim_layers(rest, source, family_config)
        layers += family_layers
        found, rest = _from_names(rest)
        layers += found
    if family is None:  # a family's unknown tensors stay unassigned, not guessed
        found, rest = _from_shapes(rest)
        layers += found
    unassigned = sorted([*rest, *not_float], key=lambda i: i.order)
    # Model order: by first variable; a family's layers keep their forward order as a
    # block (TF1 checkpoints list variables by name).
    order = {info.key: info.order for info in weights}
    first = {
        id(layer): min(order.get(k, 1 << 30) for k in layer.weights.values()) for layer in layers
    }
    if family_layers:
        start = min(first[id(layer)] for layer in family_layers)
        for i, layer in enumerate(family_layers):
            first[id(layer)] = start + i / (len(family_layers) + 1)
    layers.sort(key=lambda layer: first[id(layer)])
    _dedupe_layer_names(layers)
    role_map = RoleMap(layers, unassigned, family)
    if roles_file is not None:
        apply_roles_file(role_map, roles_file, weights)
    return role_map


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _dedupe_layer_names(layers: list[Layer]) -> None:
    seen: dict[str, int] = {}
    for layer in layers:
        n = seen.get(layer.name, 0)
        seen[layer.name] = n + 1
        if n:
            layer.name = f"{layer.name}_{n}"


# --------------------------------------------------------------------------- names


@dataclass
class _Parsed:
    info: VariableInfo
    layer_path: str
    part: str | None  # sub-layer role prefix ("query", "w1", ...) or None
    param: str  # "kernel", ..., or "#<i>" for the i-th weight of a Keras `vars` group
    sub: str | None = None  # the sub-layer as spelled in the name ("_query_dense")


def _parse_name(name: str, *, indexed: bool = False) -> _Parsed | None:
    """Split `.../<layer>/[<sub-layer>/]<param>` into its parts; None if anonymous.

    `indexed`: also accept `.../<layer>/[<sub-layer>/]<i>`, the i-th weight of a layer
    whose class the reader does not know (a custom layer in a `.keras` file)."""
    name = re.sub(r":\d+$", "", name)
    parts = [p for p in name.split("/") if p]
    if parts and parts[-1].lstrip("_") in _PARAMS:
        parts[-1] = parts[-1].lstrip("_")  # Keras 3 tracks EinsumDense's kernel as `_kernel`
    if indexed and len(parts) >= 2 and parts[-1].isdigit():
        parts[-1] = f"#{parts[-1]}"
    elif len(parts) < 2 or parts[-1] not in _PARAMS:
        return None
    if parts[0] in _ANONYMOUS_LISTS:
        return None
    param = parts[-1]
    if len(parts) >= 3 and parts[-2] in _SUBLAYER_PARTS:
        part = _SUBLAYER_PARTS[parts[-2]]
        return _Parsed(None, "/".join(parts[:-2]), part, param, parts[-2])  # type: ignore[arg-type]
    return _Parsed(None, "/".join(parts[:-1]), None, param)  # type: ignore[arg-type]


def _best_parse(info: VariableInfo) -> _Parsed | None:
    """The most informative of a variable's name and aliases."""
    best = None
    for name in (info.name, *info.aliases):
        parsed = _parse_name(name)
        if parsed is None:
            continue
        parsed.info = info
        if best is None or (parsed.part and not best.part):
            best = parsed
    return best


def _from_names(infos: list[VariableInfo]) -> tuple[list[Layer], list[VariableInfo]]:
    groups: dict[str, list[_Parsed]] = {}
    rest = []
    for info in infos:
        parsed = _best_parse(info)
        if parsed is None or not parsed.layer_path:
            rest.append(info)
        else:
            groups.setdefault(parsed.layer_path, []).append(parsed)
    layers = []
    pending = list(groups.items())
    while pending:
        path, members = pending.pop(0)
        roles = {_ROLE_ALIASES.get(_role(p), _role(p)): p.info.key for p in members}
        if len(roles) != len(members):  # names collide (e.g. `model/kernel` twice)
            rest += [p.info for p in members]
            continue
        class_name = _class_from_roles(roles, [p.info for p in members])
        if class_name is None and any(p.sub for p in members):
            # Not a known layer with sub-layers: read each sub-layer as a layer of its own.
            split: dict[str, list[_Parsed]] = {}
            for p in members:
                own = f"{path}/{p.sub}" if p.sub else path
                split.setdefault(own, []).append(_Parsed(p.info, own, None, p.param))
            pending += list(split.items())
            continue
        if class_name is None:
            rest += [p.info for p in members]
            continue
        shapes = {_ROLE_ALIASES.get(_role(p), _role(p)): p.info.shape for p in members}
        layer = Layer(
            name=_short_layer_name(path),
            class_name=class_name,
            config=infer_config(class_name, shapes),
            weights=roles,
            evidence=NAMES,
        )
        _add_unknown_settings(layer)
        layers.append(layer)
    rest.sort(key=lambda i: i.order)
    return layers, rest


def _role(p: _Parsed) -> str:
    return f"{p.part}.{p.param}" if p.part else p.param


def _short_layer_name(path: str) -> str:
    """`model/multi_head_attention` -> `multi_head_attention`; BERT paths stay whole."""
    parts = path.split("/")
    if len(parts) == 2 and parts[0] in ("model", "root"):
        return parts[1]
    return path


def _class_from_roles(roles: dict[str, str], infos: list[VariableInfo]) -> str | None:
    names = set(roles)
    rank = {r: len(i.shape) for r, i in zip(roles, infos, strict=True)}
    if any("." in r for r in names):
        if {"query.kernel", "key.kernel", "value.kernel"} <= names:
            return "MultiHeadAttention"
        if {"w1.kernel", "w2.kernel", "value.kernel"} <= names:
            return "DenseSynthesizer"
        if {"random.logits", "value.kernel"} <= names:
            return "RandomSynthesizer"
        return None
    if names <= {"gamma", "beta"}:
        return "LayerNormalization"
    if names <= {"kernel", "bias"} and "kernel" in names:
        return "Dense" if rank["kernel"] == 2 else "EinsumDense"
    if names == {"embeddings"}:
        return "Embedding"
    if names <= {"scale", "concat_score_weight"}:
        if "concat_score_weight" in names or rank.get("scale") == 0:
            return "Attention"
        return "AdditiveAttention"
    return None


# --------------------------------------------------------------------------- config


def _layer_configs(model_config: dict) -> dict[str, dict]:
    """Layer name -> {"class_name", "config"} from a Keras model config (any nesting)."""
    found: dict[str, dict] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            cls, cfg = node.get("class_name"), node.get("config")
            if isinstance(cls, str) and isinstance(cfg, dict):
                name = cfg.get("name") or node.get("name")
                if isinstance(name, str) and cls not in ("InputLayer", "Functional", "Sequential"):
                    found.setdefault(name, {"class_name": cls, "config": cfg})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(model_config)
    return found


def plain_config(value: object) -> object:
    """tf-keras writes tuples as {"class_name": "__tuple__", "items": [...]}: make lists."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and "items" in value:
            return [plain_config(v) for v in value["items"]]
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_config(v) for v in value]
    return value


def _keras_paths(model_config: dict) -> dict[str, str]:
    """Keras 3 weight-file paths of a functional model's layers -> layer names:
    `layers/<snake_case class name>[_k]`, numbered per class in config order."""
    config = model_config.get("config", model_config)
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return {}
    seen: dict[str, int] = {}
    paths = {}
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
            continue
        cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        name = layer.get("name") or cfg.get("name")
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", layer["class_name"]).lower()
        n = seen.get(snake, 0)
        seen[snake] = n + 1
        if isinstance(name, str):
            paths[snake if n == 0 else f"{snake}_{n}"] = name
    return paths


def _from_config(
    infos: list[VariableInfo], layer_configs: dict[str, dict], paths: dict[str, str]
) -> tuple[list[Layer], list[VariableInfo]]:
    by_layer: dict[str, list[_Parsed]] = {}
    rest = []
    for info in infos:
        placed = False
        known_layer = info.extra.get("layer_name")  # readers that know it say so
        for name in (info.name, *info.aliases):
            parsed = _parse_name(name, indexed=True)
            segments = re.sub(r":\d+$", "", name).split("/")
            layer_name = next((s for s in reversed(segments) if s in layer_configs), None)
            if known_layer in layer_configs:
                layer_name = known_layer
            if layer_name is None:  # a custom layer's weights under its class's path
                layer_name = next(
                    (paths[s] for s in segments if paths.get(s) in layer_configs), None
                )
            if parsed is None or layer_name is None:
                continue
            parsed.info = info
            by_layer.setdefault(layer_name, []).append(parsed)
            placed = True
            break
        if not placed:
            rest.append(info)
    layers = []
    for name, members in by_layer.items():
        spec = layer_configs[name]
        config = plain_config(spec["config"])
        weights = _config_roles(spec["class_name"], config, members)
        if weights is None:
            rest += [p.info for p in members]
            continue
        layers.append(Layer(name, spec["class_name"], config, weights, CONFIG))
    rest.sort(key=lambda i: i.order)
    return layers, rest


def _config_roles(class_name: str, config: dict, members: list[_Parsed]) -> dict[str, str] | None:
    """role -> key for one configured layer; `#i` (the i-th weight of a `vars` group)
    becomes the i-th of the class's roles for that sub-layer. None if roles collide."""
    from ckpt_tool.layers import LAYERS, LayerConfigError

    expected: list[str] = []
    if class_name in LAYERS:
        try:
            expected = LAYERS[class_name].weight_names(config)
        except LayerConfigError:
            expected = []
    subs = {p.part for p in members if p.part}
    weights: dict[str, str] = {}
    for p in members:
        role = _role(p)
        if p.param.startswith("#"):
            index = int(p.param[1:])
            if p.part:
                candidates = [r for r in expected if r.rpartition(".")[0] == p.part]
            else:
                candidates = [r for r in expected if r.partition(".")[0] not in subs]
            if index < len(candidates):
                role = candidates[index]
        role = _ROLE_ALIASES.get(role, role) if role not in expected else role
        if role in weights:
            return None
        weights[role] = p.info.key
    return weights


def _from_config_order(
    infos: list[VariableInfo], layer_configs: dict[str, dict], done: set[str]
) -> tuple[list[Layer], list[VariableInfo]]:
    """Anonymous variables with a config beside them: the config's layers, in order,
    each taking as many variables as Keras creates for it. Only when the counts add up."""
    from ckpt_tool.layers import LAYERS

    plan = []
    for name, spec in layer_configs.items():
        kind = LAYERS.get(spec["class_name"])
        if name in done or kind is None:
            continue
        config = plain_config(spec["config"])
        roles = kind.weight_names(config)
        if roles:
            plan.append((name, spec["class_name"], config, roles))
    if not infos or sum(len(roles) for *_, roles in plan) != len(infos):
        return [], infos
    layers, i = [], 0
    for name, class_name, config, roles in plan:
        weights = {role: infos[i + k].key for k, role in enumerate(roles)}
        layers.append(Layer(name, class_name, config, weights, CONFIG_ORDER))
        i += len(roles)
    return layers, []


# --------------------------------------------------------------------------- shape and order


def _from_shapes(infos: list[VariableInfo]) -> tuple[list[Layer], list[VariableInfo]]:
    """Parse anonymous variables, in order, as a sequence of known layer patterns."""
    layers: list[Layer] = []
    unassigned: list[VariableInfo] = []
    from ckpt_tool.layers.shape_match import shape_matchers

    kinds = shape_matchers()
    i = 0
    while i < len(infos):
        for kind in kinds:
            match = kind.match_shapes(infos, i)
            if match is not None:
                layer, used = match
                _add_unknown_settings(layer)
                layers.append(layer)
                i += used
                break
        else:
            unassigned.append(infos[i])
            i += 1
    return layers, unassigned


# --------------------------------------------------------------------------- configs


def infer_config(class_name: str, shapes: dict[str, tuple[int, ...]]) -> dict:
    """The Keras config that weights of these shapes imply (what shapes cannot
    tell keeps Keras's default and is listed in Layer.config_alternatives)."""
    from ckpt_tool.layers import LAYERS

    kind = LAYERS.get(class_name)
    return kind.infer_config(shapes) if kind is not None else {}


def _add_unknown_settings(layer: Layer) -> None:
    """Settings that weights do not store: the alternatives verify tries."""
    from ckpt_tool.layers import LAYERS

    kind = LAYERS.get(layer.class_name)
    if kind is None:
        return
    alternatives, note = kind.unknown_settings()
    layer.config_alternatives += alternatives
    if note:
        layer.notes.append(note)


# --------------------------------------------------------------------------- user overrides


def load_roles_file(path: str | Path) -> dict[str, str]:
    """A JSON or YAML mapping of variable (key or name) to role or `layer:role`."""
    path = Path(path)
    try:
        text = read_config_text(path)
    except OSError as exc:
        raise UsageError(f"cannot read roles file: {exc.strerror}", path) from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = loads_json(text)
    except Exception as exc:
        raise UsageError(f"roles file is not valid JSON/YAML: {one_line(exc)}", path) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise UsageError("roles file must map variable names to role strings", path)
    return data


def apply_roles_file(role_map: RoleMap, path: str | Path, infos: Sequence[VariableInfo]) -> None:
    """Move the variables a roles file names to the roles (and layers) it gives."""
    overrides = load_roles_file(path)
    lookup: dict[str, VariableInfo] = {}
    for info in infos:
        for name in (info.key, info.name, *info.aliases):
            lookup.setdefault(name, info)
    original = role_map.by_key()
    moves: list[tuple[str, Layer, str]] = []  # (key, layer, role)
    for variable, target in overrides.items():
        info = lookup.get(variable)
        if info is None:
            raise UsageError(f"roles file names an unknown variable {variable!r}", path)
        layer_name, _, role = target.rpartition(":")
        if layer_name:
            try:
                layer = role_map.layer(layer_name)
            except KeyError:
                raise UsageError(
                    f"roles file names an unknown layer {layer_name!r}", path
                ) from None
        elif info.key in original:
            layer = original[info.key][0]
        else:
            raise UsageError(f"{variable!r} is in no layer: write `layer:role`", path)
        moves.append((info.key, layer, role))
    for key, _, _ in moves:  # first take every moved variable out of its old role
        if key in original:
            old_layer, old_role = original[key]
            if old_layer.weights.get(old_role) == key:
                del old_layer.weights[old_role]
    for key, layer, role in moves:
        layer.weights[role] = key
        layer.evidence = USER
        layer.alternatives = []
    assigned = role_map.by_key()
    role_map.unassigned = [i for i in role_map.unassigned if i.key not in assigned]
