"""Reports people can read: every table fits 80, 100 and 120 columns without cutting a
number or a row's name, piped output is plain text, a closed pipe ends quietly, the
verdict explains itself where the cause is known, and the tool says what it chose."""

from __future__ import annotations

import fcntl
import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from ckpt_tool import console, console_diff, console_verify
from ckpt_tool.cli import cli
from ckpt_tool.diff import diff_readers
from ckpt_tool.listing import attach_roles, build_listing, tensor_stats
from ckpt_tool.readers import open_reader
from ckpt_tool.verify import VerifyOptions, verify
from tests.perturb import write_weights_npz
from tests.support import FIXTURES, ROOT, fixture_path, without_serving_graph

WIDTHS = (80, 100, 120)
LONG_NAMES = FIXTURES / "keras_hub" / "gpt2" / "gpt2_export"  # Keras 3 export of GPT-2
SEED_KERAS = fixture_path("seed_keras")


@pytest.fixture
def render_at(monkeypatch):
    """Call render() with stdout a terminal of `width` columns (None: piped, no
    COLUMNS); returns the text printed."""

    def run(render, width: int | None) -> str:
        buffer = io.StringIO()
        if width is None:
            monkeypatch.delenv("COLUMNS", raising=False)
            fake = Console(file=buffer, highlight=False, soft_wrap=False, width=200)
        else:
            monkeypatch.setenv("COLUMNS", str(width))
            fake = Console(
                file=buffer, width=width, highlight=False, force_terminal=True, color_system=None
            )
        monkeypatch.setattr(console, "out", fake)
        render()
        return buffer.getvalue()

    return run


def _assert_fits(text: str, width: int) -> None:
    for line in text.splitlines():
        assert len(line) <= width, f"{len(line)} > {width}: {line!r}"
        assert "…" not in line, line
        assert line == line.rstrip(), f"trailing spaces: {line!r}"


def _has_token(text: str, token: str) -> bool:
    """`token` printed whole: not cut, not glued to a neighbour."""
    return re.search(rf"(?<![\w.+-]){re.escape(token)}(?![\w.+-])", text) is not None


@pytest.fixture(scope="module")
def gpt2_listing():
    with open_reader(LONG_NAMES) as reader:
        listing = build_listing(reader)
        attach_roles(reader, listing)
        for t in listing.tensors:
            t.stats, t.stats_read = tensor_stats(reader.read(t.info.key)), True
    return listing


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(
    "roles,stats", [(False, False), (True, False), (False, True), (True, True)]
)
def test_listing_fits_every_width(gpt2_listing, render_at, width, roles, stats):
    text = render_at(
        lambda: console.render_listing(gpt2_listing, show_roles=roles, show_stats=stats), width
    )
    _assert_fits(text, width)
    for t in gpt2_listing.tensors:
        assert _has_token(text, t.info.name), t.info.name  # the row's name, whole
        if roles:
            assert _has_token(text, t.role["role"])
        if stats:
            for key in ("min", "max", "mean", "std"):
                assert _has_token(text, f"{t.stats[key]:.4g}"), (t.info.name, key)


def test_piped_listing_is_plain_and_unpadded(gpt2_listing, render_at):
    text = render_at(lambda: console.render_listing(gpt2_listing, show_roles=True), None)
    lines = text.splitlines()
    assert "\x1b" not in text
    assert all(line == line.rstrip() for line in lines)
    # natural widths: the widest line is a table row, not padding to a terminal width
    rows = [line for line in lines if "float32" in line]
    assert max(map(len, lines)) == max(map(len, rows))
    assert len(rows) == len(gpt2_listing.tensors)  # one line per tensor, nothing stacked


@pytest.fixture(scope="module")
def seed_report():
    return verify(str(SEED_KERAS), VerifyOptions(scales=[0.1, 1000.0], per_layer=True))


@pytest.mark.parametrize("width", WIDTHS)
def test_verify_report_fits_with_one_row_per_input_set(seed_report, render_at, width):
    text = render_at(lambda: console_verify.render_verify(seed_report), width)
    _assert_fits(text, width)
    runs = seed_report.runs
    assert [r.label for r in runs] == ["random normal, seed 0", "constant 0.1", "constant 1000"]
    assert text.count("outputs, ") == 1  # one agreement table for every input set
    for run in runs:
        assert _has_token(text, run.label.split(", ")[0].split(" ")[-1])
        for a in run.outputs + (run.layers or []):
            for token in (f"{a.max_abs:.3g}", f"{a.max_rel:.3g}", f"{a.cosine:.9f}"):
                assert _has_token(text, token), (run.label, a.name, token)
    for layer in seed_report.roles.layers:  # the role table, every variable whole
        assert _has_token(text, layer.name)
        for key in layer.weights.values():
            assert _has_token(text, seed_report.variables[key].name)


@pytest.fixture(scope="module")
def anonymous_diff():
    with open_reader(SEED_KERAS) as a, open_reader(fixture_path("seed_keras3_export")) as b:
        by_name = diff_readers(a, b)
        by_role = diff_readers(a, b, by_role=True)
    return by_name, by_role


@pytest.mark.parametrize("width", WIDTHS)
def test_diff_fits_and_suggests_by_role(anonymous_diff, render_at, width):
    by_name, by_role = anonymous_diff
    assert by_name.only_a and by_name.only_b and not by_name.pairs
    text = render_at(lambda: console_diff.render_diff(by_name), width)
    _assert_fits(text, width)
    assert "--by-role" in text
    text = render_at(lambda: console_diff.render_diff(by_role, show_all=True), width)
    _assert_fits(text, width)
    assert by_role.ok and "--by-role" not in text
    for p in by_role.pairs:
        assert _has_token(text, p.a.name) and _has_token(text, p.b.name)


def test_closed_pipe_ends_quietly_with_the_sigpipe_code():
    """`ckpt-tool list X | head -1` through a small pipe: the rest cannot be written."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: smaller than the listing
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("COLUMNS", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "ckpt_tool", "list", str(LONG_NAMES), "--roles", "--stats"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = reader.readline()
    stderr = child.communicate(timeout=120)[1]
    assert first.startswith(str(LONG_NAMES).encode())
    assert child.returncode == 141, stderr
    assert stderr == b""


def _invoke(*args: str):
    """In-process, piped (no COLUMNS): natural widths."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"COLUMNS": None})


def test_verify_of_a_missing_path_runs_nothing(tmp_path):
    missing = tmp_path / "no_such_model.keras"
    result = _invoke("verify", str(missing))
    assert result.exit_code == 2
    assert "executes the model" not in result.stderr
    assert result.stderr.strip() == f"error: {missing}: no such file or directory"


def test_an_error_from_running_the_model_names_the_file(tmp_path):
    wrong = tmp_path / "wrong_shape.npy"
    np.save(wrong, np.ones((2, 5), np.float32))  # the seed model takes (B, 2, 3)
    result = _invoke("verify", str(SEED_KERAS), "--inputs", str(wrong))
    assert result.exit_code == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {SEED_KERAS}: "), error


def test_scales_say_once_when_no_input_can_be_scaled():
    """Token ids and a bool attention mask: a constant run would repeat the random one."""
    path = fixture_path("mha_masks_keras")
    report = verify(str(path), VerifyOptions(scales=[1.0, 10.0]))
    assert [r.label for r in report.runs] == ["random normal, seed 0, masks padding"]
    notes = [h for h in report.hints if h.startswith("--scales")]
    assert len(notes) == 1 and "token_ids (token ids)" in notes[0]
    assert "attention_mask" in notes[0]


def test_float32_rounding_is_named_and_the_exit_code_stays_honest(tmp_path):
    strict = VerifyOptions(atol=1e-9, rtol=1e-9, scales=[1000.0])
    report = verify(str(SEED_KERAS), strict)
    assert not report.passed  # the tolerance asked for is not met
    (hint,) = [h for h in report.hints if "float32 rounding" in h]
    gap = float(re.search(r"--atol (\S+) accepts it", hint).group(1))
    # What the hint claims holds: that atol accepts the float64 rebuild, and the float32
    # rebuild agrees with the original at least as well.
    loose = verify(str(SEED_KERAS), VerifyOptions(atol=gap * 1.01, rtol=1e-9, scales=[1000.0]))
    assert loose.passed
    as32 = verify(str(SEED_KERAS), VerifyOptions(**{**strict.__dict__, "precision": "float32"}))
    assert max(a.max_abs for r in as32.runs for a in r.outputs) <= gap * 1.01
    # A wrong weight is not rounding.
    copy = tmp_path / "perturbed.npz"
    write_weights_npz("seed_keras", copy, perturb="value/kernel")
    wrong = verify(str(SEED_KERAS), VerifyOptions(weights=str(copy)))
    assert not wrong.passed
    assert not any("rounding" in h for h in wrong.hints)


def test_a_causal_mask_the_file_lost_is_named(monkeypatch):
    """The export's serving graph states the causal mask and it passes; where the graph
    cannot be read, nothing in the weights says so, and the failure names the mask."""
    path = str(FIXTURES / "causal" / "causal_export")
    assert _invoke("verify", path).exit_code == 0
    without_serving_graph(monkeypatch)
    result = _invoke("verify", path)
    assert result.exit_code == 1
    assert "use_causal_mask=True in attention the rebuild agrees" in result.stdout


def test_a_directory_of_checkpoints_says_which_it_reads_and_step_picks_another(tmp_path):
    import tensorflow as tf

    weight = tf.Variable(np.zeros(3, np.float32))
    checkpoint = tf.train.Checkpoint(weight=weight)
    for step in (1, 2, 3):
        weight.assign(np.full(3, step, np.float32))
        checkpoint.save(str(tmp_path / "ckpt"))
    latest = _invoke("list", str(tmp_path), "--stats")
    assert latest.exit_code == 0
    assert "reading ckpt-3" in latest.stderr and "ckpt-1, ckpt-2, ckpt-3" in latest.stderr
    assert "(TensorFlow checkpoint ckpt-3)" in latest.stdout
    stats_row = r"weight\S*\s+\[3\]\s+float32\s+3\s+12 B\s+{0}\s+{0}\s+{0}\s+0\s+0\s+0$"
    assert re.search(stats_row.format(3), latest.stdout, re.M), latest.stdout
    second = _invoke("list", str(tmp_path), "--step", "1", "--stats")
    assert second.exit_code == 0 and f"{tmp_path / 'ckpt-1'}" in second.stdout
    assert re.search(stats_row.format(1), second.stdout, re.M), second.stdout
    missing = _invoke("list", str(tmp_path), "--step", "7")
    assert missing.exit_code == 2
    assert (
        missing.stderr.strip()
        == f"error: {tmp_path}: no checkpoint of step 7 (steps here: 1, 2, 3)"
    )


@pytest.mark.parametrize(
    "path,label",
    [
        ("seed_keras3_export", "SavedModel"),
        ("seed_checkpoint", "TensorFlow checkpoint"),
        ("seed_keras", "Keras .keras file"),
        ("seed_weights_h5", "Keras .weights.h5 file"),
    ],
)
def test_the_detected_format_is_named(path, label):
    result = _invoke("list", str(fixture_path(path)))
    assert result.stdout.splitlines()[0] == f"{fixture_path(path)} ({label})"


def test_copy_of_checkpoint_directory_without_state_file_is_refused(tmp_path):
    """Several checkpoints and no `checkpoint` file: nothing to call the latest."""
    for step in (1, 2):
        for part in ("index", "data-00000-of-00001"):
            shutil.copy(
                FIXTURES / "seed" / "seed_checkpoint" / f"ckpt-1.{part}",
                tmp_path / f"ckpt-{step}.{part}",
            )
    result = _invoke("list", str(tmp_path))
    assert result.exit_code == 2 and str(tmp_path) in result.stderr
    assert _invoke("list", str(tmp_path), "--step", "2").exit_code == 0
