"""The same storage and catalog on an S3 object store (a local moto server: real HTTP, real s3fs)."""

import socket

import pyarrow as pa
import pytest

from storage import catalog, datasets
from storage.datasets import DatasetRef


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_root():
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    mp = pytest.MonkeyPatch()
    # fsspec reads FSSPEC_<PROTOCOL>_<KWARG> from the environment: credentials and endpoint never enter the code
    mp.setenv("FSSPEC_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("quarry-test")
    yield "s3://quarry-test/root"
    mp.undo()
    fsspec.config.conf.pop("s3", None)
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_write_commit_and_read_back_on_s3(s3_root):
    ref = DatasetRef(s3_root, "remote", "ingest", "b" * 12)
    m = datasets.write_table(ref, pa.table({"doc_id": [f"d{i}" for i in range(25)]}), max_rows_per_shard=10)
    assert m["num_rows"] == 25 and len(m["files"]) == 3
    assert datasets.is_committed(ref)
    assert datasets.read_table(ref).num_rows == 25
    again = datasets.write_table(ref, pa.table({"doc_id": ["other"]}))
    assert again["created_at"] == m["created_at"]  # committed: a no-op


def test_catalog_queries_s3_through_fsspec(s3_root):
    ref = DatasetRef(s3_root, "remote2", "ingest", "c" * 12)
    datasets.write_table(ref, pa.table({"doc_id": ["a", "b", "c"], "domain": ["web", "web", "code"]}))
    con = catalog.connect(s3_root)
    rows = con.execute("select domain, count(*) from remote2__ingest group by 1 order by 1").fetchall()
    assert rows == [("code", 1), ("web", 2)]
    assert con.execute("select count(*) from versions where dataset = 'remote2'").fetchone()[0] == 1
