"""What the role parser hands on: every weight assigned to a layer and a role within it,
with the evidence that decided it (strongest first: roles file, config or graph (a
SavedModel's own serving graph), config+order, names, shape+order)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpt_tool.readers.base import VariableInfo

CONFIG, CONFIG_ORDER, NAMES = "config", "config+order", "names"
SHAPE_ORDER, USER = "shape+order", "roles file"
GRAPH = "graph"  # read from a SavedModel's serving function graph (ckpt_tool.graph_trace)


@dataclass
class Layer:
    """One layer of the model as far as the weights tell."""

    name: str
    class_name: str
    config: dict
    weights: dict[str, str]  # role -> variable key
    evidence: str
    notes: list[str] = field(default_factory=list)
    # Other role -> key assignments the evidence cannot rule out; verify tries them.
    alternatives: list[dict[str, str]] = field(default_factory=list)
    # Settings the weights cannot tell (an activation, an epsilon): other configs to try.
    config_alternatives: list[dict] = field(default_factory=list)
    # A model family's layer (`ckpt_tool.families`): the scope its names live under.
    scope: str | None = None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "class_name": self.class_name,
            "config": _public_config(self.config),
            "weights": self.weights,
            "evidence": self.evidence,
            "notes": self.notes,
            "alternatives": self.alternatives,
        }


@dataclass
class RoleMap:
    layers: list[Layer]
    unassigned: list[VariableInfo]
    # The model family whose names decided the layers (`ckpt_tool.families`), if any.
    family: str | None = None
    # What the evidence says about itself (e.g. why a SavedModel's graph was not used).
    notes: list[str] = field(default_factory=list)

    def by_key(self) -> dict[str, tuple[Layer, str]]:
        return {key: (layer, role) for layer in self.layers for role, key in layer.weights.items()}

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_json(self) -> dict:
        return {
            "layers": [layer.to_json() for layer in self.layers],
            "unassigned": [info.key for info in self.unassigned],
        }


def _public_config(config: dict) -> dict:
    keep = (dict, list, str, int, float, bool, type(None))
    return {k: v for k, v in config.items() if isinstance(v, keep)}
