"""Tensors streamed in pieces (Reader.read_pieces) for `list --stats` and `diff`: the
pieces hold exactly what a whole read returns, the statistics and comparisons do not
depend on how a tensor is cut, a damaged checkpoint tensor is still refused, and the
work of several tensors at once keeps the tensors' order and errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_tool import streaming
from ckpt_tool.cli import cli
from ckpt_tool.diff import compare_arrays
from ckpt_tool.errors import CorruptFileError
from ckpt_tool.listing import _CHUNK, PIECE_ELEMENTS, stream_stats, tensor_stats
from ckpt_tool.readers import open_reader
from ckpt_tool.streaming import in_order
from tests.support import fixture_path

ROWS, COLS = 700, 600  # 420,000 values: several chunks and pieces


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"COLUMNS": None})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One Keras model saved by TensorFlow and Keras themselves: a checkpoint (with a
    few extra dtypes), a .weights.h5 and a .keras. The first kernel holds NaN and
    infinities in some chunks only."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("streamed")
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((ROWS,)), keras.layers.Dense(COLS), keras.layers.Dense(7)]
    )
    kernel = model.layers[0].kernel.numpy()
    kernel.reshape(-1)[[5, 70_000, 300_001]] = [np.nan, np.inf, -np.inf]
    model.layers[0].kernel.assign(kernel)
    model.save_weights(str(root / "model.weights.h5"))
    model.save(str(root / "model.keras"))
    extras = {
        "half": tf.Variable(np.linspace(-3, 3, 200_000).astype(np.float16)),
        "wide": tf.Variable(np.arange(-70_000, 70_001, dtype=np.int64) * 2**40),
        "scalar": tf.Variable(np.float32(2.5)),
        "empty": tf.Variable(np.zeros((0, 4), np.float32)),
    }
    prefix = tf.train.Checkpoint(model=model, **extras).write(str(root / "ckpt"))
    return {
        "checkpoint": prefix,
        "weights-h5": str(root / "model.weights.h5"),
        "keras": str(root / "model.keras"),
    }


FORMATS = ["checkpoint", "weights-h5", "keras"]


def _joined(pieces, limit: int) -> np.ndarray:
    got = []
    for piece in pieces:
        assert piece.ndim == 1 and piece.size <= limit
        got.append(piece.copy())  # the next piece may reuse this one's memory
    return np.concatenate(got)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pieces_hold_what_a_whole_read_returns(saved, fmt):
    with open_reader(saved[fmt]) as reader:
        infos = reader.variables()
        assert any(info.num_elements > 4 * _CHUNK for info in infos)
        for info in infos:
            whole = reader.read(info.key).reshape(-1)
            for elements in (_CHUNK, PIECE_ELEMENTS):
                joined = _joined(reader.read_pieces(info.key, elements), elements)
                assert joined.dtype == whole.dtype and joined.shape == whole.shape, info.key
                if whole.dtype != object:
                    assert joined.tobytes() == whole.tobytes(), info.key


@pytest.mark.parametrize("fixture_id", ["seed_checkpoint", "seed_keras", "edge_dtypes"])
def test_pieces_of_committed_fixtures(fixture_id):
    with open_reader(fixture_path(fixture_id)) as reader:
        for info in reader.variables():
            whole = reader.read(info.key).reshape(-1)
            joined = _joined(reader.read_pieces(info.key, 64), 64)
            assert joined.shape == whole.shape and joined.dtype == whole.dtype
            if whole.dtype != object:
                assert joined.tobytes() == whole.tobytes(), info.key
            else:
                assert joined.tolist() == whole.tolist()


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_statistics_equal_whole_array_statistics(saved, fmt):
    """Bit for bit, whatever the piece size, and in the CLI's order."""
    with open_reader(saved[fmt]) as reader:
        infos = reader.variables()
        for info in infos:
            expected = tensor_stats(reader.read(info.key))
            for elements in (_CHUNK, 3 * _CHUNK, PIECE_ELEMENTS):
                assert stream_stats(reader.read_pieces(info.key, elements)) == expected
        kernel = next(i for i in infos if i.num_elements == ROWS * COLS)
        stats = tensor_stats(reader.read(kernel.key))
        assert (stats["nan"], stats["inf"]) == (1, 2)
    result = _invoke("list", saved[fmt], "--stats", "--json", "--all")
    assert result.exit_code == 0
    listed = json.loads(result.stdout)["tensors"]
    with open_reader(saved[fmt]) as reader:
        for tensor in listed:
            assert tensor["stats"] == tensor_stats(reader.read(tensor["key"])), tensor["key"]


def test_a_damaged_tensor_is_refused_after_its_last_piece(saved, tmp_path):
    prefix = saved["checkpoint"]
    for part in (".index", ".data-00000-of-00001"):
        shutil.copy(prefix + part, tmp_path / ("ckpt" + part))
    damaged = str(tmp_path / "ckpt")
    with open_reader(damaged) as reader:
        info = max(reader.variables(), key=lambda i: i.num_elements)
        entry = reader.bundle.entry(info.key)
    with open(damaged + ".data-00000-of-00001", "r+b") as f:
        f.seek(entry.offset + entry.size - 2)  # in the last piece
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    with open_reader(damaged) as reader:
        with pytest.raises(CorruptFileError) as whole:
            reader.read(info.key)
        pieces = reader.read_pieces(info.key, _CHUNK)
        with pytest.raises(CorruptFileError) as streamed:
            for n, _ in enumerate(pieces, 1):  # noqa: B007 (counted after the loop)
                pass
        assert n == -(-info.num_elements // _CHUNK)  # every piece came, then the error
        assert str(streamed.value) == str(whole.value)
        assert "crc32c mismatch" in str(streamed.value)
        reader.verify_crc = False
        assert stream_stats(reader.read_pieces(info.key, PIECE_ELEMENTS)) is not None
    result = _invoke("list", damaged, "--stats", "--all")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == f"error: {whole.value}"
    diffed = _invoke("diff", saved["checkpoint"], damaged, "--all")
    assert diffed.exit_code == 2 and diffed.stderr.strip() == f"error: {whole.value}"


def test_diff_of_the_same_weights_in_three_formats(saved, tmp_path):
    only_model = ("--filter", "*dense*")  # not the checkpoint's extra variables
    same = _invoke("diff", saved["checkpoint"], saved["weights-h5"], *only_model)
    assert same.exit_code == 0, same.stdout
    assert _invoke("diff", saved["keras"], saved["weights-h5"]).exit_code == 0
    import h5py

    changed = tmp_path / "changed.weights.h5"
    shutil.copy(saved["weights-h5"], changed)
    with h5py.File(changed, "r+") as f:
        name = next(n for n in _datasets(f) if f[n].size == ROWS * COLS)
        values = f[name][()]
        values.reshape(-1)[400_000] *= 1.5
        f[name][...] = values
        index = [int(i) for i in np.unravel_index(400_000, values.shape)]
    result = _invoke("diff", saved["checkpoint"], str(changed), "--json", *only_model)
    assert result.exit_code == 1
    pair = next(p for p in json.loads(result.stdout)["pairs"] if p["status"] != "equal")
    assert pair["mismatched"] == 1 and pair["first_mismatch"]["index"] == index


def _datasets(f) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def test_an_infinite_value_does_not_hide_a_chunks_largest_ratio():
    """b = -inf beside an element off by 1e-4 of |b|, in one chunk: the ratio inf/inf is
    passed over, the 1e-4 is reported (it was lost: NaN won the chunk's max)."""
    a = np.ones(1000, np.float32)
    b = a.copy()
    b[0], a[-1] = -np.inf, np.float32(1.0001)
    got = compare_arrays(a, b)
    assert got.mismatched == 2 and got.max_abs == np.inf
    assert got.max_rel == pytest.approx(1e-4, rel=1e-3)


def test_in_order_keeps_order_and_raises_the_first_error_in_turn():
    def prepare(i: int) -> int:
        if i == 6:
            raise KeyError("prepare 6")
        return i

    def work(i: int) -> int:
        if i == 4:
            raise ValueError("work 4")
        return i * i

    got = []
    with pytest.raises(ValueError, match="work 4"):
        for value in in_order(range(10), prepare, work, lambda i: 1):
            got.append(value)
    assert got == [0, 1, 4, 9]
    assert list(in_order(range(50), lambda i: i, lambda i: -i, lambda i: 1)) == [
        -i for i in range(50)
    ]
    # items larger than the budget run one at a time, still in order
    big = streaming.AHEAD_BYTES
    assert list(in_order(range(5), lambda i: i, lambda i: i + 1, lambda i: big)) == [1, 2, 3, 4, 5]
