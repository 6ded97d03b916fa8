"""URLs as paths: list, export and diff read TF-made checkpoints and SavedModels from a
real S3-compatible object store (SeaweedFS on 127.0.0.1) and from an HTTP server with
Range support, fetching only the bytes they need.

The servers are real and local: `weed mini` with its own data directory and free
ports, and a threaded http.server. If `weed` cannot start, the tests fail saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt_tool import storage
from ckpt_tool.cli import cli
from tests.object_store import S3_CREDENTIALS, FakeGCS, RangeHTTPServer, SeaweedS3
from tests.support import FIXTURES, ROOT

# Real TF/Keras-made fixtures, uploaded under the same relative paths.
BERT = "keras_hub/bert/bert_checkpoint"  # a keras-hub BERT checkpoint, 2 blocks
SEED_CKPT = "seed/seed_checkpoint"  # a directory with a `checkpoint` state file
SEED_SAVEDMODEL = "seed/seed_tfkeras_savedmodel"
SHARDED = "edge/edge_sharded"  # five data shards
PARTITIONED = "edge/edge_partitioned"  # partitioned variables (slice entries)
UPLOADED = (BERT, SEED_CKPT, SEED_SAVEDMODEL, SHARDED, PARTITIONED)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """SeaweedFS serving s3://ckpts with the fixtures uploaded; the client environment
    holds the credentials (as a user's would)."""
    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    server = SeaweedS3(tmp_path_factory.mktemp("weed")).start()
    try:
        for rel in UPLOADED:
            server.upload(FIXTURES / rel, rel)
        yield server
    finally:
        server.stop(kill=True)  # its data directory is thrown away
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def http():
    server = RangeHTTPServer(FIXTURES).start()
    yield server
    server.stop()


def run(*args: str, endpoint: str | None = None) -> tuple[int, str, str]:
    """The CLI in this process; storage.stats counts what it fetched."""
    options = ["--storage-option", f"endpoint_url={endpoint}"] if endpoint else []
    storage.stats.reset()
    result = CliRunner().invoke(cli, [*options, *args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} escaped: {result.exception}")
    return result.exit_code, result.stdout, result.stderr


def listing(*args: str, endpoint: str | None = None) -> dict:
    code, out, err = run("list", "--json", "--all", *args, endpoint=endpoint)
    assert code == 0, err
    data = json.loads(out)
    data.pop("path")
    return data


def tensor_bytes(npz: Path) -> int:
    with np.load(npz) as z:
        return sum(z[name].nbytes for name in z.files if name != "__manifest__")


@pytest.mark.parametrize(
    "rel",
    [
        f"{BERT}/ckpt",
        SEED_CKPT,
        f"{SEED_CKPT}/ckpt-1.index",
        SEED_SAVEDMODEL,
        f"{SHARDED}/sharded",
        f"{PARTITIONED}/model.ckpt.data-00000-of-00001",
    ],
)
def test_list_of_a_url_is_the_list_of_the_local_copy(s3, http, rel: str) -> None:
    local = listing(str(FIXTURES / rel))
    assert listing(f"s3://ckpts/{rel}", endpoint=s3.endpoint) == local
    assert listing(f"{http.url}/{rel}") == local
    assert listing((FIXTURES / rel).as_uri()) == local


def test_a_bucket_directory_is_searched_for_its_one_checkpoint(s3) -> None:
    # no `checkpoint` state file: the directory's one .index is found by listing it
    assert listing(f"s3://ckpts/{SHARDED}", endpoint=s3.endpoint) == listing(
        str(FIXTURES / SHARDED)
    )


def test_list_fetches_the_index_and_object_graph_only(s3) -> None:
    prefix = FIXTURES / BERT / "ckpt"
    code, _, err = run("list", f"s3://ckpts/{BERT}/ckpt", endpoint=s3.endpoint)
    assert code == 0, err
    index = Path(f"{prefix}.index").stat().st_size
    data = Path(f"{prefix}.data-00000-of-00001").stat().st_size
    # the index, its 8-byte magic read while sniffing, and the object graph string
    assert index < storage.stats.bytes < index + 8 + 16 * 1024 < data


def test_export_from_s3_is_the_local_export_byte_for_byte(s3, tmp_path: Path) -> None:
    local_out, remote_out = tmp_path / "local.npz", tmp_path / "remote.npz"
    code, _, err = run("export", str(FIXTURES / BERT / "ckpt"), "-o", str(local_out))
    assert code == 0, err
    code, _, err = run("list", f"s3://ckpts/{BERT}/ckpt", endpoint=s3.endpoint)
    metadata = storage.stats.bytes
    code, _, err = run(
        "export", f"s3://ckpts/{BERT}/ckpt", "-o", str(remote_out), endpoint=s3.endpoint
    )
    assert code == 0, err
    assert remote_out.read_bytes() == local_out.read_bytes()
    written = tensor_bytes(remote_out)
    # Beyond what listing fetches, export fetches the tensors it writes and nothing else.
    assert written <= storage.stats.bytes - metadata <= 1.05 * written


def test_export_filter_fetches_only_matching_tensors(http, tmp_path: Path) -> None:
    url = f"{http.url}/{BERT}/ckpt"
    before = http.bytes_sent  # the server counts every body byte it sends
    code, _, err = run("list", url)
    assert code == 0, err
    metadata = http.bytes_sent - before
    out = tmp_path / "layer1.npz"
    before = http.bytes_sent
    code, _, err = run("export", url, "--filter", "transformer_layer_1/*", "-o", str(out))
    assert code == 0, err
    fetched = http.bytes_sent - before - metadata
    written = tensor_bytes(out)
    with np.load(out) as z:
        names = [n for n in z.files if n != "__manifest__"]
    assert names and all(n.startswith("transformer_layer_1/") for n in names)
    assert written <= fetched <= 1.05 * written
    everything = Path(f"{FIXTURES / BERT / 'ckpt'}.data-00000-of-00001").stat().st_size
    assert fetched < everything / 2


def test_list_stats_filter_reads_only_matching_tensors(s3) -> None:
    url = f"s3://ckpts/{BERT}/ckpt"
    run("list", url, endpoint=s3.endpoint)
    metadata = storage.stats.bytes
    code, out, err = run(
        "list", "--json", "--stats", "--filter", "pooled_dense/*", url, endpoint=s3.endpoint
    )
    assert code == 0, err
    tensors = json.loads(out)["tensors"]
    assert {t["name"] for t in tensors} == {"pooled_dense/kernel", "pooled_dense/bias"}
    assert storage.stats.bytes - metadata == sum(t["bytes"] for t in tensors)
    local = json.loads(
        run(
            "list", "--json", "--stats", "--filter", "pooled_dense/*", str(FIXTURES / BERT / "ckpt")
        )[1]
    )
    assert tensors == local["tensors"]


@pytest.mark.parametrize("rel", [f"{BERT}/ckpt", SEED_SAVEDMODEL, f"{PARTITIONED}/model.ckpt"])
def test_diff_of_a_local_checkpoint_and_its_s3_copy_finds_no_difference(s3, rel: str) -> None:
    code, out, err = run("diff", str(FIXTURES / rel), f"s3://ckpts/{rel}", endpoint=s3.endpoint)
    assert code == 0, err
    assert " 0 differ" in out and "0 only in A, 0 only in B" in out


def test_a_missing_object_is_one_line(s3) -> None:
    code, _, err = run("list", "s3://ckpts/no/such/ckpt", endpoint=s3.endpoint)
    assert code == 2
    assert err.count("\n") == 1 and "s3://ckpts/no/such/ckpt" in err


def test_wrong_credentials_are_one_line_that_never_shows_the_secret(s3) -> None:
    secret = "wrong-secret-0123456789"
    code, _, err = run(
        "--storage-option",
        "key=" + S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "--storage-option",
        f"secret={secret}",
        "list",
        f"s3://ckpts/{BERT}/ckpt",
        endpoint=s3.endpoint,
    )
    assert code == 2
    assert err.count("\n") == 1 and f"s3://ckpts/{BERT}/ckpt" in err
    assert secret not in err


def test_server_stopped_mid_export_leaves_nothing_and_says_so(tmp_path, monkeypatch) -> None:
    """A second server, killed (SIGKILL) after the export has read a few tensors."""
    for k, v in S3_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(storage, "_BACKOFF", (0.05,))  # the retries, without the waits
    server = SeaweedS3(tmp_path / "weed").start()
    try:
        url = server.upload(FIXTURES / BERT, "bert")
        original = storage.read_range
        reads = []

        def read_then_crash(path, start, length):
            if ".data-" in str(path):
                reads.append(start)
                if len(reads) == 3:
                    server.stop(kill=True)
            return original(path, start, length)

        monkeypatch.setattr(storage, "read_range", read_then_crash)
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        code, _, err = run(
            "export", f"{url}/ckpt", "-o", str(out_dir / "bert.npz"), endpoint=server.endpoint
        )
    finally:
        server.stop()
    assert len(reads) >= 3
    assert code == 2
    assert err.count("\n") == 1, err
    assert "cannot read bytes" in err and f"{url}/ckpt.data-00000-of-00001" in err
    assert list(out_dir.iterdir()) == []


def test_local_paths_never_import_fsspec(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from ckpt_tool.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['export', {str(FIXTURES / BERT / 'ckpt')!r}, "
        f"'-o', {str(tmp_path / 'x.npz')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('fsspec', 's3fs', 'aiohttp', 'botocore', 'obstore') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_verify_of_a_url_asks_for_a_local_copy() -> None:
    code, _, err = run("verify", "s3://ckpts/anything")
    assert code == 2
    assert err.count("\n") == 1 and "needs the files on disk" in err


def test_a_signed_url_query_is_used_but_never_shown(http) -> None:
    secret = "X-Signature=do-not-print-0123456789"
    assert listing(f"{http.url}/{BERT}/ckpt.index?{secret}") == listing(
        str(FIXTURES / BERT / "ckpt")
    )
    code, _, err = run("list", f"{http.url}/{BERT}/missing.index?{secret}")
    assert code == 2
    assert err.count("\n") == 1 and f"{http.url}/{BERT}/missing.index" in err
    assert "do-not-print" not in err


def test_read_ahead_keeps_order_bounds_bytes_and_raises_in_place(monkeypatch) -> None:
    import threading
    import time

    monkeypatch.setattr(storage, "AHEAD_BYTES", 100)
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def produce(n: int) -> int:
        with lock:
            in_flight[0] += n
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.01)
        return n

    sizes = [30, 30, 30, 30, 200, 10, 10, 40, 40, 40]
    got = []
    for n in storage.produce_ahead(sizes, produce, lambda n: n):
        got.append(n)
        with lock:
            in_flight[0] -= n
    assert got == sizes
    assert peak[0] == 200  # never more than AHEAD_BYTES, or one item that is larger

    def fail_at_3(n: int) -> int:
        if n == 3:
            raise ValueError("the fourth item")
        return n

    seen = []
    with pytest.raises(ValueError, match="the fourth item"):
        for n in storage.produce_ahead(range(8), fail_at_3, lambda n: 1):
            seen.append(n)
    assert seen == [0, 1, 2]


def test_diff_filter_fetches_only_the_matching_pairs(s3) -> None:
    url, local = f"s3://ckpts/{BERT}/ckpt", str(FIXTURES / BERT / "ckpt")
    pattern = "transformer_layer_1/*"
    run("list", url, endpoint=s3.endpoint)
    metadata = storage.stats.bytes
    code, out, err = run("diff", "--json", "--filter", pattern, local, url, endpoint=s3.endpoint)
    assert code == 0, err
    fetched = storage.stats.bytes - metadata
    matching = json.loads(run("list", "--json", "--filter", pattern, local)[1])["tensors"]
    assert len(json.loads(out)["pairs"]) == len(matching) > 0
    assert fetched == sum(t["bytes"] for t in matching)


# -- Keras, HDF5, NumPy and safetensors files at a URL: zip directories, HDF5 metadata and
# safetensors headers in range reads, then only the tensors asked for

BIG = ("model.keras", "model.weights.h5", "legacy.h5", "arrays.npz", "arrays.safetensors")


@pytest.fixture(scope="module")
def big(s3, tmp_path_factory):
    """A few MB in large tensors, as Keras saves them (.keras, .weights.h5, legacy .h5)
    and as NumPy (np.savez) and the safetensors library write them; uploaded to S3 and
    served over HTTP."""
    import keras
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("big")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((256,)),
            keras.layers.Dense(1024, name="wide"),
            keras.layers.Dense(512, name="narrow"),
        ]
    )
    model.save(folder / "model.keras")
    model.save_weights(folder / "model.weights.h5")
    model.save(folder / "legacy.h5")
    arrays = {w.path: np.asarray(w) for w in model.weights}
    np.savez(folder / "arrays.npz", **arrays)
    save_file(arrays, str(folder / "arrays.safetensors"))
    for name in BIG:
        s3.upload(folder / name, f"big/{name}")
    server = RangeHTTPServer(folder).start()
    yield folder, server
    server.stop()


@pytest.mark.parametrize("name", BIG)
def test_keras_h5_npz_safetensors_at_a_url_read_as_the_local_file(
    s3, big, name: str, tmp_path: Path
) -> None:
    folder, http = big
    local, url = str(folder / name), f"s3://ckpts/big/{name}"
    expected = listing(local)
    assert listing(url, endpoint=s3.endpoint) == expected
    assert listing(f"{http.url}/{name}") == expected
    for source, out in ((local, tmp_path / "local.npz"), (url, tmp_path / "remote.npz")):
        code, _, err = run("export", source, "-o", str(out), endpoint=s3.endpoint)
        assert code == 0, err
    assert (tmp_path / "remote.npz").read_bytes() == (tmp_path / "local.npz").read_bytes()
    code, out, err = run("diff", local, url, endpoint=s3.endpoint)
    assert code == 0, err
    assert " 0 differ" in out and "0 only in A, 0 only in B" in out


@pytest.mark.parametrize("name", BIG)
def test_list_of_a_url_fetches_a_small_part_of_the_file(s3, big, name: str) -> None:
    folder, http = big
    before = http.bytes_sent
    code, _, err = run("list", f"{http.url}/{name}")
    assert code == 0, err
    assert http.bytes_sent - before < (folder / name).stat().st_size / 20
    code, _, err = run("list", f"s3://ckpts/big/{name}", endpoint=s3.endpoint)
    assert code == 0, err
    assert storage.stats.bytes < (folder / name).stat().st_size / 20


def test_export_filter_of_a_keras_url_fetches_the_matching_tensors(big, tmp_path: Path) -> None:
    _, http = big
    url = f"{http.url}/model.keras"
    before = http.bytes_sent
    assert run("list", url)[0] == 0
    metadata = http.bytes_sent - before
    out = tmp_path / "narrow.npz"
    before = http.bytes_sent
    code, _, err = run("export", url, "--filter", "narrow/*", "-o", str(out))
    assert code == 0, err
    with np.load(out) as z:
        assert sorted(n for n in z.files if n != "__manifest__") == [
            "narrow/bias",
            "narrow/kernel",
        ]
    written = tensor_bytes(out)
    # small tensors may lie in pages already fetched with the metadata: at most one page
    fetched = http.bytes_sent - before - metadata
    assert written - storage.PAGE_BYTES <= fetched <= 1.05 * written


@pytest.mark.parametrize("build", ["h5_external_storage", "keras_external_storage"])
def test_a_url_h5_reading_outside_itself_is_refused(build: str, tmp_path: Path) -> None:
    from tests import test_bad_inputs

    setup = getattr(test_bad_inputs, build)(tmp_path)
    server = RangeHTTPServer(tmp_path).start()
    try:
        out = tmp_path / "out.npz"
        code, _, err = run("export", f"{server.url}/{setup.file.name}", "-o", str(out))
    finally:
        server.stop()
    assert code == 2
    assert err.count("\n") == 1 and "reads only the files it is given" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["model.weights.h5", "model.keras"])
def test_a_damaged_global_heap_at_a_url_is_refused_not_hung(name: str, tmp_path: Path) -> None:
    from tests import test_bad_inputs

    build = {"model.weights.h5": "_stalled_weights_h5", "model.keras": "_stalled_keras"}
    getattr(test_bad_inputs, build[name])(tmp_path)
    server = RangeHTTPServer(tmp_path).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ckpt_tool", "list", f"{server.url}/{name}"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("list hung on a damaged global heap at a URL")
    finally:
        server.stop()
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "global heap" in done.stderr


# Run as a separate process, so that a deadlock ends in a timeout instead of a hang.
_COLLECTION_IN_THE_SERVING_THREAD = """
import sys
import h5py
from ckpt_tool.cli import cli
from tests import object_store

# h5py objects, each freed only when its reference cycle is collected.
scratch = h5py.File("scratch.h5", "w", driver="core", backing_store=False)
pool = [scratch.create_group(f"g{i}").id for i in range(200)]


class CollectingHandler(object_store._RangeHandler):
    def send_head(self):
        if pool:
            cycle = [pool.pop()]
            cycle.append(cycle)  # garbage that only the collector frees
            del cycle
        keep = [[] for _ in range(5000)]  # enough new objects for a collection
        del keep
        return super().send_head()


object_store._RangeHandler = CollectingHandler
server = object_store.RangeHTTPServer(sys.argv[1]).start()
cli.main(["list", server.url + "/" + sys.argv[2]], standalone_mode=False)
"""


@pytest.mark.parametrize(
    "rel", ["seed/seed_weights_h5/seed.weights.h5", "seed/seed_keras/seed.keras"]
)
def test_a_collection_in_another_thread_cannot_deadlock_an_h5_read_at_a_url(rel: str) -> None:
    """h5py holds its lock while it reads through the URL's file object; a collection in
    the thread that serves those bytes, freeing an h5py object, would wait on the same
    lock forever."""
    done = subprocess.run(
        [sys.executable, "-c", _COLLECTION_IN_THE_SERVING_THREAD, str(FIXTURES), rel],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "query" in done.stdout


# -- who makes the requests: obstore where it finds everything it needs, fsspec otherwise


def test_list_from_s3_goes_through_obstore_without_importing_fsspec(s3) -> None:
    code = (
        "import sys\n"
        "from ckpt_tool.cli import cli\n"
        f"cli.main(['--storage-option', 'endpoint_url={s3.endpoint}', 'list', "
        f"'s3://ckpts/{BERT}/ckpt'], standalone_mode=False)\n"
        "heavy = [m for m in ('fsspec', 's3fs', 'aiohttp', 'botocore') if m in sys.modules]\n"
        "assert not heavy and 'obstore' in sys.modules, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "transformer_layer_1" in done.stdout


def test_the_fsspec_client_reads_what_obstore_reads(s3, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CKPT_TOOL_REMOTE_CLIENT", "fsspec")
    url, local = f"s3://ckpts/{BERT}/ckpt", str(FIXTURES / BERT / "ckpt")
    assert listing(url, endpoint=s3.endpoint) == listing(local)
    client, _ = storage._client(storage.as_path(url))
    assert type(client).__name__ == "FsspecClient"
    for source, out in ((local, tmp_path / "local.npz"), (url, tmp_path / "remote.npz")):
        code, _, err = run("export", source, "-o", str(out), endpoint=s3.endpoint)
        assert code == 0, err
    assert (tmp_path / "remote.npz").read_bytes() == (tmp_path / "local.npz").read_bytes()


_NO_AWS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
_AWS = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}


@pytest.mark.parametrize(
    "url, env, options, expected",
    [
        ("s3://b/k", _AWS, {"endpoint_url": "http://127.0.0.1:1"}, "obstore"),
        ("s3://b/k", {**_AWS, "AWS_REGION": "eu-west-1"}, {}, "obstore"),
        ("s3://b/k", _NO_AWS, {"key": "id", "secret": "s", "region_name": "x"}, "obstore"),
        # no endpoint or region: botocore finds the bucket's region
        ("s3://b/k", _AWS, {}, "fsspec"),
        # a named profile, or no credentials in sight: ~/.aws, which botocore reads
        ("s3://b/k", {**_AWS, "AWS_PROFILE": "dev", "AWS_REGION": "eu-west-1"}, {}, "fsspec"),
        ("s3://b/k", {**_NO_AWS, "AWS_REGION": "eu-west-1"}, {}, "fsspec"),
        # an option only s3fs knows
        ("s3://b/k", {**_AWS, "AWS_REGION": "eu-west-1"}, {"profile": "dev"}, "fsspec"),
        ("gs://b/k", {}, {"token": "anon", "endpoint_url": "http://127.0.0.1:1"}, "obstore"),
        ("gs://b/k", {}, {"token": "/keys/service-account.json"}, "fsspec"),
        ("http://127.0.0.1:1/k", {}, {}, "obstore"),
        ("http://127.0.0.1:1/k?X-Signature=abc", {}, {}, "fsspec"),  # a signed URL
        ("memory://k", {}, {}, "fsspec"),
    ],
)
def test_obstore_serves_a_url_only_when_it_finds_what_fsspec_would(
    monkeypatch, url: str, env: dict, options: dict, expected: str
) -> None:
    from ckpt_tool import remote_clients

    for name in [k for k in os.environ if k.startswith("AWS_")] + ["CKPT_TOOL_REMOTE_CLIENT"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    path = storage.as_path(url)
    authority = url.split("://", 1)[1].split("/", 1)[0]
    store = remote_clients.obstore_store_for(path.protocol, authority, options, bool(path._query))
    assert (store is not None) == (expected == "obstore")


def test_transient_server_errors_are_retried_then_reported_in_one_line(monkeypatch) -> None:
    monkeypatch.setattr(storage, "_BACKOFF", (0.01,))
    server = RangeHTTPServer(FIXTURES).start()
    try:
        url = f"{server.url}/{BERT}/ckpt"
        server.failures = 2  # the first two answers are 503: each retried
        assert listing(url) == listing(str(FIXTURES / BERT / "ckpt"))
        assert server.failures == 0
        server.failures = 1000  # it never recovers
        code, _, err = run("list", f"{server.url}/{SEED_CKPT}/ckpt-1")
    finally:
        server.stop()
    assert code == 2
    assert err.count("\n") == 1 and f"{server.url}/{SEED_CKPT}/ckpt-1" in err
    assert f"after {storage.RETRIES} tries" in err and "503" in err


# -- gs:// against a GCS emulator (fake-gcs-server) on 127.0.0.1


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    import shutil

    data = tmp_path_factory.mktemp("gcs")
    for rel in (BERT, SEED_SAVEDMODEL):
        shutil.copytree(FIXTURES / rel, data / "ckpts" / rel)  # bucket "ckpts"
    server = FakeGCS(data).start()
    yield server
    server.stop()


@pytest.mark.parametrize("rel", [f"{BERT}/ckpt", SEED_SAVEDMODEL])
def test_gs_urls_read_as_the_local_copy(gcs, rel: str, tmp_path: Path) -> None:
    options = ("--storage-option", f"endpoint_url={gcs.endpoint}", "--storage-option", "token=anon")
    url, local = f"gs://ckpts/{rel}", str(FIXTURES / rel)
    code, out, err = run(*options, "list", "--json", "--all", url)
    assert code == 0, err
    remote = json.loads(out)
    remote.pop("path")
    assert remote == listing(local)
    for source, out_file in ((local, tmp_path / "local.npz"), (url, tmp_path / "remote.npz")):
        code, _, err = run(*options, "export", source, "-o", str(out_file))
        assert code == 0, err
    assert (tmp_path / "remote.npz").read_bytes() == (tmp_path / "local.npz").read_bytes()
    code, out, err = run(*options, "diff", local, url)
    assert code == 0, err
    assert " 0 differ" in out
    code, _, err = run(*options, "list", "gs://ckpts/no/such/ckpt")
    assert code == 2 and err.count("\n") == 1 and "gs://ckpts/no/such/ckpt" in err
