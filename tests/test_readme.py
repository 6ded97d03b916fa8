"""The README's commands run as written after `make install`, and its example outputs
are what the tool prints (numbers aside: they may differ in the last digits elsewhere)."""

from __future__ import annotations

import re
import tomllib

import pytest
from click.testing import CliRunner

from ckpt_tool.cli import cli
from tests.support import ROOT

README = (ROOT / "README.md").read_text()
COMMAND = ".venv/bin/ckpt-tool"  # where `make install` puts it (pyproject's script)
_NUMBER = re.compile(r"(?<![\w/])[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?(?![\w/])")


def _examples() -> list[tuple[str, list[str], int | None]]:
    """(command line, shown output lines, shown exit code) for every `$ ` line in a
    fenced block of the README."""
    examples = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        current = None
        for line in block.splitlines():
            if line.startswith("$ "):
                current = [line[2:], [], None]
                examples.append(current)
            elif current is not None:
                match = re.fullmatch(r"\(exit (\d+)\)", line)
                if match:
                    current[2] = int(match.group(1))
                else:
                    current[1].append(line)
    return [tuple(e) for e in examples]


EXAMPLES = _examples()


def test_one_way_to_call_the_tool():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ckpt-tool"] == "ckpt_tool.cli:main"  # what pip puts in .venv/bin
    assert "make install" in README and "$(VENV)" in (ROOT / "Makefile").read_text()
    assert len(EXAMPLES) >= 7
    for command, _, _ in EXAMPLES:
        assert command.startswith(f"{COMMAND} "), command
    for block in re.findall(r"```(?:sh|console)?\n(.*?)```", README, re.S):
        for line in block.splitlines():  # no bare `ckpt-tool ...` that is not on PATH
            assert not re.match(r"(\$ )?ckpt-tool ", line), line


def _normal(line: str) -> list[str]:
    return _NUMBER.sub("#", line).split()


@pytest.mark.parametrize(
    "command,shown,code", EXAMPLES, ids=[c.split(" ", 1)[1][:60] for c, _, _ in EXAMPLES]
)
def test_readme_example_runs_as_written(command, shown, code, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository
    args = command.split()[1:]
    if "-o" in args:  # an export: write it elsewhere
        args[args.index("-o") + 1] = str(tmp_path / args[args.index("-o") + 1])
    result = CliRunner().invoke(cli, args, catch_exceptions=False, env={"COLUMNS": None})
    assert result.exit_code == (code or 0), result.stderr
    actual = [_normal(line) for line in result.stdout.splitlines()]
    expected = [_normal(line) for line in shown]
    # The shown lines appear in order; `...` stands for lines left out.
    position = 0
    for line in expected:
        if line == ["..."]:
            continue
        while position < len(actual) and actual[position] != line:
            position += 1
        assert position < len(actual), f"not printed (in this order): {' '.join(line)}"
        position += 1
    if shown and ["..."] not in expected:
        assert len(actual) == len(expected), result.stdout
