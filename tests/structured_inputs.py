"""Structure-aware hostile inputs for the fuzzer: valid containers, hostile structure.

Byte mutations rarely produce a well-formed file whose *structure* is the attack
(an object graph that is a 40,000-node chain, slices that share bytes, an HDF5
dataset with 1 GiB chunks or external storage). These builders take a plain,
picklable spec drawn by hypothesis (test_fuzz) and write such a file; the fuzz
worker then runs the library on it under its memory cap and timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from ckpt_tool.readers.bundle import encode_slice_key
from tests.hostile_bundles import DT_FLOAT, Entry, float_entry, graph_checkpoint, write_bundle

# --------------------------------------------------------------------------
# Object graphs: any shape of nodes and edges (chains, cycles, fans, dangling ids)


@st.composite
def object_graphs(draw) -> dict[str, Any]:
    """{"kind": "graph", "children": [[(name, child id)]], "variables": [node ids]}."""
    shape = draw(st.sampled_from(["chain", "random", "fan", "cycle"]))
    n = draw(st.integers(min_value=1, max_value=3000 if shape == "chain" else 300))
    names = st.sampled_from(["layer", "variables", "_layers", "kernel", "a.b", "x/y", "", "é"])
    children: list[list[tuple[str, int]]] = [[] for _ in range(n)]
    if shape in ("chain", "cycle"):
        for i in range(n - 1):
            children[i].append((f"c{i}", i + 1))
        if shape == "cycle":
            children[n - 1].append(("back", draw(st.integers(0, n - 1))))
    elif shape == "fan":
        width = draw(st.integers(1, 8))
        for i in range(1, n):
            children[max(0, (i - 1) // width)].append((f"f{i}", i))
            if draw(st.booleans()):  # a second parent: many paths to one node
                children[draw(st.integers(0, i - 1))].append((draw(names), i))
    else:
        edges = draw(
            st.lists(
                st.tuples(st.integers(0, n - 1), names, st.integers(-2, n + 2)), max_size=4 * n
            )
        )
        for parent, name, child in edges:
            children[parent].append((name, child))
    variables = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=64, unique=True))
    return {"kind": "graph", "children": children, "variables": variables}


# --------------------------------------------------------------------------
# Partitioned tensors: slices in any place, some pointing at another slice's bytes


@st.composite
def partitioned_tensors(draw) -> dict[str, Any]:
    """{"kind": "partitioned", "shape": (rows, cols), "slices": [(start, length, alias)]}:
    row slices; alias is None (own bytes) or the index of a slice whose bytes it uses."""
    rows = draw(st.integers(1, 64))
    cols = draw(st.sampled_from([1, 3, 1 << 14]))
    slices = []
    for i in range(draw(st.integers(1, 12))):
        start = draw(st.integers(-1, rows))
        length = draw(st.integers(-1, rows + 1))
        alias = draw(st.none() | st.integers(0, max(i - 1, 0))) if i else None
        slices.append((start, length, alias))
    return {"kind": "partitioned", "shape": (rows, cols), "slices": slices}


def _write_partitioned(prefix: Path, spec: dict[str, Any]) -> Path:
    rows, cols = spec["shape"]
    extents = [((start, length), (0, -1)) for start, length, _ in spec["slices"]]
    entries = [Entry(b"w", DT_FLOAT, (rows, cols), slices=extents)]
    written: list[Entry] = []
    for (start, length, alias), ext in zip(spec["slices"], extents, strict=True):
        height = max(0, min(rows, start + length) - max(start, 0)) if length != -1 else rows
        e = float_entry("w", np.full((height, cols), len(written), np.float32))
        e.key = encode_slice_key("w", ext)
        if alias is not None and alias < len(written):
            e.data, e.same_bytes_as = None, written[alias]
        written.append(e)
    entries.extend(dict((e.key, e) for e in written).values())  # one entry per key
    return write_bundle(prefix, entries)


# --------------------------------------------------------------------------
# HDF5 layouts: chunk shapes, filters, fill values, external and virtual storage


@st.composite
def hdf5_layouts(draw) -> dict[str, Any]:
    """{"kind": "hdf5", ...}: one weight dataset of a legacy Keras `.h5`, laid out any way."""
    shape = tuple(draw(st.lists(st.integers(0, 64), min_size=0, max_size=3)))
    layout = draw(st.sampled_from(["contiguous", "chunked", "compact", "external", "virtual"]))
    chunks = None
    if layout == "chunked":
        chunks = tuple(draw(st.sampled_from([1, 7, 1 << 10, 1 << 22])) for _ in shape) or None
        for i in reversed(range(len(chunks or ()))):  # HDF5 refuses chunks of 4 GiB or more
            if int(np.prod(chunks, dtype=np.int64)) * 4 < 1 << 32:
                break
            chunks = (*chunks[:i], 1, *chunks[i + 1 :])
    return {
        "kind": "hdf5",
        "shape": shape,
        "layout": layout if shape or layout != "chunked" else "contiguous",
        "chunks": chunks,
        "resizable": draw(st.booleans()),
        "gzip": draw(st.booleans()),
        "write": draw(st.booleans()),  # False: no chunk written, fill values only
        "link": draw(st.sampled_from(["hard", "soft", "external"])),
    }


def _write_hdf5(path: Path, spec: dict[str, Any]) -> Path:
    import h5py

    shape, layout = spec["shape"], spec["layout"]
    outside = path.parent / "outside.bin"
    outside.write_bytes(b"\x3f" * 4096)
    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [b"dense"]
        layer = g.create_group("dense")
        layer.attrs["weight_names"] = [b"dense/kernel:0"]
        kwargs: dict[str, Any] = {"shape": shape, "dtype": "float32"}
        n = int(np.prod(shape, dtype=np.int64))
        if layout == "chunked" and spec["chunks"]:
            kwargs["chunks"] = spec["chunks"]
            # chunks larger than the data are allowed only for resizable datasets
            if spec["resizable"] or any(c > d for c, d in zip(spec["chunks"], shape, strict=True)):
                kwargs["maxshape"] = tuple(None for _ in shape)
            if spec["gzip"]:
                kwargs["compression"] = "gzip"
        elif layout == "external":
            kwargs["external"] = [(str(outside), 0, max(4 * n, 1))]
        if layout == "virtual":
            src = path.parent / "virtual-source.h5"
            with h5py.File(src, "w") as s:
                s["x"] = np.ones(shape, np.float32)
            vl = h5py.VirtualLayout(shape=shape, dtype="float32")
            vl[...] = h5py.VirtualSource(str(src), "x", shape=shape)
            layer.create_virtual_dataset("dense/kernel:0", vl)
        elif spec["link"] == "external":
            with h5py.File(path.parent / "linked.h5", "w") as s:
                s["x"] = np.ones(shape, np.float32)
            layer.create_group("dense")
            layer["dense/kernel:0"] = h5py.ExternalLink(str(path.parent / "linked.h5"), "x")
        elif spec["link"] == "soft":
            ds = f.create_dataset("elsewhere", **kwargs)
            if spec["write"] and layout != "external" and n:
                ds[...] = np.arange(n, dtype=np.float32).reshape(shape)
            layer.create_group("dense")
            layer["dense/kernel:0"] = h5py.SoftLink("/elsewhere")
        else:
            ds = layer.create_dataset("dense/kernel:0", **kwargs)
            if spec["write"] and layout != "external" and n:
                ds[...] = np.arange(n, dtype=np.float32).reshape(shape)
    return path


# --------------------------------------------------------------------------


def structured_inputs() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(object_graphs(), partitioned_tensors(), hdf5_layouts())


def build(directory: Path, spec: dict[str, Any]) -> Path:
    """Write the file a spec describes into `directory` (empty); the path to open."""
    directory.mkdir(parents=True, exist_ok=True)
    if spec["kind"] == "graph":
        return graph_checkpoint(directory / "ckpt", spec["children"], spec["variables"])
    if spec["kind"] == "partitioned":
        return _write_partitioned(directory / "ckpt", spec)
    return _write_hdf5(directory / "model.h5", spec)
