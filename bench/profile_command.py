"""Profile one ckpt-tool command: where its time goes, imports included.

    python bench/profile_command.py -- list bench/.cache/blocks-12/checkpoint/ckpt-1
    python bench/profile_command.py --sort tottime --top 30 -- list P --stats
    python bench/profile_command.py --importtime -- list bench/.cache/blocks-12/checkpoint/ckpt-1

The default mode runs the command in this process under cProfile (its output goes to
/dev/null) and prints the top functions; `-o FILE` also saves the raw profile for
snakeviz/pstats. `--importtime` runs it in a child with `python -X importtime` and sums the
import time of each top-level package: start-up dominates short commands such as `list`.
Paths are shortened to the package or the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# OpenBLAS overrides slow a current numpy; the timed benchmark children run without them.
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)


def shorten(text: str) -> str:
    """Drop machine paths: keep what follows site-packages/ or the repository root."""
    text = re.sub(r"\S*/site-packages/", "", text)
    text = re.sub(r"\S*/lib/python3\.\d+/", "", text)
    return text.replace(f"{REPO}/", "")


def run_cprofile(argv: list[str], sort: str, top: int, out: str | None) -> str:
    profiler = cProfile.Profile()
    sink = open(os.devnull, "w")  # noqa: SIM115
    profiler.enable()
    try:
        with contextlib.redirect_stdout(sink):
            from ckpt_tool.cli import cli

            cli.main(args=argv, prog_name="ckpt-tool", standalone_mode=False)
    except SystemExit:
        pass
    finally:
        profiler.disable()
        sink.close()
    if out:
        profiler.dump_stats(out)
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats(sort).print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    return shorten("\n".join(lines))


def run_importtime(argv: list[str], top: int) -> str:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ckpt_tool", *argv],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    per_package: dict[str, int] = defaultdict(int)
    total = 0
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if not m:
            continue
        self_us, name = int(m.group(1)), m.group(4)
        per_package[name.split(".")[0]] += self_us
        total += self_us
    rows = sorted(per_package.items(), key=lambda kv: -kv[1])[:top]
    out = [f"imports: {total / 1000:.0f} ms in all (self time summed per top-level package)"]
    out += [f"{us / 1000:8.1f} ms  {name}" for name, us in rows]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sort", default="cumulative", help="pstats key (cumulative, tottime)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("-o", "--output", help="also save the raw cProfile data here")
    parser.add_argument("--importtime", action="store_true", help="sum import time per package")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then ckpt-tool arguments")
    args = parser.parse_args()
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        parser.error("give the ckpt-tool arguments after --")
    if args.importtime:
        print(run_importtime(argv, args.top))
    else:
        print(run_cprofile(argv, args.sort, args.top, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
