"""Forward pass of a whole benchmark encoder: ckpt-tool's NumPy graph vs Keras on TensorFlow.

The NumPy side is what `ckpt-tool verify` runs: the .keras file opened by ckpt-tool's
reader, roles assigned, the graph built from the Keras config, `run_graph` in NumPy. The
TensorFlow side is the same file loaded by `keras.saving.load_model` (float64: the same
encoder rebuilt with float64 weights and inputs), run under tf.function (and eagerly with
`--eager`). Both get the same input (batch 8,
sequence 128 by default) and run in this one process in turns, after warm-up calls,
so load on a shared machine falls on both alike. Weights are cast to the precision once,
before timing, on both sides. Prints one JSON object.

    python bench/bench_forward.py --blocks 12 --dtype float32 --reps 3

Run it without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (bench/run.py does). ckpt_tool is
imported before NumPy, as in the `ckpt-tool` process, so that OpenBLAS starts with the
thread settings the package gives it (`ckpt_tool.blas_threads`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import ckpt_tool  # noqa: F401  (before NumPy: see the docstring)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import generate  # noqa: E402
import machine  # noqa: E402


def numpy_forward(path: str, dtype: type):
    """A callable running ckpt-tool's NumPy graph of the model in `path`, as verify does."""
    from ckpt_tool.graph import build_graph, run_graph
    from ckpt_tool.readers import open_reader
    from ckpt_tool.roles import assign_roles
    from ckpt_tool.verify import load_layer_weights

    with open_reader(path) as reader:
        config = reader.model_config()
        roles = assign_roles(reader.variables(), config)
        graph = build_graph(config, roles)
        weights = {
            layer: {role: np.asarray(w, dtype=dtype) for role, w in ws.items()}
            for layer, ws in load_layer_weights(reader, roles).items()
        }
    configs = {layer.name: layer.config for layer in roles.layers}

    def forward(x: np.ndarray) -> np.ndarray:
        # as verify without --per-layer: each intermediate freed after its last use
        outputs, _ = run_graph(graph, weights, [x], dtype=dtype, configs=configs, keep_layers=False)
        return outputs[0]

    return forward


def tensorflow_forwards(path: str, blocks: int, dtype_name: str):
    """Eager and tf.function callables of the Keras model in `path` at `dtype_name`."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(path)
    if dtype_name != "float32":
        weights = [w.astype(dtype_name) for w in model.get_weights()]
        keras.config.set_floatx(dtype_name)
        keras.config.set_dtype_policy(dtype_name)
        model = generate.build_encoder(blocks)
        model.set_weights(weights)
    compiled = tf.function(lambda x: model(x, training=False), jit_compile=False)

    def eager(x):
        return model(x, training=False).numpy()

    def function(x):
        return compiled(x).numpy()

    return eager, function, tf.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1, choices=generate.ALL_BLOCKS)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=generate.SEQ)
    parser.add_argument("--eager", action="store_true", help="also time TensorFlow eager")
    args = parser.parse_args(argv)

    manifest = generate.load_manifest()
    path = str(generate.CACHE / manifest["models"][str(args.blocks)]["formats"]["keras"])
    dtype = np.dtype(args.dtype).type
    x = np.random.default_rng(0).normal(size=(args.batch, args.seq, generate.D_MODEL))
    x = x.astype(args.dtype)

    t0 = time.perf_counter()
    ours = numpy_forward(path, dtype)
    load_numpy = time.perf_counter() - t0
    t0 = time.perf_counter()
    eager, function, tf_version = tensorflow_forwards(path, args.blocks, args.dtype)
    load_tf = time.perf_counter() - t0

    import tensorflow as tf

    xt = tf.constant(x)
    sides = {"numpy": lambda: ours(x), "tf_function": lambda: function(xt)}
    if args.eager:
        sides["tf_eager"] = lambda: eager(xt)
    # Warm-up: tf.function traces on its first call; NumPy's first call only faults in
    # memory, so its warm-up is skipped at sizes where one call takes seconds.
    outputs = {"tf_function": function(xt)}
    if args.blocks <= 4:
        outputs["numpy"] = ours(x)
        if args.eager:
            eager(xt)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.reps):
        for name, fn in sides.items():
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            outputs.setdefault(name, result)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    tf_best = min(v for k, v in medians.items() if k != "numpy")
    scale = float(np.max(np.abs(outputs["tf_function"])))
    print(
        json.dumps(
            {
                "blocks": args.blocks,
                "dtype": args.dtype,
                "batch": args.batch,
                "seq": args.seq,
                "reps": args.reps,
                "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
                "median": medians,
                "ratio": medians["numpy"] / tf_best,
                "load_seconds": {"numpy": load_numpy, "tensorflow": load_tf},
                "max_abs_diff": float(np.max(np.abs(outputs["numpy"] - outputs["tf_function"]))),
                "output_scale": scale,
                "blas": machine.blas_summary(machine.blas_probe()),
                "tensorflow": tf_version,
                "tf_threads": {
                    "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
