"""Running a Hugging Face TF model as its library does: `save_pretrained` writes weights
(`tf_model.h5`) and a `config.json` but no model graph, so `verify` rebuilds the original
with transformers' own `TFAutoModel` from that directory."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ckpt_tool.errors import CkptToolError
from ckpt_tool.original import InputSpec, OriginalModel, first_line, quiet_tensorflow

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
        data = json.loads(config.read_text())
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
