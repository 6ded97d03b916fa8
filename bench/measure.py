"""Time whole processes: wall time and peak RSS of each child, one new process per run."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Run:
    seconds: float
    max_rss_kb: int  # peak resident set of the child (and the children it waited for)
    returncode: int
    anon_kb: int = 0  # sampled peak of anonymous memory (RssAnon): RSS less mapped files


@dataclass
class Measurement:
    """Several cold runs of one command."""

    label: str
    argv: list[str]
    runs: list[Run] = field(default_factory=list)
    error: str | None = None  # why it failed: the last lines of stderr, or a timeout

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def spread(self) -> tuple[float, float]:
        times = [r.seconds for r in self.runs]
        return min(times), max(times)

    @property
    def peak_rss_mb(self) -> float:
        return max(r.max_rss_kb for r in self.runs) / 1024

    @property
    def peak_anon_mb(self) -> float:
        return max(r.anon_kb for r in self.runs) / 1024

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "argv": self.argv,
            "seconds": [round(r.seconds, 4) for r in self.runs],
            "max_rss_kb": [r.max_rss_kb for r in self.runs],
            "anon_kb": [r.anon_kb for r in self.runs],
            "median": round(self.median, 4) if self.runs else None,
            "error": self.error,
        }


class _AnonSampler(threading.Thread):
    """Polls /proc/PID/status for RssAnon while the child runs (a lower bound of its peak).

    ru_maxrss counts the pages of memory-mapped files too (a reader that mmaps a data
    shard shows the touched shard in its RSS); RssAnon is the process's own memory.
    """

    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.status = f"/proc/{pid}/status"
        self.interval = interval
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with open(self.status) as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                            break
            except (OSError, ValueError):
                return
            self.done.wait(self.interval)


def run_once(
    argv: list[str],
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
    stdout_path: str | None = None,
) -> tuple[Run, str]:
    """Start `argv`, wait for it, and return its timing and the tail of its stderr.

    os.wait4 gives the rusage of exactly this child, so peak RSS is per run (a delta of
    RUSAGE_CHILDREN would not be: its ru_maxrss is the maximum over all children so far).
    """
    with tempfile.TemporaryFile() as err:
        out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
            killer = threading.Timer(timeout, proc.kill)
            killer.start()
            sampler = _AnonSampler(proc.pid)
            sampler.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                killer.cancel()
                sampler.done.set()
            seconds = time.perf_counter() - start
            sampler.join()
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if stdout_path:
                out.close()
        err.seek(0)
        tail = err.read()[-4000:].decode(errors="replace")
    if seconds >= timeout:
        tail = f"timed out after {timeout:.0f} s\n{tail}"
    return Run(seconds, int(usage.ru_maxrss), proc.returncode, sampler.peak_kb), tail


def last_error_line(stderr: str) -> str:
    """The most telling line of a failed child's stderr (skipping TensorFlow's log noise)."""
    lines = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith(("I0000", "W0000", "WARNING: All log messages"))
    ]
    return lines[-1][:200] if lines else "failed without a message"


def measure(
    label: str,
    argv: list[str],
    runs: int,
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
    before_each=None,
) -> Measurement:
    """Run `argv` `runs` times, each in a new process; stop at the first failure."""
    m = Measurement(label, argv)
    for _ in range(runs):
        if before_each is not None:
            before_each()
        run, stderr = run_once(argv, cwd=cwd, env=env, timeout=timeout)
        if run.returncode != 0:
            m.error = (
                last_error_line(stderr) if "timed out" not in stderr else stderr.splitlines()[0]
            )
            break
        m.runs.append(run)
    return m
