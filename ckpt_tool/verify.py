"""`verify`: rebuild the forward pass from the weights alone and compare it with the
original model run by TensorFlow."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ckpt_tool.compare import DEFAULT_ATOL, DEFAULT_RTOL, Agreement, compare
from ckpt_tool.errors import CkptToolError, UsageError
from ckpt_tool.graph import (
    RESIDUALS,
    Graph,
    build_graph,
    chain_graph,
    graph_input_kinds,
    run_graph,
)
from ckpt_tool.model import ModelOptions, open_model
from ckpt_tool.original import InputSpec, OriginalModel, load_original
from ckpt_tool.readers import Reader, open_reader
from ckpt_tool.readers.choice import describe_format
from ckpt_tool.rolemap import SHAPE_ORDER, Layer, RoleMap
from ckpt_tool.roles import assign_roles
from ckpt_tool.verdict import explain_failure, scales_note, summarize_hints

PRECISIONS = {"float64": np.float64, "float32": np.float32}
# How generated inputs exercise masks (token-id inputs of Embedding(mask_zero=True),
# attention-mask inputs): see make_inputs.
MASK_MODES = ("padding", "random", "none")


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
    against: str | None = None  # run this model with TensorFlow instead of PATH's own
    custom_objects: list[str] = field(default_factory=list)  # .py files / modules to import
    ignore_names: bool = False  # roles by shape and order alone
    num_heads: int | None = None  # BERT: heads of the 2-D attention kernels
    bert_config: str | None = None  # BERT: bert_config.json (default: beside PATH)
    mask: str = "padding"  # how generated inputs fill masks: one of MASK_MODES
    keep_arrays: bool = False  # keep the first run's arrays on the report (verify --plot)


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
class RunArrays:
    """The first input set's arrays and what made them, kept for pictures (--plot)."""

    inputs: list[np.ndarray]  # in the original model's input order
    expected: list[np.ndarray]  # the original's outputs, aligned with the graph's
    actual: list[np.ndarray]  # the NumPy rebuild's outputs
    graph: Graph
    weights: dict[str, dict[str, np.ndarray]]
    configs: dict[str, dict]
    order: list[int]  # graph input i is the original's input order[i]
    dtype: type
    original: OriginalModel


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
    hints: list[str] = field(default_factory=list)  # known causes of a failure, notes
    arrays: RunArrays | None = field(default=None, repr=False)  # with keep_arrays

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
            "hints": self.hints,
        }


def verify(
    path: str, options: VerifyOptions, note: Callable[[str], None] = lambda _: None
) -> VerifyReport:
    dtype = PRECISIONS[options.precision]
    if options.mask not in MASK_MODES:
        raise UsageError(f"--mask {options.mask!r}: choose from {', '.join(MASK_MODES)}")
    with open_reader(path, options.format) as reader:
        reader.verify_crc = not options.no_crc
        model_options = ModelOptions(
            config_file=options.config_file,
            roles_file=options.roles_file,
            family_config=options.bert_config,
            ignore_names=options.ignore_names,
            num_heads=options.num_heads,
        )
        model = open_model(reader, model_options)
        if options.against and (model.family is None or model.family.problem(model.roles)):
            # the config files beside the model the checkpoint belongs to
            model_options = replace(model_options, family_config=None)
            model = open_model(reader, model_options, source=options.against)
        infos, config, roles = model.infos, model.config, model.roles
        for line in roles.notes:  # e.g. why a SavedModel's serving graph was not used
            note(line)
        family = model.family
        if family is not None and family.problem(roles):
            family.try_unknown_settings(roles)  # e.g. every head count that fits
        weights = load_layer_weights(reader, roles)
        format_name = reader.format_name
    model_path, model_format = Path(path), format_name
    if options.against:
        model_path = Path(options.against)
        with open_reader(model_path) as other:
            model_format = other.format_name
    described = describe_format(model_path, model_format)
    note(f"running the original model with TensorFlow ({described})")
    original = family.original(model_path, model_format, roles) if family else None
    if original is None:
        original = load_original(
            model_path, model_format, unsafe=options.unsafe, custom_objects=options.custom_objects
        )
    # After the model loaded (Keras's safe mode speaks first): the graph to rebuild.
    # Shapes and order alone (--ignore-names): no config either, the layers run as a chain.
    try:
        graph = build_graph(None if options.ignore_names else config, roles)
        _check_graph_weights(graph, roles, Path(path))
    except CkptToolError as exc:
        if exc.path is None:
            raise type(exc)(exc.message, path) from None
        raise
    order = _input_order(original.input_specs, graph, path, against=bool(options.against))
    kinds = graph_input_kinds(graph, weights)
    spec_kinds = _spec_kinds(order, graph, kinds)
    input_sets = make_inputs(original.input_specs, options, spec_kinds)
    hints = [scales_note(original.input_specs, spec_kinds)[1]] if options.scales else []
    settled: list[str] = []
    configs = {layer.name: layer.config for layer in roles.layers}
    first_configs = dict(configs)  # as read, before settling (for explain_failure)
    first_inputs = input_sets[0][1]
    first_expected = original(first_inputs)  # each side runs once per input set
    first_run = None
    if not options.roles_file:  # settled on the model's own weights, then kept for OTHER
        first_run = _FirstRun.try_run(
            graph, weights, configs, [first_inputs[i] for i in order], dtype, options.per_layer
        )
        graph, settled = _settle_alternatives(
            graph,
            roles,
            weights,
            configs,
            [first_inputs[i] for i in order],
            _aligned_expected(original, graph, first_expected),
            dtype,
            options,
            first_outputs=first_run and first_run.outputs,
        )
    weights_source = str(path)
    if options.weights:
        weights = _weights_from_other(options.weights, roles, infos, options)
        weights_source = options.weights
    runs = []
    kept: RunArrays | None = None
    for index, (label, arrays) in enumerate(input_sets):
        raw = first_expected if index == 0 else original(arrays)
        expected = _aligned_expected(original, graph, raw)
        ours = [arrays[i] for i in order]
        if index == 0 and first_run and first_run.same_reading(graph, weights, configs):
            actual, per_layer = first_run.outputs, first_run.per_layer
        else:
            actual, per_layer = run_graph(
                graph, weights, ours, dtype=dtype, configs=configs, keep_layers=options.per_layer
            )
        first_run = None
        if len(actual) != len(expected):
            raise CkptToolError(
                f"the model has {len(expected)} outputs but the rebuilt graph {len(actual)}", path
            )
        names = graph.output_names or [f"output_{i}" for i in range(len(actual))]
        outputs = [
            compare(name, a, e, atol=options.atol, rtol=options.rtol)
            for name, a, e in zip(names, actual, expected, strict=True)
        ]
        run = Run(label, outputs)
        if not run.passed:
            hints += explain_failure(
                label, outputs, graph, weights, ours, actual, expected, configs,
                options.precision, roles, other_weights=bool(options.weights),
                first_configs=first_configs,
            )  # fmt: skip
        if options.keep_arrays and kept is None:
            kept = RunArrays(
                arrays, expected, actual, graph, weights, configs, order, dtype, original
            )
        if options.per_layer:
            _compare_layers(run, original, graph, per_layer, arrays, options)
            if run.layers is None and label == input_sets[0][0]:
                note(
                    "--per-layer needs a Keras model or a TF1 graph with the layers' name "
                    f"scopes; {original.description} has neither"
                )
        runs.append(run)
    return VerifyReport(
        path=str(path),
        format=format_name,
        original=original.description,
        weights_source=weights_source,
        graph_source=graph.source,
        precision=options.precision,
        roles=roles,
        runs=runs,
        settled=settled,
        variables={info.key: info for info in infos},
        hints=summarize_hints(hints),
        arrays=kept,
    )


def _input_order(
    specs: Sequence[InputSpec], graph: Graph, path: str, *, against: bool
) -> list[int]:
    """For each graph input, the index of the original's input that feeds it: by name
    when every graph input has a namesake, else by position."""
    if len(specs) != len(graph.inputs):
        if against:
            raise UsageError(
                f"the model to compare with takes {len(specs)} inputs, the rebuilt graph "
                f"{len(graph.inputs)}"
            )
        raise UsageError(
            f"the model takes {len(specs)} inputs and the file holds no Keras "
            "config, so weights alone cannot tell how they are wired: pass the model's "
            "config with --config FILE (the JSON of model.to_json())",
            path,
        )
    for names in ([s.name.split(":")[0] for s in specs], [_base_name(s.name) for s in specs]):
        if sorted(names) == sorted(graph.input_names) and len(set(names)) == len(names):
            return [names.index(n) for n in graph.input_names]
    return list(range(len(specs)))


# Other spellings of BERT's inputs (Google's run_classifier exports, TF Hub encoders).
_INPUT_ALIASES = {
    "input_mask": "attention_mask",
    "segment_ids": "token_type_ids",
    "input_word_ids": "input_ids",
    "input_type_ids": "token_type_ids",
}


def _base_name(name: str) -> str:
    name = name.split(":")[0]
    return _INPUT_ALIASES.get(name, name)


def _spec_kinds(order: list[int], graph: Graph, kinds: dict[str, dict]) -> dict[int, dict]:
    """Input kinds by the original's input index."""
    return {
        order[k]: kinds[name]
        for k, name in enumerate(graph.input_names)
        if name in kinds and k < len(order)
    }


def _aligned_expected(
    original: OriginalModel, graph: Graph, expected: list[np.ndarray]
) -> list[np.ndarray]:
    """The original's outputs in the graph's output order (by name when both name them);
    outputs the graph does not rebuild (GPT-2's past_key_values) are left out."""
    theirs, ours = original.output_names, graph.output_names
    if theirs and ours and set(ours) <= set(theirs) and len(theirs) == len(expected):
        return [expected[theirs.index(name)] for name in ours]
    return expected


# --------------------------------------------------------------------------- weights


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
    match by key, then by resolved name or alias, then by layer order and role; a PyTorch
    port (torch or torch-mha names) is brought back through its layout (`unport`)."""
    with open_reader(other_path) as other:
        other.verify_crc = not options.no_crc
        from ckpt_tool.unport import unported_weights

        ported = unported_weights(other.path, infos, roles, other)
        if ported is not None:
            return {
                layer.name: {role: ported[key] for role, key in layer.weights.items()}
                for layer in roles.layers
            }
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
    specs: Sequence[InputSpec],
    options: VerifyOptions,
    kinds: dict[int, dict] | None = None,
) -> list[tuple[str, list[np.ndarray]]]:
    """Input sets in the original's input order: the user's file, or random normal
    floats (plus constant ones at --scales). `kinds` (by input index) says which inputs
    are token ids, token types or attention masks; those get valid ids and masks that
    exercise the model's masking as --mask says:

    - padding: each batch row keeps a prefix of random length (at least 1) and pads or
      masks the rest (id 0 for Embedding(mask_zero=True), 0/False in masks);
    - random: about 30% of the positions after the first are padded or masked;
    - none: nothing is masked (ids never 0, masks all ones).
    """
    if options.inputs_file:
        return [(Path(options.inputs_file).name, _load_inputs(options.inputs_file, specs))]
    kinds = kinds or {}
    shapes = [_concrete_shape(spec, options) for spec in specs]
    rng = np.random.default_rng(options.seed)
    keep = _keep_pattern(rng, options.mask)
    first = []
    for i, (shape, spec) in enumerate(zip(shapes, specs, strict=True)):
        first.append(_make_input(rng, shape, spec, kinds.get(i), keep))
    label = f"random normal, seed {options.seed}"
    if any(k.get("kind") in ("ids", "mask") for k in kinds.values()):
        label += f", masks {options.mask}"
    sets = [(label, first)]
    can_scale, _ = scales_note(specs, kinds)  # ids and masks only: a constant run repeats
    for scale in options.scales if can_scale else ():
        arrays = []
        for i, (shape, spec) in enumerate(zip(shapes, specs, strict=True)):
            if i in kinds or not spec.dtype.startswith(("float", "bfloat", "half")):
                arrays.append(first[i])  # ids and masks stay as they are
            else:
                arrays.append(np.full(shape, scale, dtype=spec.dtype))
        sets.append((f"constant {scale:g}", arrays))
    return sets


def _keep_pattern(rng: np.random.Generator, mode: str) -> dict[tuple[int, int], np.ndarray]:
    """(batch, length) -> bool keep pattern, shared by all inputs of that size so that
    the ids and the masks of one sequence agree."""

    def make(batch: int, length: int) -> np.ndarray:
        if mode == "none" or length == 0:
            keep = np.ones((batch, length), bool)
        elif mode == "padding":
            lengths = rng.integers(1, length + 1, size=batch)
            lengths[0] = length  # one full row, the others padded
            keep = np.arange(length)[None, :] < lengths[:, None]
        else:
            keep = rng.random((batch, length)) >= 0.3
            keep[:, 0] = True
        return keep

    return _KeepPatterns(make)


class _KeepPatterns(dict):
    """(batch, length) -> keep pattern, made once per size on first use."""

    def __init__(self, make: Callable[[int, int], np.ndarray]):
        super().__init__()
        self._make = make

    def __missing__(self, key: tuple[int, int]) -> np.ndarray:
        self[key] = self._make(*key)
        return self[key]


def _make_input(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spec: InputSpec,
    kind: dict | None,
    keep: dict[tuple[int, int], np.ndarray],
) -> np.ndarray:
    if kind is None:
        return _random(rng, shape, spec)
    batch, length = (shape[0], shape[-1]) if len(shape) >= 2 else (1, shape[0] if shape else 1)
    pattern = keep[(batch, length)].reshape((batch,) + (1,) * (len(shape) - 2) + (length,))
    pattern = np.broadcast_to(pattern, shape)
    if kind["kind"] == "mask":
        return pattern.astype(spec.dtype)
    vocab = kind.get("vocab") or 8
    if kind["kind"] == "types":  # segments: 0 then 1 (BERT's sentence A, sentence B)
        half = np.arange(shape[-1]) >= shape[-1] // 2
        return np.broadcast_to(half.astype(spec.dtype) * min(1, vocab - 1), shape).copy()
    low = 1 if vocab > 1 else 0
    ids = rng.integers(low, max(vocab, low + 1), size=shape)
    if kind.get("mask_zero"):
        ids = np.where(pattern, ids, 0)
    return ids.astype(spec.dtype)


def _concrete_shape(spec: InputSpec, options: VerifyOptions) -> tuple[int, ...]:
    shape = list(spec.shape)
    if shape and shape[0] is None:
        shape[0] = options.batch
    return tuple(options.seq_len if d is None else d for d in shape)


def _random(rng: np.random.Generator, shape: tuple[int, ...], spec: InputSpec) -> np.ndarray:
    if spec.dtype == "bool":
        return rng.random(shape) >= 0.3
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
    first_outputs: list[np.ndarray] | None = None,
) -> tuple[Graph, list[str]]:
    """Where the weights leave choices open (roles of equally shaped tensors, settings
    such as an activation that weights do not store, residual wiring of a chain), pick
    the readings that agree with the original: coordinate descent on the error, one
    choice at a time, the evidence's first reading kept unless another does better.
    `first_outputs`: the current reading's outputs, when they are already computed."""

    def badness(trial: _Trial, actual: list[np.ndarray] | None = None) -> float:
        try:
            if actual is None:
                actual, _ = run_graph(
                    trial.graph,
                    trial.weights,
                    inputs,
                    dtype=dtype,
                    configs=trial.configs,
                    keep_layers=False,
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
    best = badness(current, first_outputs)
    if best == 0:
        current, ties = _tied_readings(current, roles, weights, badness, best)
        tied = {line.split(":")[0] for line in ties}
        return graph, [
            f"{layer.name}: Keras's creation order agrees ({len(layer.alternatives)} alternatives not needed)"
            for layer in roles.layers
            if layer.alternatives and layer.name not in tied
        ] + ties
    for _ in range(2):  # a second sweep lets choices that depend on each other settle
        for trial in _choices(current, roles, weights):
            score = badness(trial)
            if score < best:
                best, current = score, trial
            if best == 0:
                break
        if best == 0:
            break
    current, ties = _tied_readings(current, roles, weights, badness, best)
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
    return current.graph, settled + ties


def _tied_readings(
    current: _Trial,
    roles: RoleMap,
    base: dict[str, dict[str, np.ndarray]],
    badness: Callable[[_Trial], float],
    best: float,
) -> tuple[_Trial, list[str]]:
    """Readings of a layer's roles that the numbers cannot tell from the one kept (equal
    biases, tied projections): keep, among them, the one closest to Keras's creation
    order, the evidence the file itself gives, and say so."""
    notes = []
    for layer in roles.layers:
        if layer.evidence != SHAPE_ORDER or not layer.alternatives:
            continue
        by_key = {key: base[layer.name][role] for role, key in layer.weights.items()}
        key_of = {id(array): key for key, array in by_key.items()}
        kept = {role: key_of[id(a)] for role, a in current.weights[layer.name].items()}
        tied = []
        for reading in [dict(layer.weights), *layer.alternatives]:
            if reading == kept or reading in tied:
                continue
            arrays = {role: by_key[key] for role, key in reading.items()}
            trial = _Trial(current.graph, {**current.weights, layer.name: arrays}, current.configs)
            if badness(trial) <= best:
                tied.append(reading)
        if not tied:
            continue

        def moved(reading: dict[str, str], layer: Layer = layer) -> int:
            return sum(reading[role] != key for role, key in layer.weights.items())

        closest = min([kept, *tied], key=moved)  # min keeps the first of equals: kept
        if closest is not kept:
            tied = [kept, *(r for r in tied if r is not closest)]
            arrays = {role: by_key[key] for role, key in closest.items()}
            current = _Trial(
                current.graph, {**current.weights, layer.name: arrays}, current.configs
            )
        others = "; ".join(
            ", ".join(f"{role}={key}" for role, key in r.items() if r[role] != closest[role])
            for r in tied
        )
        why = (
            "Keras's creation order"
            if moved(closest) == 0
            else f"the reading closest to Keras's creation order ({moved(closest)} roles moved)"
        )
        notes.append(
            f"{layer.name}: the numbers cannot decide: {len(tied)} other reading(s) agree "
            f"as well ({others}); kept {why}, the only evidence left to decide"
        )
    return current, notes


@dataclass
class _FirstRun:
    """Our outputs on the first input set for one reading of the model (graph, weights,
    configs): settling the alternatives and the report share them when settling kept
    that reading, so the NumPy forward runs once per input set."""

    graph: Graph
    arrays: list[tuple[str, str, np.ndarray]]  # (layer, role, array) of that reading
    configs: str
    outputs: list[np.ndarray]
    per_layer: dict[str, np.ndarray]

    @classmethod
    def try_run(
        cls,
        graph: Graph,
        weights: dict[str, dict[str, np.ndarray]],
        configs: dict[str, dict],
        inputs: list[np.ndarray],
        dtype: type,
        per_layer: bool,
    ) -> _FirstRun | None:
        try:  # a reading that cannot run is for settling to judge
            outputs, layers = run_graph(
                graph, weights, inputs, dtype=dtype, configs=configs, keep_layers=per_layer
            )
        except CkptToolError:
            return None
        return cls(graph, _arrays(weights), _configs_key(configs), outputs, layers)

    def same_reading(self, graph: Graph, weights: dict, configs: dict[str, dict]) -> bool:
        now = _arrays(weights)
        return (
            graph is self.graph
            and len(now) == len(self.arrays)
            and all(a[:2] == b[:2] and a[2] is b[2] for a, b in zip(now, self.arrays, strict=True))
            and _configs_key(configs) == self.configs
        )


def _arrays(weights: dict[str, dict[str, np.ndarray]]) -> list[tuple[str, str, np.ndarray]]:
    return [(layer, role, a) for layer, arrays in weights.items() for role, a in arrays.items()]


def _configs_key(configs: dict[str, dict]) -> str:
    return json.dumps(configs, sort_keys=True, default=repr)


def _choices(current: _Trial, roles: RoleMap, base: dict[str, dict[str, np.ndarray]]):
    """Every reading that differs from the current one in a single choice. A setting
    that several layers leave open alike (the head count, an activation) is first tried
    in all of them at once: models rarely mix them, and one layer alone seldom lowers
    the error while the others still differ."""
    if current.graph.source.startswith("chain"):
        for residual in RESIDUALS:
            graph = chain_graph(roles, residual)
            if graph.source != current.graph.source:
                yield _Trial(graph, current.weights, current.configs)
    shared: dict[str, list[str]] = {}
    for layer in roles.layers:
        for change in layer.config_alternatives:
            shared.setdefault(json.dumps(change, sort_keys=True), []).append(layer.name)
    for change_json, names in shared.items():
        if len(names) > 1:
            change = json.loads(change_json)
            configs = {**current.configs}
            for name in names:
                configs[name] = {**configs[name], **change}
            yield _Trial(current.graph, current.weights, configs)
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
    names = [node.layer for node in graph.nodes]
    reference = original.layer_outputs(inputs, names)
    if reference is None:
        return
    run.layers = []
    for node in graph.nodes:
        if node.layer not in reference or node.layer not in per_layer or node.node_index:
            continue
        ours, theirs = per_layer[node.layer], np.asarray(reference[node.layer])
        if ours.shape != theirs.shape and ours.size == theirs.size:
            theirs = theirs.reshape(ours.shape)  # e.g. BERT's 2-D (B*T, D) activations
        agreement = compare(node.layer, ours, theirs, atol=options.atol, rtol=options.rtol)
        run.layers.append(agreement)
        if not agreement.passed and run.first_divergent is None:
            run.first_divergent = node.layer
