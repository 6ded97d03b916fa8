"""Names from a file are shown as they are: rich's emoji codes (`:smile:`) are text."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_tool.cli import cli


@pytest.mark.parametrize("view", [[], ["--tree"], ["--roles"]], ids=["table", "tree", "roles"])
def test_emoji_codes_in_names_stay_text(view: list[str], tmp_path: Path) -> None:
    path = tmp_path / "emoji.weights.h5"
    with h5py.File(path, "w") as f:  # laid out as Keras writes a .weights.h5
        weights = f.create_group("layers").create_group("dense:smile:").create_group("vars")
        weights.attrs["name"] = "dense:smile:"
        weights.create_dataset("0", data=np.ones((2, 2), np.float32))
    result = CliRunner().invoke(cli, ["list", str(path), *view])
    assert result.exit_code == 0, result.output
    assert "dense:smile:" in result.stdout
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in result.stdout
