"""The same storage and catalog on an S3 object store (a local moto server: real HTTP, real s3fs)."""


import pyarrow as pa
import pytest

from storage import catalog, datasets
from storage.datasets import DatasetRef
from tests.conftest import moto_s3


@pytest.fixture(scope="module")
def s3_root():
    with moto_s3("quarry-test"):
        yield "s3://quarry-test/root"


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
