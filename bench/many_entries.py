"""`list` of an index with very many entries (default 1,000,000): time and peak memory.

    python bench/many_entries.py [--entries N] [--keep DIR]

Writes a TF1-style bundle (one float32[1] tensor per entry, keys `layer_<i>/w<j>`,
about 32 MB of index) with the test suite's bundle writer, then runs
`ckpt-tool list` on it in a fresh process, output to /dev/null, and prints the
wall time and the peak resident memory. The goal: under 5 s for 1,000,000 entries.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hostile_bundles import float_entry, write_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="write the bundle here and keep it")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="many-entries-"))
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "many"
    if not Path(f"{prefix}.index").exists():
        entries = [
            float_entry(f"layer_{i // 10}/w{i % 10}", np.array([i], np.float32))
            for i in range(args.entries)
        ]
        write_bundle(prefix, entries)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ckpt_tool", "list", str(prefix)],
        stdout=subprocess.DEVNULL,
        check=True,
        cwd=REPO,
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"list of {args.entries:,} entries: {seconds:.1f} s, peak {peak:.0f} MB")


if __name__ == "__main__":
    main()
