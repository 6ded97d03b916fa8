"""The few TensorFlow / tf-keras protobuf messages ckpt-tool reads, without TensorFlow.

The descriptors are declared here in Python with only the fields we use; the
field numbers are those of TensorFlow's own .proto files (tensor_bundle.proto,
tensor_shape.proto, tensor_slice.proto, versions.proto,
trackable_object_graph.proto, saved_object_graph.proto, meta_graph.proto,
saved_model.proto) and tf-keras' saved_metadata.proto. Fields we leave out are
kept as unknown fields by the parser, so nothing breaks when files carry more.

The messages live in a private descriptor pool under a private package name,
so they never clash with TensorFlow's own classes when both are imported in
one process. DataType and Endianness enums are declared as int32: identical on
the wire, and an unknown dtype number stays a plain int instead of failing.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "ckpt_tool_private.tf"

_F = descriptor_pb2.FieldDescriptorProto
_INT32, _INT64, _UINT32 = _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32
_FIXED32, _BOOL, _STRING = _F.TYPE_FIXED32, _F.TYPE_BOOL, _F.TYPE_STRING
_MESSAGE = _F.TYPE_MESSAGE
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _msg(name: str, fields: list[tuple], nested: list | None = None, map_entry: bool = False):
    """A DescriptorProto from (name, number, type, label[, type_name[, oneof_index]])."""
    d = descriptor_pb2.DescriptorProto(name=name)
    for spec in fields:
        fname, number, ftype, label = spec[:4]
        f = d.field.add(name=fname, number=number, type=ftype, label=label)
        if len(spec) > 4 and spec[4]:
            f.type_name = f".{_PACKAGE}.{spec[4]}"
        if len(spec) > 5:
            f.oneof_index = spec[5]
    for n in nested or []:
        d.nested_type.append(n)
    if map_entry:
        d.options.map_entry = True
    return d


def _map_entry(name: str, value_type: str):
    return _msg(
        name,
        [("key", 1, _STRING, _OPTIONAL), ("value", 2, _MESSAGE, _OPTIONAL, value_type)],
        map_entry=True,
    )


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="ckpt_tool_private/tf_subset.proto", package=_PACKAGE, syntax="proto3"
    )
    add = fd.message_type.append

    # versions.proto
    add(
        _msg(
            "VersionDef",
            [
                ("producer", 1, _INT32, _OPTIONAL),
                ("min_consumer", 2, _INT32, _OPTIONAL),
                ("bad_consumers", 3, _INT32, _REPEATED),
            ],
        )
    )
    # tensor_shape.proto
    add(
        _msg(
            "TensorShapeProto",
            [
                ("dim", 2, _MESSAGE, _REPEATED, "TensorShapeProto.Dim"),
                ("unknown_rank", 3, _BOOL, _OPTIONAL),
            ],
            nested=[_msg("Dim", [("size", 1, _INT64, _OPTIONAL), ("name", 2, _STRING, _OPTIONAL)])],
        )
    )
    # tensor_slice.proto: `length` sits in a oneof so "absent" (= whole dim) is visible.
    extent = _msg(
        "Extent", [("start", 1, _INT64, _OPTIONAL), ("length", 2, _INT64, _OPTIONAL, None, 0)]
    )
    extent.oneof_decl.add(name="has_length")
    add(
        _msg(
            "TensorSliceProto",
            [("extent", 1, _MESSAGE, _REPEATED, "TensorSliceProto.Extent")],
            nested=[extent],
        )
    )
    # tensor_bundle.proto
    add(
        _msg(
            "BundleHeaderProto",
            [
                ("num_shards", 1, _INT32, _OPTIONAL),
                ("endianness", 2, _INT32, _OPTIONAL),  # enum: LITTLE = 0, BIG = 1
                ("version", 3, _MESSAGE, _OPTIONAL, "VersionDef"),
            ],
        )
    )
    add(
        _msg(
            "BundleEntryProto",
            [
                ("dtype", 1, _INT32, _OPTIONAL),  # enum DataType
                ("shape", 2, _MESSAGE, _OPTIONAL, "TensorShapeProto"),
                ("shard_id", 3, _INT32, _OPTIONAL),
                ("offset", 4, _INT64, _OPTIONAL),
                ("size", 5, _INT64, _OPTIONAL),
                ("crc32c", 6, _FIXED32, _OPTIONAL),
                ("slices", 7, _MESSAGE, _REPEATED, "TensorSliceProto"),
            ],
        )
    )
    # trackable_object_graph.proto
    object_reference = _msg(
        "ObjectReference",
        [("node_id", 1, _INT32, _OPTIONAL), ("local_name", 2, _STRING, _OPTIONAL)],
    )
    serialized_tensor = _msg(
        "SerializedTensor",
        [
            ("name", 1, _STRING, _OPTIONAL),
            ("full_name", 2, _STRING, _OPTIONAL),
            ("checkpoint_key", 3, _STRING, _OPTIONAL),
        ],
    )
    slot_reference = _msg(
        "SlotVariableReference",
        [
            ("original_variable_node_id", 1, _INT32, _OPTIONAL),
            ("slot_name", 2, _STRING, _OPTIONAL),
            ("slot_variable_node_id", 3, _INT32, _OPTIONAL),
        ],
    )
    trackable = "TrackableObjectGraph.TrackableObject"
    add(
        _msg(
            "TrackableObjectGraph",
            [("nodes", 1, _MESSAGE, _REPEATED, trackable)],
            nested=[
                _msg(
                    "TrackableObject",
                    [
                        ("children", 1, _MESSAGE, _REPEATED, f"{trackable}.ObjectReference"),
                        ("attributes", 2, _MESSAGE, _REPEATED, f"{trackable}.SerializedTensor"),
                        (
                            "slot_variables",
                            3,
                            _MESSAGE,
                            _REPEATED,
                            f"{trackable}.SlotVariableReference",
                        ),
                    ],
                    nested=[object_reference, serialized_tensor, slot_reference],
                )
            ],
        )
    )
    # saved_object_graph.proto
    add(
        _msg(
            "SavedUserObject",
            [
                ("identifier", 1, _STRING, _OPTIONAL),
                ("version", 2, _MESSAGE, _OPTIONAL, "VersionDef"),
                ("metadata", 3, _STRING, _OPTIONAL),
            ],
        )
    )
    add(
        _msg(
            "SavedVariable",
            [
                ("dtype", 1, _INT32, _OPTIONAL),
                ("shape", 2, _MESSAGE, _OPTIONAL, "TensorShapeProto"),
                ("trainable", 3, _BOOL, _OPTIONAL),
                ("name", 6, _STRING, _OPTIONAL),
            ],
        )
    )
    saved_object = _msg(
        "SavedObject",
        [
            ("children", 1, _MESSAGE, _REPEATED, f"{trackable}.ObjectReference"),
            ("slot_variables", 3, _MESSAGE, _REPEATED, f"{trackable}.SlotVariableReference"),
            ("user_object", 4, _MESSAGE, _OPTIONAL, "SavedUserObject", 0),
            ("variable", 7, _MESSAGE, _OPTIONAL, "SavedVariable", 0),
        ],
    )
    saved_object.oneof_decl.add(name="kind")
    add(saved_object)
    add(_msg("SavedObjectGraph", [("nodes", 1, _MESSAGE, _REPEATED, "SavedObject")]))
    # meta_graph.proto
    tensor_info = _msg(
        "TensorInfo",
        [
            ("name", 1, _STRING, _OPTIONAL, None, 0),
            ("dtype", 2, _INT32, _OPTIONAL),
            ("tensor_shape", 3, _MESSAGE, _OPTIONAL, "TensorShapeProto"),
        ],
    )
    tensor_info.oneof_decl.add(name="encoding")
    add(tensor_info)
    add(
        _msg(
            "SignatureDef",
            [
                ("inputs", 1, _MESSAGE, _REPEATED, "SignatureDef.InputsEntry"),
                ("outputs", 2, _MESSAGE, _REPEATED, "SignatureDef.OutputsEntry"),
                ("method_name", 3, _STRING, _OPTIONAL),
            ],
            nested=[
                _map_entry("InputsEntry", "TensorInfo"),
                _map_entry("OutputsEntry", "TensorInfo"),
            ],
        )
    )
    # graph.proto / node_def.proto: only node names and ops (a TF1 .meta file's order)
    add(_msg("NodeDef", [("name", 1, _STRING, _OPTIONAL), ("op", 2, _STRING, _OPTIONAL)]))
    add(_msg("GraphDef", [("node", 1, _MESSAGE, _REPEATED, "NodeDef")]))
    add(
        _msg(
            "MetaGraphDef",
            [
                ("graph_def", 2, _MESSAGE, _OPTIONAL, "GraphDef"),
                ("signature_def", 5, _MESSAGE, _REPEATED, "MetaGraphDef.SignatureDefEntry"),
                ("object_graph_def", 7, _MESSAGE, _OPTIONAL, "SavedObjectGraph"),
            ],
            nested=[_map_entry("SignatureDefEntry", "SignatureDef")],
        )
    )
    # saved_model.proto
    add(
        _msg(
            "SavedModel",
            [
                ("saved_model_schema_version", 1, _INT64, _OPTIONAL),
                ("meta_graphs", 2, _MESSAGE, _REPEATED, "MetaGraphDef"),
            ],
        )
    )
    # tf-keras saved_metadata.proto (keras_metadata.pb)
    add(
        _msg(
            "KerasSavedObject",
            [
                ("node_id", 2, _INT32, _OPTIONAL),
                ("node_path", 3, _STRING, _OPTIONAL),
                ("identifier", 4, _STRING, _OPTIONAL),
                ("metadata", 5, _STRING, _OPTIONAL),
            ],
        )
    )
    add(_msg("SavedMetadata", [("nodes", 1, _MESSAGE, _REPEATED, "KerasSavedObject")]))
    return fd


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())


def _cls(name: str):
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


VersionDef = _cls("VersionDef")
TensorShapeProto = _cls("TensorShapeProto")
TensorSliceProto = _cls("TensorSliceProto")
BundleHeaderProto = _cls("BundleHeaderProto")
BundleEntryProto = _cls("BundleEntryProto")
TrackableObjectGraph = _cls("TrackableObjectGraph")
SavedUserObject = _cls("SavedUserObject")
SavedVariable = _cls("SavedVariable")
SavedObject = _cls("SavedObject")
SavedObjectGraph = _cls("SavedObjectGraph")
TensorInfo = _cls("TensorInfo")
SignatureDef = _cls("SignatureDef")
NodeDef = _cls("NodeDef")
GraphDef = _cls("GraphDef")
MetaGraphDef = _cls("MetaGraphDef")
SavedModel = _cls("SavedModel")
SavedMetadata = _cls("SavedMetadata")

# BundleHeaderProto.Endianness
LITTLE = 0
BIG = 1

__all__ = [
    "BIG",
    "LITTLE",
    "BundleEntryProto",
    "BundleHeaderProto",
    "GraphDef",
    "MetaGraphDef",
    "NodeDef",
    "SavedMetadata",
    "SavedModel",
    "SavedObject",
    "SavedObjectGraph",
    "SavedUserObject",
    "SavedVariable",
    "SignatureDef",
    "TensorInfo",
    "TensorShapeProto",
    "TensorSliceProto",
    "TrackableObjectGraph",
    "VersionDef",
]
