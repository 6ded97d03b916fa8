"""The memory budget holds for the number of variables a file claims.

A bundle index spends a few bytes per variable; what `list`, `export` and `diff`
keep per variable is a kilobyte or more. A small file claiming very many variables
is refused in one line (file name and problem, exit 2, nothing written) before the
per-variable work, and realistic counts are not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpt_tool.cli import cli
from ckpt_tool.readers import open_reader
from ckpt_tool.readers.budget import (
    BUDGET_VARIABLE,
    MEMORY_FLOOR,
    OverBudgetError,
    allowance,
    check_variable_count,
)
from tests.hostile_bundles import graph_checkpoint, many_entries_bundle
from tests.support import FIXTURES, fixture, fixture_ids

ENTRIES = 100_000  # about 3 MB of index; listing or exporting them all exceeds 256 MiB


def run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} escaped: {result.exception}")
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    return many_entries_bundle(tmp_path_factory.mktemp("many") / "many", ENTRIES)


@pytest.fixture(autouse=True)
def default_budget(monkeypatch) -> None:
    monkeypatch.delenv(BUDGET_VARIABLE, raising=False)


def assert_refused(
    code: int, stdout: str, stderr: str, named: str, work: str, count: int = ENTRIES
) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert named in lines[0], lines[0]
    assert f"{count:,} variables" in lines[0] and f"`{work}`" in lines[0], lines[0]
    assert "memory budget" in lines[0] and BUDGET_VARIABLE in lines[0], lines[0]
    assert "Traceback" not in stderr + stdout


def test_export_of_very_many_variables_is_refused_and_writes_nothing(many, tmp_path):
    out = tmp_path / "out" / "x.npz"
    out.parent.mkdir()
    assert_refused(*run(["export", str(many), "-o", str(out)]), str(many), "export")
    assert list(out.parent.iterdir()) == []  # no output, no temporary file


def test_export_to_safetensors_is_refused_too(many, tmp_path):
    out = tmp_path / "x.safetensors"
    assert_refused(*run(["export", str(many), "-o", str(out)]), str(many), "export")
    assert not out.exists()


@pytest.mark.parametrize(("options", "work"), [([], "diff"), (["--by-role"], "diff --by-role")])
def test_diff_of_very_many_variables_is_refused(many, options, work):
    code, stdout, stderr = run(["diff", *options, str(many), str(many)])
    assert_refused(code, stdout, stderr, f"{many} and {many}", work, 2 * ENTRIES)


@pytest.mark.parametrize(
    ("options", "work"),
    [(["--json"], "list --json"), (["--tree"], "list"), (["--stats"], "list")],
)
def test_per_variable_listing_of_very_many_variables_is_refused(many, options, work):
    assert_refused(*run(["list", *options, str(many)]), str(many), work)


def test_lower_budget_refuses_before_any_record_is_made(many, monkeypatch, tmp_path):
    """CKPT_TOOL_MEMORY_BUDGET sets the floor; here the records alone do not fit, so the
    refusal comes from the index's count, before variables() (`at least`)."""
    monkeypatch.setenv(BUDGET_VARIABLE, "128M")
    with open_reader(many) as reader:
        with pytest.raises(OverBudgetError, match="at least"):
            check_variable_count(reader.path, *reader.claimed_variables(), "export")
        assert reader._variables is None  # no VariableInfo was made
    code, stdout, stderr = run(["export", str(many), "-o", str(tmp_path / "x.npz")])
    assert_refused(code, stdout, stderr, str(many), "export")
    assert "at least" in stderr and "budget of 128 MiB" in stderr


def test_a_higher_budget_allows_more(monkeypatch):
    check = (f"{ENTRIES:,} variables", ENTRIES, 4, "export")
    with pytest.raises(OverBudgetError):
        check_variable_count(*check, selected=ENTRIES)
    monkeypatch.setenv(BUDGET_VARIABLE, "1G")
    assert allowance(0) == 1 << 30
    check_variable_count(*check, selected=ENTRIES)
    monkeypatch.setenv(BUDGET_VARIABLE, "lots")
    with pytest.raises(OverBudgetError.__base__, match=BUDGET_VARIABLE):
        allowance(0)


def test_a_large_tensor_raises_the_budget_with_it():
    """max(256 MiB, 2x the largest tensor): a file whose largest tensor is 1 GiB may
    keep the records of this many variables."""
    check_variable_count("x", ENTRIES, 1 << 30, "export", selected=ENTRIES)
    with pytest.raises(OverBudgetError):
        check_variable_count("x", ENTRIES, MEMORY_FLOOR // 2, "export", selected=ENTRIES)


# --------------------------------------------------------------------------
# Positive controls: what is realistic is not refused


def test_a_piped_list_of_very_many_variables_is_made_column_by_column(many):
    """The column-wise listing keeps no record per variable: it is not refused."""
    code, stdout, stderr = run(["list", str(many)])
    assert code == 0, stderr
    assert f"{ENTRIES} tensors" in stdout


def test_filtered_out_variables_cost_only_their_records(many, tmp_path):
    """Of 100,000 claimed variables, export the 10 a filter selects: the records of the
    others fit in the budget, only the selected ones take export's full cost."""
    out = tmp_path / "few.npz"
    code, _, stderr = run(["export", str(many), "-o", str(out), "--filter", "layer_7/*"])
    assert code == 0, stderr
    assert "10 arrays" in stderr
    assert out.is_file()


def test_a_large_training_checkpoint_fits():
    """20,000 weights with two Adam slots each (60,000 entries): more than the largest
    models ported (a 12-block BERT training checkpoint has ~600 entries)."""
    weights, entries = 20_000, 60_000
    check_variable_count("a", entries, 4 << 20, "list", selected=weights)
    check_variable_count("a", entries, 4 << 20, "list --json", selected=weights)
    check_variable_count("a", entries, 4 << 20, "export", selected=weights)
    check_variable_count("a and b", 2 * entries, 4 << 20, "diff")
    # pairing by role keeps each side's roles too: 40,000 entries a side fit
    check_variable_count("a and b", 2 * 40_000, 4 << 20, "diff --by-role")


@pytest.mark.parametrize("fixture_id", fixture_ids(format="checkpoint"))
def test_claimed_variables_are_what_the_checkpoint_lists(fixture_id):
    """The count and largest size taken from the index's columns (no records) are
    those of variables()."""
    with open_reader(FIXTURES / fixture(fixture_id)["path"]) as reader:
        claimed = reader.claimed_variables()
        infos = reader.variables()
    assert claimed == (len(infos), max(i.nbytes for i in infos))
    check_variable_count(fixture_id, *claimed, "export", selected=len(infos))


def test_a_wide_object_graph_is_refused_before_its_names_are_resolved(tmp_path, monkeypatch):
    """A root with 20,000 children, each a variable: resolving the object graph's names
    costs about a listed row per variable, so the count is checked with every variable
    as a row before that work starts, and the refusal holds almost nothing."""
    import tracemalloc

    count = 20_000
    children = [[(f"c{i}", i + 1) for i in range(count)]] + [[] for _ in range(count)]
    prefix = graph_checkpoint(tmp_path / "wide", children, list(range(1, count + 1)))
    # between what the variables alone cost and what they cost listed
    monkeypatch.setenv(BUDGET_VARIABLE, "96M")
    tracemalloc.start()
    try:
        code, stdout, stderr = run(["list", str(prefix)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_refused(code, stdout, stderr, "wide", "list", count=count + 1)  # + the graph
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB: names were resolved first"
    monkeypatch.setenv(BUDGET_VARIABLE, "160M")  # positive control: it fits
    code, stdout, stderr = run(["list", str(prefix)])
    assert code == 0, stderr
    assert "c19999" in stdout
