"""Describe the machine a benchmark ran on, without paths of the machine.

`describe()` returns CPU, cores, memory and package versions. `blas_probe()` says which
BLAS numpy uses and which kernel (OpenBLAS core type) it picked; it uses threadpoolctl
when that is installed and otherwise asks the loaded OpenBLAS library itself through
ctypes. Run as a script it prints the probe as JSON, so a benchmark can ask a child
process that has exactly the environment of its timed runs:

    python bench/machine.py blas
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

# OpenBLAS reads these at load time; old builds needed them, a current numpy is slowed by them.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
PACKAGES = ("numpy", "tensorflow", "keras", "h5py", "protobuf", "google-crc32c", "ckpt-tool")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD flags that decide which BLAS kernels can run."""
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe() -> dict:
    """CPU, cores, memory, OS and versions; no paths."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
        "openblas_env": {k: os.environ.get(k) for k in OPENBLAS_VARS},
    }


def _openblas_libs() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process."""
    libs: list[str] = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6 and "openblas" in parts[-1].lower() and parts[-1] not in libs:
                libs.append(parts[-1])
    except OSError:
        pass
    return libs


def _ctypes_probe() -> list[dict]:
    """Ask each loaded OpenBLAS for its version string, kernel and thread count."""
    found = []
    for lib_path in _openblas_libs():
        lib = ctypes.CDLL(lib_path)
        info: dict = {"internal_api": "openblas", "filename": Path(lib_path).name}
        for prefix, suffix in (
            ("scipy_openblas_", "64_"),
            ("scipy_openblas_", ""),
            ("openblas_", ""),
        ):
            try:
                get_config = getattr(lib, f"{prefix}get_config{suffix}")
                get_core = getattr(lib, f"{prefix}get_corename{suffix}")
                get_threads = getattr(lib, f"{prefix}get_num_threads{suffix}")
            except AttributeError:
                continue
            get_config.restype = ctypes.c_char_p
            get_core.restype = ctypes.c_char_p
            info["version"] = get_config().decode().split()[1]
            info["architecture"] = get_core().decode()
            info["num_threads"] = int(get_threads())
            break
        found.append(info)
    return found


def blas_probe() -> dict:
    """numpy's BLAS: library, version, kernel (architecture) and threads, in this process."""
    import numpy as np

    # A matmul makes sure the BLAS library is loaded and initialised.
    np.ones((64, 64)) @ np.ones((64, 64))
    config = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
    result: dict = {
        "numpy": np.__version__,
        "numpy_blas": f"{config.get('name', '?')} {config.get('version', '')}".strip(),
        "openblas_env": {k: os.environ.get(k) for k in OPENBLAS_VARS},
    }
    try:
        from threadpoolctl import threadpool_info

        pools = [
            {
                k: (Path(v).name if k == "filepath" else v)
                for k, v in pool.items()
                if k in ("internal_api", "version", "architecture", "num_threads", "filepath")
            }
            for pool in threadpool_info()
            if pool.get("user_api") == "blas"
        ]
        result["source"] = "threadpoolctl"
    except ImportError:
        pools = _ctypes_probe()
        result["source"] = "ctypes"
    result["pools"] = pools
    return result


def blas_summary(probe: dict) -> str:
    """One line: `openblas 0.3.31 Haswell, 2 threads`."""
    pools = probe.get("pools") or []
    if not pools:
        return probe.get("numpy_blas", "unknown BLAS")
    parts = []
    for p in pools:
        arch = p.get("architecture", "?")
        parts.append(
            f"{p.get('internal_api', '?')} {p.get('version', '')} kernel {arch}, "
            f"{p.get('num_threads', '?')} threads"
        )
    return "; ".join(parts)


def clean_blas_env(env: dict[str, str]) -> dict[str, str]:
    """A copy of `env` without the OpenBLAS overrides (for numpy timing children only)."""
    return {k: v for k, v in env.items() if k not in OPENBLAS_VARS}


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "describe"
    data = blas_probe() if what == "blas" else describe()
    print(json.dumps(data, indent=2))
