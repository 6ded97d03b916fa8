"""The tensor-bundle reader against TensorFlow's own checkpoint reader.

Every checkpoint fixture is read both ways and compared bit for bit: keys,
shapes, dtypes and every value (strings, bfloat16, partitioned and sharded
tensors included). Damaged copies of real bundles must fail with a clear
CkptToolError, never another exception.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from ckpt_tool.errors import CkptToolError, CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.readers.bundle import (
    BundleReader,
    decode_slice_key,
    encode_slice_key,
    mask_crc,
    unmask_crc,
)
from ckpt_tool.readers.checkpoint import CheckpointReader
from tests.readers.bundle_tools import (
    copy_bundle,
    read_table,
    rewrite_bundle,
    write_table,
)
from tests.support import fixture, fixture_path, fixtures_where

CHECKPOINT_IDS = [f["id"] for f in fixtures_where(format="checkpoint")]


def prefix_of(fixture_id: str) -> Path:
    """The bundle prefix of a checkpoint fixture (SavedModels: variables/variables)."""
    path = fixture_path(fixture_id)
    if fixture(fixture_id)["kind"] == "savedmodel":
        return path / "variables" / "variables"
    return path


def tf_values(prefix: Path) -> tuple[dict, dict, dict]:
    """(shape map, dtype map, key -> numpy value) as TensorFlow reads them."""
    reader = tf.train.load_checkpoint(str(prefix))
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    return shapes, dtypes, {k: reader.get_tensor(k) for k in shapes}


def assert_same_value(ours: np.ndarray, theirs, key: str) -> None:
    if ours.dtype == object:  # DT_STRING: TensorFlow gives bytes or an object array
        theirs = np.asarray(theirs, dtype=object)
        assert ours.shape == theirs.shape, key
        assert [bytes(x) for x in ours.ravel()] == [bytes(x) for x in theirs.ravel()], key
        return
    theirs = np.asarray(theirs)
    assert ours.dtype == theirs.dtype, (key, ours.dtype, theirs.dtype)
    assert ours.shape == theirs.shape, key
    assert ours.tobytes() == theirs.tobytes(), key


def tf_dtype_name(dtype: tf.DType) -> str:
    return "string" if dtype == tf.string else np.dtype(dtype.as_numpy_dtype).name


# --------------------------------------------------------------------------
# The proof: every checkpoint fixture, every tensor, bit for bit


@pytest.mark.parametrize("fixture_id", CHECKPOINT_IDS)
def test_bundle_matches_tensorflow(fixture_id):
    prefix = prefix_of(fixture_id)
    shapes, dtypes, values = tf_values(prefix)
    with BundleReader(prefix) as bundle:
        assert set(bundle.entries) == set(shapes)
        for key, entry in bundle.entries.items():
            assert entry.shape == tuple(shapes[key]), key
            assert entry.dtype_name == tf_dtype_name(dtypes[key]), key
            assert_same_value(bundle.read(key), values[key], key)


def test_fixtures_cover_the_hard_cases():
    """The proof above must include strings, bfloat16, slices and several shards."""
    seen = {"string": False, "bfloat16": False, "sliced": False, "shards": False}
    for fixture_id in CHECKPOINT_IDS:
        with BundleReader(prefix_of(fixture_id)) as bundle:
            for e in bundle.entries.values():
                seen["string"] |= e.dtype_name == "string" and e.shape != ()
                seen["bfloat16"] |= e.dtype_name == "bfloat16"
                seen["sliced"] |= bool(e.slices)
            seen["shards"] |= bundle.num_shards > 1
    assert all(seen.values()), seen


def test_partitioned_slices_decode_like_tensorflow():
    """Slice keys (OrderedCode) decode to the extents the full entry lists."""
    for fixture_id in ("edge_partitioned", "edge_sharded_sliced"):
        with BundleReader(prefix_of(fixture_id)) as bundle:
            assert bundle.slice_entries, fixture_id
            decoded = {decode_slice_key(k) for k in bundle.slice_entries}
            listed = {
                (key, tuple((s, -1 if n == -1 else n) for s, n in extents))
                for key, e in bundle.entries.items()
                for extents in e.slices
            }
            assert decoded == listed
            for name, extents in decoded:
                assert encode_slice_key(name, extents) in bundle.slice_entries


@given(
    name=st.text(min_size=1, max_size=20),
    extents=st.lists(
        st.tuples(st.integers(-(2**62), 2**62), st.integers(-1, 2**62)), min_size=1, max_size=5
    ),
)
def test_slice_key_round_trip(name, extents):
    extents = tuple((0, -1) if n == -1 else (s, n) for s, n in extents)
    assert decode_slice_key(encode_slice_key(name, extents)) == (name, extents)


@given(st.integers(0, 2**32 - 1))
def test_crc_mask_round_trip(crc):
    assert unmask_crc(mask_crc(crc)) == crc


def test_string_layout_matches_formats_doc(tmp_path):
    """["ab", "cde"] is stored as 02 03 | masked crc of the lengths | abcde."""
    ckpt = tf.train.Checkpoint(s=tf.Variable(tf.constant([b"ab", b"cde"])))
    prefix = ckpt.write(str(tmp_path / "s"))
    with BundleReader(prefix) as bundle:
        entry = bundle.entries["s/.ATTRIBUTES/VARIABLE_VALUE"]
        raw = bundle.shard_path(0).read_bytes()[entry.offset : entry.offset + entry.size]
        assert raw == bytes.fromhex("0203bde37d26") + b"abcde"
        assert list(bundle.read("s/.ATTRIBUTES/VARIABLE_VALUE")) == [b"ab", b"cde"]


# --------------------------------------------------------------------------
# Big-endian bundles


@pytest.mark.parametrize("fixture_id", ["edge_dtypes", "edge_partitioned", "seed_checkpoint"])
def test_big_endian_bundle(tmp_path, fixture_id):
    """A bundle rewritten as a big-endian machine writes it reads back the same
    values; TensorFlow (which byte-swaps such bundles) agrees with the rewrite."""
    src = prefix_of(fixture_id)
    dst = rewrite_bundle(src, tmp_path / "big", big_endian=True)
    shapes, _, values = tf_values(src)
    _, _, tf_big = tf_values(dst)
    with BundleReader(dst) as bundle:
        assert bundle.big_endian
        for key in shapes:
            ours = bundle.read(key)
            assert ours.dtype.isnative or ours.dtype == object
            assert_same_value(ours, values[key], key)
            assert_same_value(ours, tf_big[key], key)
    # the rewrite really swapped the bytes
    le = BundleReader(src)
    be = BundleReader(dst)
    key = next(k for k, e in le.entries.items() if e.dtype_name == "float32" and e.size >= 8)
    e = le.entries[key]
    assert (
        le.shard_path(e.shard_id).read_bytes()[e.offset : e.offset + 4]
        == (be.shard_path(e.shard_id).read_bytes()[e.offset : e.offset + 4][::-1])
    )


# --------------------------------------------------------------------------
# Lazy shards


def test_listing_maps_no_shard_and_reading_uses_positioned_reads():
    path = fixture_path("edge_sharded")
    with CheckpointReader(path) as reader:
        infos = reader.variables()  # also decodes the object graph
        assert reader.bundle.num_shards > 1
        assert reader.bundle.mapped_shards == ()
        weight = next(v for v in infos if v.kind == "weight" and v.num_elements > 1)
        reader.read(weight.key)
        assert reader.bundle.mapped_shards == ()  # read into the array, nothing mapped
        reader.bundle.read(weight.key, mapped=True)
        assert reader.bundle.mapped_shards == (weight.extra["shard_id"],)


def test_read_returns_an_owned_writable_copy():
    with BundleReader(prefix_of("edge_dtypes")) as bundle:
        key = next(k for k, e in bundle.entries.items() if e.dtype_name == "float32")
        a = bundle.read(key)
        assert a.flags.owndata and a.flags.writeable
    a += 1  # still usable after close


# --------------------------------------------------------------------------
# Damaged bundles: clear errors naming the file and the tensor


@pytest.fixture
def dtypes_copy(tmp_path) -> Path:
    return copy_bundle(prefix_of("edge_dtypes"), tmp_path / "copy")


def _first_key(prefix: Path, dtype_name: str) -> str:
    with BundleReader(prefix) as bundle:
        return next(
            k
            for k, e in bundle.entries.items()
            if e.dtype_name == dtype_name and e.num_elements > 1
        )


def test_flipped_data_byte_fails_crc_unless_disabled(dtypes_copy):
    key = _first_key(dtypes_copy, "float32")
    with BundleReader(dtypes_copy) as bundle:
        entry = bundle.entries[key]
        shard = bundle.shard_path(entry.shard_id)
    data = bytearray(shard.read_bytes())
    data[entry.offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    with BundleReader(dtypes_copy) as bundle, pytest.raises(CorruptFileError) as err:
        bundle.read(key)
    assert "crc32c" in str(err.value) and key in str(err.value)
    assert err.value.path == str(shard)
    with BundleReader(dtypes_copy, verify_crc=False) as bundle:
        assert bundle.read(key).shape == entry.shape


def test_damaged_string_lengths(dtypes_copy):
    key = _first_key(dtypes_copy, "string")
    with BundleReader(dtypes_copy) as bundle:
        entry = bundle.entries[key]
        shard = bundle.shard_path(entry.shard_id)
    data = bytearray(shard.read_bytes())
    original = bytes(data)
    data[entry.offset] |= 0x80  # first varint length now runs on
    shard.write_bytes(bytes(data))
    with BundleReader(dtypes_copy) as bundle, pytest.raises(CorruptFileError):
        bundle.read(key)
    # every length byte continuing: a varint that never ends inside the entry
    data = bytearray(original)
    data[entry.offset : entry.offset + entry.size] = b"\xff" * entry.size
    shard.write_bytes(bytes(data))
    with BundleReader(dtypes_copy, verify_crc=False) as bundle, pytest.raises(CorruptFileError):
        bundle.read(key)


def test_flipped_index_byte_fails_block_crc(dtypes_copy):
    index = Path(f"{dtypes_copy}.index")
    data = bytearray(index.read_bytes())
    data[10] ^= 0x01
    index.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="crc32c") as err:
        BundleReader(dtypes_copy)
    assert err.value.path == str(index)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:30],  # shorter than a footer
        lambda d: d[:-8] + b"\0" * 8,  # bad magic
        lambda d: d[:-48] + b"\xff" * 40 + d[-8:],  # block handles: varints that never end
        lambda d: d[:-48] + (b"\x00\x00" + b"\x80\x80\x80\x80\x10\x01").ljust(40, b"\0") + d[-8:],
        lambda d: b"",  # empty file
    ],
    ids=["short", "magic", "endless-varint", "handle-past-end", "empty"],
)
def test_broken_table_structure(dtypes_copy, damage):
    index = Path(f"{dtypes_copy}.index")
    index.write_bytes(damage(index.read_bytes()))
    with pytest.raises(CorruptFileError):
        BundleReader(dtypes_copy)


def test_snappy_block_is_reported_unsupported(tmp_path):
    src = prefix_of("edge_dtypes")
    write_table(tmp_path / "snappy.index", read_table(Path(f"{src}.index")), compression=1)
    with pytest.raises(UnsupportedFormatError, match="snappy"):
        BundleReader(tmp_path / "snappy")


def test_table_writer_is_readable_by_tensorflow(tmp_path):
    """The test helper writes tables TensorFlow accepts (multi-block, prefix-compressed)."""
    src = prefix_of("seed_checkpoint")
    dst = rewrite_bundle(src, tmp_path / "copy")
    _, _, a = tf_values(src)
    _, _, b = tf_values(dst)
    for key, value in a.items():
        if isinstance(value, bytes):  # scalar strings come back as bytes
            assert value == b[key], key
        else:
            assert (value.dtype, value.tobytes()) == (b[key].dtype, b[key].tobytes()), key


def _edited(tmp_path: Path, key: str, **changes) -> Path:
    def edit(k: bytes, entry):
        if k == key.encode():
            for field, value in changes.items():
                if field == "dims":
                    entry.shape.ClearField("dim")
                    for d in value:
                        entry.shape.dim.add(size=d)
                else:
                    setattr(entry, field, value)

    return rewrite_bundle(prefix_of("edge_dtypes"), tmp_path / "edited", edit_entry=edit)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"offset": 10**9}, CorruptFileError),  # past the end of the shard
        ({"size": 7}, CorruptFileError),  # size != itemsize x elements
        ({"dims": [2, -3]}, CorruptFileError),  # negative dimension
        ({"dims": [2**40, 2**20]}, CorruptFileError),  # absurd element count
        ({"shard_id": 5}, CorruptFileError),  # no such shard
        ({"dtype": 20}, UnsupportedFormatError),  # resource
        ({"dtype": 21}, UnsupportedFormatError),  # variant
        ({"dtype": 99}, UnsupportedFormatError),  # unknown
    ],
)
def test_entries_are_validated_before_use(tmp_path, changes, error):
    key = _first_key(prefix_of("edge_dtypes"), "float32")
    prefix = _edited(tmp_path, key, **changes)
    with pytest.raises(error) as err, BundleReader(prefix) as bundle:
        bundle.read(key)
    assert key in str(err.value) or "dimension" in str(err.value)


def test_absurd_string_element_count_is_refused(tmp_path):
    key = _first_key(prefix_of("edge_dtypes"), "string")
    prefix = _edited(tmp_path, key, dims=[2**31, 2**31])
    with BundleReader(prefix) as bundle, pytest.raises(CorruptFileError, match="do not fit"):
        bundle.read(key)


def test_missing_shard_is_not_found(dtypes_copy):
    with BundleReader(dtypes_copy) as bundle:
        shard = bundle.shard_path(0)
    shard.unlink()
    with BundleReader(dtypes_copy) as bundle:  # listing needs no shard
        key = next(iter(bundle.entries))
        with pytest.raises(NotFoundError) as err:
            bundle.read(key)
    assert err.value.path == str(shard)


def test_header_is_checked(tmp_path):
    src = prefix_of("edge_dtypes")

    def zero_shards(header):
        header.num_shards = 0

    with pytest.raises(CorruptFileError, match="shards"):
        BundleReader(rewrite_bundle(src, tmp_path / "a", edit_header=zero_shards))

    def newer(header):
        header.version.min_consumer = 7

    with pytest.raises(UnsupportedFormatError, match="newer"):
        BundleReader(rewrite_bundle(src, tmp_path / "b", edit_header=newer))

    entries = [e for e in read_table(Path(f"{src}.index")) if e[0] != b""]
    write_table(tmp_path / "noheader.index", entries)
    with pytest.raises(CorruptFileError, match="header"):
        BundleReader(tmp_path / "noheader")


def test_unparseable_entry(tmp_path):
    src = prefix_of("edge_dtypes")
    entries = read_table(Path(f"{src}.index"))
    entries = [entries[0], (entries[1][0], b"\x0a\xff\xff\xff"), *entries[2:]]
    write_table(tmp_path / "bad.index", entries)
    with pytest.raises(CorruptFileError, match="BundleEntryProto"):
        BundleReader(tmp_path / "bad")


def test_missing_index_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        BundleReader(tmp_path / "nothing")


@pytest.mark.parametrize("seed", range(4))
def test_random_damage_raises_only_ckpt_errors(tmp_path, seed):
    """Flipped, cut or inserted bytes anywhere in a real bundle: every failure is a
    CkptToolError (with or without crc checks), never another exception."""
    rng = np.random.default_rng(seed)
    sources = [prefix_of(i) for i in ("edge_dtypes", "edge_sharded_sliced", "edge_partitioned")]
    for trial in range(25):
        src = sources[trial % len(sources)]
        prefix = copy_bundle(src, tmp_path / f"t{trial}")
        files = sorted(prefix.parent.glob(prefix.name + ".*"))
        target = files[int(rng.integers(len(files)))]
        data = bytearray(target.read_bytes())
        action = int(rng.integers(3))
        if action == 0 and data:
            for i in rng.integers(0, len(data), size=int(rng.integers(1, 5))):
                data[int(i)] = int(rng.integers(256))
        elif action == 1:
            del data[int(rng.integers(len(data) + 1)) :]
        else:
            at = int(rng.integers(len(data) + 1))
            data[at:at] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 16))).tolist())
        target.write_bytes(bytes(data))
        try:
            with BundleReader(prefix, verify_crc=bool(trial % 2)) as bundle:
                for key in bundle.entries:
                    bundle.read(key)
        except CkptToolError:
            pass
