"""Generate the benchmark models: BERT-sized Keras 3 encoders in four file formats.

Each encoder block is the BERT-base block: MultiHeadAttention (12 heads, key_dim 64)
self-attention, Add, LayerNormalization, Dense(3072, gelu), Dense(768), Add,
LayerNormalization; d_model 768, sequence length 128. Weights are the layers' own random
initialisers under a fixed seed; nothing is trained.

Every size is written as
  - a `tf.train.Checkpoint(model=..., optimizer=...)` saved with `.save()` (`ckpt-1.index`,
    `ckpt-1.data-00000-of-00001`, `checkpoint`), with a Keras 3 Adam optimizer *built* on
    the trainable variables, so its momentum and velocity slots exist (zeros) and the data
    shard is about 3x the weights, as in a real training checkpoint;
  - a SavedModel from `model.export()`;
  - a `.keras` archive (`model.save()`);
  - a `.weights.h5` file (`model.save_weights()`).

Outputs go to bench/.cache/blocks-<N>/ with bench/.cache/manifest.json describing what was
made. A size whose files are all present with the same recipe is skipped.

    python bench/generate.py                 # 1, 4, 12 and 24 blocks
    python bench/generate.py --blocks 1 12   # only these
    python bench/generate.py --force         # regenerate even when cached
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = BENCH_DIR / ".cache"
MANIFEST = CACHE / "manifest.json"

D_MODEL = 768
HEADS = 12
KEY_DIM = 64
FFN = 3072
SEQ = 128
SEED = 1234
ALL_BLOCKS = (1, 4, 12, 24)
# Bump when the recipe changes so cached files made by an older recipe are regenerated.
RECIPE = 1

# Paths of each format relative to a size's directory.
FORMAT_PATHS = {
    "checkpoint": "checkpoint/ckpt-1",  # a prefix: .index + .data-00000-of-00001
    "savedmodel": "savedmodel",
    "keras": "model.keras",
    "weights-h5": "model.weights.h5",
}


def block_params() -> int:
    """Parameters of one encoder block."""
    attention = 3 * (D_MODEL * D_MODEL + D_MODEL) + (D_MODEL * D_MODEL + D_MODEL)
    ffn = D_MODEL * FFN + FFN + FFN * D_MODEL + D_MODEL
    norms = 2 * 2 * D_MODEL
    return attention + ffn + norms


def estimated_bytes(blocks: int) -> int:
    """Disk an N-block model needs in all four formats (float32), generously rounded."""
    weights = 4 * blocks * block_params()
    # checkpoint: weights + 2 Adam slots; SavedModel: weights stored under two keys;
    # .keras and .weights.h5: weights once each.
    return int(weights * (3 + 2 + 1 + 1) * 1.05)


def size_dir(blocks: int) -> Path:
    return CACHE / f"blocks-{blocks}"


def build_encoder(blocks: int):
    """The functional Keras 3 encoder with `blocks` BERT-base blocks."""
    import keras
    from keras import layers

    inputs = keras.Input((SEQ, D_MODEL), name="embeddings")
    x = inputs
    for _ in range(blocks):
        attended = layers.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)(x, x)
        x = layers.LayerNormalization(epsilon=1e-12)(layers.Add()([x, attended]))
        hidden = layers.Dense(FFN, activation="gelu")(x)
        out = layers.Dense(D_MODEL)(hidden)
        x = layers.LayerNormalization(epsilon=1e-12)(layers.Add()([x, out]))
    return keras.Model(inputs, x, name=f"encoder_{blocks}")


def _files_of(directory: Path) -> dict[str, int]:
    """Relative path -> size for every file under `directory`."""
    return {
        str(p.relative_to(CACHE)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def generate_one(blocks: int) -> dict:
    """Write one size in all formats; returns its manifest entry."""
    import keras
    import tensorflow as tf

    out = size_dir(blocks)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    keras.backend.clear_session()  # default layer names start from scratch for each size
    keras.utils.set_random_seed(SEED)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = build_encoder(blocks)
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    optimizer.build(model.trainable_variables)  # creates momentum and velocity slots
    timings["build"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    ckpt.save(str(out / "checkpoint" / "ckpt"))
    timings["checkpoint"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.export(str(out / FORMAT_PATHS["savedmodel"]), verbose=False)
    timings["savedmodel"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.save(out / FORMAT_PATHS["keras"])
    timings["keras"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.save_weights(out / FORMAT_PATHS["weights-h5"])
    timings["weights-h5"] = time.perf_counter() - t0

    files = _files_of(out)
    return {
        "blocks": blocks,
        "recipe": RECIPE,
        "seed": SEED,
        "parameters": int(model.count_params()),
        "weight_bytes": int(sum(v.numpy().nbytes for v in model.weights)),
        "variables": len(model.weights),
        "optimizer": "Adam (Keras 3), built: momentum and velocity slots in the checkpoint",
        "formats": {
            name: str((out / rel).relative_to(CACHE)) for name, rel in FORMAT_PATHS.items()
        },
        "files": files,
        "disk_bytes": sum(files.values()),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "made": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def load_manifest() -> dict:
    if MANIFEST.exists():
        try:
            return json.loads(MANIFEST.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def is_cached(entry: dict | None) -> bool:
    """True when a manifest entry was made by this recipe and all its files are intact."""
    if not entry or entry.get("recipe") != RECIPE or entry.get("seed") != SEED:
        return False
    for rel, size in entry.get("files", {}).items():
        p = CACHE / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return bool(entry.get("files"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=list(ALL_BLOCKS))
    parser.add_argument("--force", action="store_true", help="regenerate even when cached")
    args = parser.parse_args(argv)

    manifest = load_manifest()
    models = manifest.setdefault("models", {})
    todo = [b for b in args.blocks if args.force or not is_cached(models.get(str(b)))]
    for b in args.blocks:
        if b not in todo:
            print(f"blocks={b}: cached ({models[str(b)]['disk_bytes'] / 1e6:.0f} MB)")
    if not todo:
        return 0

    CACHE.mkdir(parents=True, exist_ok=True)
    need = sum(estimated_bytes(b) for b in todo)
    free = shutil.disk_usage(CACHE).free
    if need > free * 0.8:
        print(
            f"not enough disk for the benchmark models: need ~{need / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB free",
            file=sys.stderr,
        )
        return 2
    print(
        f"generating blocks={todo} (~{need / 1e9:.1f} GB of {free / 1e9:.0f} GB free)", flush=True
    )

    for b in todo:
        t0 = time.perf_counter()
        entry = generate_one(b)
        entry["seconds"]["total"] = round(time.perf_counter() - t0, 2)
        models[str(b)] = entry
        manifest["cache_bytes"] = sum(m["disk_bytes"] for m in models.values())
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")  # after each size: resumable
        print(
            f"blocks={b}: {entry['parameters'] / 1e6:.1f} M parameters, "
            f"{entry['disk_bytes'] / 1e6:.0f} MB on disk, {entry['seconds']['total']:.1f} s "
            f"({', '.join(f'{k} {v:.1f}' for k, v in entry['seconds'].items() if k != 'total')})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
