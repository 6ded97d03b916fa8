"""CheckpointReader: paths, names, kinds, order, signatures and configs, checked
against what TensorFlow, tf-keras and Keras themselves read from the same files."""

from __future__ import annotations

import json
import os
import shutil
from collections import deque
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2
from tensorflow.python.saved_model import loader_impl
from tf_keras.protobuf import saved_metadata_pb2

from ckpt_tool.errors import CkptToolError, CorruptFileError, NotFoundError, UnsupportedFormatError
from ckpt_tool.readers import open_reader
from ckpt_tool.readers.base import BOOKKEEPING, OPTIMIZER, WEIGHT
from ckpt_tool.readers.checkpoint import CheckpointReader, resolve
from tests.readers.bundle_tools import copy_bundle, rewrite_bundle
from tests.support import (
    fixture,
    fixture_custom_objects,
    fixture_path,
    fixtures_where,
    hostile_model_writes_its_file,
)

CHECKPOINTS = fixtures_where(format="checkpoint")
CHECKPOINT_IDS = [f["id"] for f in CHECKPOINTS]
ANONYMOUS = {
    "variables",
    "_all_variables",
    "trainable_variables",
    "non_trainable_variables",
    "keras_api",
    "_variables",
    "_trainable_variables",
}


def prefix_of(fixture_id: str) -> Path:
    path = fixture_path(fixture_id)
    return path / "variables" / "variables" if fixture(fixture_id)["kind"] == "savedmodel" else path


def tf_reader(fixture_id: str):
    return tf.train.load_checkpoint(str(prefix_of(fixture_id)))


def tf_object_graph(fixture_id: str) -> trackable_object_graph_pb2.TrackableObjectGraph:
    """The object graph as TensorFlow's own reader and protobuf classes decode it."""
    data = tf_reader(fixture_id).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    return trackable_object_graph_pb2.TrackableObjectGraph.FromString(data)


def owner_of(graph, key: str) -> int:
    for i, node in enumerate(graph.nodes):
        if any(a.checkpoint_key == key for a in node.attributes):
            return i
    raise KeyError(key)


def follow(graph, path: str) -> int | None:
    """The node a '/'-joined path of local names leads to from node 0, or None."""
    node = 0
    for part in path.split("/"):
        nxt = [c.node_id for c in graph.nodes[node].children if c.local_name == part]
        if not nxt:
            return None
        node = nxt[0]
    return node


def first_named_path(graph, target: int) -> str | None:
    """Breadth-first from node 0 over children in listed order, avoiding anonymous lists."""
    queue = deque([(0, ())])
    seen = {0}
    while queue:
        node, path = queue.popleft()
        if node == target:
            return "/".join(path)
        for c in graph.nodes[node].children:
            if c.local_name not in ANONYMOUS and c.node_id not in seen:
                seen.add(c.node_id)
                queue.append((c.node_id, (*path, c.local_name)))
    return None


def assert_same(ours: np.ndarray, theirs, what: str) -> None:
    if ours.dtype == object:
        assert [bytes(x) for x in ours.ravel()] == [
            bytes(x) for x in np.asarray(theirs, dtype=object).ravel()
        ], what
    else:
        theirs = np.asarray(theirs)
        assert (ours.dtype, ours.shape) == (theirs.dtype, theirs.shape), what
        assert ours.tobytes() == theirs.tobytes(), what


class _Readers(dict):
    """fixture id -> CheckpointReader, opened on first use and kept for the module."""

    def __missing__(self, fixture_id: str) -> CheckpointReader:
        self[fixture_id] = CheckpointReader(fixture_path(fixture_id))
        return self[fixture_id]


@pytest.fixture(scope="module")
def readers():
    opened = _Readers()
    yield opened
    for r in opened.values():
        r.close()


# --------------------------------------------------------------------------
# Every variable TensorFlow lists, with its shape, dtype and value


@pytest.mark.parametrize("fixture_id", CHECKPOINT_IDS)
def test_variables_match_tensorflow(readers, fixture_id):
    reader = readers[fixture_id]
    ref = tf_reader(fixture_id)
    shapes = ref.get_variable_to_shape_map()
    dtypes = ref.get_variable_to_dtype_map()
    infos = reader.variables()
    assert {v.key for v in infos} == set(shapes)
    assert sorted(v.order for v in infos) == list(range(len(infos)))
    assert len({v.name for v in infos}) == len(infos), "names are unique"
    for v in infos:
        assert v.shape == tuple(shapes[v.key]), v.key
        assert v.dtype == dtypes[v.key].name, v.key
        value = ref.get_tensor(v.key)
        assert_same(reader.read(v.key), value, v.key)
        assert_same(reader.read(v.name), value, v.name)  # the name reads the same tensor
        assert v.nbytes >= 0 and v.extra["shard_id"] >= 0


@pytest.mark.parametrize(
    "fixture_id",
    # TF1 checkpoints and TF1 SavedModels hold no object graph: their keys are names
    [i for i in CHECKPOINT_IDS if fixture(i)["kind"] != "tf1-checkpoint" and "tf1" not in i],
)
def test_names_and_aliases_are_paths_in_tensorflows_object_graph(readers, fixture_id):
    graph = tf_object_graph(fixture_id)
    for v in readers[fixture_id].variables():
        if v.key == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        node = owner_of(graph, v.key)
        assert v.extra["node_id"] == node
        # TensorFlow's own path for the key is always among the name and aliases
        primary = v.key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
        if ".OPTIMIZER_SLOT" not in primary:
            assert primary in (v.name, *v.aliases)
        # every alias that looks like a path really leads to this node
        for alias in (v.name, *v.aliases):
            reached = follow(graph, alias)
            assert reached in (None, node), (v.key, alias)
        # the first path that avoids anonymous lists is offered
        named = first_named_path(graph, node)
        if named:
            assert named in (v.name, *v.aliases), (v.key, named)


def test_tfkeras_seed_savedmodel_names(readers):
    """variables/0 is the query kernel: named by the SavedVariable name, aliased by
    the layer path TensorFlow's object graph holds."""
    reader = readers["seed_tfkeras_savedmodel"]
    key = "variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    info = next(v for v in reader.variables() if v.key == key)
    assert "multi_head_attention/query/kernel" in info.name
    saved = loader_impl.parse_saved_model(str(fixture_path("seed_tfkeras_savedmodel")))
    graph = tf_object_graph("seed_tfkeras_savedmodel")
    node = owner_of(graph, key)
    assert info.name == saved.meta_graphs[0].object_graph_def.nodes[node].variable.name
    layer_path = first_named_path(graph, node)
    assert layer_path.endswith("_query_dense/kernel")
    assert layer_path in info.aliases
    assert reader.read(layer_path).tobytes() == reader.read(key).tobytes()


def test_tfkeras_functional_alias_and_layer_facts(readers):
    reader = readers["seed_tfkeras_functional_savedmodel"]
    info = next(v for v in reader.variables() if v.key == "variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    graph = tf_object_graph("seed_tfkeras_functional_savedmodel")
    assert first_named_path(graph, owner_of(graph, info.key)) in info.aliases
    assert "layer_with_weights-0/_query_dense/kernel" in info.aliases
    assert info.extra["layer_class"] == "EinsumDense"


def test_slot_variables_point_at_their_variable(readers):
    reader = readers["seed_tfkeras_checkpoint"]
    infos = {v.key: v for v in reader.variables()}
    slots = [v for v in infos.values() if "slot_of" in v.extra]
    assert slots
    graph = tf_object_graph("seed_tfkeras_checkpoint")
    refs = {
        s.slot_variable_node_id: (s.original_variable_node_id, s.slot_name)
        for node in graph.nodes
        for s in node.slot_variables
    }
    for slot in slots:
        original = infos[slot.extra["slot_of"]]
        assert slot.kind == OPTIMIZER and original.kind == WEIGHT
        assert refs[slot.extra["node_id"]] == (original.extra["node_id"], slot.extra["slot_name"])
        assert slot.shape == original.shape
        assert slot.order > original.order


@pytest.mark.parametrize(
    "fixture_id", ["seed_tfkeras_savedmodel", "seed_checkpoint", "seed_keras3_savedmodel"]
)
def test_kinds(readers, fixture_id):
    infos = readers[fixture_id].variables()
    by_key = {v.key: v for v in infos}
    assert by_key["_CHECKPOINTABLE_OBJECT_GRAPH"].kind == BOOKKEEPING
    for v in infos:
        if v.key.startswith(("save_counter/", "keras_api/metrics/")):
            assert v.kind == BOOKKEEPING, v.key
        if "OPTIMIZER_SLOT" in v.key or v.key.startswith("optimizer/_variables/"):
            assert v.kind == OPTIMIZER, v.key
    kinds = [v.kind for v in sorted(infos, key=lambda v: v.order)]
    assert kinds == sorted(kinds, key=[WEIGHT, OPTIMIZER, BOOKKEEPING].index)


# --------------------------------------------------------------------------
# Weights in the model's own order, equal to what Keras loads


def _keras_weights(family: str) -> list[np.ndarray]:
    """The weights of the family's .keras fixture as Keras 3 loads them, in model order."""
    keras_files = [f for f in fixtures_where(format="keras") if f["model"] == family]
    model = keras.saving.load_model(
        fixture_path(keras_files[0]["id"]), compile=False, custom_objects=fixture_custom_objects()
    )
    return [np.asarray(w.numpy()) for w in model.weights]


KERAS_FAMILIES = {f["model"] for f in fixtures_where(format="keras")}


@pytest.mark.parametrize(
    "fixture_id", [f["id"] for f in CHECKPOINTS if f["model"] in KERAS_FAMILIES]
)
def test_weights_in_model_order_equal_keras(readers, fixture_id):
    """Kind WEIGHT and `order` give exactly the Keras model's weights, in its order."""
    expected = _keras_weights(fixture(fixture_id)["model"])
    weights = sorted(
        (v for v in readers[fixture_id].variables() if v.kind == WEIGHT), key=lambda v: v.order
    )
    assert [v.shape for v in weights] == [w.shape for w in expected]
    for v, w in zip(weights, expected, strict=True):
        assert readers[fixture_id].read(v.key).tobytes() == w.tobytes(), v.name


def test_export_duplicates_are_marked_and_equal(readers):
    infos = readers["seed_keras3_export"].variables()
    dups = [v for v in infos if "duplicate_of" in v.extra]
    assert len(dups) == sum(1 for v in infos if v.kind == WEIGHT)
    ref = tf_reader("seed_keras3_export")
    for v in dups:
        assert v.key.startswith("_all_variables/") and v.kind == BOOKKEEPING
        assert ref.get_tensor(v.key).tobytes() == ref.get_tensor(v.extra["duplicate_of"]).tobytes()


def test_tf1_names_are_keys_in_creation_order(readers):
    reader = readers["bert_tf1"]
    infos = sorted(reader.variables(), key=lambda v: v.order)
    assert all(v.name == v.key for v in infos)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.import_meta_graph(f"{prefix_of('bert_tf1')}.meta")
        created = [v.op.name for v in tf.compat.v1.global_variables()]
    weights = [v.key for v in infos if v.kind == WEIGHT]
    assert weights == [n for n in created if n in set(weights)]
    assert {v.key for v in infos if v.kind == OPTIMIZER} == {"global_step"}


# --------------------------------------------------------------------------
# SavedModel signatures and Keras config


@pytest.mark.parametrize(
    "fixture_id", ["seed_tfkeras_savedmodel", "seed_keras3_export", "cross_attention_savedmodel"]
)
def test_signatures_match_tensorflow(readers, fixture_id):
    loaded = tf.saved_model.load(str(fixture_path(fixture_id)))
    ours = readers[fixture_id].signatures()
    assert set(ours) == set(loaded.signatures)
    for name, fn in loaded.signatures.items():
        inputs = fn.structured_input_signature[1]
        assert [s.name for s in ours[name].inputs] == sorted(inputs)
        for spec in ours[name].inputs:
            ref = inputs[spec.name]
            assert spec.dtype == ref.dtype.name
            assert spec.shape == tuple(ref.shape.as_list())
        outputs = fn.structured_outputs
        assert [s.name for s in ours[name].outputs] == sorted(outputs)
        for spec in ours[name].outputs:
            assert spec.shape == tuple(outputs[spec.name].shape.as_list())


def test_signature_inputs_match_fixture_index(readers):
    for f in CHECKPOINTS:
        if f["kind"] != "savedmodel" or not f["inputs"]:
            continue
        sigs = readers[f["id"]].signatures()
        specs = {s.name: s for sig in sigs.values() for s in sig.inputs}
        for inp in f["inputs"]:
            assert list(specs[inp["name"]].shape) == inp["shape"], f["id"]
            assert specs[inp["name"]].dtype == inp["dtype"], f["id"]


def test_model_config_is_tfkeras_metadata(readers):
    path = fixture_path("seed_tfkeras_functional_savedmodel") / "keras_metadata.pb"
    meta = saved_metadata_pb2.SavedMetadata.FromString(path.read_bytes())
    root = json.loads(next(n.metadata for n in meta.nodes if n.node_path == "root"))
    config = readers["seed_tfkeras_functional_savedmodel"].model_config()
    assert config == {"class_name": root["class_name"], "config": root["config"]}
    assert config["class_name"] == "Functional"
    assert readers["seed_keras3_export"].model_config() is None
    assert readers["bert_tf1"].model_config() is None
    assert readers["bert_tf1"].signatures() == {}


def test_hostile_savedmodel_is_never_run(readers, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reader = CheckpointReader(fixture_path("hostile_savedmodel"))
    for v in reader.variables():
        reader.read(v.key)
    reader.signatures()
    reader.close()
    assert not (tmp_path / "pwned.txt").exists()
    assert hostile_model_writes_its_file()  # positive control: run by TensorFlow, it does


# --------------------------------------------------------------------------
# Paths a user may give


def test_every_way_to_name_a_checkpoint(tmp_path):
    prefix = prefix_of("seed_checkpoint")
    shard = next(prefix.parent.glob(prefix.name + ".data-*"))
    directory = prefix.parent
    for path in (prefix, Path(f"{prefix}.index"), shard, directory, directory / "checkpoint"):
        assert CheckpointReader.sniff(path), path
        assert resolve(path) == (prefix, None), path
        assert isinstance(open_reader(path), CheckpointReader)
    sm = fixture_path("seed_tfkeras_savedmodel")
    for path in (sm, sm / "saved_model.pb"):
        assert CheckpointReader.sniff(path)
        assert resolve(path) == (sm / "variables" / "variables", sm)


def test_state_file_absolute_relative_and_moved(tmp_path):
    src = prefix_of("seed_checkpoint")
    work = tmp_path / "run"
    work.mkdir()
    copy_bundle(src, work / "ckpt-7")
    (work / "checkpoint").write_text('model_checkpoint_path: "ckpt-7"\n')
    assert resolve(work) == (work / "ckpt-7", None)
    (work / "checkpoint").write_text(
        f'model_checkpoint_path: "{work / "ckpt-7"}"\nall_model_checkpoint_paths: "ckpt-7"\n'
    )
    assert resolve(work) == (work / "ckpt-7", None)
    moved = tmp_path / "moved"
    shutil.move(work, moved)  # the state file still names the old absolute path
    assert resolve(moved) == (moved / "ckpt-7", None)
    (moved / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    with pytest.raises(NotFoundError, match="ckpt-9"):
        resolve(moved)


def test_paths_that_are_not_checkpoints(tmp_path):
    with pytest.raises(NotFoundError):
        CheckpointReader(tmp_path / "missing")
    with pytest.raises(UnsupportedFormatError):
        CheckpointReader(tmp_path)  # empty directory
    keras_file = fixture_path("seed_keras")
    assert not CheckpointReader.sniff(keras_file)
    assert not CheckpointReader.sniff(tmp_path)
    (tmp_path / "fake.index").write_bytes(b"not a table" * 10)
    assert not CheckpointReader.sniff(tmp_path / "fake.index")
    assert not CheckpointReader.sniff(tmp_path / "nothing.data-00000-of-00001")


def test_unknown_names_are_not_found(readers):
    with pytest.raises(NotFoundError):
        readers["seed_checkpoint"].read("no/such/variable")


def test_damaged_saved_model_pb_and_object_graph(tmp_path):
    sm = tmp_path / "sm"
    shutil.copytree(fixture_path("seed_tfkeras_savedmodel"), sm)
    (sm / "saved_model.pb").write_bytes(b"\x12\xff\xff\xff\xff")
    with pytest.raises(CorruptFileError, match=r"saved_model\.pb"):
        CheckpointReader(sm).variables()

    def scramble(key: bytes, entry) -> None:
        if key == b"_CHECKPOINTABLE_OBJECT_GRAPH":
            entry.shape.dim.add(size=1)  # no longer a scalar

    prefix = rewrite_bundle(prefix_of("seed_checkpoint"), tmp_path / "ck", edit_entry=scramble)
    with pytest.raises(CorruptFileError):
        CheckpointReader(prefix).variables()


@pytest.mark.parametrize("fixture_id", ["seed_tfkeras_savedmodel", "seed_checkpoint"])
def test_damaged_object_graph_raises_only_ckpt_errors(tmp_path, fixture_id):
    """Bytes changed inside the object graph (crc checks off, so the damage reaches
    the graph decoder) or saved_model.pb: only CkptToolError escapes."""
    rng = np.random.default_rng(7)
    source = fixture_path(fixture_id)
    with CheckpointReader(source) as reader:
        entry = reader.bundle.entries["_CHECKPOINTABLE_OBJECT_GRAPH"]
        shard_name = reader.bundle.shard_path(entry.shard_id).relative_to(source.parent)
    for trial in range(30):
        copy = tmp_path / f"t{trial}"
        shutil.copytree(source.parent, copy)
        shard = copy / shard_name
        data = bytearray(shard.read_bytes())
        for i in rng.integers(entry.offset + 4, entry.offset + entry.size, size=4):
            data[int(i)] = int(rng.integers(256))
        shard.write_bytes(bytes(data))
        model_pb = copy / source.name / "saved_model.pb"
        if model_pb.exists() and trial % 2:
            pb = bytearray(model_pb.read_bytes())
            pb[int(rng.integers(len(pb)))] = int(rng.integers(256))
            model_pb.write_bytes(bytes(pb))
        try:
            with CheckpointReader(copy / source.name, verify_crc=False) as reader:
                for v in reader.variables():
                    reader.read(v.name)
                reader.signatures()
        except CkptToolError:
            pass
