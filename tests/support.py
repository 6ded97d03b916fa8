"""Shared test helpers: the fixture index and running the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@cache
def fixture_index() -> list[dict]:
    """Every fixture from fixtures/fixtures.json (written by fixtures/generate.py)."""
    return json.loads((FIXTURES / "fixtures.json").read_text())["fixtures"]


def fixture(fixture_id: str) -> dict:
    for entry in fixture_index():
        if entry["id"] == fixture_id:
            return entry
    raise KeyError(f"no fixture {fixture_id!r} in fixtures/fixtures.json")


def fixture_path(fixture_id: str) -> Path:
    return FIXTURES / fixture(fixture_id)["path"]


def fixtures_where(**conditions: object) -> list[dict]:
    """Fixtures whose fields equal the given values, e.g. fixtures_where(format="keras")."""
    return [f for f in fixture_index() if all(f.get(k) == v for k, v in conditions.items())]


def fixture_ids(**conditions: object) -> list[str]:
    return [f["id"] for f in fixtures_where(**conditions)]


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m ckpt_tool ARGS` in a fresh process and capture its output."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_tool", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=600,
    )


def fixture_custom_objects() -> dict:
    """The custom Keras classes that some fixtures need to load (imported once, by the
    same code path `verify --custom-objects` uses), as a custom_objects mapping."""
    from ckpt_tool.original import import_custom_objects

    sources = sorted({f["custom_objects"] for f in fixture_index() if f.get("custom_objects")})
    return import_custom_objects([str(FIXTURES / s) for s in sources])


def sigint_as_on_a_terminal() -> None:
    """`preexec_fn` for a child that must take Ctrl-C: a job a shell starts in the
    background inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@cache
def hostile_model_writes_its_file() -> bool:
    """Positive control for every "the hostile model never runs" test: executing its
    serving signature with TensorFlow, in a scratch working directory, does write
    `pwned.txt`. So a test that finds no such file shows the model did not run (and
    not that the fixture is harmless). Runs once per test run."""
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    old = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            loaded = tf.saved_model.load(str(fixture_path("hostile_savedmodel")))
            loaded.signatures["serving_default"](x=tf.zeros((1, 3)))
        finally:
            os.chdir(old)
        return (Path(scratch) / "pwned.txt").exists()


def without_serving_graph(monkeypatch) -> None:
    """As for a SavedModel whose serving graph cannot be read (stripped, unknown ops):
    roles then come from names, shapes and order, as for a plain checkpoint."""
    from ckpt_tool import graph_trace

    def unreadable(reader, infos):
        raise graph_trace.GraphTraceError("an op the reader does not know")

    monkeypatch.setattr(graph_trace, "trace_model", unreadable)
