"""Fuzzing the readers with damaged copies of real fixtures (see fuzz_harness).

`make test` runs 20 derandomized cases per target (about ten seconds in all) and
the cases earlier long runs found (REGRESSIONS). `make fuzz` runs the long fuzz:
CKPT_FUZZ_EXAMPLES random cases per target (hypothesis profile "fuzz", no
deadline, failures shrunk and saved in .hypothesis/), then prints how many cases
ended how, per target.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_harness import (
    INTERESTING,
    STRUCTURED,
    Worker,
    make_npz_sources,
    summary,
    targets,
)
from tests.structured_inputs import hdf5_layouts, object_graphs, partitioned_tensors

LONG_EXAMPLES = int(os.environ.get("CKPT_FUZZ_EXAMPLES", "0"))  # > 0: the long fuzz

settings.register_profile(
    "suite",
    max_examples=20,
    deadline=timedelta(seconds=10),
    derandomize=True,  # the same cases on every run: `make test` never flakes
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=max(LONG_EXAMPLES, 1),
    deadline=None,  # the worker's timeout bounds each case
    suppress_health_check=list(HealthCheck),
)
PROFILE = "fuzz" if LONG_EXAMPLES else "suite"
CASE_TIMEOUT = 30.0 if LONG_EXAMPLES else 15.0

_position = st.integers(min_value=0, max_value=(1 << 32) - 1)
_small = st.integers(min_value=0, max_value=255)
mutation = st.one_of(
    st.tuples(st.just("flip"), _position, _small, st.just(b"")),
    st.tuples(st.just("set"), _position, _small, st.just(b"")),
    st.tuples(st.just("truncate"), _position, st.just(0), st.just(b"")),
    st.tuples(st.just("overwrite"), _position, st.just(0), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("insert"), _position, st.just(0), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), _position, _small, st.just(b"")),
    st.tuples(st.just("splice"), _position, _small, st.just(b"")),
    st.tuples(
        st.just("integer"),
        _position,
        st.integers(min_value=0, max_value=4 * len(INTERESTING) - 1),
        st.just(b""),
    ),
)
mutations = st.lists(mutation, min_size=1, max_size=4)


@pytest.fixture(scope="module")
def fuzz_targets(tmp_path_factory):
    return targets(make_npz_sources(tmp_path_factory.mktemp("npz-sources")))


@pytest.fixture(scope="module")
def worker(fuzz_targets):
    w = Worker(list(fuzz_targets.values()), timeout=CASE_TIMEOUT)
    yield w
    w.close()
    if LONG_EXAMPLES:
        print(f"\nfuzz cases by target (worker restarts: {w.restarts}):\n{summary(w.counts)}")


def _target_names() -> list[str]:
    # targets() needs a directory for the npz sources only to build paths
    return list(targets(Path("npz-sources")))


@pytest.mark.parametrize("name", _target_names())
def test_damaged_file_gives_a_result_or_one_clear_error(worker, name: str) -> None:
    @settings(settings.get_profile(PROFILE))
    @given(ops=mutations, verify_crc=st.booleans())
    def case(ops, verify_crc):
        outcome, detail = worker.run(name, ops, verify_crc)
        assert outcome in ("ok", "error"), f"{name} {ops!r} crc={verify_crc}:\n{detail}"

    case()


# Every byte of these data files belongs to one tensor, and every tensor entry carries
# the crc32c of its bytes (for strings: of the lengths, their own crc and the bytes).
# crc32c detects every change of up to three bits in a message of this size, so with
# checking on such damage must be an error, never an "ok" read of wrong values.
CRC_COVERED_DATA = ["ckpt-data", "dtypes-data"]
_bit_flips = st.lists(
    st.tuples(_position, st.integers(min_value=0, max_value=7)),
    min_size=1,
    max_size=3,
    unique_by=lambda flip: flip[0],
)


@pytest.mark.parametrize("name", CRC_COVERED_DATA)
def test_changed_tensor_bytes_are_always_detected(worker, fuzz_targets, name: str) -> None:
    target = fuzz_targets[name]
    size = (target.source / target.damaged).stat().st_size

    @settings(settings.get_profile(PROFILE))
    @given(flips=_bit_flips)
    def case(flips):
        ops = [("flip", pos % size, bit, b"") for pos, bit in flips]
        if len({pos % size for pos, _ in flips}) < len(flips):
            return  # two flips of one byte may cancel
        outcome, detail = worker.run(name, ops, True)
        assert outcome == "error" and "crc32c" in detail, f"{name} {ops!r}: {outcome} {detail}"


STRUCTURES = {
    "object-graph": object_graphs(),
    "partitioned-slices": partitioned_tensors(),
    "hdf5-layout": hdf5_layouts(),
}


@pytest.mark.parametrize("kind", STRUCTURES)
def test_hostile_structure_gives_a_result_or_one_clear_error(worker, kind: str) -> None:
    """Well-formed files whose structure is the attack (chains, shared slice bytes,
    huge chunks, storage outside the file), under the worker's memory cap and timeout."""

    @settings(settings.get_profile(PROFILE), max_examples=LONG_EXAMPLES or 12)
    @given(spec=STRUCTURES[kind])
    def case(spec):
        outcome, detail = worker.run(STRUCTURED, spec, True)
        assert outcome in ("ok", "error"), f"{kind} {spec!r}:\n{detail}"

    case()


def test_changed_tensor_bytes_read_with_crc_checks_off(worker, fuzz_targets) -> None:
    """The counterpart: a bit flipped in a float32 weight reads (a wrong value, no error)
    with `--no-crc` and is an error with the checks on, so nothing but the crc check
    stands between the damage and an "ok" read."""
    from ckpt_tool.readers.bundle import BundleReader

    target = fuzz_targets["ckpt-data"]
    with BundleReader(target.source / target.opened) as bundle:
        entry = next(e for e in bundle.entries.values() if e.dtype == 1 and e.size >= 4)
    flip = [("flip", entry.offset + 1, 3, b"")]  # DT_FLOAT: a mantissa bit
    assert worker.run("ckpt-data", flip, False)[0] == "ok"
    outcome, detail = worker.run("ckpt-data", flip, True)
    assert outcome == "error" and "crc32c" in detail, detail


# Cases the long fuzz found, kept as regressions (each was a bug before its fix).
REGRESSIONS = [
    ("npz-compressed", [("flip", 74, 4, b"")], False),  # zlib.error from a deflated member
    ("npz-export", [("delete", 11, 0, b"")], False),  # tokenize.TokenError from a .npy header
    ("npz-export-manifest", [("delete", 11, 0, b"")], False),
    ("legacy-h5", [("insert", 52, 0, b"\x00\x00\x00\x00")], False),  # h5py KeyError, opening
    ("keras-zip", [("flip", 524828, 11, b"")], False),  # global heap: HDF5 looped forever
    ("npz-export-manifest", [("delete", 7, 1, b"")], False),  # a three-line numpy message
    ("legacy-h5", [("flip", 1009, 1, b"")], False),  # string attr turned vlen: HDF5 segfault
    ("npz-export-manifest", [("overwrite", 848, 0, b"\x00\xd8")], False),  # "\ud800" dtype
    ("npz-export-manifest", [("flip", 21, 4, b"")], False),  # SyntaxError from a dtype string
]


@pytest.mark.parametrize(("name", "ops", "verify_crc"), REGRESSIONS)
def test_cases_the_long_fuzz_found(worker, name: str, ops, verify_crc: bool) -> None:
    outcome, detail = worker.run(name, ops, verify_crc)
    assert outcome in ("ok", "error"), detail


def test_pristine_targets_read_cleanly(worker, fuzz_targets) -> None:
    """Without damage every target reads: failures under fuzz come from the damage."""
    for name in fuzz_targets:
        outcome, detail = worker.run(name, [], True)
        assert outcome == "ok", (name, detail)


def test_worker_reports_hangs_crashes_and_blow_ups(fuzz_targets) -> None:
    """The harness itself: a hang, a dying process and a huge allocation are failed
    cases (and the worker comes back), never a stuck or crashed test run."""
    w = Worker(list(fuzz_targets.values()), timeout=30.0)
    try:
        assert w.run("keras-zip", [], True)[0] == "ok"
        w.timeout = 0.5
        assert w.run("__sleep__", 5.0, True) == ("bug", "hang: no answer within 0.5 s")
        w.timeout = 30.0
        outcome, detail = w.run("__abort__", None, True)
        assert outcome == "bug" and detail.startswith("crash"), detail
        assert w.run("__allocate__", 4 << 30, True) == ("bug", "MemoryError")
        assert w.run("keras-zip", [], True)[0] == "ok"
        assert w.restarts == 2
    finally:
        w.close()


def test_mutations_are_total() -> None:
    """Every mutation applies to any input, the empty one included."""
    from tests.fuzz_harness import mutate

    assert mutate(b"abcdef", [("truncate", 2, 0, b"")]) == b"ab"
    assert mutate(b"abc", [("insert", 1, 0, b"XY")]) == b"aXYbc"
    assert mutate(b"abc", [("integer", 0, 4 * 1, b"")]) == b"\x01bc"
    ops = [(op, 7, 3, b"z") for op in ("flip", "set", "delete", "splice", "overwrite", "integer")]
    assert isinstance(mutate(b"", ops), bytes)
