"""Run the original model with TensorFlow / Keras. This executes the model's code:
only `verify` uses it, and it says so."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckpt_tool.errors import CkptToolError, UnsupportedFormatError
from ckpt_tool.safe_json import loads_json


@dataclass
class InputSpec:
    name: str
    shape: tuple[int | None, ...]
    dtype: str


class OriginalModel:
    """The model as TensorFlow runs it."""

    description = ""
    input_specs: list[InputSpec]
    # Names of the outputs, in the order __call__ returns them, when the model names
    # them (a SavedModel signature); None when they are positional.
    output_names: list[str] | None = None

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def layer_outputs(
        self, inputs: Sequence[np.ndarray], names: Sequence[str] = ()
    ) -> dict[str, np.ndarray] | None:
        """Layer outputs by layer name: every layer of a Keras model, or the layers in
        `names` found as name scopes of a TF1 graph. None when the model has neither."""
        return None


def quiet_tensorflow():
    """Import TensorFlow without its start-up chatter (C++ logs written to fd 2 before
    any logging setting applies)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf
    except ImportError:
        raise CkptToolError(
            "verify needs TensorFlow to run the original model: pip install 'ckpt-tool[tf]'"
        ) from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


def load_original(
    path: Path,
    format_name: str,
    *,
    unsafe: bool = False,
    custom_objects: Sequence[str] = (),
) -> OriginalModel:
    """The model at `path`, ready to run. `custom_objects` are Python files or module
    names to import first: they define (and register) a model's custom Keras layers."""
    if custom_objects and format_name not in ("keras", "h5"):
        import_custom_objects(custom_objects)  # a SavedModel needs none; a typo still shows
    if format_name == "checkpoint":
        savedmodel = path if path.is_dir() else path.parent
        if not (savedmodel / "saved_model.pb").exists():
            raise UnsupportedFormatError(
                "a bare checkpoint holds weights but no model to run: verify needs a "
                "SavedModel, .keras or .h5 model (pass this one with --weights, or name "
                "the model to compare with by --against MODEL)",
                path,
            )
        return _SavedModel(savedmodel)
    if format_name == "keras":
        return _KerasModel(path, legacy=False, unsafe=unsafe, custom_objects=custom_objects)
    if format_name == "h5":
        legacy = _is_tf_keras_h5(path)
        if legacy and not unsafe:
            _refuse_python_code(path)
        return _KerasModel(path, legacy=legacy, unsafe=unsafe, custom_objects=custom_objects)
    raise UnsupportedFormatError(
        f"{format_name} files hold weights only, no model to run: pass them with --weights", path
    )


def _refuse_python_code(path: Path) -> None:
    """tf-keras' legacy `.h5` loader runs a Lambda's marshalled code with no safe mode;
    refuse such a model (before TensorFlow is imported) unless --unsafe."""
    from ckpt_tool.config_code import python_code_in
    from ckpt_tool.readers.keras_h5 import LegacyH5Reader

    with LegacyH5Reader(path) as reader:
        found = python_code_in(reader.model_config())
    if found is not None:
        raise CkptToolError(
            f"the model config holds {found}, which loading would run; verify runs it "
            "only with --unsafe (trusted files only)",
            path,
        )


def _is_tf_keras_h5(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        version = f.attrs.get("keras_version", b"")
    if isinstance(version, bytes):
        version = version.decode()
    return not str(version).startswith("3")


# --------------------------------------------------------------------------- SavedModel


def import_custom_objects(sources: Sequence[str]) -> dict[str, Any]:
    """Import each source (a .py file or a module name) and return the classes and
    functions it defines by name. Importing runs the file: trusted code only."""
    found: dict[str, Any] = {}
    for source in sources:
        try:
            if source.endswith(".py") or os.sep in source:
                file = Path(source)
                if not file.is_file():
                    raise CkptToolError("no such custom-objects file", source)
                name = file.stem
                spec = importlib.util.spec_from_file_location(name, file)
                if spec is None or spec.loader is None:
                    raise CkptToolError("cannot import this custom-objects file", source)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(source)
        except CkptToolError:
            raise
        except Exception as exc:
            raise CkptToolError(
                f"importing the custom objects failed: {type(exc).__name__}: {first_line(exc)}",
                source,
            ) from None
        for attr, value in vars(module).items():
            own = getattr(value, "__module__", None) == module.__name__
            if own and not attr.startswith("_") and callable(value):
                found[attr] = value
    return found


class _SavedModel(OriginalModel):
    def __init__(self, path: Path):
        tf = quiet_tensorflow()
        self._tf = tf
        self._path = path
        try:
            self._loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise CkptToolError(
                f"TensorFlow cannot load this SavedModel: {first_line(exc)}", path
            ) from None
        self._serve = getattr(self._loaded, "serve", None)  # Keras 3 model.export(): positional
        signatures = dict(getattr(self._loaded, "signatures", {}))
        if self._serve is not None and hasattr(self._serve, "input_signature"):
            specs = self._serve.input_signature or ()
            self.input_specs = [
                _spec_from_tf(s, f"input_{i}") for i, s in enumerate(_flatten(specs))
            ]
            self.description = f"SavedModel {path.name}, endpoint serve"
            self._signature = None
        elif signatures:
            name = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
            self._signature = signatures[name]
            self._signature_name = name
            kw = self._signature.structured_input_signature[1]
            self.input_specs = [_spec_from_tf(kw[k], k) for k in kw]
            self.description = f"SavedModel {path.name}, signature {name}"
        else:
            raise UnsupportedFormatError("the SavedModel has no serving signature to run", path)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        tf = self._tf
        tensors = [tf.constant(x) for x in inputs]
        try:
            if self._signature is None:  # `serve` takes the inputs in the model's structure
                structure = tf.nest.pack_sequence_as(self._serve.input_signature, tensors)
                result = self._serve(*structure)
            else:
                named = {s.name: t for s, t in zip(self.input_specs, tensors, strict=True)}
                result = self._signature(**named)
        except Exception as exc:
            raise CkptToolError(f"TensorFlow failed to run the model: {first_line(exc)}") from None
        if isinstance(result, dict):
            self.output_names = _ordered_names(result)
        return [np.asarray(t) for t in _ordered_outputs(result)]

    def layer_outputs(
        self, inputs: Sequence[np.ndarray], names: Sequence[str] = ()
    ) -> dict[str, np.ndarray] | None:
        """A TF1 graph (a SavedModel without an object graph of Keras layers): each
        name in `names` that is a name scope (or an op) of the graph, fetched at the
        tensor that leaves the scope last (e.g. `bert/encoder/layer_0/output/LayerNorm`
        -> `.../LayerNorm/batchnorm/add_1`)."""
        prune = getattr(self._loaded, "prune", None)
        graph = getattr(self._loaded, "graph", None)
        if prune is None or graph is None or self._signature is None or not names:
            return None
        feeds = self._signature_feeds()
        if feeds is None:
            return None
        operations = graph.get_operations()
        fetches = {}
        for name in names:
            tensor = _scope_output(operations, name)
            if tensor is not None:
                fetches[name] = tensor.name
        if not fetches:
            return None
        tf = self._tf
        try:
            pruned = prune([feeds[s.name] for s in self.input_specs], list(fetches.values()))
            results = pruned(*[tf.constant(x) for x in inputs])
        except Exception as exc:
            raise CkptToolError(
                f"TensorFlow failed to run the graph's layers: {first_line(exc)}"
            ) from None
        return {name: np.asarray(r) for name, r in zip(fetches, results, strict=True)}

    def _signature_feeds(self) -> dict[str, str] | None:
        """Signature input name -> graph tensor name, from saved_model.pb."""
        from tensorflow.core.protobuf import saved_model_pb2

        from ckpt_tool.readers.regular_file import read_regular_bytes

        proto = saved_model_pb2.SavedModel()
        try:
            proto.ParseFromString(read_regular_bytes(self._path / "saved_model.pb"))
        except Exception:
            return None
        for meta in proto.meta_graphs:
            signature = meta.signature_def.get(self._signature_name)
            if signature is not None:
                return {key: value.name for key, value in signature.inputs.items()}
        return None


# Ops that hold or read weights, not activations.
_WEIGHT_OPS = ("Const", "ReadVariableOp", "VarHandleOp", "VariableV2", "Identity")


def _scope_output(operations: Sequence[Any], scope: str) -> Any:
    """The last floating-point activation made inside `scope` and read outside it (or
    by nothing: a model output). Weight reads and the saver's ops do not count."""

    def inside(op_name: str) -> bool:
        return op_name == scope or op_name.startswith(scope + "/")

    found = None
    for op in operations:
        if not inside(op.name) or op.type in _WEIGHT_OPS:
            continue
        for tensor in op.outputs:
            if not tensor.dtype.is_floating:
                continue
            readers = [c for c in tensor.consumers() if not c.name.startswith("save/")]
            if not readers or any(not inside(c.name) for c in readers):
                found = tensor
    return found


def _ordered_names(result: dict) -> list[str]:
    def key(name: str) -> tuple:
        m = re.fullmatch(r"output_(\d+)", name)
        return (0, int(m.group(1)), "") if m else (1, 0, name)

    return sorted(result, key=key)


def _ordered_outputs(result: Any) -> list[Any]:
    if isinstance(result, dict):

        def key(name: str) -> tuple:
            m = re.fullmatch(r"output_(\d+)", name)
            return (0, int(m.group(1)), "") if m else (1, 0, name)

        return [result[k] for k in sorted(result, key=key)]
    if isinstance(result, (list, tuple)):
        return [r for item in result for r in _ordered_outputs(item)]
    return [result]


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _flatten(value[k])]  # tf.nest order
    return [value]


def _spec_from_tf(spec: Any, fallback: str) -> InputSpec:
    shape = tuple(None if d is None else int(d) for d in spec.shape.as_list())
    return InputSpec(spec.name or fallback, shape, spec.dtype.name)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- Keras


class _KerasModel(OriginalModel):
    def __init__(
        self, path: Path, *, legacy: bool, unsafe: bool, custom_objects: Sequence[str] = ()
    ):
        quiet_tensorflow()
        try:
            if legacy:
                import tf_keras as keras
                from tf_keras.src.saving.serialization_lib import SafeModeScope

                objects = import_custom_objects(custom_objects)
                # The legacy .h5 loader sets no safe mode of its own: set it here, so
                # any lambda the check above did not see is refused by tf-keras too.
                with SafeModeScope(not unsafe):
                    self._model = keras.models.load_model(
                        str(path), compile=False, custom_objects=objects or None
                    )
            else:
                import keras

                _import_config_packages(path)
                objects = import_custom_objects(custom_objects)
                self._model = keras.saving.load_model(
                    str(path), compile=False, safe_mode=not unsafe, custom_objects=objects or None
                )
        except ImportError as exc:
            raise CkptToolError(
                f"verify needs {exc.name} to load this model: pip install 'ckpt-tool[tf]'"
            ) from None
        except CkptToolError:
            raise
        except Exception as exc:
            hint = (
                " (--unsafe allows lambdas from trusted files)" if "safe_mode" in str(exc) else ""
            )
            if "Could not locate class" in str(exc):
                hint = (
                    " (a custom layer: import its code with --custom-objects FILE.py, "
                    "trusted code only)"
                )
            raise CkptToolError(
                f"Keras cannot load this model: {first_line(exc)}{hint}", path
            ) from None
        self._keras = keras
        self.description = f"{'tf-keras' if legacy else 'Keras'} model {path.name}"
        self.input_specs = [
            InputSpec(
                t.name, tuple(None if d is None else int(d) for d in t.shape), _dtype_name(t.dtype)
            )
            for t in self._model.inputs
        ]

    @property
    def keras_model(self) -> Any:
        """The loaded Keras model (verify --plot asks its attention layers for scores)."""
        return self._model

    def _structured(self, inputs: Sequence[np.ndarray]) -> Any:
        try:
            named = isinstance(self._model.input, dict)  # e.g. keras-hub backbones
        except (AttributeError, ValueError):
            named = False
        if named:
            return {spec.name: x for spec, x in zip(self.input_specs, inputs, strict=True)}
        return inputs[0] if len(inputs) == 1 else list(inputs)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with warnings.catch_warnings():  # Keras warns when a 1-input list arrives bare
            warnings.simplefilter("ignore", UserWarning)
            try:
                result = self._model(self._structured(inputs), training=False)
            except Exception as exc:
                raise CkptToolError(f"Keras failed to run the model: {first_line(exc)}") from None
        if isinstance(result, dict):  # outputs by name (keras-hub backbones)
            self.output_names = _ordered_names(result)
        return [np.asarray(t) for t in _ordered_outputs(result)]

    def layer_outputs(
        self, inputs: Sequence[np.ndarray], names: Sequence[str] = ()
    ) -> dict[str, np.ndarray] | None:
        layers = [layer for layer in self._model.layers if type(layer).__name__ != "InputLayer"]
        outputs = []
        for layer in layers:
            out = layer.output
            outputs.append(out[0] if isinstance(out, (list, tuple)) else out)
        probe = self._keras.Model(self._model.inputs, outputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = probe(self._structured(inputs), training=False)
        if not isinstance(result, (list, tuple)):
            result = [result]
        return {layer.name: np.asarray(r) for layer, r in zip(layers, result, strict=True)}


def _import_config_packages(path: Path) -> None:
    """Import keras_hub before loading a .keras file whose config names its classes (it
    registers them; safe mode stays as it is)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            config = loads_json(zf.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return  # Keras reports what is wrong with the file
    if isinstance(config, dict) and any(
        "keras_hub" in str(config.get(key) or "") for key in ("module", "registered_name")
    ):
        try:
            import keras_hub  # noqa: F401
        except ImportError:
            raise CkptToolError(
                "this model is a keras-hub model: pip install keras-hub to verify it", path
            ) from None


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", None) or str(dtype)
