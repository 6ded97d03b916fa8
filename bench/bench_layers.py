"""NumPy layer kernels vs the same Keras layer on TensorFlow, in one process.

A BERT-base-sized MultiHeadAttention block (batch 8, sequence 128, width 768,
12 heads of 64) in float32, with the same weights and inputs on both sides.
Each variant runs a few warm-up calls, then several timed repetitions; the
median of each side and their ratio (NumPy / TensorFlow; the goal is <= 1.5)
are printed, with the largest difference between the two outputs.

    python bench/bench_layers.py [--reps 15] [--batch 8] [--seq 128]

OpenBLAS picks its kernel from the CPU unless OPENBLAS_CORETYPE forces one:
run the benchmark with that variable (and OPENBLAS_L2_SIZE) unset, e.g.
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_layers.py`.
The BLAS that threadpoolctl reports (when installed) is printed first, and
the load average: on a machine whose cores are busy with other work,
OpenBLAS's threads suffer far more than TensorFlow's and the ratio says
little about the kernels; measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from ckpt_tool.layers import get_layer_kind

GOAL = 1.5


def blas_info() -> str:
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl not installed"
    pools = [
        f"{p.get('internal_api')} {p.get('version')} kernel={p.get('architecture')} "
        f"threads={p.get('num_threads')}"
        for p in threadpoolctl.threadpool_info()
        if p.get("user_api") == "blas"
    ]
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return "; ".join(pools) + (f" (env {env})" if env else " (OPENBLAS_CORETYPE unset)")


def median_seconds(fns: list[Callable[[], object]], reps: int, warmup: int = 3) -> list[float]:
    """Median wall time of each function, timed in turns so that load on a
    shared machine falls on every side alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    print(f"BLAS: {blas_info()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, NumPy {np.__version__}")
    b, t, d, n = args.batch, args.seq, args.width, args.heads
    h = d // n
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, t, d)).astype(np.float32)

    variants = [
        ("MHA self-attention", {}, {}),
        ("MHA causal", {}, {"use_causal_mask": True}),
        ("MHA + attention scores", {}, {"return_attention_scores": True}),
        ("MHA use_gate", {"use_gate": True}, {}),
    ]
    kind = get_layer_kind("MultiHeadAttention")
    xt = tf.constant(x)
    print(f"\nshape (B={b}, T={t}, D={d}), {n} heads x {h}, float32, median of {args.reps}")
    print(
        f"{'variant':<24} {'numpy':>9} {'tf eager':>9} {'tf.function':>11} {'ratio':>6}  max|diff|"
    )
    ratios = []
    for label, cfg_extra, call in variants:
        layer = keras.layers.MultiHeadAttention(n, h, dtype="float32", **cfg_extra)
        layer(x, x)
        config = layer.get_config()
        weights = {
            role: (rng.normal(size=shape) / np.sqrt(shape[0] if len(shape) > 1 else 1)).astype(
                np.float32
            )
            for role, shape in kind.weight_shapes(config, [x.shape, x.shape]).items()
        }
        layer.set_weights([weights[r] for r in kind.weight_names(config)])
        compiled = tf.function(lambda q, layer=layer, call=call: layer(q, q, **call))

        def ours(config=config, weights=weights, call=call):
            return kind.apply(config, weights, [x, x], dtype=np.float32, **call)

        t_np, t_eager, t_fn = median_seconds(
            [
                ours,
                lambda layer=layer, call=call: layer(xt, xt, **call),
                lambda compiled=compiled: compiled(xt),
            ],
            args.reps,
        )
        ref = t_fn if t_fn < t_eager else t_eager
        ratio = t_np / ref
        ratios.append(ratio)
        a, r = ours(), layer(xt, xt, **call)
        a, r = (a[0], r[0]) if isinstance(a, tuple) else (a, r)
        diff = float(np.max(np.abs(a - np.asarray(r))))
        print(
            f"{label:<24} {t_np * 1e3:7.1f}ms {t_eager * 1e3:7.1f}ms {t_fn * 1e3:9.1f}ms "
            f"{ratio:6.2f}  {diff:.2e}"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    worst = max(ratios)
    verdict = "meets" if worst <= GOAL else "misses"
    print(f"\nratio = numpy / faster TensorFlow; worst {worst:.2f} {verdict} the goal <= {GOAL}")


if __name__ == "__main__":
    main()
