"""`.safetensors`: export to it, list, diff and verify --weights from it.

Every file ckpt-tool writes is opened by the safetensors library itself (numpy and
torch) and compared with what TensorFlow, h5py or Keras read from the source; a torch
layout export loads into PyTorch modules with `load_state_dict(strict=True)` and
reproduces the Keras outputs; files the library writes (no manifest) are read by
ckpt-tool; damaged headers are one error line, exit 2.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import tensorflow as tf
import torch
from safetensors import safe_open

from ckpt_tool.diff import diff_readers
from ckpt_tool.errors import CkptToolError
from ckpt_tool.export import MANIFEST_KEY, ExportInterrupted, ExportOptions
from ckpt_tool.export_safetensors import export_safetensors
from ckpt_tool.listing import build_listing
from ckpt_tool.readers import open_reader
from ckpt_tool.verify import VerifyOptions, verify
from tests.support import fixture_path
from tests.test_bad_inputs import assert_one_line_error, invoke
from tests.test_layouts import (
    LinearAttention,
    TransformerBlock,
    assert_close,
    inputs,
    keras_output,
    layer_norm_eps,
    mha_config,
)

BLOCK = fixture_path("transformer_block_keras")


def export(src: Path, out: Path, **options) -> Path:
    with open_reader(src) as reader:
        export_safetensors(reader, out, ExportOptions(force=True, **options))
    return out


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="np") as f:
        return f.metadata()


# --- export: what the library and TensorFlow read ----------------------------------------


def test_checkpoint_export_matches_tensorflow_bit_for_bit(tmp_path: Path) -> None:
    src = fixture_path("seed_checkpoint")
    out = export(src, tmp_path / "seed.safetensors")
    arrays = safetensors.numpy.load_file(str(out))
    manifest = json.loads(metadata(out)[MANIFEST_KEY])
    tf_reader = tf.train.load_checkpoint(str(src))
    assert [v["key"] for v in manifest["variables"]] == list(arrays)  # manifest names all
    for entry in manifest["variables"]:
        expected = tf_reader.get_tensor(entry["source_key"])
        actual = arrays[entry["key"]]
        assert actual.dtype == expected.dtype and actual.tobytes() == expected.tobytes()


def test_every_dtype_safetensors_holds_reads_back_in_numpy_and_torch(tmp_path: Path) -> None:
    """bfloat16, float16/32/64, ints, bool and an empty tensor, from a TF checkpoint;
    complex and string tensors left out by glob (safetensors holds neither complex128
    nor strings)."""
    src = fixture_path("edge_dtypes")
    out = export(src, tmp_path / "dtypes.safetensors", pattern="[bfeiu]*")
    manifest = json.loads(metadata(out)[MANIFEST_KEY])
    tf_reader = tf.train.load_checkpoint(str(src))
    with safe_open(str(out), framework="pt") as f:
        torch_arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    names = {e["key"]: e["source_key"] for e in manifest["variables"]}
    assert {"bf16", "f16", "f64", "boolean", "u16", "i8", "empty"} <= set(names)
    for key, tensor in torch_arrays.items():
        expected = tf_reader.get_tensor(names[key])
        if expected.dtype == ml_dtypes.bfloat16:
            assert tensor.dtype == torch.bfloat16
            actual = tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
        else:
            actual = tensor.numpy()
        assert actual.dtype == expected.dtype and actual.tobytes() == expected.tobytes(), key
    # ckpt-tool reads its own file back with the logical dtypes
    with open_reader(out) as reader:
        assert {i.key: i.dtype for i in reader.variables()} == {
            e["key"]: e["dtype"] for e in manifest["variables"]
        }
        bf16 = reader.read("bf16")
        assert bf16.dtype == ml_dtypes.bfloat16
        assert bf16.tobytes() == tf_reader.get_tensor(names["bf16"]).tobytes()


def test_unsupported_dtype_is_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "dtypes.safetensors"
    code, _, stderr = invoke(["export", str(fixture_path("edge_dtypes")), "-o", str(out)])
    assert_one_line_error(code, stderr, fixture_path("edge_dtypes"), ("safetensors cannot",))
    assert list(tmp_path.iterdir()) == []


def test_weights_h5_cast_to_float16(tmp_path: Path) -> None:
    src = fixture_path("seed_weights_h5")
    out = export(src, tmp_path / "half.safetensors", dtype="float16")
    arrays = safetensors.numpy.load_file(str(out))
    manifest = json.loads(metadata(out)[MANIFEST_KEY])
    with h5py.File(src, "r") as f:
        for entry in manifest["variables"]:
            expected = np.asarray(f[entry["source_key"]]).astype(np.float16)
            np.testing.assert_array_equal(arrays[entry["key"]], expected)
            assert arrays[entry["key"]].dtype == np.float16


def test_torch_layout_loads_into_pytorch_and_computes_what_keras_does(tmp_path: Path) -> None:
    out = export(BLOCK, tmp_path / "block.safetensors", layout="torch")
    assert metadata(out)["format"] == "pt"
    manifest = json.loads(metadata(out)[MANIFEST_KEY])
    attention = LinearAttention.like(mha_config(BLOCK, "attention"), 8, 8, 8)
    model = TransformerBlock(attention, layer_norm_eps(manifest))
    model.load_state_dict(safetensors.torch.load_file(str(out)), strict=True)
    x = inputs("transformer_block")["x"]
    assert_close(model(torch.from_numpy(x)), keras_output(BLOCK, x))


# --- list, diff, verify --weights -------------------------------------------------------


@pytest.fixture(scope="module")
def block_export(tmp_path_factory) -> Path:
    return export(BLOCK, tmp_path_factory.mktemp("st") / "block.safetensors")


def test_round_trip_export_list_diff(block_export: Path) -> None:
    with open_reader(BLOCK) as src, open_reader(block_export) as out:
        assert out.format_name == "safetensors"
        source = build_listing(src)
        listed = build_listing(out)
        assert [(t.info.name, t.info.shape, t.info.dtype) for t in listed.tensors] == [
            (t.info.name, t.info.shape, t.info.dtype) for t in source.tensors
        ]
        report = diff_readers(src, out)
    assert report.ok and report.pairs and not report.only_a and not report.only_b
    code, stdout, stderr = invoke(["list", str(block_export)])
    assert code == 0, stderr
    assert "(safetensors)" in stdout and "attention/query/kernel" in stdout
    code, _, stderr = invoke(["diff", str(BLOCK), str(block_export)])
    assert code == 0, stderr


def test_detected_by_its_header_without_the_suffix(tmp_path: Path, block_export: Path) -> None:
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(block_export.read_bytes())
    with open_reader(renamed) as reader:
        assert reader.format_name == "safetensors"
    not_one = tmp_path / "other.bin"
    not_one.write_bytes(struct.pack("<Q", 4) + b"{ab}")  # a length and a brace, no key
    code, _, stderr = invoke(["list", str(not_one)])
    assert_one_line_error(code, stderr, not_one, ("not a TensorFlow checkpoint",))


def test_file_written_by_the_library_lists_and_diffs(tmp_path: Path, block_export: Path) -> None:
    """A file from `safetensors.numpy.save_file` (no manifest; names are its keys)."""
    arrays = safetensors.numpy.load_file(str(block_export))
    plain = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file(arrays, str(plain))
    with open_reader(plain) as reader, open_reader(block_export) as ours:
        assert {i.key for i in reader.variables()} == set(arrays)
        for info in reader.variables():
            np.testing.assert_array_equal(reader.read(info.key), arrays[info.key])
        assert diff_readers(ours, reader).ok


def test_verify_weights_from_safetensors(tmp_path: Path, block_export: Path) -> None:
    """A port checked against the TensorFlow original: the exported weights pass, the
    same file with one tensor perturbed (written by the safetensors library) fails."""
    report = verify(str(BLOCK), VerifyOptions(weights=str(block_export)))
    assert report.passed and report.weights_source == str(block_export)
    arrays = safetensors.numpy.load_file(str(block_export))
    key = next(k for k in arrays if k.endswith("ffn_in/kernel"))
    arrays[key] = arrays[key] * np.float32(1.01)
    perturbed = tmp_path / "perturbed.safetensors"
    safetensors.numpy.save_file(arrays, str(perturbed), metadata=metadata(block_export))
    assert not verify(str(BLOCK), VerifyOptions(weights=str(perturbed))).passed


def test_verify_weights_of_a_pytorch_port(tmp_path: Path) -> None:
    """A PyTorch module loaded from the torch-layout export, its own `state_dict()` saved
    under a prefix by `safetensors.torch.save_file` (PyTorch names and shapes, no
    manifest), is checked against the Keras original; a perturbed module fails."""
    export_path = export(BLOCK, tmp_path / "block.safetensors", layout="torch")
    manifest = json.loads(metadata(export_path)[MANIFEST_KEY])
    attention = LinearAttention.like(mha_config(BLOCK, "attention"), 8, 8, 8)
    model = TransformerBlock(attention, layer_norm_eps(manifest))
    model.load_state_dict(safetensors.torch.load_file(str(export_path)), strict=True)
    port = tmp_path / "port.safetensors"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(port))
    report = verify(str(BLOCK), VerifyOptions(weights=str(port)))
    assert report.passed
    with torch.no_grad():
        model.attention.k_proj.weight[0, 0] += 0.05
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(port))
    assert not verify(str(BLOCK), VerifyOptions(weights=str(port))).passed


# --- atomic writes and hostile files -----------------------------------------------------


def test_interrupted_export_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "block.safetensors"

    def interrupt(_array) -> None:
        raise KeyboardInterrupt

    with open_reader(BLOCK) as reader, pytest.raises(ExportInterrupted):
        export_safetensors(reader, out, ExportOptions(), on_array=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "block.safetensors"
    out.write_bytes(b"keep")
    with open_reader(BLOCK) as reader, pytest.raises(CkptToolError, match="already exists"):
        export_safetensors(reader, out, ExportOptions())
    assert out.read_bytes() == b"keep"


def _file(header: bytes | dict, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE = {
    "short": (b"\x01\x00", ("too short",)),
    "huge_length": (_file({"a": F32_2}, bytes(8), length=1 << 62), ("exceeds the limit",)),
    "past_end": (_file({"a": F32_2}, bytes(8), length=4000), ("past the end",)),
    "bad_json": (_file(b"{not json"), ("not valid JSON",)),
    "not_object": (_file(b"[1, 2]   "), ("not a safetensors file", "no JSON header")),
    "bad_dtype": (_file({"a": {**F32_2, "dtype": "F128"}}, bytes(8)), ("unsupported dtype",)),
    "bad_shape": (_file({"a": {**F32_2, "shape": [-2]}}, bytes(8)), ("shape",)),
    "size_mismatch": (_file({"a": {**F32_2, "shape": [3]}}, bytes(8)), ("needs 12 bytes",)),
    "truncated_data": (_file({"a": F32_2}, bytes(4)), ("truncated",)),
    "overlap": (_file({"a": F32_2, "b": F32_2}, bytes(8)), ("overlap",)),
    "bad_metadata": (_file({"__metadata__": {"x": 1}, "a": F32_2}, bytes(8)), ("metadata",)),
    "bad_manifest": (
        _file({"__metadata__": {MANIFEST_KEY: "{"}, "a": F32_2}, bytes(8)),
        ("__manifest__",),
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["list", "diff"])
def test_damaged_header_is_one_line_exit_2(tmp_path: Path, case: str, command: str) -> None:
    content, problem = HOSTILE[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    if case != "bad_manifest":  # the library refuses it too (ours is valid metadata to it)
        with pytest.raises(Exception, match=r"(?i)header|metadata|invalid|incomplete|too"):
            safetensors.numpy.load_file(str(path))
    args = ["list", str(path)] if command == "list" else ["diff", str(BLOCK), str(path)]
    code, _, stderr = invoke(args)
    assert_one_line_error(code, stderr, path, problem)
