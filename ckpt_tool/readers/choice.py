"""Saying what was chosen: the detected format in words, and which checkpoint of a
directory of several is read (and picking another with --step)."""

from __future__ import annotations

import re
from pathlib import Path

from ckpt_tool.errors import NotFoundError, UsageError
from ckpt_tool.storage import as_path, is_url

_DESCRIPTIONS = {
    "checkpoint": "TensorFlow checkpoint",
    "keras": "Keras .keras file",
    "weights-h5": "Keras .weights.h5 file",
    "h5": "legacy Keras .h5 file",
    "npz": "NumPy .npz",
}
_STEP = re.compile(r"-(\d+)$")  # ckpt-3, model.ckpt-1000


def describe_format(path: str | Path, format_name: str) -> str:
    """The format in words; a directory with saved_model.pb (or that file itself) is a
    SavedModel, which the checkpoint reader also reads."""
    path = as_path(path)
    if format_name == "checkpoint" and (
        (path / "saved_model.pb").is_file() or path.name == "saved_model.pb"
    ):
        return "SavedModel"
    if format_name == "checkpoint" and path.is_dir():
        from ckpt_tool.readers.checkpoint import _state_file_prefix

        chosen = _state_file_prefix(path)
        if chosen is not None:
            return f"TensorFlow checkpoint {chosen.name}"
    return _DESCRIPTIONS.get(format_name, format_name)


def _checkpoints(directory: Path) -> list[Path]:
    """The checkpoint prefixes in a directory, by step (then name)."""
    prefixes = [Path(str(p)[: -len(".index")]) for p in directory.glob("*.index")]

    def order(prefix: Path) -> tuple:
        step = _STEP.search(prefix.name)
        return (int(step.group(1)) if step else -1, prefix.name)

    return sorted(prefixes, key=order)


def checkpoint_choice(path: str | Path) -> str | None:
    """A note naming the checkpoint read when `path` is a directory holding several
    (TensorFlow's `checkpoint` file names the latest); None otherwise."""
    if is_url(path):  # a bucket has no directory listing to choose from
        return None
    path = Path(path)
    if not path.is_dir() or (path / "saved_model.pb").is_file():
        return None
    from ckpt_tool.readers.checkpoint import _state_file_prefix

    chosen = _state_file_prefix(path)
    found = _checkpoints(path)
    if chosen is None or len(found) < 2:
        return None
    names = ", ".join(p.name for p in found)
    return (
        f"{path}: reading {chosen.name}, the checkpoint the `checkpoint` file names "
        f"(the latest), of {len(found)} here ({names}); --step N reads another"
    )


def checkpoint_for_step(path: str | Path, step: int) -> str:
    """The prefix of the checkpoint of step `step` in the directory `path`."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError("--step picks a checkpoint of a directory; this is not one", path)
    found = _checkpoints(path)
    for prefix in found:
        match = _STEP.search(prefix.name)
        if match and int(match.group(1)) == step:
            return str(prefix)
    steps = [m.group(1) for m in (_STEP.search(p.name) for p in found) if m]
    have = f"steps here: {', '.join(steps)}" if steps else "no numbered checkpoints here"
    raise NotFoundError(f"no checkpoint of step {step} ({have})", path)
