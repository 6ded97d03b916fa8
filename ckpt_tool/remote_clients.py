"""The clients that talk to object stores and web servers for storage.RemotePath.

Two clients answer the same three questions (what is at a key, what is under a prefix,
the bytes of a range):

- `ObstoreClient`: obstore, the Python bindings of Rust's object_store crate, for s3://,
  gs:// and http(s)://. It imports in tens of milliseconds and signs its first request
  in a few, so `list` of a bucket costs about what `list` of the local copy costs.
- `FsspecClient`: fsspec and its filesystems (s3fs, gcsfs, its HTTP filesystem), for
  what obstore does not read the same way: other protocols, AWS profiles and config
  files (botocore reads `~/.aws`), a bucket whose region only botocore would find,
  signed URLs with a query string, directory pages of a web server, and storage options
  obstore does not know.

`client_for(protocol, authority, options, has_query)` picks one; a URL with a query
string always goes to fsspec, and CKPT_TOOL_REMOTE_CLIENT=fsspec (or =obstore) forces a
choice where both can serve. Both are imported only when a URL is opened.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

OBSTORE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "http", "https")

# --storage-option names (fsspec's, as s3fs and gcsfs spell them) -> obstore config keys
_S3_NAMES = {
    "endpoint_url": "endpoint",
    "key": "access_key_id",
    "secret": "secret_access_key",
    "token": "session_token",
    "anon": "skip_signature",
    "region_name": "region",
    "requester_pays": "request_payer",
}
_GCS_NAMES = {"endpoint_url": "base_url"}
_TIMEOUTS = {"connect_timeout": "10s", "timeout": "60s"}

_stores: dict[tuple, Any] = {}
_lock = threading.Lock()


class ObjectStoreError(Exception):
    """An obstore error as one line, with the HTTP status when the server answered."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


def client_for(protocol: str, authority: str, options: Mapping[str, Any], has_query: bool):
    """The client for URLs of `protocol` on `authority` (bucket or host[:port])."""
    store = obstore_store_for(protocol, authority, options, has_query)
    if store is None:
        return FsspecClient(protocol, options)
    return ObstoreClient(store, protocol, f"{protocol}://{authority}")


def obstore_store_for(protocol: str, authority: str, options: Mapping[str, Any], has_query: bool):
    """The obstore store that serves these URLs, or None where fsspec must."""
    forced = os.environ.get("CKPT_TOOL_REMOTE_CLIENT", "").strip().lower()
    wanted = forced == "obstore" or (forced != "fsspec" and _obstore_serves(protocol, options))
    if wanted and protocol in OBSTORE_PROTOCOLS and not has_query:
        return _obstore_store(protocol, authority, options)
    return None


def _obstore_serves(protocol: str, options: Mapping[str, Any]) -> bool:
    """Whether obstore finds everything it needs where fsspec's filesystem would."""
    if protocol in ("s3", "s3a"):
        env = os.environ
        if env.get("AWS_PROFILE") and "key" not in options:
            return False  # a named profile lives in ~/.aws, which only botocore reads
        credentials = (
            ("key" in options and "secret" in options)
            or options.get("anon") is True
            or (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
            or env.get("AWS_SKIP_SIGNATURE", "").lower() == "true"
            or (env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"))
        )
        # Without an endpoint or a region, botocore finds the bucket's region itself.
        located = any(k in options for k in ("endpoint_url", "region_name")) or any(
            env.get(k)
            for k in (
                "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3",
                "AWS_ENDPOINT",
                "AWS_REGION",
                "AWS_DEFAULT_REGION",
            )
        )
        return bool(credentials and located)
    if protocol in ("gs", "gcs"):
        return options.get("token") in (None, "anon")
    return protocol in ("http", "https") and not options


def _obstore_store(protocol: str, authority: str, options: Mapping[str, Any]):
    """An obstore store for the bucket or host, shared by all threads; None when obstore
    is missing or does not take one of the options. A store reads the environment once,
    when it is made: a change to it makes a new one."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_"))))
    key = (protocol, authority, tuple(sorted((k, str(v)) for k, v in options.items())), env)
    with _lock:
        if key in _stores:
            return _stores[key]
    try:
        from obstore.exceptions import UnknownConfigurationKeyError
        from obstore.store import GCSStore, HTTPStore, S3Store
    except ImportError:
        return None
    # One attempt per call inside obstore: the retries are storage.py's (short pauses),
    # so a dead endpoint fails in seconds, not minutes.
    common = {
        "client_options": {**_TIMEOUTS, "allow_http": True},  # the URL's scheme decides
        "retry_config": {"max_retries": 0},
    }
    try:
        if protocol in ("s3", "s3a"):
            config = _translated(options, _S3_NAMES)
            if config.get("skip_signature") is False:
                config.pop("skip_signature")
            store = S3Store(authority, **config, **common)
        elif protocol in ("gs", "gcs"):
            config = _translated({k: v for k, v in options.items() if k != "token"}, _GCS_NAMES)
            if options.get("token") == "anon":
                config["skip_signature"] = True
            store = GCSStore(authority, **config, **common)
        else:
            store = HTTPStore.from_url(f"{protocol}://{authority}", **common)
    except (UnknownConfigurationKeyError, TypeError, ValueError):
        return None  # an option only fsspec's filesystem knows
    with _lock:
        return _stores.setdefault(key, store)


def _translated(options: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name, value in options.items():
        key = names.get(name, name)
        if key == "request_payer" and value is True:
            value = "true"
        out[key] = value
    return out


class ObstoreClient:
    """Keys are paths inside the bucket (s3, gs) or on the host (http)."""

    def __init__(self, store, protocol: str, base: str):
        self.store = store
        self.protocol, self.base = protocol, base
        self.has_directories = protocol not in ("http", "https")

    def key(self, url: str) -> str:
        """The key of a URL: its part after the bucket or host (a web path unquoted, as
        obstore quotes it again)."""
        rest = url.split("://", 1)[1].partition("/")[2]
        return rest if self.has_directories else unquote(rest)

    def info(self, key: str, kind: str | None = None) -> dict | None:
        """{"type": "file" | "directory", "size": bytes}, or None when nothing (or, with
        `kind`, nothing of that kind) is there."""
        import obstore

        if key and kind != "directory":
            try:
                meta = _call(obstore.head, self.store, key)
                return {"type": "file", "size": int(meta["size"])}
            except FileNotFoundError:
                pass
        if kind == "file" or not self.has_directories:
            return None
        # An object store's directory is a prefix that some key starts with.
        found = _call(obstore.list_with_delimiter, self.store, key or None)
        if found["objects"] or found["common_prefixes"]:
            return {"type": "directory", "size": 0}
        if key:
            return None
        return {"type": "directory", "size": 0}  # the bucket itself

    def ls(self, key: str) -> list[dict]:
        """The entries directly under `key`: {"name": last part, "type", "size"}."""
        import obstore

        if not self.has_directories:  # a web server's directory page: fsspec reads its links
            return FsspecClient(self.protocol, {}).ls(f"{self.base}/{quote(key)}")
        found = _call(obstore.list_with_delimiter, self.store, key or None)
        entries = [
            {"name": p.rstrip("/").rsplit("/", 1)[-1], "type": "directory", "size": 0}
            for p in found["common_prefixes"]
        ]
        entries += [
            {"name": m["path"].rsplit("/", 1)[-1], "type": "file", "size": int(m["size"])}
            for m in found["objects"]
        ]
        if not entries and key:
            raise FileNotFoundError(key)
        return entries

    def read(self, key: str, start: int, length: int):
        """The bytes start..start+length (a buffer; fewer when the object is shorter)."""
        import obstore

        return _call(obstore.get_range, self.store, key, start=start, length=length)


def _call(function, *args, **kwargs):
    """function(...) with obstore's errors as the built-in kinds storage.py sorts:
    FileNotFoundError, PermissionError, ValueError (a bad path or option), or
    ObjectStoreError carrying the HTTP status (a network error has none)."""
    from obstore import exceptions as ox

    try:
        return function(*args, **kwargs)
    except FileNotFoundError as e:
        raise FileNotFoundError(_one_line(e)) from None
    except (ox.PermissionDeniedError, ox.UnauthenticatedError) as e:
        raise PermissionError(_one_line(e)) from None
    except (ox.InvalidPathError, ox.NotSupportedError, ox.UnknownConfigurationKeyError) as e:
        raise ValueError(_one_line(e)) from None
    except ox.BaseError as e:
        status = re.search(r"status code: (\d{3})", str(e))
        raise ObjectStoreError(_one_line(e), int(status[1]) if status else None) from None


def _one_line(e: BaseException) -> str:
    """obstore's message without its debug dump and timings."""
    text = str(e).split("\n\nDebug source:", 1)[0]
    text = re.sub(r" in [0-9.]+(?:µs|ms|s) - ", ": ", text)
    return " ".join(text.split()).rstrip(": ")


class FsspecClient:
    """fsspec's filesystem for the protocol; keys are fsspec paths (bucket included)."""

    def __init__(self, protocol: str, options: Mapping[str, Any]):
        self.fs = _fsspec_filesystem(protocol, dict(options))
        self.protocol = protocol
        self.has_directories = protocol not in ("http", "https")

    def key(self, url: str) -> str:
        if self.protocol in ("http", "https"):
            return url
        return self.fs._strip_protocol(url)

    def info(self, key: str, kind: str | None = None) -> dict | None:
        try:
            info = self.fs.info(key)
        except FileNotFoundError:
            return None
        if kind and info.get("type") != kind:
            return None
        return {"type": info.get("type"), "size": int(info.get("size") or 0)}

    def ls(self, key: str) -> list[dict]:
        return [
            {
                "name": str(e["name"]).rstrip("/").rsplit("/", 1)[-1],
                "type": e.get("type"),
                "size": int(e.get("size") or 0),
            }
            for e in self.fs.ls(key, detail=True)
        ]

    def read(self, key: str, start: int, length: int) -> bytes:
        return self.fs.cat_file(key, start=start, end=start + length)


def _fsspec_filesystem(protocol: str, options: dict[str, Any]):
    try:
        import fsspec
    except ImportError:
        raise ImportError("reading URLs needs fsspec: pip install 'ckpt-tool[remote]'") from None
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as e:
        raise ImportError(
            f"cannot read {protocol}:// URLs ({e}); pip install 'ckpt-tool[remote]'"
        ) from None
    if protocol in ("s3", "s3a"):
        # One attempt per call inside s3fs and botocore: the retries are storage.py's.
        config = dict(options.pop("config_kwargs", None) or {})
        config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        config.setdefault("connect_timeout", 10)
        config.setdefault("read_timeout", 60)
        options["config_kwargs"] = config
    if protocol in ("http", "https"):
        options.setdefault("block_size", 0)  # no read-ahead: a range is what we ask for
    fs = cls(**options)
    if protocol in ("s3", "s3a"):
        fs.retries = 1
    return fs
