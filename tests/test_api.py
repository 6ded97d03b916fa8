"""The Python API (`ckpt_tool.api`: `open`, `verify`, `export`, `diff`, `show`): the
same objects the CLI prints, values as TensorFlow and Keras read them."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import ckpt_tool
from ckpt_tool import api
from ckpt_tool.cli import cli
from ckpt_tool.errors import CkptToolError, NotFoundError, UsageError
from ckpt_tool.verify import VerifyReport
from tests.support import ROOT, fixture_path

BLOCK = fixture_path("transformer_block_keras")


def cli_run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout


def test_import_is_light_and_the_api_loads_on_use() -> None:
    code = (
        "import sys, ckpt_tool; before = set(sys.modules); ckpt_tool.open; "
        "print(sorted(m for m in before if m.split('.')[0] in "
        "('numpy', 'tensorflow', 'keras', 'torch', 'h5py', 'rich')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"
    assert {"open", "show", "WeightFile"} <= set(dir(ckpt_tool))
    assert ckpt_tool.open is api.open and ckpt_tool.show is api.show
    with pytest.raises(AttributeError):
        _ = ckpt_tool.no_such_function


def test_checkpoint_tensors_as_tensorflow_reads_them() -> None:
    path = fixture_path("seed_checkpoint")
    tf_reader = tf.train.load_checkpoint(str(path))
    with ckpt_tool.open(path) as weights:
        assert weights.format == "checkpoint"
        assert {v.key for v in weights.variables} == set(tf_reader.get_variable_to_shape_map())
        for info in weights.variables:
            if info.dtype != "string":
                expected = tf_reader.get_tensor(info.key)
                np.testing.assert_array_equal(weights.read(info.name), expected)
                np.testing.assert_array_equal(weights.read(info.key), expected)


def test_keras_file_names_values_and_roles_as_keras_has_them() -> None:
    model = keras.saving.load_model(BLOCK)
    with ckpt_tool.open(BLOCK) as weights:
        assert weights.names() == [w.path for w in model.weights]
        for w in model.weights:
            np.testing.assert_array_equal(weights.read(w.path), np.asarray(w))
        assert weights.role_of("attention/query/kernel") == ("attention", "query.kernel")
        assert weights.role_of("ffn_norm/gamma") == ("ffn_norm", "gamma")
        layers = {layer.name: layer.class_name for layer in weights.roles.layers}
        assert layers == {
            layer.name: type(layer).__name__ for layer in model.layers if layer.weights
        }
        with pytest.raises(NotFoundError, match="no variable named"):
            weights.read("attention/nothing")


def test_listing_and_show_print_what_the_cli_prints(capsys) -> None:
    code, expected = cli_run("list", str(BLOCK))
    assert code == 0
    with ckpt_tool.open(BLOCK) as weights:
        listing = weights.listing()
        assert listing.to_json()["totals"]["tensors"] == 16
        capsys.readouterr()
        api.show(listing)
    assert capsys.readouterr().out == expected


def test_verify_returns_the_report_the_cli_prints(tmp_path) -> None:
    path = str(fixture_path("seed_keras"))
    notes: list[str] = []
    report = api.verify(path, scales=[10], note=notes.append)
    assert isinstance(report, VerifyReport) and report.passed
    assert any("TensorFlow" in n for n in notes)
    code, stdout = cli_run("verify", path, "--scales", "10", "--json")
    assert code == 0
    assert report.to_json() == json.loads(stdout)
    # a perturbed port, exported and edited from Python, fails
    out = tmp_path / "port.npz"
    result = api.export(path, out)
    assert result.path == out and result.arrays == 10
    with np.load(out) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["dense/kernel"] = arrays["dense/kernel"] + np.float32(0.01)
    np.savez(tmp_path / "edited.npz", **arrays)
    assert api.verify(path, weights=str(out)).passed
    assert not api.verify(path, weights=str(tmp_path / "edited.npz")).passed


def test_export_and_diff_match_the_cli(tmp_path) -> None:
    ours = tmp_path / "api.safetensors"
    result = api.export(BLOCK, ours, layout="torch")
    assert result.manifest["layout"] == "torch"
    code, _ = cli_run(
        "export", str(BLOCK), "-o", str(tmp_path / "cli.safetensors"), "--layout", "torch"
    )
    assert code == 0
    assert ours.read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    npz = tmp_path / "block.npz"
    api.export(BLOCK, npz)
    report = api.diff(BLOCK, npz)
    assert report.ok
    code, stdout = cli_run("diff", str(BLOCK), str(npz), "--json")
    assert code == 0 and report.to_json() == json.loads(stdout)
    assert not api.diff(BLOCK, ours).ok  # torch names and shapes differ


def test_user_mistakes_are_ckpt_tool_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"unknown option.*layuot"):
        api.export(BLOCK, tmp_path / "x.npz", layuot="torch")
    with pytest.raises(UsageError, match="to='onnx'"):
        api.export(BLOCK, tmp_path / "x.onnx", to="onnx")
    with pytest.raises(UsageError, match=r"unknown option.*tolerance"):
        api.verify(BLOCK, tolerance=1)
    with pytest.raises(CkptToolError, match="no such file"):
        ckpt_tool.open(tmp_path / "missing.keras")
    assert list(tmp_path.iterdir()) == []


def test_readme_api_snippet_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    """The README's Python API example, run as written from a directory holding `fixtures/`."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(snippet, namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("keras ['multi_head_attention/query/kernel'")
    assert printed[1] == "('dense', 'kernel')"
    assert printed[2].startswith("True ")
    assert printed[3] == "10 True"
    assert namespace["kernel"].shape == (3, 2, 4)
    assert len(namespace["report"].runs) == 3  # random inputs, then the two scales
    assert (tmp_path / "seed.safetensors").is_file()
    assert "PASS" in "\n".join(printed[4:])
