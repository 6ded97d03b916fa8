"""One step opens a model: the reader's variables, the Keras config, the model family and
the roles. `list --roles`, `verify`, `export` and `diff` all call `open_model`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckpt_tool.errors import CkptToolError, UsageError
from ckpt_tool.families import Family, family_of, load_json_config
from ckpt_tool.readers.base import Reader, VariableInfo
from ckpt_tool.rolemap import GRAPH, RoleMap
from ckpt_tool.roles import apply_roles_file, assign_roles
from ckpt_tool.safe_json import loads_json, read_config_text


@dataclass
class ModelOptions:
    config_file: str | None = None  # a Keras model config (model.to_json()) or a .keras file
    roles_file: str | None = None
    family_config: str | None = None  # a family's config file (bert_config.json, config.json)
    ignore_names: bool = False  # roles by shape and order alone
    num_heads: int | None = None  # heads of 2-D attention kernels the weights cannot tell
    # An unreadable Keras config in the file is not an error (roles then come from names).
    lenient_config: bool = False


@dataclass
class Model:
    reader: Reader
    infos: list[VariableInfo]
    config: dict | None  # the Keras model config, if any
    roles: RoleMap

    @property
    def family(self) -> Family | None:
        return family_of(self.roles)


def open_model(
    reader: Reader, options: ModelOptions | None = None, *, source: str | Path | None = None
) -> Model:
    """The model in an open reader. `source` is where to look for a family's config file
    (default: the reader's own path)."""
    options = options or ModelOptions()
    infos = reader.variables()
    if options.config_file:
        config = load_model_config(options.config_file)
    else:
        try:
            config = reader.model_config()
        except CkptToolError:
            if not options.lenient_config:
                raise
            config = None
    family_config = (
        load_json_config(options.family_config, "model's config file")
        if options.family_config
        else None
    )
    roles = assign_roles(
        infos,
        config,
        options.roles_file,
        source=source if source is not None else reader.path,
        family_config=family_config,
        ignore_names=options.ignore_names,
    )
    if config is None and roles.family is None and not options.ignore_names:
        config, roles = _from_serving_graph(reader, infos, config, roles)
    if options.roles_file is not None and roles.layers and roles.layers[0].evidence == GRAPH:
        apply_roles_file(roles, options.roles_file, infos)
    if options.num_heads is not None:
        family = family_of(roles)
        if family is None or not family.set_num_heads(roles, options.num_heads):
            raise UsageError(
                "--num-heads applies to attention kernels that do not tell their heads "
                "(BERT's 2-D kernels); this model has none",
                reader.path,
            )
    return Model(reader, infos, config, roles)


def _from_serving_graph(
    reader: Reader, infos: list[VariableInfo], config: dict | None, roles: RoleMap
) -> tuple[dict | None, RoleMap]:
    """A SavedModel's layers, roles and wiring as its serving graph states them; the
    other evidence (with a note saying why) when the graph does not read."""
    if getattr(reader, "saved_model_dir", None) is None:
        return config, roles  # no serving graph: not worth importing its protobuf parser
    from ckpt_tool.graph_trace import GraphTraceError, disagreements, trace_model

    try:
        traced = trace_model(reader, infos)
    except GraphTraceError as exc:
        roles.notes.append(f"the serving graph was not used ({exc}); roles from names and shapes")
        return config, roles
    if traced is None:
        return config, roles
    traced.roles.notes += disagreements(roles, traced.roles)
    return traced.config, traced.roles


def load_model_config(path: str | Path) -> dict:
    """A Keras model config as written by model.to_json(), a `.keras` file's config.json,
    or a `.keras` file itself."""
    path = Path(path)
    if path.suffix == ".keras":
        config = _keras_zip_config(path)
    else:
        try:
            config = loads_json(read_config_text(path))
        except OSError as exc:
            raise UsageError(f"cannot read the config: {exc.strerror}", path) from None
        except ValueError as exc:
            raise UsageError(f"the config is not JSON: {exc}", path) from None
    if not isinstance(config, dict) or "config" not in config:
        raise UsageError("not a Keras model config (no class_name/config)", path)
    return config


def _keras_zip_config(path: Path) -> dict | None:
    from ckpt_tool.readers import open_reader

    with open_reader(path, "keras") as reader:
        return reader.model_config()
