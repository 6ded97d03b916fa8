"""Keras HDF5 datasets stored in one piece are read with one positioned read of their
bytes: the values equal h5py's own reading, and every other storage (chunked,
compressed, big-endian, behind a user block) is still read correctly."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ckpt_tool.readers import open_reader
from tests.support import fixture_path

KERAS_MADE = ["seed_weights_h5", "seed_keras", "seed_legacy_h5"]


def _h5py_values(reader, key: str) -> np.ndarray:
    """The dataset as h5py reads it, in the reader's logical dtype."""
    values = np.asarray(reader._h5[key][()])
    dtype = reader._dtypes[key]
    return values if values.dtype == dtype else values.view(dtype)


def _dataset(reader, key: str) -> h5py.Dataset:
    return reader._h5[key]


@pytest.mark.parametrize("fixture_id", KERAS_MADE)
def test_keras_made_datasets_are_read_in_place_as_h5py_reads_them(fixture_id: str) -> None:
    with open_reader(fixture_path(fixture_id)) as reader:
        infos = reader.variables()
        assert infos
        for info in infos:
            expected = _h5py_values(reader, info.key)
            in_place = reader._read_in_place(
                info.key, _dataset(reader, info.key), reader._dtypes[info.key]
            )
            assert in_place is not None, info.key  # Keras stores weights contiguously
            got = reader.read(info.key)
            for values in (in_place, got):
                assert values.dtype == expected.dtype and values.shape == expected.shape
                assert values.tobytes() == expected.tobytes()


def _rewrite(src: Path, dst: Path, **dataset_options) -> None:
    """The same groups, attributes and values, datasets stored as `dataset_options` say."""
    with h5py.File(src, "r") as old, h5py.File(dst, "w", **dataset_options.pop("file", {})) as new:

        def copy_attrs(a, b) -> None:
            for name, value in a.attrs.items():
                b.attrs[name] = value

        copy_attrs(old, new)

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                copy_attrs(obj, new.require_group(name))
            else:
                values = obj[()]
                options = dict(dataset_options)
                if options.pop("big_endian", False) and values.dtype.kind == "f":
                    options["dtype"] = values.dtype.newbyteorder(">")
                if not values.shape:
                    options.pop("compression", None)
                    options.pop("chunks", None)
                copy_attrs(obj, new.create_dataset(name, data=values, **options))

        old.visititems(visit)


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "gzip"},
        {"chunks": True},
        {"big_endian": True},
        {"file": {"userblock_size": 512}},
    ],
    ids=["gzip", "chunked", "big-endian", "user-block"],
)
def test_other_storage_reads_the_same_values(options: dict, tmp_path: Path) -> None:
    src = fixture_path("seed_weights_h5")
    dst = tmp_path / "rewritten.weights.h5"
    _rewrite(src, dst, **options)
    # a user block hides the HDF5 signature from format detection: the format is named
    with open_reader(src) as original, open_reader(dst, "weights-h5") as rewritten:
        keys = sorted(info.key for info in original.variables())  # save order differs
        assert keys == sorted(info.key for info in rewritten.variables())
        for key in keys:
            expected = original.read(key)
            got = rewritten.read(key)
            assert got.dtype.newbyteorder("=") == expected.dtype  # big-endian stays so
            assert got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
            in_place = rewritten._read_in_place(
                key, _dataset(rewritten, key), rewritten._dtypes[key]
            )
            if "file" in options:  # contiguous behind a user block: still in place
                assert in_place is not None and in_place.tobytes() == expected.tobytes()
            elif expected.ndim:  # chunked, filtered or foreign byte order: h5py reads it
                assert in_place is None
