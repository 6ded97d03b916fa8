"""`verify`: rebuild the forward pass from the weights alone and compare it with the
original model run by TensorFlow."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckpt_tool.compare import DEFAULT_ATOL, DEFAULT_RTOL, Agreement, compare
from ckpt_tool.errors import CkptToolError, UsageError
from ckpt_tool.graph import RESIDUALS, Graph, build_graph, chain_graph, run_graph
from ckpt_tool.original import InputSpec, OriginalModel, load_original
from ckpt_tool.readers import Reader, open_reader
from ckpt_tool.roles import SHAPE_ORDER, Layer, RoleMap, assign_roles

PRECISIONS = {"float64": np.float64, "float32": np.float32}


@dataclass
class VerifyOptions:
    format: str | None = None
    weights: str | None = None  # another source of the weights to run in NumPy
    roles_file: str | None = None
    config_file: str | None = None  # a Keras model config (model.to_json()) for files without one
    seed: int = 0
    batch: int = 2
    seq_len: int = 8
    scales: list[float] = field(default_factory=list)
    inputs_file: str | None = None
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    precision: str = "float64"
    per_layer: bool = False
    unsafe: bool = False
    no_crc: bool = False


@dataclass
class Run:
    label: str
    outputs: list[Agreement]
    layers: list[Agreement] | None = None  # per-layer, in graph order
    first_divergent: str | None = None

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.outputs)

    def to_json(self) -> dict:
        return {
            "inputs": self.label,
            "passed": self.passed,
            "outputs": [a.to_json() for a in self.outputs],
            "layers": None if self.layers is None else [a.to_json() for a in self.layers],
            "first_divergent_layer": self.first_divergent,
        }


@dataclass
class VerifyReport:
    path: str
    format: str
    original: str
    weights_source: str
    graph_source: str
    precision: str
    roles: RoleMap
    runs: list[Run]
    settled: list[str]  # what the numerical check decided among alternatives
    variables: dict = field(default_factory=dict)  # key -> VariableInfo, for display

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs)

    def to_json(self) -> dict:
        return {
            "schema": "ckpt-tool.verify/1",
            "path": self.path,
            "format": self.format,
            "original": self.original,
            "weights": self.weights_source,
            "graph": self.graph_source,
            "precision": self.precision,
            "passed": self.passed,
            "roles": self.roles.to_json(),
            "settled": self.settled,
            "runs": [r.to_json() for r in self.runs],
        }


def verify(
    path: str, options: VerifyOptions, note: Callable[[str], None] = lambda _: None
) -> VerifyReport:
    dtype = PRECISIONS[options.precision]
    with open_reader(path, options.format) as reader:
        reader.verify_crc = not options.no_crc
        infos = reader.variables()
        config = (
            load_model_config(options.config_file) if options.config_file else reader.model_config()
        )
        roles = assign_roles(infos, config, options.roles_file)
        graph = build_graph(config, roles)
        weights = load_layer_weights(reader, roles)
        _check_graph_weights(graph, roles, Path(path))
        note(f"running the original model with TensorFlow ({reader.format_name})")
        original = load_original(Path(path), reader.format_name, unsafe=options.unsafe)
    if len(original.input_specs) != len(graph.inputs):
        raise UsageError(
            f"the model takes {len(original.input_specs)} inputs and the file holds no Keras "
            "config, so weights alone cannot tell how they are wired: pass the model's "
            "config with --config FILE (the JSON of model.to_json())",
            path,
        )
    input_sets = make_inputs(original.input_specs, options)
    settled: list[str] = []
    configs = {layer.name: layer.config for layer in roles.layers}
    first_inputs = input_sets[0][1]
    expected = original(first_inputs)
    if not options.roles_file:  # settled on the model's own weights, then kept for OTHER
        graph, settled = _settle_alternatives(
            graph, roles, weights, configs, first_inputs, expected, dtype, options
        )
    weights_source = str(path)
    if options.weights:
        weights = _weights_from_other(options.weights, roles, infos, options)
        weights_source = options.weights
    runs = []
    for label, arrays in input_sets:
        expected = original(arrays)
        actual, per_layer = run_graph(graph, weights, arrays, dtype=dtype, configs=configs)
        outputs = [
            compare(f"output_{i}", a, e, atol=options.atol, rtol=options.rtol)
            for i, (a, e) in enumerate(zip(actual, expected, strict=False))
        ]
        if len(actual) != len(expected):
            raise CkptToolError(
                f"the model has {len(expected)} outputs but the rebuilt graph {len(actual)}", path
            )
        run = Run(label, outputs)
        if options.per_layer:
            _compare_layers(run, original, graph, per_layer, arrays, options)
        runs.append(run)
    return VerifyReport(
        path=str(path),
        format=reader.format_name,
        original=original.description,
        weights_source=weights_source,
        graph_source=graph.source,
        precision=options.precision,
        roles=roles,
        runs=runs,
        settled=settled,
        variables={info.key: info for info in infos},
    )


# --------------------------------------------------------------------------- weights


def load_model_config(path: str) -> dict:
    """A Keras model config as written by model.to_json() (or a .keras config.json)."""
    try:
        config = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the config: {exc.strerror}", path) from None
    except ValueError as exc:
        raise UsageError(f"the config is not JSON: {exc}", path) from None
    if not isinstance(config, dict) or "config" not in config:
        raise UsageError("not a Keras model config (no class_name/config)", path)
    return config


def load_layer_weights(reader: Reader, roles: RoleMap) -> dict[str, dict[str, np.ndarray]]:
    return {  # copies: the arrays outlive the reader
        layer.name: {role: np.array(reader.read(key)) for role, key in layer.weights.items()}
        for layer in roles.layers
    }


def _check_graph_weights(graph: Graph, roles: RoleMap, path: Path) -> None:
    names = {layer.name for layer in roles.layers}
    for node in graph.nodes:
        from ckpt_tool.layers import get_layer_kind

        needs = get_layer_kind(node.class_name).weight_names(node.config)
        if needs and node.layer not in names:
            raise CkptToolError(
                f"no weights found for layer {node.layer!r} ({node.class_name})", path
            )


def _weights_from_other(
    other_path: str, roles: RoleMap, infos: Sequence, options: VerifyOptions
) -> dict[str, dict[str, np.ndarray]]:
    """The same layers and roles, with each tensor taken from another source. Tensors
    match by key, then by resolved name or alias, then by layer order and role."""
    with open_reader(other_path) as other:
        other.verify_crc = not options.no_crc
        other_infos = other.variables()
        by_name: dict[str, str] = {}
        for info in other_infos:
            for name in (info.key, info.name, *info.aliases):
                by_name.setdefault(_normal(name), info.key)
        other_roles = assign_roles(other_infos, other.model_config())
        info_by_key = {info.key: info for info in infos}
        weights: dict[str, dict[str, np.ndarray]] = {}
        for index, layer in enumerate(roles.layers):
            weights[layer.name] = {}
            for role, key in layer.weights.items():
                original = info_by_key[key]
                other_key = None
                for name in (original.key, original.name, *original.aliases):
                    other_key = by_name.get(_normal(name))
                    if other_key:
                        break
                if other_key is None:
                    other_key = _by_position(other_roles, index, layer, role)
                if other_key is None:
                    raise UsageError(
                        f"no tensor for {layer.name} {role} ({original.name})", other_path
                    )
                array = other.read(other_key)
                if tuple(array.shape) != tuple(original.shape):
                    raise UsageError(
                        f"{other_key} has shape {list(array.shape)}, the model's {original.name} "
                        f"has {list(original.shape)}",
                        other_path,
                    )
                weights[layer.name][role] = array
    return weights


def _normal(name: str) -> str:
    name = name.removesuffix(":0")
    return name.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")


def _by_position(other: RoleMap, index: int, layer: Layer, role: str) -> str | None:
    same_class = [
        candidate for candidate in other.layers if candidate.class_name == layer.class_name
    ]
    mine = [
        candidate
        for candidate in other.layers[: index + 1]
        if candidate.class_name == layer.class_name
    ]
    position = len(mine) - 1 if mine else 0
    if position < len(same_class):
        return same_class[position].weights.get(role)
    return None


# --------------------------------------------------------------------------- inputs


def make_inputs(
    specs: Sequence[InputSpec], options: VerifyOptions
) -> list[tuple[str, list[np.ndarray]]]:
    if options.inputs_file:
        return [(Path(options.inputs_file).name, _load_inputs(options.inputs_file, specs))]
    shapes = [_concrete_shape(spec, options) for spec in specs]
    rng = np.random.default_rng(options.seed)
    sets = [
        (
            f"random normal, seed {options.seed}",
            [_random(rng, s, spec) for s, spec in zip(shapes, specs, strict=True)],
        )
    ]
    for scale in options.scales:
        sets.append(
            (
                f"constant {scale:g}",
                [
                    np.full(s, scale, dtype=spec.dtype)
                    for s, spec in zip(shapes, specs, strict=True)
                ],
            )
        )
    return sets


def _concrete_shape(spec: InputSpec, options: VerifyOptions) -> tuple[int, ...]:
    shape = list(spec.shape)
    if shape and shape[0] is None:
        shape[0] = options.batch
    return tuple(options.seq_len if d is None else d for d in shape)


def _random(rng: np.random.Generator, shape: tuple[int, ...], spec: InputSpec) -> np.ndarray:
    if spec.dtype.startswith(("int", "uint")):
        return rng.integers(0, 8, size=shape).astype(spec.dtype)
    return rng.standard_normal(shape).astype(spec.dtype)


def _load_inputs(path: str, specs: Sequence[InputSpec]) -> list[np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read inputs: {exc}", path) from None
    if isinstance(data, np.ndarray):
        arrays = [data]
    else:
        names = list(data.files)
        by_spec = [s.name for s in specs if s.name in names]
        arrays = [data[n] for n in (by_spec if len(by_spec) == len(specs) else names)]
    if len(arrays) != len(specs):
        raise UsageError(f"the model takes {len(specs)} inputs, the file holds {len(arrays)}", path)
    return [a.astype(s.dtype) for a, s in zip(arrays, specs, strict=True)]


# --------------------------------------------------------------------------- alternatives


@dataclass
class _Trial:
    """One reading of the model to try: the graph, each layer's weights and config."""

    graph: Graph
    weights: dict[str, dict[str, np.ndarray]]
    configs: dict[str, dict]


def _settle_alternatives(
    graph: Graph,
    roles: RoleMap,
    weights: dict[str, dict[str, np.ndarray]],
    configs: dict[str, dict],
    inputs: list[np.ndarray],
    expected: list[np.ndarray],
    dtype: type,
    options: VerifyOptions,
) -> tuple[Graph, list[str]]:
    """Where the weights leave choices open (roles of equally shaped tensors, settings
    such as an activation that weights do not store, residual wiring of a chain), pick
    the readings that agree with the original: coordinate descent on the error, one
    choice at a time, the evidence's first reading kept unless another does better."""

    def badness(trial: _Trial) -> float:
        try:
            actual, _ = run_graph(
                trial.graph, trial.weights, inputs, dtype=dtype, configs=trial.configs
            )
        except CkptToolError:
            return float("inf")
        worst = 0.0
        for a, e in zip(actual, expected, strict=False):
            agreement = compare("", a, e, atol=options.atol, rtol=options.rtol)
            if not agreement.passed:
                worst = max(
                    worst,
                    1.0
                    + agreement.max_abs / (options.atol + options.rtol * float(np.max(np.abs(e)))),
                )
        return worst

    current = _Trial(graph, weights, configs)
    best = badness(current)
    if best == 0:
        return graph, [
            f"{layer.name}: Keras's creation order agrees ({len(layer.alternatives)} alternatives not needed)"
            for layer in roles.layers
            if layer.alternatives
        ]
    for _ in range(2):  # a second sweep lets choices that depend on each other settle
        for trial in _choices(current, roles, weights):
            score = badness(trial)
            if score < best:
                best, current = score, trial
            if best == 0:
                break
        if best == 0:
            break
    settled = [f"wiring: {current.graph.source}"] if current.graph is not graph else []
    for layer in roles.layers:  # record the chosen reading in the role map
        key_of = {id(weights[layer.name][role]): key for role, key in layer.weights.items()}
        chosen = {role: key_of[id(a)] for role, a in current.weights[layer.name].items()}
        config = current.configs[layer.name]
        changes = [f"{role}={key}" for role, key in chosen.items() if layer.weights[role] != key]
        changes += [f"{k}={v}" for k, v in config.items() if configs[layer.name].get(k) != v]
        if changes:
            settled.append(f"{layer.name}: {', '.join(changes)}")
        layer.weights, layer.config = chosen, config
    weights.update(current.weights)
    configs.update(current.configs)
    return current.graph, settled


def _choices(current: _Trial, roles: RoleMap, base: dict[str, dict[str, np.ndarray]]):
    """Every reading that differs from the current one in a single choice."""
    if current.graph.source.startswith("chain"):
        for residual in RESIDUALS:
            graph = chain_graph(roles, residual)
            if graph.source != current.graph.source:
                yield _Trial(graph, current.weights, current.configs)
    for layer in roles.layers:
        by_key = {key: base[layer.name][role] for role, key in layer.weights.items()}
        # Roles are open only where shape and order decided them; unstored settings
        # (activation, epsilon) wherever no config gave them.
        for alternative in layer.alternatives if layer.evidence == SHAPE_ORDER else ():
            arrays = {role: by_key[key] for role, key in alternative.items()}
            yield _Trial(current.graph, {**current.weights, layer.name: arrays}, current.configs)
        for change in layer.config_alternatives:
            config = {**current.configs[layer.name], **change}
            yield _Trial(current.graph, current.weights, {**current.configs, layer.name: config})


# --------------------------------------------------------------------------- per layer


def _compare_layers(
    run: Run,
    original: OriginalModel,
    graph: Graph,
    per_layer: dict[str, np.ndarray],
    inputs: list[np.ndarray],
    options: VerifyOptions,
) -> None:
    reference = original.layer_outputs(inputs)
    if reference is None:
        return
    run.layers = []
    for node in graph.nodes:
        if node.layer not in reference or node.layer not in per_layer or node.node_index:
            continue
        agreement = compare(
            node.layer,
            per_layer[node.layer],
            reference[node.layer],
            atol=options.atol,
            rtol=options.rtol,
        )
        run.layers.append(agreement)
        if not agreement.passed and run.first_divergent is None:
            run.first_divergent = node.layer
