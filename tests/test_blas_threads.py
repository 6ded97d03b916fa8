"""OpenBLAS's idle workers sleep at once in the ckpt-tool process (`blas_threads`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ckpt_tool import blas_threads


@pytest.fixture
def numpy_not_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "numpy", raising=False)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)


def test_timeout_is_set_before_numpy_loads(numpy_not_loaded):
    assert blas_threads.sleep_idle_blas_threads() is True
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == blas_threads.THREAD_TIMEOUT


def test_a_timeout_the_user_set_is_kept(numpy_not_loaded, monkeypatch):
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    assert blas_threads.sleep_idle_blas_threads() is True
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "20"


def test_too_late_once_numpy_is_loaded(monkeypatch):
    import numpy  # noqa: F401

    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    assert blas_threads.sleep_idle_blas_threads() is False
    assert "OPENBLAS_THREAD_TIMEOUT" not in os.environ


def test_the_cli_sets_it_before_numpy_loads():
    """The command's entry module imports ckpt_tool first: NumPy's OpenBLAS starts with it."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    code = (
        "import sys, ckpt_tool.cli, os, numpy\n"
        "assert 'numpy' in sys.modules\n"
        "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == blas_threads.THREAD_TIMEOUT
