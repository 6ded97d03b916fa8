"""Model families: what ckpt-tool knows about the models people port, one module each.

`FAMILIES` lists them in the order they are asked; the first whose names it recognises
claims its layers (see `Family` in `base.py` for the protocol). Adding a family is one
module and one line here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ckpt_tool.families.base import Family, load_json_config
from ckpt_tool.families.bert import BertFamily
from ckpt_tool.families.hf_distilbert import DistilBertFamily
from ckpt_tool.families.hf_gpt2 import GPT2Family
from ckpt_tool.families.hf_vit import ViTFamily
from ckpt_tool.families.keras_hub import KerasHubFamily
from ckpt_tool.families.model_garden import ModelGardenBertFamily
from ckpt_tool.readers.base import VariableInfo
from ckpt_tool.rolemap import Layer, RoleMap

__all__ = ["FAMILIES", "Family", "claim_layers", "family_of", "get_family", "load_json_config"]

FAMILIES: tuple[Family, ...] = (
    KerasHubFamily(),
    ModelGardenBertFamily(),
    BertFamily(),
    GPT2Family(),
    DistilBertFamily(),
    ViTFamily(),
)


def get_family(name: str | None) -> Family | None:
    return next((f for f in FAMILIES if f.name == name), None)


def family_of(role_map: RoleMap) -> Family | None:
    """The family whose names decided the role map's layers, if any."""
    return get_family(role_map.family)


def claim_layers(
    infos: Sequence[VariableInfo],
    path: str | Path | None = None,
    config: dict | None = None,
) -> tuple[str | None, list[Layer], list[VariableInfo]]:
    """(family name, its layers, the variables left over) for the first family that
    recognises the names; (None, [], infos) when none does. `config` is a family config
    the user gave; else each family looks for its own config file beside `path`."""
    for family in FAMILIES:
        own = config if config is not None else _config_beside(family, path)
        layers, rest = family.layers(infos, own)
        if layers:
            return family.name, layers, rest
    return None, [], list(infos)


def _config_beside(family: Family, path: str | Path | None) -> dict | None:
    found = family.find_config(path) if path is not None else None
    if found is None:
        return None
    config = family.read_config(found)
    return config if family.accepts_config(config) else None
