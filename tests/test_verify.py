"""`verify` on every runnable fixture, and the failures it must catch."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from ckpt_tool import verify as verify_module
from ckpt_tool.compare import compare
from ckpt_tool.errors import CkptToolError
from ckpt_tool.readers import open_reader
from ckpt_tool.verify import VerifyOptions, verify
from tests.support import (
    FIXTURES,
    fixture,
    fixture_path,
    fixtures_where,
    run_cli,
    without_serving_graph,
)

RUNNABLE = [f["id"] for f in fixtures_where(runnable=True)]


def _keras_twin_config(fixture_id: str, tmp_path) -> str | None:
    """The config.json of the same model's .keras fixture, for SavedModels that take
    several inputs (a model.export() keeps no Keras config)."""
    family = fixture(fixture_id)["model"]
    twins = [f for f in fixtures_where(model=family, format="keras")]
    if len(fixture(fixture_id)["inputs"]) < 2 or fixture(fixture_id)["format"] == "keras":
        return None
    if not twins:  # e.g. BERT's TF1 graph: its names say how it is wired
        return None
    with zipfile.ZipFile(FIXTURES / twins[0]["path"]) as archive:
        target = tmp_path / "config.json"
        target.write_bytes(archive.read("config.json"))
    return str(target)


# The original runs in float32, the rebuilt graph in float64, so the outputs may differ
# by float32 rounding alone: each op rounds to half a unit in the last place (2**-24,
# 6e-8 relative), and the few dozen sums of at most 16 products, exps and divisions
# between input and output (softmax over up to 12 positions, LayerNorm) add that up to
# a few hundred units of the output's magnitude at most. So: max |error| below 1e-5 of
# max(1, max |output|), the rule tests/layers uses too. Measured worst: 2.4e-6
# (mha_axes at input 10, logits in the hundreds), every other fixture below 3.1e-7.
FLOAT32_ROUNDING = 1e-5


@pytest.mark.parametrize("fixture_id", RUNNABLE)
def test_verify_agrees_on_every_runnable_fixture(fixture_id, tmp_path, monkeypatch):
    custom = fixture(fixture_id).get("custom_objects")
    options = VerifyOptions(
        config_file=_keras_twin_config(fixture_id, tmp_path),
        scales=[0.1, 10],
        custom_objects=[str(FIXTURES / custom)] if custom else [],
    )
    compared = []  # (agreement, the original's largest |output|) for every output

    def comparing(name, actual, expected, **tolerances):
        agreement = compare(name, actual, expected, **tolerances)
        if name:  # the runs' outputs (trial readings compare unnamed)
            compared.append((agreement, float(np.max(np.abs(expected), initial=0.0))))
        return agreement

    monkeypatch.setattr(verify_module, "compare", comparing)
    report = verify(str(fixture_path(fixture_id)), options)
    assert report.passed, [a for r in report.runs for a in r.outputs]
    assert len(compared) == sum(len(r.outputs) for r in report.runs)
    for agreement, peak in compared:
        assert agreement.max_abs <= FLOAT32_ROUNDING * max(1.0, peak), (agreement, peak)
        assert agreement.cosine > 0.999999


@pytest.mark.parametrize("fixture_id", ["seed_keras", "transformer_block_keras", "mha_gate_keras"])
def test_float32_precision_and_per_layer(fixture_id):
    report = verify(
        str(fixture_path(fixture_id)), VerifyOptions(precision="float32", per_layer=True)
    )
    assert report.passed
    run = report.runs[0]
    assert run.layers and all(a.passed for a in run.layers)
    assert run.first_divergent is None


def test_user_inputs_file():
    entry = fixture("seed_keras")
    inputs = FIXTURES / entry["model"] / "inputs.npz"
    x = np.load(inputs)["x"]
    report = verify(str(fixture_path("seed_keras")), VerifyOptions(inputs_file=str(inputs)))
    assert report.passed
    assert report.runs[0].outputs[0].shape == (x.shape[0], x.shape[1], 1)
    assert report.runs[0].label == "inputs.npz"


def _swapped_npz(source_id: str, target, first: str, second: str) -> None:
    """The source's weights under their resolved names, two tensors exchanged."""
    with open_reader(fixture_path(source_id)) as reader:
        arrays = {
            i.name: np.array(reader.read(i.key)) for i in reader.variables() if i.kind == "weight"
        }
    a = next(n for n in arrays if first in n)
    b = next(n for n in arrays if second in n)
    arrays[a], arrays[b] = arrays[b], arrays[a]
    np.savez(target, **arrays)


def test_swapped_query_and_key_fail_and_per_layer_names_attention(tmp_path):
    swapped = tmp_path / "swapped.npz"
    _swapped_npz("seed_keras", swapped, "query/kernel", "key/kernel")
    model = str(fixture_path("seed_keras"))
    result = run_cli("verify", model, "--weights", str(swapped), "--per-layer", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is False
    assert report["runs"][0]["first_divergent_layer"] == "multi_head_attention"
    # the same weights unswapped pass
    same = tmp_path / "same.npz"
    _swapped_npz("seed_keras", same, "dense/bias", "dense/bias")
    assert run_cli("verify", model, "--weights", str(same)).returncode == 0


def test_swapped_weights_fail_against_anonymous_savedmodel(tmp_path):
    swapped = tmp_path / "swapped.npz"
    _swapped_npz("seed_keras3_export", swapped, "variables/0", "variables/2")
    result = run_cli("verify", str(fixture_path("seed_keras3_export")), "--weights", str(swapped))
    assert result.returncode == 1, result.stderr
    assert "FAIL" in result.stdout


def test_wrong_roles_file_fails(tmp_path):
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"variables/0": "key.kernel", "variables/2": "query.kernel"}))
    path = str(fixture_path("seed_keras3_export"))
    result = run_cli("verify", path, "--roles", str(roles))
    assert result.returncode == 1, result.stdout + result.stderr


def test_verify_says_it_executes_the_model():
    result = run_cli("verify", str(fixture_path("seed_keras")))
    assert result.returncode == 0, result.stderr
    assert "executes the model" in result.stderr


def test_bare_checkpoint_is_a_clear_error():
    result = run_cli("verify", str(fixture_path("seed_checkpoint")))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) > 20
    assert "--weights" in result.stderr


def test_multi_input_savedmodel_without_config_asks_for_one(monkeypatch):
    """When its serving graph cannot be read, a multi-input export cannot tell its
    wiring: verify asks for the config (and says why the graph was not used)."""
    from ckpt_tool import graph_trace

    def unreadable(reader, infos):
        raise graph_trace.GraphTraceError("an op the reader does not know")

    monkeypatch.setattr(graph_trace, "trace_model", unreadable)
    notes = []
    with pytest.raises(CkptToolError, match="--config"):
        verify(str(fixture_path("cross_attention_savedmodel")), VerifyOptions(), note=notes.append)
    assert any(n.startswith("the serving graph was not used (an op") for n in notes)


def test_weights_from_another_format_pass():
    """A porter's check: the .weights.h5 of the same weights against the SavedModel."""
    report = verify(
        str(fixture_path("seed_tfkeras_savedmodel")),
        VerifyOptions(weights=str(fixture_path("seed_weights_h5"))),
    )
    assert report.passed


@pytest.fixture(scope="module")
def shared_qk_export(tmp_path_factory):
    """A Keras 3 self-attention model whose query and key projections hold the same
    weights (shared-QK attention, as in Reformer), exported with `model.export()`:
    reading query as key and key as query computes exactly the same thing."""
    import keras

    keras.utils.set_random_seed(7)
    x_in = keras.Input(shape=(5, 8), name="x")
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attention")
    model = keras.Model(x_in, mha(query=x_in, value=x_in))
    rng = np.random.default_rng(7)
    for w in mha.weights:  # Keras starts biases at zero: make every bias matter
        w.assign(rng.standard_normal(tuple(w.shape)).astype(np.float32) * 0.3)
    mha._key_dense.set_weights(mha._query_dense.get_weights())
    out = tmp_path_factory.mktemp("shared_qk") / "export"
    model.export(str(out), verbose=False)
    return out


def test_numerical_tie_keeps_creation_order_and_says_so(shared_qk_export):
    report = verify(str(shared_qk_export), VerifyOptions(ignore_names=True))
    assert report.passed
    mha = report.roles.layers[0]
    assert mha.evidence == "shape+order"
    # Keras creates query, key, value, output (kernel then bias): variables/0 is the query
    assert mha.weights["query.kernel"].startswith("variables/0/")
    assert mha.weights["key.kernel"].startswith("variables/2/")
    lines = [line for line in report.settled if "cannot decide" in line]
    assert len(lines) == 1, report.settled
    assert "kept Keras's creation order" in lines[0]
    assert "query.kernel=variables/2/" in lines[0]  # the reading that tied
    assert "not needed" not in " ".join(report.settled)


def test_no_tie_reported_when_the_numbers_decide(monkeypatch):
    """Read by shape and order (its serving graph set aside), the trained seed export's
    alternatives are told apart by the numbers: creation order is confirmed, no tie."""
    without_serving_graph(monkeypatch)
    report = verify(str(fixture_path("seed_keras3_export")), VerifyOptions())
    assert report.passed
    assert not any("cannot decide" in line for line in report.settled), report.settled
    assert any("creation order agrees" in line for line in report.settled), report.settled
