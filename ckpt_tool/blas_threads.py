"""OpenBLAS's idle worker threads: asleep at once instead of spinning.

After each multi-threaded GEMM, OpenBLAS keeps its worker threads spinning for 2^28
cycles (about 0.1 s) in case another GEMM follows. In the forward pass each GEMM is
followed by elementwise work on every core (`layers.chunks`: bias, GELU, LayerNorm,
softmax), and on a machine with few cores the spinning workers take the cores that work
needs. OpenBLAS reads the spin time once, when NumPy loads it, from
OPENBLAS_THREAD_TIMEOUT (2^N cycles, N from 4 to 30); a value the user set is kept.

The workers then sleep right after a GEMM and are woken by the next one (a few
microseconds, against milliseconds for each GEMM here). Results are unchanged: only the
idle threads' waiting differs.
"""

from __future__ import annotations

import os
import sys

# 2^4 cycles, OpenBLAS's smallest: sleep as soon as the work is done
THREAD_TIMEOUT = "4"


def sleep_idle_blas_threads() -> bool:
    """Set OPENBLAS_THREAD_TIMEOUT unless the user did; True if it can still take effect
    (NumPy, and with it OpenBLAS, not loaded yet)."""
    if "numpy" in sys.modules:
        return False
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", THREAD_TIMEOUT)
    return True
