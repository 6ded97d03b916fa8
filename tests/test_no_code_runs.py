"""No model code runs where it should not.

- The hostile SavedModel's serving signature writes `pwned.txt` into the working
  directory when TensorFlow executes it. `list` (every variant), `export` and
  `diff` must read it without that file appearing, and without even importing
  TensorFlow, so no graph can run.
- `list`, `export` and `diff` work for every format in a process where importing
  tensorflow, keras, tf_keras or torch fails.
- `verify` (which does run models) keeps Keras' safe mode: a `.keras` with a
  Lambda layer is refused unless the user passes `--unsafe`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import (
    ROOT,
    fixture_path,
    fixtures_where,
    hostile_model_writes_its_file,
    run_cli,
)

HEAVY = ("tensorflow", "keras", "tf_keras", "torch")

# Runs several CLI commands in one process (one interpreter start instead of many),
# then records each exit code and which heavy frameworks ended up imported.
_RUN_COMMANDS = """
import json, sys
from ckpt_tool.cli import cli

commands, report = json.loads(sys.argv[1]), sys.argv[2]
codes = []
for args in commands:
    try:
        cli.main(args, prog_name="ckpt-tool")
    except SystemExit as exc:
        codes.append(exc.code if isinstance(exc.code, int) else int(exc.code is not None))
    else:
        codes.append(0)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "tf_keras", "torch"})
with open(report, "w") as f:
    json.dump({"codes": codes, "heavy": heavy}, f)
"""


def run_commands(
    commands: list[list[str]], cwd: Path, env: dict | None = None
) -> tuple[list[int], list[str], subprocess.CompletedProcess]:
    report = cwd.parent / f"{cwd.name}-report.json"
    result = subprocess.run(
        [sys.executable, "-c", _RUN_COMMANDS, json.dumps(commands), str(report)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200", **(env or {})},
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert report.exists(), result.stderr
    data = json.loads(report.read_text())
    return data["codes"], data["heavy"], result


# --------------------------------------------------------------------------
# The hostile SavedModel


def test_hostile_savedmodel_is_read_without_running_it(tmp_path: Path) -> None:
    """TensorFlow is importable here, as on a user's machine; nothing may use it."""
    hostile = str(fixture_path("hostile_savedmodel"))
    work = tmp_path / "cwd"
    work.mkdir()
    out = str(tmp_path / "hostile.npz")
    commands = [
        ["list", hostile],
        ["list", "--all", hostile],
        ["list", "--stats", "--all", hostile],
        ["list", "--roles", hostile],
        ["list", "--json", "--roles", "--stats", hostile],
        ["list", "--tree", hostile],
        ["export", hostile, "-o", out, "--include-optimizer"],
        ["diff", hostile, out],
        ["diff", hostile, hostile, "--include-optimizer"],
        ["list", out],
    ]
    codes, heavy, result = run_commands(commands, work)
    assert codes == [0] * len(commands), (codes, result.stderr)
    assert heavy == [], f"imported {heavy}: a graph could have run"
    assert list(work.iterdir()) == []
    assert not any(p.name == "pwned.txt" for p in tmp_path.rglob("*"))
    assert not (ROOT / "pwned.txt").exists()
    assert not any(p.name == "pwned.txt" for p in fixture_path("hostile_savedmodel").rglob("*"))
    # Positive control: run by TensorFlow, the same model does write the file.
    assert hostile_model_writes_its_file()


# --------------------------------------------------------------------------
# Every format without TensorFlow, Keras or PyTorch


@pytest.fixture(scope="module")
def blocked_frameworks(tmp_path_factory) -> dict:
    """PYTHONPATH entries that make `import tensorflow` (keras, tf_keras, torch) fail."""
    root = tmp_path_factory.mktemp("blocked")
    for name in HEAVY:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked in this test')\n"
        )
    return {"PYTHONPATH": os.pathsep.join([str(root), str(ROOT)])}


def _one_fixture_per_kind() -> list[str]:
    """A fixture of every (format, kind): checkpoints TF1/TF2, sharded and partitioned,
    SavedModels of tf-keras and Keras 3, .keras, .weights.h5, legacy .h5."""
    seen: dict[tuple[str, str], str] = {}
    for f in fixtures_where():
        seen.setdefault((f["format"], f["kind"]), f["id"])
    extra = ["edge_partitioned", "edge_sharded_sliced", "edge_dtypes", "seed_keras3_export"]
    return sorted(set(seen.values()) | set(extra))


def test_every_format_lists_exports_and_diffs_without_frameworks(
    tmp_path: Path, blocked_frameworks: dict
) -> None:
    ids = _one_fixture_per_kind()
    paths = [str(fixture_path(i)) for i in ids]
    npz = tmp_path / "plain.npz"
    np.savez(npz, kernel=np.arange(6, dtype=np.float32).reshape(2, 3), bias=np.zeros(3))
    paths.append(str(npz))
    formats = {f["format"] for f in fixtures_where() if f["id"] in ids} | {"npz"}
    assert formats >= {"checkpoint", "keras", "weights-h5", "h5", "npz"}
    work = tmp_path / "cwd"
    work.mkdir()
    commands: list[list[str]] = []
    for p in paths:
        commands += [["list", "--all", p], ["list", "--stats", "--roles", "--json", p]]
    exported = str(tmp_path / "seed.npz")
    seed_keras = str(fixture_path("seed_keras"))
    commands += [
        ["export", seed_keras, "-o", exported],
        ["diff", seed_keras, exported],
        ["diff", str(fixture_path("seed_keras")), str(fixture_path("seed_weights_h5"))],
    ]
    safetensors = str(tmp_path / "seed.safetensors")
    commands += [
        ["export", seed_keras, "-o", safetensors],
        ["list", "--roles", safetensors],
        ["diff", exported, safetensors],
    ]
    codes, heavy, result = run_commands(commands, work, env=blocked_frameworks)
    failed = [(c, code) for c, code in zip(commands, codes, strict=True) if code != 0]
    assert not failed, (failed, result.stderr)
    assert heavy == []


def test_verify_without_tensorflow_is_one_clear_line(blocked_frameworks: dict) -> None:
    result = run_cli("verify", str(fixture_path("seed_keras")), env=blocked_frameworks)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "tensorflow" in errors[0].lower() or "keras" in errors[0].lower(), errors[0]


# --------------------------------------------------------------------------
# verify keeps Keras' safe mode


def _lambda_model(keras, path: Path) -> Path:
    """A model (made with `keras`, Keras 3 or tf-keras) whose Lambda leaves
    `lambda-ran.txt` in the working directory whenever its code runs; it runs once here,
    while the model is built, which shows the marker works."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with contextlib.chdir(path.parent):
        inputs = keras.Input((4,))
        x = keras.layers.Dense(3)(inputs)
        x = keras.layers.Lambda(lambda t: (open("lambda-ran.txt", "w").close(), t * 2.0)[1])(x)
        keras.Model(inputs, x).save(path)
    marker = path.parent / "lambda-ran.txt"
    assert marker.exists()  # the marker works
    marker.unlink()
    return path


@pytest.fixture(scope="module")
def lambda_keras(tmp_path_factory) -> Path:
    """A .keras with a code-running Lambda (see _lambda_model)."""
    keras = pytest.importorskip("keras")
    return _lambda_model(keras, tmp_path_factory.mktemp("lambda") / "lambda_model.keras")


@pytest.mark.slow
def test_keras_safe_mode_refuses_the_lambda(lambda_keras: Path, tmp_path: Path) -> None:
    """The loader verify uses: safe mode refuses the Lambda (naming --unsafe) and its
    code never runs."""
    from ckpt_tool.errors import CkptToolError
    from ckpt_tool.original import load_original

    with contextlib.chdir(tmp_path), pytest.raises(CkptToolError) as err:
        load_original(lambda_keras, "keras", unsafe=False)
    assert "--unsafe" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_unsafe_mode_runs_the_lambda(lambda_keras: Path, tmp_path: Path) -> None:
    """Positive control for the two safe-mode tests: with `unsafe=True` (what `verify
    --unsafe` passes) the same file loads and its Lambda's code runs, leaving its marker."""
    from ckpt_tool.original import load_original

    with contextlib.chdir(tmp_path):
        original = load_original(lambda_keras, "keras", unsafe=True)
        original([np.ones((2, 4), np.float32)])
    assert (tmp_path / "lambda-ran.txt").exists()


@pytest.mark.slow
def test_verify_refuses_lambda_under_safe_mode(lambda_keras: Path, tmp_path: Path) -> None:
    result = run_cli("verify", str(lambda_keras), cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []  # the Lambda's code did not run
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {lambda_keras}: ") and "--unsafe" in errors[0]


# --------------------------------------------------------------------------
# verify and tf-keras' legacy .h5: its loader has no safe mode of its own


@pytest.fixture(scope="module")
def lambda_h5(tmp_path_factory) -> Path:
    """A tf-keras legacy `.h5` whose Lambda's marshalled code runs whenever the model is
    built (see _lambda_model)."""
    tf_keras = pytest.importorskip("tf_keras")
    return _lambda_model(tf_keras, tmp_path_factory.mktemp("lambda_h5") / "lambda_model.h5")


@pytest.mark.slow
def test_plain_tf_keras_runs_the_legacy_h5_lambda(lambda_h5: Path, tmp_path: Path) -> None:
    """Positive control: tf-keras' own loader runs the Lambda's code (so the test
    below, where it must not run, can fail)."""
    import tf_keras

    with contextlib.chdir(tmp_path):
        tf_keras.models.load_model(str(lambda_h5), compile=False)
    assert (tmp_path / "lambda-ran.txt").exists()


@pytest.mark.slow
def test_verify_refuses_legacy_h5_lambda_without_unsafe(lambda_h5: Path, tmp_path: Path) -> None:
    from ckpt_tool.errors import CkptToolError
    from ckpt_tool.original import load_original

    with contextlib.chdir(tmp_path):
        with pytest.raises(CkptToolError) as err:
            load_original(lambda_h5, "h5", unsafe=False)
        assert list(tmp_path.iterdir()) == []  # the Lambda's code did not run
        load_original(lambda_h5, "h5", unsafe=True)  # the user's explicit choice
    assert "--unsafe" in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"{lambda_h5}: ")
    assert (tmp_path / "lambda-ran.txt").exists()


@pytest.mark.slow
def test_tf_keras_safe_mode_holds_without_the_config_check(
    lambda_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second line of defence: with the config check skipped, the loader verify
    uses still refuses the lambda (tf-keras under its safe-mode scope)."""
    from ckpt_tool import original
    from ckpt_tool.errors import CkptToolError

    monkeypatch.setattr(original, "_refuse_python_code", lambda path: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CkptToolError) as err:
        original.load_original(lambda_h5, "h5", unsafe=False)
    assert list(tmp_path.iterdir()) == []
    assert "--unsafe" in str(err.value)
