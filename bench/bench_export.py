"""Benchmark `ckpt-tool export` against `cp` of the same data, and its peak memory.

Uses the 12-block BERT-base encoder made by bench/generate.py when it is cached in
bench/.cache/ (checkpoint with Adam slots, and .weights.h5); otherwise writes its own
BERT-base-sized checkpoint (12 blocks, d=768, weights only, ~340 MB) with
tf.train.Checkpoint of plain tf.Variables, cached in bench/.cache/export-bert-base/.

Every row is the median of several cold runs (a new process each time; warm page
cache: each file is read once first). Peak RSS is the child's ru_maxrss (it counts the
pages of memory-mapped files the process touched); `anon` is its sampled peak RssAnon,
the process's own memory.

    python bench/bench_export.py            # 5 runs each
    python bench/bench_export.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
sys.path.insert(0, str(BENCH))

from measure import Measurement, measure  # noqa: E402

RSS_GOAL_MB = 200
TIME_GOAL = 2.0  # export within 2x of cp (per byte)
D, FFN, BLOCKS = 768, 3072, 12  # BERT-base


def generated_model(blocks: int) -> dict[str, Path] | None:
    """The model of bench/generate.py with `blocks` blocks when it is cached and complete."""
    manifest = CACHE / "manifest.json"
    if not manifest.exists():
        return None
    entry = json.loads(manifest.read_text()).get("models", {}).get(str(blocks))
    if not entry:
        return None
    if not all(
        (CACHE / rel).is_file() and (CACHE / rel).stat().st_size == size
        for rel, size in entry["files"].items()
    ):
        return None
    return {name: CACHE / rel for name, rel in entry["formats"].items()}


def own_checkpoint() -> Path:
    """A BERT-base-sized TF2 checkpoint of plain tf.Variables (weights only)."""
    out = CACHE / "export-bert-base"
    prefix = out / "ckpt-1"
    if Path(str(prefix) + ".index").exists():
        return prefix
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(1234)
    variables: dict[str, tf.Variable] = {}

    def var(name: str, *shape: int) -> None:
        variables[name] = tf.Variable(rng.standard_normal(shape, dtype=np.float32) * 0.02)

    for b in range(BLOCKS):
        p = f"block_{b}"
        for part in ("query", "key", "value"):
            var(f"{p}/attention/{part}/kernel", D, 12, 64)
            var(f"{p}/attention/{part}/bias", 12, 64)
        var(f"{p}/attention/output/kernel", 12, 64, D)
        var(f"{p}/attention/output/bias", D)
        var(f"{p}/ffn_in/kernel", D, FFN)
        var(f"{p}/ffn_in/bias", FFN)
        var(f"{p}/ffn_out/kernel", FFN, D)
        var(f"{p}/ffn_out/bias", D)
        for norm in ("norm_1", "norm_2"):
            var(f"{p}/{norm}/gamma", D)
            var(f"{p}/{norm}/beta", D)
    var("embeddings/word", 30522, D)
    root = tf.Module()
    for name, v in variables.items():  # nested modules give path-like checkpoint names
        node = root
        *path, leaf = name.split("/")
        for part in path:
            if not hasattr(node, part):
                setattr(node, part, tf.Module())
            node = getattr(node, part)
        setattr(node, leaf, v)
    out.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(model=root).write(str(prefix))
    return prefix


def data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(path.parent.glob(path.name + ".data-*"))


def warm(files: list[Path]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


def sources_for(blocks: int) -> dict[str, tuple[Path, list[str]]]:
    model = generated_model(blocks)
    if model is not None:
        return {
            f"{blocks} blocks checkpoint": (model["checkpoint"], []),
            f"{blocks} blocks ckpt +optim": (model["checkpoint"], ["--include-optimizer"]),
            f"{blocks} blocks .weights.h5": (model["weights-h5"], []),
        }
    if blocks != BLOCKS:
        print(f"no cached {blocks}-block model (run bench/generate.py); skipped", file=sys.stderr)
        return {}
    return {"own tf.Variable checkpoint": (own_checkpoint(), [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--blocks", type=int, nargs="+", default=[BLOCKS])
    args = parser.parse_args(argv)

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(var, None)
    tool = [sys.executable, "-m", "ckpt_tool"]
    startup = measure("startup", [*tool, "--version"], args.runs, cwd=str(REPO), env=env)
    rows = []
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        out = Path(tmp) / "out.npz"
        copies = Path(tmp) / "copies"

        def clean() -> None:
            out.unlink(missing_ok=True)
            shutil.rmtree(copies, ignore_errors=True)
            copies.mkdir()

        for blocks in args.blocks:
            for label, (src, extra) in sources_for(blocks).items():
                files = data_files(src)
                warm(files)
                copy = ["cp", *map(str, files), str(copies)]
                cp = measure(f"cp {label}", copy, args.runs, before_each=clean)
                synced = f"{' '.join(copy)} && sync {copies}/*"  # paths have no spaces
                cp_sync = measure(
                    f"cp+sync {label}", ["sh", "-c", synced], args.runs, before_each=clean
                )
                exp = measure(
                    f"export {label}",
                    [*tool, "export", str(src), "-o", str(out), *extra],
                    args.runs,
                    cwd=str(REPO),
                    env=env,
                    before_each=clean,
                )
                if not (cp.ok and cp_sync.ok and exp.ok):
                    print(
                        f"{label}: failed: {cp.error or cp_sync.error or exp.error}",
                        file=sys.stderr,
                    )
                    return 1
                written = _npz_tensor_bytes(out)  # the last run's output
                data = sum(f.stat().st_size for f in files)
                rows.append((label, data, written, cp, cp_sync, exp))
                clean()
    _print_table(rows, startup, args.runs)
    worst_rss = max((r[5].peak_rss_mb for r in rows), default=0)
    return 0 if worst_rss < RSS_GOAL_MB else 1


def _npz_tensor_bytes(path: Path) -> int:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return sum(i.file_size for i in zf.infolist() if not i.filename.startswith("__"))


def _print_table(rows: list[tuple], startup: Measurement, runs: int) -> None:
    print(f"export benchmark (median of {runs} cold runs, warm page cache)")
    head = (
        f"{'source':<28} {'data MB':>8} {'out MB':>7} {'cp s':>6} {'cp+sync s':>9} "
        f"{'export s':>9} {'x time':>7} {'x per byte':>10} {'RSS MB':>7} {'anon MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for label, data, written, cp, cp_sync, exp in rows:
        ratio = exp.median / cp.median
        per_byte = ratio * data / written if written else float("nan")
        print(
            f"{label:<28} {data / 1e6:>8.0f} {written / 1e6:>7.0f} {cp.median:>6.2f} "
            f"{cp_sync.median:>9.2f} {exp.median:>9.2f} {ratio:>7.2f} {per_byte:>10.2f} "
            f"{exp.peak_rss_mb:>7.0f} {exp.peak_anon_mb:>8.0f}"
        )
    print(f"`ckpt-tool --version` alone (interpreter + imports): {startup.median:.2f} s")
    print(
        f"goals: export within {TIME_GOAL:g}x of cp per byte; peak RSS < {RSS_GOAL_MB} MB.\n"
        "x time = export s / cp s; x per byte = (export s / MB written) / (cp s / MB copied);\n"
        "cp copies the whole data file (a checkpoint's shard also holds two Adam slots),\n"
        "export writes the weights (all of them with +optim) and fsyncs its output;\n"
        "RSS counts the touched pages of the reader's memory-mapped shard, anon does not."
    )


if __name__ == "__main__":
    sys.exit(main())
