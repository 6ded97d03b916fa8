"""The protocol every model family follows.

A model family (Google BERT, Hugging Face's TF BERT-likes, GPT-2, a keras-hub backbone,
...) knows what the generic rules cannot: how its files name their weights, the settings
its weights do not store (found in a config file beside them), its forward graph and the
names its PyTorch port gives every weight. Nothing outside `ckpt_tool.families` knows a
family by name: roles, graph, verify and the layouts ask the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ckpt_tool.errors import UsageError
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import Layer, RoleMap
from ckpt_tool.safe_json import loads_json, read_config_text
from ckpt_tool.storage import as_path

if TYPE_CHECKING:
    from ckpt_tool.graph import Graph
    from ckpt_tool.layouts.base import ExportArray, LayerTensors, LayoutInput
    from ckpt_tool.original import OriginalModel


class Family:
    """One model family. Subclasses set `name` and `title` and implement `layers`."""

    #: short registry key, also stored in `RoleMap.family`
    name: ClassVar[str] = ""
    #: what `verify` prints as the graph's source
    title: ClassVar[str] = ""
    #: config files that may sit beside the weights (first found wins)
    config_files: ClassVar[tuple[str, ...]] = ()

    def layers(
        self, infos: Sequence[VariableInfo], config: dict | None
    ) -> tuple[list[Layer], list[VariableInfo]]:
        """The family's layers among `infos` (roles by its names) and the variables left
        over; ([], infos) when the names are not this family's. `config` is the family
        config found beside the weights (or given by the user), if any."""
        raise NotImplementedError

    def accepts_config(self, config: dict) -> bool:
        """Whether a config file found beside the weights is this family's."""
        return True

    def problem(self, role_map: RoleMap) -> str | None:
        """Why the forward pass cannot run yet (a setting no file gave), or None."""
        return None

    def try_unknown_settings(self, role_map: RoleMap) -> bool:
        """For `verify`: turn settings no file gave (see `problem`) into alternatives that
        the numerical check settles. False if there were none."""
        return False

    def set_num_heads(self, role_map: RoleMap, num_heads: int) -> bool:
        """Use the user's head count; False when the family's layers do not take one."""
        return False

    def original(self, path: Path, format_name: str, role_map: RoleMap) -> OriginalModel | None:
        """The original model as the family's library runs it, when the file alone is
        not runnable by TensorFlow (weights without a graph); None: the generic loader."""
        return None

    def graph(self, role_map: RoleMap) -> Graph | None:
        """The forward graph over the family's layers, or None (the generic graph runs)."""
        return None

    def torch_arrays(self, inp: LayoutInput, lt: LayerTensors) -> list[ExportArray] | None:
        """The PyTorch state_dict entries of one of the family's layers, or None to leave
        the layer to the generic `torch` layout."""
        return None

    def torch_note(self) -> str | None:
        """One line for the export manifest: whose state_dict names the arrays follow."""
        return None

    # -- config files --------------------------------------------------------------------

    def read_config(self, path: Path) -> dict:
        """The config in a file `find_config` found (a JSON file unless the family says)."""
        return load_json_config(path)

    def find_config(self, path: str | Path) -> Path | None:
        """A config file of this family beside a checkpoint, in a SavedModel or its assets
        (and, for a SavedModel written by `save_pretrained`, two levels up)."""
        path = as_path(path)
        if path.is_dir():
            places = [path, path / "assets", path.parent, path.parent.parent]
        else:
            places = [path.parent]
        for place in places:
            for name in self.config_files:
                candidate = place / name
                if candidate.is_file():
                    return candidate
        return None


def load_json_config(path: str | Path, what: str = "model config") -> dict:
    """A JSON object from a config file; a UsageError naming the file otherwise."""
    try:
        config = loads_json(read_config_text(as_path(path)))
    except OSError as exc:
        raise UsageError(f"cannot read the {what}: {exc.strerror}", path) from None
    except ValueError as exc:
        raise UsageError(f"the {what} is not JSON: {exc}", path) from None
    if not isinstance(config, dict):
        raise UsageError(f"the {what} is not a JSON object", path)
    return config
