"""Running a Hugging Face TF model as its library does: `save_pretrained` writes weights
(`tf_model.h5`) and a `config.json` but no model graph, so `verify` rebuilds the original
with transformers' own `TFAutoModel` from that directory."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ckpt_tool.errors import CkptToolError
from ckpt_tool.families.base import Family
from ckpt_tool.original import InputSpec, OriginalModel, first_line, quiet_tensorflow
from ckpt_tool.safe_json import loads_json, read_config_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "tf_model.h5"


def pretrained_dir(path: Path) -> Path | None:
    """The `save_pretrained` directory `path` is (or whose `tf_model.h5` it is), or None."""
    folder = path if path.is_dir() else path.parent
    config = folder / CONFIG_FILE
    if not (folder / WEIGHTS_FILE).is_file() or not config.is_file():
        return None
    if path.is_file() and path.name != WEIGHTS_FILE:
        return None
    try:
        data = loads_json(read_config_text(config))
    except (OSError, ValueError):
        return None
    return folder if isinstance(data, dict) and "model_type" in data else None


class TransformersTFModel(OriginalModel):
    """A `save_pretrained` directory loaded by `transformers.TFAutoModel`."""

    def __init__(
        self,
        folder: Path,
        inputs: Sequence[InputSpec],
        outputs: Sequence[str],
        hidden_state_layers: Sequence[str] = (),
    ):
        """`hidden_state_layers[i]` names the rebuilt graph's node whose output is the
        model's `hidden_states[i]` (embeddings, then each block), for --per-layer."""
        quiet_tensorflow()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import transformers

                transformers.logging.set_verbosity_error()
                self._model = transformers.TFAutoModel.from_pretrained(str(folder))
        except ImportError as exc:
            raise CkptToolError(
                f"verify needs {exc.name} to run a Hugging Face TF model: "
                "pip install 'ckpt-tool[tf]'"
            ) from None
        except Exception as exc:
            raise CkptToolError(
                f"transformers cannot load this model: {first_line(exc)}", folder
            ) from None
        self.description = f"transformers {type(self._model).__name__} from {folder.name}"
        self.input_specs = list(inputs)
        self._outputs = list(outputs)
        self.output_names = list(outputs)
        self._hidden_state_layers = list(hidden_state_layers)

    def _run(self, inputs: Sequence[np.ndarray], **options):
        feeds = {spec.name: x for spec, x in zip(self.input_specs, inputs, strict=True)}
        try:
            return self._model(**feeds, training=False, **options)
        except Exception as exc:
            raise CkptToolError(
                f"transformers failed to run the model: {first_line(exc)}"
            ) from None

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        result = self._run(inputs)
        return [np.asarray(result[name]) for name in self._outputs if result.get(name) is not None]

    def layer_outputs(
        self, inputs: Sequence[np.ndarray], names: Sequence[str] = ()
    ) -> dict[str, np.ndarray] | None:
        if not self._hidden_state_layers:
            return None
        hidden = self._run(inputs, output_hidden_states=True)["hidden_states"]
        layers = self._hidden_state_layers
        return {name: np.asarray(h) for name, h in zip(layers, hidden, strict=False)}


# --------------------------------------------------------------------------- shared by
# the Hugging Face TF families (BERT, GPT-2, DistilBERT, ViT): layers by name, head
# counts, graphs, PyTorch arrays.

DENSE = {"kernel": "kernel", "bias": "bias"}
NORM = {"gamma": "gamma", "beta": "beta"}


def dense_config(units: int | None, activation: str) -> dict:
    return {"units": units, "activation": activation, "use_bias": True}


def norm_config(epsilon: float) -> dict:
    return {"axis": -1, "epsilon": epsilon, "center": True, "scale": True}


class NamedLayers:
    """Collects a family's layers by their TF names below one scope `prefix`: each
    `take` makes one Layer of the variables `prefix + layer + "/" + name` found."""

    def __init__(self, infos: Sequence, prefix: str):
        self.prefix = prefix
        self._by_name = {info.name: info for info in infos}
        self.used: set[str] = set()
        self.layers: list = []

    def info(self, name: str):
        """The variable named `prefix + name`, or None."""
        return self._by_name.get(self.prefix + name)

    def take(self, layer: str, class_name: str, roles: dict, config: dict, notes=()):
        """A Layer named `prefix + layer` with role -> variable for each role whose name
        (or one of its spellings, a tuple) exists; None when none does."""
        from ckpt_tool.rolemap import NAMES, Layer

        found = {}
        for role, names in roles.items():
            for name in (names,) if isinstance(names, str) else names:
                info = self.info(f"{layer}/{name}")
                if info is not None:
                    found[role] = info
                    break
        if not found:
            return None
        self.used.update(info.key for info in found.values())
        weights = {role: info.key for role, info in found.items()}
        entry = Layer(self.prefix + layer, class_name, config, weights, NAMES, list(notes))
        entry.scope = self.prefix
        self.layers.append(entry)
        return entry

    def dense(self, layer: str, units: int | None, activation: str):
        """A Dense layer whose units are its kernel's width (`units` without a kernel)."""
        kernel = self.info(f"{layer}/kernel")
        if kernel is not None:
            units = int(kernel.shape[-1])
        return self.take(layer, "Dense", DENSE, dense_config(units, activation))

    def block_indices(self, pattern) -> list[int]:
        """The block numbers `pattern` (a regex with group `index`) finds in the names
        below `prefix`."""
        names = (name for name in self._by_name if name.startswith(self.prefix))
        return sorted({int(m.group("index")) for name in names if (m := pattern.match(name))})

    def rest(self, infos: Sequence) -> list:
        return [info for info in infos if info.key not in self.used]


def find_match(infos: Sequence, pattern):
    """The match of `pattern` with the first name or alias it fits, or None."""
    for info in infos:
        for name in (info.name, *info.aliases):
            m = pattern.match(name)
            if m:
                return m
    return None


def find_prefix(infos: Sequence, pattern) -> str | None:
    """The scope (group `prefix` of `pattern`) of the first name or alias that matches."""
    m = find_match(infos, pattern)
    return m.group("prefix") if m else None


def family_scope(role_map) -> str:
    """The scope the family's layers live under (other layers have none)."""
    return next((la.scope for la in role_map.layers if la.scope is not None), "")


def try_other_gelu(layer, note: str) -> None:
    """Lets verify try `layer` with the other form of gelu (erf or tanh), and says so."""
    if layer is None:
        return
    other = "gelu" if layer.config["activation"] == "gelu_approximate" else "gelu_approximate"
    layer.config_alternatives.append({"activation": other})
    layer.notes.append(note)


def heads_note(d: int | None, heads: int | None, kernels: str, config="config.json") -> str:
    """The note telling where an attention layer's head count came from."""
    if heads:
        return f"num_heads {heads} from the model's config file"
    fits = [n for n in range(1, (d or 0) + 1) if d and d % n == 0]
    return (
        f"number of heads unknown: the {kernels} fit {', '.join(map(str, fits))} heads "
        f"alike; give the model's {config} beside the weights or --num-heads (verify "
        "tries each)"
    )


class HeadCounts:
    """problem / try_unknown_settings / set_num_heads for a family whose attention
    layers (`attention_classes`) keep `num_heads` and `hidden_size` in their config."""

    attention_classes: tuple[str, ...] = ()
    #: what `problem` calls the kernels (`{d}`: the hidden size) and the config file
    kernels_text = "kernels"
    config_text = "config.json"

    def attention_layers(self, role_map) -> list:
        return [la for la in role_map.layers if la.class_name in self.attention_classes]

    def problem(self, role_map) -> str | None:
        for layer in self.attention_layers(role_map):
            if not layer.config.get("num_heads"):
                d = layer.config.get("hidden_size")
                return (
                    "the number of attention heads is not in the weights: the "
                    f"{self.kernels_text.format(d=d)} of {layer.name} fit any head count "
                    f"dividing {d}. Put the model's {self.config_text} beside the weights "
                    "or pass --num-heads N"
                )
        return None

    def try_unknown_settings(self, role_map) -> bool:
        """Every head count that divides the width, the one nearest 64 per head first."""
        changed = False
        for layer in self.attention_layers(role_map):
            d = layer.config.get("hidden_size")
            if layer.config.get("num_heads") or not d:
                continue
            fits = [n for n in range(1, d + 1) if d % n == 0]
            preferred = sorted(fits, key=lambda n: (abs(d // n - 64), n))
            layer.config = {**layer.config, "num_heads": preferred[0]}
            layer.config_alternatives += [{"num_heads": n} for n in preferred[1:]]
            changed = True
        return changed

    def set_num_heads(self, role_map, num_heads: int) -> bool:
        from ckpt_tool.errors import UsageError

        layers = self.attention_layers(role_map)
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


class ScopedNodes:
    """A family graph's nodes, named below the family's scope: calling it with a layer's
    name below the scope adds that layer's node (one without weights needs `class_name`,
    e.g. "Add") and returns its output."""

    def __init__(self, role_map):
        self.scope = family_scope(role_map)
        self.layers = {layer.name: layer for layer in role_map.layers}
        self.nodes: list = []

    def __call__(self, name: str, args: list, class_name: str | None = None, **kwargs):
        from ckpt_tool.graph import Node

        full = self.scope + name
        layer = self.layers.get(full)
        if layer is None and class_name is None:
            raise CkptToolError(f"no weights found for layer {full!r}")
        config = layer.config if layer is not None else {"name": name}
        self.nodes.append(Node(full, class_name or layer.class_name, config, 0, args, kwargs))
        return (full, 0, 0)

    def graph(self, inputs: list, outputs: list, title: str, output_names: list[str]):
        """The Graph of the nodes added, its inputs named as their refs."""
        from ckpt_tool.graph import Graph

        names = [ref[0] for ref in inputs]
        return Graph(inputs, self.nodes, outputs, title, names, output_names=output_names)


def token_inputs(graph) -> list[InputSpec]:
    """An int32 (B, T) input for each of the graph's inputs (token ids, masks)."""
    return [InputSpec(name, (None, None), "int32") for name in graph.input_names]


# How a TF array becomes its PyTorch counterpart.
VERBATIM, TRANSPOSE, FLATTEN, CONV2D = "verbatim", "transpose", "flatten", "conv2d"


def _flatten(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def _conv2d(a: np.ndarray) -> np.ndarray:
    """Keras Conv2D kernel (kh, kw, C, D) -> torch Conv2d weight (D, C, kh, kw)."""
    return np.transpose(a, (3, 2, 0, 1))


def _torch_shape(shape: tuple[int, ...], how: str) -> tuple[int, ...]:
    if how == TRANSPOSE:
        return (shape[1], shape[0])
    if how == FLATTEN:
        return (int(np.prod(shape)),)
    if how == CONV2D:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


def torch_entries(inp, lt, module: str, param) -> list:
    """The state_dict arrays of one layer: `param(role, shape)` gives each role's
    attribute path below `module` and how the array changes (VERBATIM, TRANSPOSE,
    FLATTEN or CONV2D)."""
    from ckpt_tool.layouts.base import derived, verbatim

    functions = {TRANSPOSE: np.transpose, FLATTEN: _flatten, CONV2D: _conv2d}
    arrays = []
    for role, info in sorted(lt.tensors.items(), key=lambda item: item[1].order):
        suffix, how = param(role, tuple(info.shape))
        name = f"{module}.{suffix}" if module else suffix
        if how == VERBATIM:
            arrays.append(verbatim(inp, name, info))
        else:
            shape = _torch_shape(tuple(info.shape), how)
            arrays.append(derived(inp, name, [info], functions[how], shape, how))
    return arrays


def torch_module(layer_name: str, scope: str) -> str:
    """`tfgpt2_model/transformer/h_._0/attn` (scope `tfgpt2_model/transformer/`) ->
    `h.0.attn`: Hugging Face's TF block lists `name_._i` are PyTorch's `name.i`."""
    import re

    name = layer_name.removeprefix(scope)
    return re.sub(r"_\._(\d+)(?=/|$)", r".\1", name).replace("/", ".")


def named_torch_arrays(inp, lt, param, module=torch_module) -> list | None:
    """`torch_entries` of a layer the family found by name, below the PyTorch module
    `module(layer name, scope)`; None for other layers."""
    from ckpt_tool.rolemap import NAMES

    scope = lt.layer.scope
    if scope is None or lt.layer.evidence != NAMES:
        return None
    return torch_entries(inp, lt, module(lt.layer.name, scope), param)


def keras_param(role: str) -> tuple[str, str]:
    """A Keras-named role's PyTorch attribute: `query.kernel` -> `query.weight`
    (transposed: Linear is (out, in)), `gamma`/`beta` -> `weight`/`bias`."""
    part, _, param = role.rpartition(".")
    torch, how = {
        "kernel": ("weight", TRANSPOSE),
        "bias": ("bias", VERBATIM),
        "gamma": ("weight", VERBATIM),
        "beta": ("bias", VERBATIM),
    }.get(param, (param, VERBATIM))
    return (f"{part}.{torch}" if part else torch), how


class TransformersFamily(HeadCounts, Family):
    """A Hugging Face TF family (GPT-2, DistilBERT, ViT): its `config.json` (of
    `model_type`), head counts, and PyTorch names by `torch_param`."""

    config_files = ("config.json",)
    model_type = ""

    def accepts_config(self, config: dict) -> bool:
        return config.get("model_type") in (None, self.model_type)

    def torch_arrays(self, inp, lt):
        return named_torch_arrays(inp, lt, self.torch_param)

    @staticmethod
    def torch_param(role: str, shape: tuple[int, ...]) -> tuple[str, str]:
        """Our role -> the PyTorch attribute below the layer's module, and the change."""
        raise NotImplementedError


def original_from_pretrained(path: Path, format_name: str, graph, specs, hidden_layers):
    """A `save_pretrained` directory's model as transformers runs it (its `tf_model.h5`
    only), else None: SavedModels run by their serving signature."""
    folder = pretrained_dir(path) if format_name == "h5" else None
    if folder is None:
        return None
    return TransformersTFModel(folder, specs, graph.output_names or [], hidden_layers)
