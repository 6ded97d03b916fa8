"""`verify --plot`: the figure holds the panels asked for, drawn from the real numbers
(the errors against Keras's own outputs, Keras's own attention scores), and the files
are valid PNG, SVG and HTML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import keras
import matplotlib.image
import numpy as np
import pytest

from ckpt_tool.plot import build_figure, write_plot
from ckpt_tool.verify import VerifyOptions, verify
from tests.support import fixture_path
from tests.test_bad_inputs import assert_one_line_error, invoke

BLOCK = fixture_path("transformer_block_keras")
BLOCK_SAVEDMODEL = fixture_path("transformer_block_savedmodel")
LAYERS = [
    "attention",
    "attention_add",
    "attention_norm",
    "ffn_in",
    "ffn_out",
    "ffn_add",
    "ffn_norm",
]


@pytest.fixture(scope="module")
def keras_report():
    return verify(str(BLOCK), VerifyOptions(per_layer=True, keep_arrays=True))


@pytest.fixture(scope="module")
def savedmodel_report():
    return verify(str(BLOCK_SAVEDMODEL), VerifyOptions(keep_arrays=True))


def axes_by_title(fig) -> dict[str, object]:
    return {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_title()}


def test_panels_of_a_keras_model_with_per_layer(keras_report) -> None:
    fig = build_figure(keras_report, per_layer=True)
    titles = set(axes_by_title(fig))
    assert titles == {
        "output_0: error distribution",
        "output_0: where the largest errors are",
        "largest errors",
        "error per layer (along the depth of the model)",
        "attention: original attention",
        "attention: rebuild attention",
        "attention: |difference|",
    }
    assert "error per layer (along the depth of the model)" not in axes_by_title(
        build_figure(keras_report, per_layer=False)
    )


def test_error_panels_show_the_errors_against_keras(keras_report) -> None:
    """The error map is |rebuild - Keras| element for element; the histogram counts
    every element; the largest errors are listed by their index."""
    arrays = keras_report.arrays
    (x,) = arrays.inputs
    expected = np.asarray(keras.saving.load_model(BLOCK)(x, training=False), np.float64)
    error = np.abs(arrays.actual[0] - expected)
    axes = axes_by_title(build_figure(keras_report))
    shown = np.asarray(axes["output_0: where the largest errors are"].images[0].get_array())
    np.testing.assert_allclose(shown, error.reshape(-1, 8), rtol=1e-6, atol=1e-12)
    histogram = axes["output_0: error distribution"]
    counted = sum(patch.get_height() for patch in histogram.patches)
    assert counted + np.count_nonzero(error == 0) == error.size
    listed = axes["largest errors"].texts[0].get_text()
    first = np.unravel_index(np.argmax(error), error.shape)
    assert listed.startswith(f"1. [{','.join(map(str, first))}]")


def test_per_layer_panel_follows_the_depth(keras_report) -> None:
    ax = axes_by_title(build_figure(keras_report, per_layer=True))[
        "error per layer (along the depth of the model)"
    ]
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
    max_line = next(line for line in ax.get_lines() if line.get_label() == "max abs")
    layers = keras_report.runs[0].layers
    assert list(max_line.get_ydata()) == [a.max_abs for a in layers]


def test_attention_maps_are_keras_scores_and_the_rebuild(keras_report) -> None:
    arrays = keras_report.arrays
    (x,) = arrays.inputs
    layer = keras.saving.load_model(BLOCK).get_layer("attention")
    _, scores = layer(x, x, return_attention_scores=True, training=False)
    scores = np.asarray(scores)
    axes = axes_by_title(build_figure(keras_report))
    title = axes["attention: original attention"].get_title()
    head = int(title.rsplit("head ", 1)[1])
    original = np.asarray(axes["attention: original attention"].images[0].get_array())
    rebuild = np.asarray(axes["attention: rebuild attention"].images[0].get_array())
    np.testing.assert_array_equal(original, scores[0, head])
    np.testing.assert_allclose(rebuild, scores[0, head], atol=1e-6)
    assert rebuild.shape == (x.shape[1], x.shape[1])


def test_savedmodel_says_its_attention_maps_are_not_available(savedmodel_report) -> None:
    axes = axes_by_title(build_figure(savedmodel_report))
    original = axes["attention: original attention"]
    assert original.get_title().endswith("not available")
    assert "does not expose its attention probabilities" in original.texts[0].get_text()
    assert axes["attention: rebuild attention"].images


@pytest.mark.parametrize("suffix", [".png", ".html"])  # .svg: test_cli_writes_the_plot
def test_files_are_valid(keras_report, tmp_path: Path, suffix: str) -> None:
    out = write_plot(keras_report, tmp_path / f"agreement{suffix}", per_layer=True)
    data = out.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        image = matplotlib.image.imread(out)
        assert image.shape[0] > 1000 and image.shape[1] == 1200
    else:
        text = data.decode()
        assert text.startswith("<!DOCTYPE html>") and "PASS" in text
        svg = text[text.index("<svg") : text.index("</svg>") + len("</svg>")]
        assert ET.fromstring(svg).tag.endswith("svg") and "error per layer" in svg
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_cli_refuses_a_bad_plot_target_before_running(tmp_path: Path) -> None:
    out = tmp_path / "agreement.jpg"
    code, _, stderr = invoke(["verify", str(BLOCK), "--plot", str(out)])
    assert_one_line_error(code, stderr, out, ("--plot writes",))
    assert not out.exists()


def test_cli_writes_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "seed.svg"
    code, _, stderr = invoke(["verify", str(fixture_path("seed_keras")), "--plot", str(out)])
    assert code == 0, stderr
    assert f"wrote {out}" in stderr
    assert ET.parse(out).getroot().tag.endswith("svg")


def test_api_figure_draws_the_same_panels(keras_report) -> None:
    from ckpt_tool import api

    titles = set(axes_by_title(api.figure(keras_report)))
    assert "error per layer (along the depth of the model)" in titles  # the report has layers
    assert "attention: original attention" in titles


@pytest.mark.parametrize(
    ("fixture_id", "why"),
    [
        ("mha_masks_keras", "carry masks that re-calling it would drop"),
        ("mha_axes_keras", "no single (T, S) map"),
    ],
)
def test_attention_maps_that_cannot_be_drawn_faithfully_say_why(fixture_id, why) -> None:
    report = verify(str(fixture_path(fixture_id)), VerifyOptions(keep_arrays=True))
    fig = build_figure(report)
    originals = [ax for ax in fig.axes if "original attention" in ax.get_title()]
    assert originals
    for ax in originals:
        assert not ax.images  # nothing drawn that is not the original's own
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert why in texts
