"""Hostile inputs whose right answer is a result, not an error (the rows that must
fail with one line are in test_bad_inputs): memory that stays linear, dtypes a
manifest cannot change, names that cannot rewrite the screen, a closed terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_tool.cli import cli
from ckpt_tool.readers import open_reader
from tests.hostile_bundles import chain_graph, graph_checkpoint
from tests.support import ROOT

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} escaped: {result.exception}")
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------
# The object graph: a long chain costs memory in proportion to its length


def test_object_graph_chain_lists_in_linear_memory(tmp_path: Path) -> None:
    """A 6,000-object chain with a variable on every 10th object: spelling out every
    path would hold ~18 million path components (hundreds of MB); the listing must
    stay within a few MB and name every variable."""
    children, variables = chain_graph(6000, variables_every=10)
    prefix = graph_checkpoint(tmp_path / "ckpt", children, variables)
    tracemalloc.start()
    try:
        with open_reader(prefix) as reader:
            infos = reader.variables()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, f"peak {peak / 2**20:.0f} MiB"
    weights = [i for i in infos if i.key.startswith("var")]
    assert len(weights) == len(variables)
    assert len({i.name for i in infos}) == len(infos)
    # shallow variables keep their object path as name, as TensorFlow's walk gives it
    first = next(i for i in weights if i.key.startswith("var10/"))
    assert first.name == "/".join(f"c{k}" for k in range(10))


def test_object_graph_chain_cli_lists(tmp_path: Path) -> None:
    children, variables = chain_graph(40_000)
    prefix = graph_checkpoint(tmp_path / "ckpt", children, variables)
    start = time.monotonic()
    code, stdout, stderr = run(["list", str(prefix)])
    assert code == 0, stderr
    assert "var40000" in stdout
    assert time.monotonic() - start < 60


# --------------------------------------------------------------------------
# npz manifests cannot retype arrays (only ml_dtypes bit containers are reinterpreted)


@pytest.mark.parametrize("named", ["O", "V8", "M8", "U2", "c8", "S8", "float64", "finfo"])
def test_manifest_dtype_cannot_retype_an_array(named: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    values = np.arange(4, dtype="<u8") * 3
    manifest = json.dumps({"variables": [{"key": "w", "dtype": named}]}).encode()
    np.savez(path, w=values, __manifest__=np.frombuffer(manifest, np.uint8))
    code, stdout, stderr = run(["list", "--stats", "--json", str(path)])
    assert code == 0, stderr
    (w,) = [t for t in json.loads(stdout)["tensors"] if t["key"] == "w"]
    assert w["dtype"] == "uint64"
    with open_reader(path) as reader:
        np.testing.assert_array_equal(reader.read("w"), values)
        assert reader.read("w").dtype == np.uint64
    out = tmp_path / "out.npz"
    code, _, stderr = run(["export", str(path), "-o", str(out)])
    assert code == 0, stderr
    np.testing.assert_array_equal(np.load(out)["w"], values)
    code, _, stderr = run(["diff", str(path), str(out)])
    assert code == 0, stderr


def test_manifest_still_restores_bfloat16(tmp_path: Path) -> None:
    """The control: an ml_dtypes name over a same-width bit container is honoured."""
    import ml_dtypes

    bits = np.array([1.5, -2.0], ml_dtypes.bfloat16).view(np.uint16)
    manifest = json.dumps({"variables": [{"key": "w", "dtype": "bfloat16"}]}).encode()
    path = tmp_path / "weights.npz"
    np.savez(path, w=bits, __manifest__=np.frombuffer(manifest, np.uint8))
    with open_reader(path) as reader:
        assert reader.read("w").dtype == ml_dtypes.bfloat16
        assert reader.read("w").astype(np.float32).tolist() == [1.5, -2.0]


# --------------------------------------------------------------------------
# Terminal escapes and newlines in names: shown escaped, one row per tensor

HOSTILE_NAMES = ("evil\x1b[2J\x1b[31mred", "two\nlines", "bidi\u202etxt", "bell\x07\x9b1m")


@pytest.mark.parametrize(
    "command",
    [["list"], ["list", "--roles"], ["list", "--tree"], ["list", "--stats"], ["diff", "--all"]],
    ids=["list", "list-roles", "list-tree", "list-stats", "diff"],
)
def test_control_characters_in_names_are_escaped(command: list[str], tmp_path: Path) -> None:
    path = tmp_path / "w\x1b[1mnpz\n.npz"
    np.savez(path, **{name: np.zeros(2, np.float32) for name in HOSTILE_NAMES})
    args = [*command, str(path)] + ([str(path)] if command[0] == "diff" else [])
    code, stdout, stderr = run(args)
    assert code == 0, stderr
    assert not _CONTROL.search(stdout + stderr), repr(stdout)
    if command[0] == "diff":  # names on one side only are listed by name too
        code, stdout, stderr = run(
            ["diff", str(path), str(ROOT / "fixtures" / "seed" / "inputs.npz")]
        )
        assert code == 1 and "only in A" in stdout, stderr
        assert not _CONTROL.search(stdout + stderr), repr(stdout)
    if command[0] == "list" and "--tree" not in command:
        assert "evil\\x1b[2J\\x1b[31mred" in stdout
        rows = [line for line in stdout.splitlines() if "float32" in line]
        assert len(rows) == len(HOSTILE_NAMES), stdout  # no name broke its row in two


def test_error_line_escapes_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no\nsuch\x1b[2J.keras"
    code, _, stderr = run(["list", str(missing)])
    assert code == 2
    assert len(stderr.splitlines()) == 1 and not _CONTROL.search(stderr), repr(stderr)


# --------------------------------------------------------------------------
# A closed terminal (SIGHUP) during export: no output, no temporary file


def _default_hangup() -> None:  # in the child: a job started by nohup inherits SIGHUP ignored
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.slow
def test_hangup_mid_export_leaves_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    src = tmp_path / "large.npz"
    np.savez(src, **{f"layer_{i}/kernel": rng.random(4 << 20, dtype=np.float32) for i in range(4)})
    out = tmp_path / "out.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckpt_tool", "export", str(src), "-o", str(out), "--compress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"},
        preexec_fn=_default_hangup,
    )
    deadline = time.monotonic() + 60
    temp: list[Path] = []
    while not temp and proc.poll() is None and time.monotonic() < deadline:
        temp = [p for p in tmp_path.iterdir() if p.name.startswith(".out.npz.")]
        time.sleep(0.01)
    assert temp, "the export never started writing"
    time.sleep(0.2)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert len(stderr.splitlines()) == 1 and "interrupted" in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.npz"]
