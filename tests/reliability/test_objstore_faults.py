"""Object-store faults on an ``s3://`` root (moto on loopback behind a small real HTTP proxy that injects them).

Every fault runs the production ingest stage (tests/reliability/_harness.py's 45-record input: 43 documents, 2
broken lines) through the executor onto its own prefix of one bucket, and the outcome must equal the undisturbed
run's: the same committed documents, input = committed + quarantine, and never a manifest naming less than the
whole version. The proxy (``_FaultProxy``) forwards every request to moto and, when told, answers 503 ``SlowDown``
for a seeded fraction, fails multipart parts, omits just-written keys from LIST answers (eventual consistency) or
echoes the request's credentials in an error (to prove storage/objstore.py redacts them). The outage test stops the
moto server itself and starts it again on the same port.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

from tests.conftest import free_port
from tests.reliability import _harness as h

BUCKET = "quarry-faults"
N_INPUT = 45  # _harness.make_inputs: 43 JSON documents (18 + 18 + 7) + 2 broken lines
SECRET = "quarrySecretKey0123456789"
ACCESS = "AKIAQUARRYTESTKEY0001"


class _FaultProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream_port = upstream_port
        self.rng = random.Random(29)
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.slowdown = 0.0  # fraction of requests answered 503 SlowDown
        self.fail_part_from = None  # UploadPart with partNumber >= this: 500 InternalError
        self.stale_s = 0.0  # LIST answers omit keys written less than this many seconds ago
        self.echo_auth = False  # answer 503 with the request's Authorization header in the message
        self.on_put = None  # called with the key of every PUT (the outage test stops moto from it)
        self.written: dict[str, float] = {}
        self.counts = {"slowdown": 0, "hidden": 0, "failed_parts": 0, "dropped": 0}
        self.throttled: set[tuple[str, str]] = set()  # requests answered SlowDown ...
        self.served: set[tuple[str, str]] = set()  # ... and requests moto answered (a retry of one lands here)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _error(self, status: int, code: str, message: str) -> None:
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
                "<RequestId>proxy</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        srv: _FaultProxy = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        with srv.lock:
            draw = srv.rng.random()
        if srv.echo_auth:
            return self._error(503, "SlowDown", f"reduce your request rate ({self.headers.get('Authorization')})")
        if draw < srv.slowdown:
            srv.counts["slowdown"] += 1
            srv.throttled.add((self.command, self.path))
            return self._error(503, "SlowDown", "Please reduce your request rate.")
        if (self.command == "PUT" and "partNumber" in query and srv.fail_part_from is not None
                and int(query["partNumber"][0]) >= srv.fail_part_from):
            srv.counts["failed_parts"] += 1
            return self._error(500, "InternalError", "We encountered an internal error. Please try again.")
        if self.command == "PUT" and srv.on_put is not None:
            srv.on_put(url.path)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", srv.upstream_port, timeout=30)
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in ("expect", "connection"):
                    conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:  # the object store is down: the client sees its connection dropped, as with a dead endpoint
            srv.counts["dropped"] += 1
            self.close_connection = True
            return
        srv.served.add((self.command, self.path))
        if self.command in ("PUT", "POST") and resp.status == 200:
            key = urllib.parse.unquote(url.path.lstrip("/").split("/", 1)[-1])
            srv.written[key] = time.monotonic()
        if self.command == "GET" and ("list-type" in query or "prefix" in query) and srv.stale_s:
            fresh = {k for k, t in srv.written.items() if time.monotonic() - t < srv.stale_s}

            def drop(m: re.Match) -> bytes:
                if m.group(1).decode() in fresh:
                    srv.counts["hidden"] += 1
                    return b""
                return m.group(0)

            data = re.sub(rb"<Contents><Key>([^<]*)</Key>.*?</Contents>", drop, data, flags=re.S)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        # a HEAD answer has no body but announces the object's size
        self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class _Moto:
    """A moto server that can be stopped and started again on the same port (its backend state is in-process)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.cls, self.port = ThreadedMotoServer, free_port()
        self.server = None
        self.start()

    def start(self) -> None:
        self.server = self.cls(ip_address="127.0.0.1", port=self.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    h._env()
    moto = _Moto()
    proxy = _FaultProxy(moto.port)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    mp = pytest.MonkeyPatch()
    mp.setenv("FSSPEC_S3_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_address[1]}")
    mp.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for k, v in {"QUARRY_S3_BACKOFF_S": "0.05", "QUARRY_S3_BACKOFF_MAX_S": "0.5", "QUARRY_S3_ATTEMPTS": "12",
                 "QUARRY_S3_DEADLINE_S": "20"}.items():
        mp.setenv(k, v)
    import fsspec.config
    import s3fs

    from storage import datasets  # noqa: F401 - installs the retrying s3 filesystem

    fsspec.config.set_conf_env(fsspec.config.conf)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = datasets.filesystem(f"s3://{BUCKET}")[0]
    fs.mkdir(BUCKET)
    inputs = tmp_path_factory.mktemp("inputs")
    ref = _ingest(f"s3://{BUCKET}/reference", inputs)
    try:
        yield {"moto": moto, "proxy": proxy, "fs": fs, "inputs": inputs, "reference": ref}
    finally:
        mp.undo()
        fsspec.config.conf.pop("s3", None)
        s3fs.S3FileSystem.clear_instance_cache()
        proxy.shutdown()
        moto.stop()


def _ingest(root: str, inputs) -> dict:
    """Run the production ingest on ``root``; return its committed documents and quarantine, checked whole."""
    from storage import datasets
    from tests import stages

    # 16 documents a shard (the harness's 4 would triple the requests: ~0.1 s each through moto on a busy box)
    ref = stages.ingest(h.sources(inputs), root=root, dataset=h.DATASET, docs_per_shard=16, profile=h.serial())
    docs = datasets.read_table(ref)
    manifests = {m["stage"]: m for m in datasets.iter_manifests(root)}
    quarantine = sum(m["num_rows"] for s, m in manifests.items() if s.endswith("quarantine"))
    for m in manifests.values():  # every file a manifest names is there, whole (sizes and rows as recorded)
        for f in m["files"]:
            with datasets.open_parquet(datasets._join(m["uri"], f["name"]), f):
                pass
    assert docs.num_rows + quarantine == N_INPUT, (docs.num_rows, quarantine)
    return {"ids": sorted(docs.column("doc_id").to_pylist()), "quarantine": quarantine,
            "files": len(datasets.read_manifest(ref)["files"])}


@pytest.fixture
def proxy(s3):
    s3["proxy"].reset()
    yield s3["proxy"]
    s3["proxy"].reset()


def test_object_store_down_for_a_while_is_retried_and_the_stage_commits_whole(s3, proxy, caplog):
    moto, puts = s3["moto"], []

    def outage(key: str) -> None:
        puts.append(key)
        if len(puts) == 4:  # mid-stage: a few shards written, then the store goes away for 1.5 s
            moto.stop()
            threading.Timer(1.5, moto.start).start()

    proxy.on_put = outage
    with caplog.at_level(logging.WARNING, logger="quarry"):
        out = _ingest(f"s3://{BUCKET}/outage", s3["inputs"])
    assert out == s3["reference"]
    assert proxy.counts["dropped"] > 0
    retries = [r.getMessage() for r in caplog.records if "object store:" in r.getMessage() and "retry" in r.getMessage()]
    assert retries and all(f"s3://{BUCKET}/outage" in m for m in retries), retries[:3]


def test_outage_longer_than_the_deadline_fails_in_one_line_and_a_rerun_commits_whole(s3, proxy, monkeypatch):
    from storage import datasets

    moto, root = s3["moto"], f"s3://{BUCKET}/longoutage"
    monkeypatch.setenv("QUARRY_S3_DEADLINE_S", "3")
    down = []

    def outage(key: str) -> None:
        if "/longoutage/rel/" in key:
            down.append(key)
            if len(down) == 3:  # mid-stage, after a few shards
                moto.stop()

    proxy.on_put = outage
    try:
        with pytest.raises(Exception) as err:
            _ingest(root, s3["inputs"])
    finally:
        proxy.on_put = None
        if down:
            moto.start()
    msg = str(err.value)
    first = msg.splitlines()[0]  # the executor's one line (its traceback follows): operation, object, bound
    assert re.search(rf"s3://{BUCKET}/longoutage/\S+ failed after \d+ attempt\(s\) over [\d.]+ s", first), msg
    assert SECRET not in msg and ACCESS not in msg
    assert not any(m["uri"].startswith(root) for m in datasets.iter_manifests(root))  # nothing half-committed
    monkeypatch.setenv("QUARRY_S3_DEADLINE_S", "20")
    assert _ingest(root, s3["inputs"]) == s3["reference"]


def test_a_multipart_write_failing_after_its_first_part_leaves_nothing_visible_and_a_rerun_commits(s3, proxy,
                                                                                                   monkeypatch):
    import boto3

    from storage import datasets
    from storage.datasets import DatasetRef

    monkeypatch.setenv("QUARRY_S3_PART_BYTES", str(5 * 2**20))
    monkeypatch.setenv("QUARRY_S3_ATTEMPTS", "3")
    rng = random.Random(7)
    table = pa.table({"doc_id": [f"d{i}" for i in range(12)],
                      "blob": [rng.randbytes(2**20) for _ in range(12)]})  # 12 MiB incompressible: 3 parts
    ref = DatasetRef(f"s3://{BUCKET}/multipart", "big", "ingest", "a" * 12)
    proxy.fail_part_from = 2
    with pytest.raises(Exception) as err:
        datasets.write_table(ref, table, max_rows_per_shard=100)
    assert f"s3://{BUCKET}/multipart/big/ingest/{'a' * 12}/part-00000.parquet" in str(err.value)
    assert proxy.counts["failed_parts"] >= 3
    fs = s3["fs"]
    fs.invalidate_cache()
    assert not datasets.is_committed(ref) and not fs.exists(datasets.shard_uri(ref, "part-00000.parquet"))
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3['moto'].port}")
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []  # aborted: no orphaned parts
    proxy.fail_part_from = None
    m = datasets.write_table(ref, table, max_rows_per_shard=100)
    assert m["num_rows"] == 12 and datasets.read_table(ref).equals(table)


def test_throttling_answers_are_retried_and_the_output_is_unchanged(s3, proxy, caplog):
    proxy.slowdown = 0.2
    with caplog.at_level(logging.WARNING, logger="quarry"):
        out = _ingest(f"s3://{BUCKET}/throttled", s3["inputs"])
    assert out == s3["reference"]
    assert proxy.counts["slowdown"] >= 5
    assert proxy.throttled <= proxy.served  # every throttled request was sent again until moto answered it
    # logged where it was retried (the driver's own requests here; the workers log in their processes)
    assert any("SlowDown" in r.getMessage() and "retry" in r.getMessage() for r in caplog.records)


def test_a_stale_listing_never_yields_a_partial_commit(s3, proxy, caplog):
    """Keys written < 1 s ago are missing from every LIST: the commit waits for the listing to show every shard
    the writers reported; readers open the files the manifest names (GET/HEAD), never a listing."""
    from storage import datasets

    proxy.stale_s = 1.0
    root = f"s3://{BUCKET}/stale"
    with caplog.at_level(logging.WARNING, logger="quarry"):
        out = _ingest(root, s3["inputs"])
    assert out == s3["reference"]
    assert proxy.counts["hidden"] > 0
    assert any("the listing omits" in r.getMessage() for r in caplog.records)
    # a version committed a moment ago: its files are hidden from LIST, yet it reads whole through its manifest
    ref = datasets.DatasetRef(root, "fresh", "ingest", "f" * 12)
    table = pa.table({"doc_id": [f"x{i}" for i in range(30)]})
    datasets.write_table(ref, table, max_rows_per_shard=10, expect=[datasets.shard_name(i) for i in range(3)])
    assert datasets.read_table(ref).equals(table)


def test_no_credential_reaches_an_error_or_a_log_line(s3, proxy, caplog, monkeypatch):
    from storage import datasets

    monkeypatch.setenv("QUARRY_S3_ATTEMPTS", "2")
    proxy.echo_auth = True  # every answer: 503 whose message carries the request's Authorization (the access key)
    with caplog.at_level(logging.DEBUG, logger="quarry"), pytest.raises(Exception) as err:
        datasets.ensure_writable(f"s3://{BUCKET}/secret")
    text = str(err.value) + "\n".join(r.getMessage() for r in caplog.records)
    assert "retry 1/1" in text and "***" in text  # the echoed credential was there, and was masked
    assert ACCESS not in text and SECRET not in text
    assert os.environ["AWS_ACCESS_KEY_ID"] == ACCESS
