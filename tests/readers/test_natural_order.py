"""natural_keys (all names at once) orders names as natural_key (one at a time) does."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ckpt_tool.readers import natural_order
from ckpt_tool.readers.natural_order import (
    MAX_PADDED_WIDTH,
    natural_key,
    natural_keys,
    natural_matrix,
)


def _order(texts: list[str], keys: list) -> list[int]:
    return sorted(range(len(texts)), key=keys.__getitem__)


EDGES = ["a007b", "a7b", "a7", "a", "7a", "b", "0", "00", "", "a/", "a0", "x1", "x01", "a b"]


@pytest.mark.parametrize("seed", range(20))
def test_same_order_as_one_key_per_name(seed):
    rng = random.Random(seed)
    alphabet = "ab/_.-: ~" + "0123456789" * 3
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(300)]
    texts += EDGES
    keys = natural_keys(texts)
    assert all(isinstance(k, str) for k in keys)  # the fast form was taken
    assert _order(texts, keys) == _order(texts, [natural_key(t) for t in texts])


@pytest.mark.parametrize(
    "extra",
    [
        "line\nbreak",
        "tab\there",
        "caf\u00e9 7",
        "\u0663 arabic digit",
        "x" + "9" * (MAX_PADDED_WIDTH + 1),
    ],
)
def test_names_outside_the_fast_form_fall_back_to_key_tuples(extra):
    texts = [*EDGES, extra, "x9", "line 2"]
    keys = natural_keys(texts)
    assert all(isinstance(k, tuple) for k in keys)
    assert _order(texts, keys) == _order(texts, [natural_key(t) for t in texts])


def test_no_names():
    assert natural_keys([]) == []


def _matrix(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    raw = [t.encode("ascii") for t in texts]
    width = max(map(len, raw), default=0)
    matrix = np.zeros((len(raw), width + -width % 8), np.uint8)
    for i, t in enumerate(raw):
        matrix[i, : len(t)] = np.frombuffer(t, np.uint8)
    return matrix, np.array([len(t) for t in raw], np.int64)


@pytest.mark.parametrize("seed", range(10))
def test_natural_matrix_rows_sort_as_the_key_tuples(monkeypatch, seed):
    monkeypatch.setattr(natural_order, "_ROWS", 37)  # several chunks
    rng = random.Random(seed)
    alphabet = "ab/_.-: ~" + "0123456789" * 3
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(14))) for _ in range(300)]
    texts += [*EDGES, "x" + "9" * MAX_PADDED_WIDTH]
    matrix, lengths = _matrix(texts)
    words = natural_matrix(matrix, lengths).view(">u8")
    order = np.lexsort(words.T[::-1]).tolist()  # ties in the order given
    assert order == _order(texts, [natural_key(t) for t in texts])


def test_natural_matrix_declines_numbers_longer_than_the_limit():
    matrix, lengths = _matrix(["a1", "x" + "9" * (MAX_PADDED_WIDTH + 1)])
    assert natural_matrix(matrix, lengths) is None
