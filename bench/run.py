"""ckpt-tool benchmarks: whole processes, cold (a new process per run), medians and ratios
against a reference measured in the same run.

    python bench/run.py                  # everything: 1, 4, 12, 24 blocks, 5 runs
    python bench/run.py --quick          # 1 and 12 blocks, 3 runs
    python bench/run.py --only list      # one section (list, stats, export, diff, verify, scaling)

Generates the models first when bench/.cache/ lacks them (bench/generate.py), prints each
section's tables as it finishes and writes bench/RESULTS.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import generate  # noqa: E402
import machine  # noqa: E402
from measure import Measurement, Run, last_error_line, measure, run_once  # noqa: E402
from report import Goal, Section, Table, fmt_mb, fmt_ratio, fmt_s, goals_table  # noqa: E402

SECTIONS = ("list", "stats", "export", "diff", "verify", "scaling")
# The SavedModel lists as fast as the checkpoint (the same reader) and its TensorFlow
# reference costs as much again: `--savedmodel` adds it.
LIST_FORMATS = ("checkpoint", "keras", "weights-h5")
STATS_FORMATS = ("checkpoint", "weights-h5")
LIST_SPEEDUP_GOAL = 20.0  # ckpt-tool list vs tf.train.list_variables, 12-block checkpoint
LIST_NUMPY_GOAL = 3.0  # ckpt-tool list (checkpoint) vs `python -c "import numpy"`
H5_WALK_GOAL = 1.0  # list .keras / .weights.h5 at least as fast as a plain h5py walk
FLAT_GOAL = 1.5  # "nearly flat": list time at the largest size / at 1 block
STATS_CAT_GOAL = 3.0  # list --stats per byte vs cat per byte
EXPORT_CP_GOAL = 1.5  # export checkpoint -> npz per byte vs cp per byte
EXPORT_H5_GOAL = 2.0  # export .keras / .weights.h5 time vs cp of the file
EXPORT_RSS_GOAL_MB = 200.0
DIFF_CAT_GOAL = 3.0  # diff A B vs cat of both files
VERIFY_TIME_GOAL = 1.3  # whole verify process vs TensorFlow alone (load + two calls)
VERIFY_MEMORY_GOAL = 1.5
FORWARD_GOAL = 1.2  # NumPy float32 forward vs Keras on tf.function, at every size
TIMEOUT = 300.0

# The references: what a user would run without ckpt-tool. Paths come in as argv[1].
TF_LIST = "import sys, tensorflow as tf; tf.train.list_variables(sys.argv[1])"
H5_LIST = """\
import io, sys, zipfile, h5py
found = []
def visit(name, obj):
    if isinstance(obj, h5py.Dataset):
        found.append((name, obj.shape, obj.dtype))
path = sys.argv[1]
if path.endswith(".keras"):  # as Keras does: the weights member read into memory
    with zipfile.ZipFile(path) as zf:
        data = io.BytesIO(zf.read("model.weights.h5"))
    with h5py.File(data, "r") as f:
        f.visititems(visit)
else:
    with h5py.File(path, "r") as f:
        f.visititems(visit)
"""


@dataclass
class Context:
    blocks: list[int]
    runs: int
    python: str
    ckpt_tool: list[str]
    env: dict[str, str]  # for reference processes: the environment as given
    numpy_env: dict[str, str]  # for ckpt-tool / NumPy processes: OpenBLAS overrides removed
    manifest: dict
    results: dict[str, dict] = field(default_factory=dict)  # section -> raw measurements
    warmed: set = field(default_factory=set)  # ckpt-tool commands already run once

    @property
    def tool_env(self) -> dict[str, str]:
        """For ckpt-tool commands: numpy_env with bytecode caching on, as an installed
        package has it (PYTHONDONTWRITEBYTECODE would recompile ckpt-tool's modules in
        every run); the cache goes to bench/.cache/pycache, not into the source tree."""
        env = {k: v for k, v in self.numpy_env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        if "PYTHONDONTWRITEBYTECODE" in self.numpy_env:
            env["PYTHONPYCACHEPREFIX"] = str(generate.CACHE / "pycache")
        return env

    def model(self, blocks: int) -> dict:
        return self.manifest["models"][str(blocks)]

    def path(self, blocks: int, fmt: str) -> str:
        """A format's path relative to the repository (children run with cwd=REPO)."""
        rel = self.model(blocks)["formats"][fmt]
        return str((generate.CACHE / rel).relative_to(REPO))

    def data_files(self, blocks: int, fmt: str) -> list[str]:
        """The files holding the tensor bytes of a format (what `cat` reads)."""
        p = REPO / self.path(blocks, fmt)
        if fmt == "checkpoint":
            files = sorted(p.parent.glob(p.name + ".data-*"))
        elif fmt == "savedmodel":
            files = sorted((p / "variables").glob("variables.data-*"))
        else:
            files = [p]
        return [str(f.relative_to(REPO)) for f in files]

    def measure(self, label: str, argv: list[str], *, numpy: bool = False, **kw) -> Measurement:
        env = self.numpy_env if numpy else self.env
        if argv[: len(self.ckpt_tool)] == self.ckpt_tool:
            env = self.tool_env
            key = (argv[len(self.ckpt_tool)], "--stats" in argv)
            if key not in self.warmed:  # one untimed run fills the bytecode cache
                self.warmed.add(key)
                if "before_each" in kw:
                    kw["before_each"]()
                run_once(argv, cwd=str(REPO), env=env, timeout=TIMEOUT)
        runs, quiet = kw.pop("runs", self.runs), kw.pop("quiet", False)
        m = measure(label, argv, runs, cwd=str(REPO), env=env, timeout=TIMEOUT, **kw)
        if not quiet:
            status = f"{fmt_s(m.median)}" if m.ok else f"failed: {m.error}"
            print(f"  {label}: {status}", flush=True)
        return m

    def measure_pair(
        self, tool: tuple[str, list[str], dict], ref: tuple[str, list[str], dict], runs: int = 0
    ) -> tuple[Measurement, Measurement]:
        """A command and its reference in alternating runs (tool, ref, tool, ref, ...), so
        that a burst of load on the shared machine falls on both sides alike. Each is
        (label, argv, keyword arguments of measure)."""
        pair = [Measurement(tool[0], tool[1]), Measurement(ref[0], ref[1])]
        for _ in range(runs or self.runs):
            for m, (label, argv, kw) in zip(pair, (tool, ref), strict=True):
                if m.error is None:
                    one = self.measure(label, argv, runs=1, quiet=True, **kw)
                    m.runs += one.runs
                    m.error = one.error
        for m in pair:
            status = f"{fmt_s(m.median)}" if m.ok else f"failed: {m.error}"
            print(f"  {m.label}: {status}", flush=True)
        return pair[0], pair[1]


def ratio_goal(name: str, target: float, x: float | None, *, at_least: bool = False) -> Goal:
    """A goal on a ratio: x <= target (or x >= target with at_least)."""
    sign = "≥" if at_least else "≤"
    if x is None:
        return Goal(name, f"{sign} {target:g}x", "–", None)
    met = x >= target if at_least else x <= target
    shown = f"{x:.2f}x" if x < 10 else fmt_ratio(x)
    return Goal(name, f"{sign} {target:g}x", shown, met, target / x if at_least else x / target)


def gb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def display(argv: list[str]) -> str:
    """A command as a reader would type it: no interpreter paths."""
    out = []
    for a in argv:
        if a.endswith("/ckpt-tool") or a == "ckpt-tool":
            a = "ckpt-tool"
        elif a.endswith("/python") or a.endswith("/python3"):
            a = "python"
        out.append(a)
    return " ".join(out)


def command_available(ctx: Context, name: str) -> bool:
    run, _ = run_once([*ctx.ckpt_tool, name, "--help"], cwd=str(REPO), env=ctx.tool_env)
    return run.returncode == 0


def cell(m: Measurement) -> str:
    if not m.ok:
        return "fails"
    lo, hi = m.spread
    return f"{fmt_s(m.median)} ({fmt_s(lo)}–{fmt_s(hi)})" if len(m.runs) > 1 else fmt_s(m.median)


def failures(ms: list[Measurement]) -> list[str]:
    seen, out = set(), []
    for m in ms:
        if not m.ok and m.error not in seen:
            seen.add(m.error)
            error = m.error.replace(f"{REPO}/", "")  # no paths of this machine in the report
            out.append(f"- `{display(m.argv)}` fails: `{error}`")
    return out


# --------------------------------------------------------------------------- sections


def section_list(ctx: Context, formats=LIST_FORMATS) -> Section:
    sec = Section("list", "`ckpt-tool list` vs the reference")
    if not command_available(ctx, "list"):
        sec.skipped = "not available yet (ckpt-tool has no `list` command)"
        return sec
    table = Table(
        "Listing, median of cold runs (min–max)",
        [
            "blocks",
            "format",
            "ckpt-tool list",
            "RSS",
            "reference",
            "reference time",
            "RSS",
            "speed-up",
        ],
    )
    raw, tool_ms = ctx.results.setdefault("list", {}), []
    numpy_import = ctx.measure(
        "python -c 'import numpy'", [ctx.python, "-c", "import numpy"], numpy=True
    )
    raw["import_numpy"] = numpy_import.to_json()
    for b in ctx.blocks:
        for fmt in formats:
            path = ctx.path(b, fmt)
            listing = (f"list {fmt} blocks={b}", [*ctx.ckpt_tool, "list", path], {"numpy": True})
            if fmt in ("checkpoint", "savedmodel"):
                target = path if fmt == "checkpoint" else f"{path}/variables/variables"
                ref_name = "tf.train.list_variables"
                ref_argv = [ctx.python, "-c", TF_LIST, target]
            else:
                ref_name = "h5py listing"
                ref_argv = [ctx.python, "-c", H5_LIST, path]
            tool, ref = ctx.measure_pair(listing, (f"  {ref_name}", ref_argv, {}))
            tool_ms += [tool, ref]
            raw[f"{fmt}/{b}"] = {"tool": tool.to_json(), "reference": ref.to_json()}
            speedup = fmt_ratio(ref.median / tool.median) if tool.ok and ref.ok else "–"
            table.rows.append(
                [
                    str(b),
                    fmt,
                    cell(tool),
                    fmt_mb(tool.peak_rss_mb) if tool.ok else "–",
                    ref_name,
                    cell(ref),
                    fmt_mb(ref.peak_rss_mb) if ref.ok else "–",
                    speedup,
                ]
            )
    table.notes = [
        "Speed-up = reference median / ckpt-tool median. Each run is a new process "
        "(interpreter start and imports included); files are warm in the page cache.",
        "References: `python -c 'import tensorflow as tf; tf.train.list_variables(P)'` "
        "(SavedModel: P/variables/variables); for .keras and .weights.h5 an h5py walk of "
        "the datasets (.keras: the weights member read into memory, as Keras does).",
        *failures(tool_ms),
    ]
    sec.tables.append(table)

    table.notes.append(
        f"`python -c 'import numpy'` in the same run: {cell(numpy_import)}, "
        f"{fmt_mb(numpy_import.peak_rss_mb) if numpy_import.ok else '–'}."
    )

    def median(fmt: str, b: int, which: str = "tool") -> float | None:
        return raw.get(f"{fmt}/{b}", {}).get(which, {}).get("median")

    mid = 12 if 12 in ctx.blocks else max(ctx.blocks)
    tool, ref = median("checkpoint", mid), median("checkpoint", mid, "reference")
    sec.goals.append(
        ratio_goal(
            f"list, {mid}-block checkpoint, speed-up vs tf.train.list_variables",
            LIST_SPEEDUP_GOAL,
            ref / tool if tool and ref else None,
            at_least=True,
        )
    )
    worst = [median("checkpoint", b) for b in ctx.blocks]
    sec.goals.append(
        ratio_goal(
            "list checkpoint vs `python -c 'import numpy'` (slowest size)",
            LIST_NUMPY_GOAL,
            max(worst) / numpy_import.median if all(worst) and numpy_import.ok else None,
        )
    )
    lo, hi = min(ctx.blocks), max(ctx.blocks)
    for fmt in ("keras", "weights-h5"):
        if fmt not in formats:
            continue
        speedups = [
            median(fmt, b, "reference") / median(fmt, b)
            for b in ctx.blocks
            if median(fmt, b) and median(fmt, b, "reference")
        ]
        sec.goals.append(
            ratio_goal(
                f"list {fmt} speed-up vs an h5py walk (slowest size)",
                H5_WALK_GOAL,
                min(speedups) if len(speedups) == len(ctx.blocks) else None,
                at_least=True,
            )
        )
    for fmt in formats:
        a, z = median(fmt, lo), median(fmt, hi)
        if lo != hi and fmt != "savedmodel":
            sec.goals.append(
                ratio_goal(
                    f"list {fmt} flat with size ({hi} vs {lo} blocks)",
                    FLAT_GOAL,
                    z / a if a and z else None,
                )
            )
    return sec


def section_stats(ctx: Context, formats=STATS_FORMATS) -> Section:
    sec = Section("stats", "`ckpt-tool list --stats` throughput vs `cat`")
    if not command_available(ctx, "list"):
        sec.skipped = "not available yet (ckpt-tool has no `list` command)"
        return sec
    table = Table(
        "Statistics over every weight, median of cold runs",
        [
            "blocks",
            "format",
            "weights",
            "list --stats",
            "GB/s",
            "RSS (anon)",
            "cat data files",
            "cat GB/s",
            "cat / ckpt-tool",
        ],
    )
    raw, ms = ctx.results.setdefault("stats", {}), []
    listed = ctx.results.get("list", {})
    for b in ctx.blocks:
        for fmt in formats:
            path, files = ctx.path(b, fmt), ctx.data_files(b, fmt)
            weight_bytes = ctx.model(b)["weight_bytes"]
            file_bytes = sum((REPO / f).stat().st_size for f in files)
            run_once(["cat", *files], cwd=str(REPO))  # warm the page cache for both
            tool, cat = ctx.measure_pair(
                (
                    f"list --stats {fmt} blocks={b}",
                    [*ctx.ckpt_tool, "list", path, "--stats"],
                    {"numpy": True},
                ),
                ("  cat", ["cat", *files], {}),
            )
            ms += [tool, cat]
            raw[f"{fmt}/{b}"] = {
                "tool": tool.to_json(),
                "cat": cat.to_json(),
                "weight_bytes": weight_bytes,
                "file_bytes": file_bytes,
            }
            gbs, tool_gbs = "–", None
            if tool.ok:
                tool_gbs = gb_per_s(weight_bytes, tool.median)
                net = listed.get(f"{fmt}/{b}", {}).get("tool", {}).get("median")
                gbs = f"{tool_gbs:.2f}"
                if net and tool.median > net:
                    gbs += f" ({gb_per_s(weight_bytes, tool.median - net):.2f} net)"
            cat_gbs = gb_per_s(file_bytes, cat.median) if cat.ok else None
            raw[f"{fmt}/{b}"]["per_byte_ratio"] = (
                cat_gbs / tool_gbs if tool_gbs and cat_gbs else None
            )
            table.rows.append(
                [
                    str(b),
                    fmt,
                    f"{weight_bytes / 1e6:.0f} MB",
                    cell(tool),
                    gbs if tool.ok else "–",
                    f"{fmt_mb(tool.peak_rss_mb)} ({fmt_mb(tool.peak_anon_mb)})" if tool.ok else "–",
                    f"{cell(cat)}, {file_bytes / 1e6:.0f} MB",
                    f"{cat_gbs:.2f}" if cat_gbs else "–",
                    fmt_ratio(cat_gbs / tool_gbs) if tool.ok and cat_gbs else "–",
                ]
            )
    table.notes = [
        "GB/s = bytes / median wall time of the whole process (start-up included); "
        '"net" subtracts the plain `list` median of the same file. ckpt-tool reads the '
        "model weights only; `cat` reads the whole data files (a checkpoint's shard also "
        "holds the two Adam slots, 3x the weights), so compare GB/s, not seconds.",
        "Both are warm-cache numbers: the page cache cannot be dropped here, and every "
        "file is read once before timing.",
        *failures(ms),
    ]
    sec.tables.append(table)
    hi = max(ctx.blocks)
    for fmt in formats:
        sec.goals.append(
            ratio_goal(
                f"list --stats {fmt} vs cat, per byte ({hi} blocks)",
                STATS_CAT_GOAL,
                raw.get(f"{fmt}/{hi}", {}).get("per_byte_ratio"),
            )
        )
    return sec


def section_export(ctx: Context, formats=("checkpoint", "keras", "weights-h5")) -> Section:
    sec = Section("export", "`ckpt-tool export` vs `cp`")
    if not command_available(ctx, "export"):
        sec.skipped = "not available yet (ckpt-tool has no `export` command)"
        return sec
    out_dir = generate.CACHE / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = Table(
        "Export to .npz, median of cold runs",
        [
            "blocks",
            "format",
            "weights",
            "export",
            "GB/s",
            "peak RSS",
            "anon",
            "cp data files",
            "cp GB/s",
            "time ratio",
            "per-byte ratio",
        ],
    )
    raw, ms = ctx.results.setdefault("export", {}), []
    npz = out_dir / "export.npz"
    copy_dir = out_dir / "copy"

    def clean() -> None:
        npz.unlink(missing_ok=True)
        shutil.rmtree(copy_dir, ignore_errors=True)
        copy_dir.mkdir()

    try:
        for b in ctx.blocks:
            for fmt in formats:
                path, files = ctx.path(b, fmt), ctx.data_files(b, fmt)
                weight_bytes = ctx.model(b)["weight_bytes"]
                file_bytes = sum((REPO / f).stat().st_size for f in files)
                run_once(["cat", *files], cwd=str(REPO))
                rel_npz = str(npz.relative_to(REPO))
                tool, cp = ctx.measure_pair(
                    (
                        f"export {fmt} blocks={b}",
                        [*ctx.ckpt_tool, "export", path, "-o", rel_npz],
                        {"numpy": True, "before_each": clean},
                    ),
                    (
                        "  cp",
                        ["cp", *files, str(copy_dir.relative_to(REPO))],
                        {"before_each": clean},
                    ),
                )
                ms += [tool, cp]
                ok = tool.ok and cp.ok
                per_byte = (
                    gb_per_s(file_bytes, cp.median) / gb_per_s(weight_bytes, tool.median)
                    if ok
                    else None
                )
                raw[f"{fmt}/{b}"] = {
                    "tool": tool.to_json(),
                    "cp": cp.to_json(),
                    "weight_bytes": weight_bytes,
                    "file_bytes": file_bytes,
                    "per_byte_ratio": per_byte,
                }
                table.rows.append(
                    [
                        str(b),
                        fmt,
                        f"{weight_bytes / 1e6:.0f} MB",
                        cell(tool),
                        f"{gb_per_s(weight_bytes, tool.median):.2f}" if tool.ok else "–",
                        fmt_mb(tool.peak_rss_mb) if tool.ok else "–",
                        fmt_mb(tool.peak_anon_mb) if tool.ok else "–",
                        f"{cell(cp)}, {file_bytes / 1e6:.0f} MB",
                        f"{gb_per_s(file_bytes, cp.median):.2f}" if cp.ok else "–",
                        fmt_ratio(tool.median / cp.median) if ok else "–",
                        fmt_ratio(per_byte) if per_byte else "–",
                    ]
                )
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    table.notes = [
        "Time ratio = export median / cp median. cp copies the whole data files (a "
        "checkpoint's shard holds the weights and two Adam slots), export writes the "
        "weights only, so the goal is judged both ways, by time and per byte (cp GB/s / "
        "export GB/s), at the largest size: at small sizes both are dominated by start-up "
        "(Python's ~0.3 s against cp's few ms). export also fsyncs its output; cp does not.",
        "Peak RSS is each child's own ru_maxrss (os.wait4), the maximum over runs; it "
        "counts the pages of memory-mapped files the process touched. anon is the sampled "
        "peak (every 10 ms) of RssAnon, the process's own memory without mapped files.",
        *failures(ms),
    ]
    sec.tables.append(table)
    sec.appendix += helper_output(
        ctx,
        "bench_export.py",
        ["--runs", str(min(ctx.runs, 3))],
        "12 blocks, weights / with optimizer / .weights.h5",
    )

    hi = max(ctx.blocks)
    for fmt in formats:
        largest = raw.get(f"{fmt}/{hi}")
        ok = largest and largest["per_byte_ratio"]
        if fmt == "checkpoint":  # cp copies the slots too: judged per byte
            name, target = f"export checkpoint -> npz vs cp, per byte ({hi} blocks)", EXPORT_CP_GOAL
            x = largest["per_byte_ratio"] if ok else None
        else:  # the file holds the weights alone: judged by time
            name, target = f"export {fmt} -> npz vs cp, time ({hi} blocks)", EXPORT_H5_GOAL
            x = largest["tool"]["median"] / largest["cp"]["median"] if ok else None
        sec.goals.append(ratio_goal(name, target, x))
    rss = [max(v["tool"]["max_rss_kb"]) for v in raw.values() if v["tool"]["max_rss_kb"]]
    anon = [max(v["tool"]["anon_kb"]) for v in raw.values() if v["tool"]["anon_kb"]]
    if rss and len(rss) == len(raw):
        peak = max(rss) / 1024
        measured = fmt_mb(peak) + (f" (anon {fmt_mb(max(anon) / 1024)})" if anon else "")
        sec.goals.append(
            Goal(
                "export peak RSS, every size",
                f"< {EXPORT_RSS_GOAL_MB:.0f} MB",
                measured,
                peak < EXPORT_RSS_GOAL_MB,
                peak / EXPORT_RSS_GOAL_MB,
            )
        )
    else:
        sec.goals.append(
            Goal("export peak RSS, every size", f"< {EXPORT_RSS_GOAL_MB:.0f} MB", "–", None)
        )
    return sec


def section_diff(ctx: Context) -> Section:
    """`ckpt-tool diff` of the checkpoint against the .weights.h5 of the same model (every
    weight compared, all equal) against `cat` of both files' data."""
    sec = Section("diff", "`ckpt-tool diff` vs `cat`")
    if not command_available(ctx, "diff"):
        sec.skipped = "not available yet (ckpt-tool has no `diff` command)"
        return sec
    table = Table(
        "diff checkpoint vs .weights.h5 of the same model, median of cold runs",
        ["blocks", "weights", "diff", "peak RSS", "anon", "cat both data files", "ratio"],
    )
    raw, ms = ctx.results.setdefault("diff", {}), []
    for b in ctx.blocks:
        a, z = ctx.path(b, "checkpoint"), ctx.path(b, "weights-h5")
        files = ctx.data_files(b, "checkpoint") + ctx.data_files(b, "weights-h5")
        file_bytes = sum((REPO / f).stat().st_size for f in files)
        run_once(["cat", *files], cwd=str(REPO))
        tool, cat = ctx.measure_pair(
            (f"diff blocks={b}", [*ctx.ckpt_tool, "diff", a, z], {"numpy": True}),
            ("  cat", ["cat", *files], {}),
        )
        ms += [tool, cat]
        ratio = tool.median / cat.median if tool.ok and cat.ok else None
        raw[f"checkpoint/{b}"] = {"tool": tool.to_json(), "cat": cat.to_json(), "ratio": ratio}
        table.rows.append(
            [
                str(b),
                f"{ctx.model(b)['weight_bytes'] / 1e6:.0f} MB",
                cell(tool),
                fmt_mb(tool.peak_rss_mb) if tool.ok else "–",
                fmt_mb(tool.peak_anon_mb) if tool.ok else "–",
                f"{cell(cat)}, {file_bytes / 1e6:.0f} MB",
                fmt_ratio(ratio) if ratio else "–",
            ]
        )
    table.notes = [
        "Ratio = diff median / cat median. diff reads the weights of both files (the "
        "checkpoint's shard also holds two Adam slots, which `cat` reads and diff does not) "
        "and compares every pair; the values are equal, so every element is compared.",
        *failures(ms),
    ]
    sec.tables.append(table)
    hi = max(ctx.blocks)
    sec.goals.append(
        ratio_goal(
            f"diff checkpoint vs .weights.h5 vs cat of both ({hi} blocks)",
            DIFF_CAT_GOAL,
            raw.get(f"checkpoint/{hi}", {}).get("ratio"),
        )
    )
    return sec


# TensorFlow alone, as a user checks a port without ckpt-tool: load the .keras model and
# call it on verify's input shape, twice (verify's reference runs and its report's).
TF_VERIFY = """import sys, numpy as np, keras
model = keras.saving.load_model(sys.argv[1])
x = np.random.default_rng(0).standard_normal((8, 128, 768)).astype("float32")
model(x, training=False)
model(x, training=False)
"""


def verify_process_table(ctx: Context, sec: Section) -> None:
    """The whole `ckpt-tool verify` process against TensorFlow alone, time and memory."""
    table = Table(
        "verify model.keras --batch 8 --seq-len 128, whole process, median of cold runs",
        ["blocks", "ckpt-tool verify", "peak RSS", "TF alone", "peak RSS", "time", "memory"],
    )
    raw, ms = ctx.results.setdefault("verify_process", {}), []
    runs = min(ctx.runs, 3)
    for b in ctx.blocks:
        path = ctx.path(b, "keras")
        argv = [*ctx.ckpt_tool, "verify", path, "--batch", "8", "--seq-len", "128"]
        tool, ref = ctx.measure_pair(
            (f"verify blocks={b}", argv, {"numpy": True}),
            ("  TF alone", [ctx.python, "-c", TF_VERIFY, path], {}),
            runs=runs,
        )
        ms += [tool, ref]
        ok = tool.ok and ref.ok
        t = tool.median / ref.median if ok else None
        m = tool.peak_rss_mb / ref.peak_rss_mb if ok else None
        raw[f"keras/{b}"] = {
            "tool": tool.to_json(),
            "reference": ref.to_json(),
            "time": t,
            "memory": m,
        }
        table.rows.append(
            [
                str(b),
                cell(tool),
                fmt_mb(tool.peak_rss_mb) if tool.ok else "–",
                cell(ref),
                fmt_mb(ref.peak_rss_mb) if ref.ok else "–",
                f"{t:.2f}x" if t else "–",
                f"{m:.2f}x" if m else "–",
            ]
        )
    table.notes = [
        "ckpt-tool verify at its defaults (float64 NumPy forward as the referee, one input "
        "set): reads the weights, loads the model with Keras, runs it and the NumPy graph. "
        "TF alone: `keras.saving.load_model` and two calls on a (8, 128, 768) input. "
        f"{runs} runs each; peak RSS is the maximum over runs.",
        *failures(ms),
    ]
    sec.tables.append(table)
    mid = 12 if 12 in ctx.blocks else max(ctx.blocks)
    row = raw.get(f"keras/{mid}", {})
    sec.goals.append(
        ratio_goal(f"verify vs TF alone, time ({mid} blocks)", VERIFY_TIME_GOAL, row.get("time"))
    )
    sec.goals.append(
        ratio_goal(
            f"verify vs TF alone, peak memory ({mid} blocks)", VERIFY_MEMORY_GOAL, row.get("memory")
        )
    )


FORWARD_DTYPES = ("float32", "float64")  # float64 at the smallest size only


def _run_json(ctx: Context, argv: list[str], timeout: float) -> tuple[dict | None, str, Run]:
    """Run a child that prints one JSON object; returns (data or None, error, timing)."""
    out = generate.CACHE / "child-stdout.txt"
    run, stderr = run_once(
        argv, cwd=str(REPO), env=ctx.numpy_env, timeout=timeout, stdout_path=str(out)
    )
    text = out.read_text()
    out.unlink(missing_ok=True)
    if run.returncode != 0:
        return None, last_error_line(stderr), run
    try:
        return json.loads(text.strip().splitlines()[-1]), "", run
    except (json.JSONDecodeError, IndexError):
        return None, f"no JSON in the output: {text[-200:]!r}", run


def helper_output(ctx: Context, script: str, args: list[str], what: str) -> list[str]:
    """Run bench/<script> (a benchmark written alongside this harness) when it exists;
    its own output becomes a code block of the section."""
    if not (BENCH / script).exists():
        return []
    print(f"  bench/{script}", flush=True)
    argv = [ctx.python, f"bench/{script}", *args]
    out = generate.CACHE / f"{script}.stdout"
    run, stderr = run_once(
        argv, cwd=str(REPO), env=ctx.numpy_env, timeout=600, stdout_path=str(out)
    )
    text = out.read_text().strip().replace(f"{REPO}/", "")
    out.unlink(missing_ok=True)
    if not text:
        return [f"`{display(argv)}` fails: `{last_error_line(stderr)}`", ""]
    status = "" if run.returncode == 0 else f"; exit code {run.returncode}"
    return [f"{what} (`{display(argv)}`, its own output{status}):", "", "```", text, "```", ""]


def section_verify(ctx: Context) -> Section:
    sec = Section("verify", "Forward pass: NumPy (verify's graph) vs Keras on TensorFlow")
    if not command_available(ctx, "verify"):
        sec.skipped = "not available yet (ckpt-tool has no `verify` command)"
        return sec
    verify_process_table(ctx, sec)
    sizes = ctx.blocks
    table = Table(
        "Whole-encoder forward, batch 8, sequence 128: median seconds per call",
        [
            "blocks",
            "dtype",
            "NumPy",
            "TF eager",
            "TF tf.function",
            "NumPy / best TF",
            "max abs diff",
            "process RSS",
        ],
    )
    raw = ctx.results.setdefault("verify", {"scaling_rows": {}})
    errors = []
    for b in sizes:
        for dt in FORWARD_DTYPES if b == min(sizes) else FORWARD_DTYPES[:1]:
            # One call of the 12-block model takes seconds (float64 NumPy ~10 s): fewer reps.
            reps = ctx.runs if b == 1 else min(ctx.runs, 3)
            argv = [
                ctx.python,
                "bench/bench_forward.py",
                "--blocks",
                str(b),
                "--dtype",
                dt,
                "--reps",
                str(reps),
                *(["--eager"] if b == 1 else []),
            ]
            data, error, run = _run_json(ctx, argv, timeout=600)
            if data is None:
                print(f"  forward {dt} blocks={b}: failed: {error}", flush=True)
                errors.append(f"- `{display(argv)}` fails: `{error}`")
                table.rows.append([str(b), dt, "fails", "–", "–", "–", "–", "–"])
                continue
            med = data["median"]
            print(
                f"  forward {dt} blocks={b}: numpy {fmt_s(med['numpy'])}, "
                f"tf {fmt_s(med['tf_function'])}",
                flush=True,
            )
            data["process_seconds"], data["max_rss_kb"] = run.seconds, run.max_rss_kb
            raw[f"{dt}/{b}"] = data
            table.rows.append(
                [
                    str(b),
                    dt,
                    fmt_s(med["numpy"]),
                    fmt_s(med["tf_eager"]) if "tf_eager" in med else "–",
                    fmt_s(med["tf_function"]),
                    fmt_ratio(data["ratio"]),
                    f"{data['max_abs_diff']:.1e}",
                    fmt_mb(run.max_rss_kb / 1024),
                ]
            )
            row = raw["scaling_rows"].setdefault(f"NumPy forward {dt} (per call)", {})
            row[str(b)] = fmt_s(med["numpy"])
            row = raw["scaling_rows"].setdefault(f"TF forward {dt} (best, per call)", {})
            row[str(b)] = fmt_s(min(v for k, v in med.items() if k != "numpy"))
    any_data = next((v for k, v in raw.items() if k != "scaling_rows"), None)
    table.notes = [
        "bench/bench_forward.py: the .keras model run by ckpt-tool's NumPy graph "
        "(reader, roles, graph from the Keras config, run_graph, as `verify` does) and by "
        "Keras on TensorFlow (float64: the encoder rebuilt with float64 weights), in one "
        "process, in turns, after warm-up calls; weights cast once before timing. Ratio "
        "against the faster TensorFlow mode (eager is timed at 1 block only). Reps: "
        f"{ctx.runs} at 1 block, {min(ctx.runs, 3)} at larger sizes; float64 at the smallest "
        "size only. max abs diff: NumPy vs tf.function.",
        f"The process runs without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE; NumPy's BLAS there: "
        f"{any_data['blas'] if any_data else 'unknown'}.",
        *errors,
    ]
    sec.tables.append(table)
    f32 = [v["ratio"] for k, v in raw.items() if k.startswith("float32/")]
    sec.goals.append(
        ratio_goal(
            "forward, NumPy float32 vs Keras tf.function (worst size)",
            FORWARD_GOAL,
            max(f32) if len(f32) == len(sizes) else None,
        )
    )

    sec.appendix += helper_output(
        ctx, "bench_layers.py", ["--reps", str(max(ctx.runs, 3))], "MultiHeadAttention alone"
    )
    return sec


def section_scaling(ctx: Context) -> Section:
    """Time and peak RSS of each command against model size (checkpoint format)."""
    sec = Section("scaling", "Scaling with model size (checkpoint)")
    rows = [
        ("ckpt-tool list", "list", "tool"),
        ("tf.train.list_variables", "list", "reference"),
        ("ckpt-tool list --stats", "stats", "tool"),
        ("cat data shard", "stats", "cat"),
        ("ckpt-tool export", "export", "tool"),
        ("cp data shard", "export", "cp"),
        ("ckpt-tool diff checkpoint .weights.h5", "diff", "tool"),
        ("cat both data files", "diff", "cat"),
        ("ckpt-tool verify model.keras", "verify_process", "tool"),
        ("TF alone: load .keras, two calls", "verify_process", "reference"),
    ]
    table = Table(
        "Median time / peak RSS per command", ["command", *[f"{b} blocks" for b in ctx.blocks]]
    )
    for label, section, which in rows:
        data = ctx.results.get(section, {})
        cells = []
        for b in ctx.blocks:
            m = (data.get(f"checkpoint/{b}") or data.get(f"keras/{b}") or {}).get(which)
            if not m or m["median"] is None:
                cells.append("–")
            else:
                cells.append(f"{fmt_s(m['median'])} / {fmt_mb(max(m['max_rss_kb']) / 1024)}")
        if any(c != "–" for c in cells):
            table.rows.append([label, *cells])
    for name, extra in ctx.results.get("verify", {}).get("scaling_rows", {}).items():
        table.rows.append([name, *[extra.get(str(b), "–") for b in ctx.blocks]])
    if not table.rows:
        sec.skipped = "nothing measured (run the list, stats or export sections)"
        return sec
    sizes = [f"{b}: {ctx.model(b)['parameters'] / 1e6:.1f} M parameters" for b in ctx.blocks]
    table.notes = [
        f"Model sizes (blocks: parameters): {'; '.join(sizes)}.",
        "The RSS of `cat` and `cp` is the harness's own (~20 MB), counted in the child's "
        "ru_maxrss from before it executes the command.",
    ]
    sec.tables.append(table)
    return sec


# --------------------------------------------------------------------------- main


def generate_models(ctx_python: str, blocks: list[int]) -> tuple[float, str]:
    """Run bench/generate.py for missing sizes; returns (seconds, its output)."""
    start = time.perf_counter()
    log = generate.CACHE / "generate.log"
    generate.CACHE.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as err:
        proc = subprocess.run(
            [ctx_python, str(BENCH / "generate.py"), "--blocks", *map(str, blocks)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    out = proc.stdout.decode()
    print(out, end="", flush=True)
    if proc.returncode != 0:
        sys.exit(f"model generation failed (see {log.relative_to(REPO)}): {out.strip()}")
    return time.perf_counter() - start, out


def machine_markdown(info: dict, blas: dict, blas_parent: dict | None) -> str:
    v = info["versions"]
    lines = [
        "## Machine",
        "",
        f"- CPU: {info['cpu']} ({', '.join(info['cpu_flags'])}), {info['cores']} cores "
        f"({info['cores_usable']} usable), {info['memory_gib']} GiB memory, {info['os']}",
        f"- Python {v['python']}, numpy {v['numpy']}, TensorFlow {v['tensorflow']}, "
        f"Keras {v['keras']}, h5py {v['h5py']}, protobuf {v['protobuf']}, "
        f"google-crc32c {v['google-crc32c']}, ckpt-tool {v['ckpt-tool']}",
        f"- numpy BLAS: {blas['numpy_blas']}; in the timed ckpt-tool/NumPy processes: "
        f"{machine.blas_summary(blas)} (probed with {blas['source']})",
    ]
    env = {k: val for k, val in info["openblas_env"].items() if val is not None}
    if env:
        shown = ", ".join(f"{k}={val}" for k, val in env.items())
        lines.append(
            f"- The environment sets {shown}; the timed ckpt-tool/NumPy processes run "
            f"without it (with it the kernel would be {machine.blas_summary(blas_parent or {})}). "
            "Reference (TensorFlow) processes keep the environment as given."
        )
    else:
        lines.append("- OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: not set.")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        lines.append(
            "- The environment sets PYTHONDONTWRITEBYTECODE; the timed ckpt-tool commands run "
            "with bytecode caching (into bench/.cache/pycache, after one untimed run of each "
            "command), as an installed package has its .pyc files. Without it every run "
            "recompiles ckpt-tool's modules (about 30 ms more per run here)."
        )
    return "\n".join(lines)


def write_results(
    path: Path,
    header: list[str],
    sections: list[Section],
    goals: list[Goal],
    machine_md: str,
    worst_line: str = "",
) -> None:
    parts = ["# Benchmark results", "", *header, ""]
    if goals:
        parts += [goals_table(goals).to_markdown(), ""]
    if worst_line:
        parts += [worst_line, ""]
    parts += [machine_md, ""]
    for s in sections:
        parts += [s.to_markdown(), ""]
    path.write_text("\n".join(parts).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ckpt-tool benchmarks (see bench/README.md)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--runs", type=int, help="cold runs per command (default 5, --quick 3)")
    parser.add_argument(
        "--blocks", type=int, nargs="+", choices=generate.ALL_BLOCKS, help="model sizes"
    )
    parser.add_argument("--quick", action="store_true", help="1 and 12 blocks, 3 runs")
    parser.add_argument(
        "--savedmodel", action="store_true", help="also list the SavedModels (against TF)"
    )
    parser.add_argument(
        "--results", type=Path, default=BENCH / "RESULTS.md", help="Markdown report to write"
    )
    parser.add_argument(
        "--no-results", action="store_true", help="do not write the Markdown report"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    run_date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks = sorted(args.blocks or ([1, 12] if args.quick else list(generate.ALL_BLOCKS)))
    runs = args.runs or (3 if args.quick else 5)
    only = set(args.only or SECTIONS)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    bin_dir = Path(sys.executable).parent
    tool = (
        [str(bin_dir / "ckpt-tool")]
        if (bin_dir / "ckpt-tool").exists()
        else [sys.executable, "-m", "ckpt_tool"]
    )

    print(f"== models: blocks {blocks}", flush=True)
    gen_seconds, gen_out = generate_models(sys.executable, blocks)
    manifest = generate.load_manifest()
    generated_now = "generating" in gen_out

    ctx = Context(blocks, runs, sys.executable, tool, env, machine.clean_blas_env(env), manifest)
    info = machine.describe()
    probe = [sys.executable, str(BENCH / "machine.py"), "blas"]
    blas = json.loads(
        subprocess.run(probe, env=ctx.numpy_env, capture_output=True, text=True, check=True).stdout
    )
    blas_parent = None
    if any(info["openblas_env"].values()):
        blas_parent = json.loads(
            subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout
        )
    print(f"== numpy BLAS in timed processes: {machine.blas_summary(blas)}", flush=True)

    list_formats = ("savedmodel", *LIST_FORMATS) if args.savedmodel else LIST_FORMATS
    plan = [
        ("list", lambda c: section_list(c, list_formats)),
        ("stats", section_stats),
        ("export", section_export),
        ("diff", section_diff),
        ("verify", section_verify),
    ]
    if only == {"scaling"}:  # the scaling table alone: the checkpoint measurements it needs
        plan = [
            ("list", lambda c: section_list(c, ("checkpoint",))),
            ("stats", lambda c: section_stats(c, ("checkpoint",))),
            ("export", section_export),
        ]
        only = {"list", "stats", "export", "scaling"}
    sections: list[Section] = []
    for key, fn in plan:
        if key not in only:
            continue
        print(f"== {key}", flush=True)
        t0 = time.perf_counter()
        sec = fn(ctx)
        sec.seconds = time.perf_counter() - t0
        sections.append(sec)
        print(
            f"  skipped: {sec.skipped}" if sec.skipped else "\n" + sec.to_markdown() + "\n",
            flush=True,
        )
    if "scaling" in only:
        sec = section_scaling(ctx)
        sections.append(sec)
        print("\n" + sec.to_markdown() + "\n", flush=True)

    goals = [g for s in sections for g in s.goals]
    if goals:
        print(goals_table(goals).to_markdown(), flush=True)
    missed = sorted((g for g in goals if g.met is False and g.gap), key=lambda g: -g.gap)
    worst_line = (
        f"Furthest from its goal: {missed[0].name}, {missed[0].measured} against "
        f"{missed[0].target} ({missed[0].gap:.1f}x off); profile it as bench/README.md shows."
        if missed
        else ""
    )
    if worst_line:
        print(worst_line, flush=True)
    total = time.perf_counter() - started

    cache_bytes = sum(manifest["models"][str(b)]["disk_bytes"] for b in blocks)
    made = sum(manifest["models"][str(b)]["seconds"]["total"] for b in blocks)
    cmd = (
        "python bench/run.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    header = [
        f"Run {run_date} with `{cmd.strip()}`: "
        f"blocks {', '.join(map(str, blocks))}, {runs} cold run{'s' if runs > 1 else ''} per command, "
        f"{total / 60:.1f} min in all. Load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores: other work on the "
        "machine slows both sides of every ratio alike, absolute times less so.",
        "",
        f"Models (bench/generate.py, seed {generate.SEED}): "
        + (
            f"generated in this run in {gen_seconds:.0f} s"
            if generated_now
            else f"cached (made in {made:.0f} s)"
        )
        + f"; {cache_bytes / 1e9:.1f} GB in bench/.cache/ for these sizes. The checkpoint holds an "
        "Adam optimizer built on the weights (momentum and velocity slots, zeros).",
        "",
        "Time per section: "
        + ", ".join(f"{sec.key} {sec.seconds / 60:.1f} min" for sec in sections if sec.seconds)
        + (f", generation {gen_seconds / 60:.1f} min." if generated_now else "."),
        "",
        "Every number is the median over runs of a whole new process (interpreter start-up "
        "and imports included). Ratios compare with the reference measured in the same run.",
    ]
    raw = {
        "blocks": blocks,
        "runs": runs,
        "machine": info,
        "blas": blas,
        "results": ctx.results,
        "generation_seconds": gen_seconds if generated_now else None,
        "total_seconds": total,
    }
    (generate.CACHE / "last-run.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    if not args.no_results:
        write_results(
            args.results,
            header,
            sections,
            goals,
            machine_markdown(info, blas, blas_parent),
            worst_line,
        )
        print(
            f"wrote {args.results.resolve().relative_to(REPO) if args.results.resolve().is_relative_to(REPO) else args.results}"
        )
    print(f"total {total / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
