"""The DuckDB catalog: versions from manifests, views over the latest committed version, lineage, sandboxing."""

import time

import duckdb
import pyarrow as pa
import pytest

from storage import catalog, datasets
from storage.datasets import DatasetRef


def _commit(root, stage, rows, parent=None, params=None):
    src = parent or DatasetRef(root, "toy", "ingest", "0" * 12)
    ref = datasets.derive(src, stage, _commit, params or {"n": rows})
    datasets.write_table(ref, pa.table({"doc_id": [f"d{i}" for i in range(rows)]}), parents=[src] if parent else [])
    return ref


def test_views_point_at_the_latest_committed_version(tmp_path):
    root = str(tmp_path)
    _commit(root, "signals", 3)
    time.sleep(0.01)
    newer = _commit(root, "signals", 5)
    con = catalog.connect(root)
    assert con.execute("select count(*) from toy__signals").fetchone()[0] == 5
    assert con.execute("select count(*) from versions").fetchone()[0] == 2
    row = con.execute("select version, num_rows from versions order by created_at desc limit 1").fetchone()
    assert row == (newer.version, 5)


def test_an_uncommitted_version_is_invisible_to_readers(tmp_path):
    root = str(tmp_path)
    committed = _commit(root, "signals", 3)
    writing = datasets.derive(committed, "filter", _commit, {})
    datasets.write_shard(writing, datasets.shard_name(0), pa.table({"doc_id": ["x"]}))  # no manifest yet
    con = catalog.connect(root)
    views = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
    assert "toy__filter" not in views and "toy__signals" in views


def test_lineage_walks_parents(tmp_path):
    root = str(tmp_path)
    ingest = DatasetRef(root, "toy", "ingest", "0" * 12)
    datasets.write_table(ingest, pa.table({"doc_id": ["a"]}))
    signals = _commit(root, "signals", 1, parent=ingest)
    filt = _commit(root, "filter", 1, parent=signals)
    con = catalog.connect(root)
    lin = catalog.lineage(con, filt)
    assert lin["ref"].to_pylist() == [str(filt), str(signals), str(ingest)]
    assert lin["depth"].to_pylist() == [0, 1, 2]


def test_catalog_reads_a_memory_filesystem():
    root = "memory://catalog-test"
    ref = DatasetRef(root, "mem", "ingest", "a" * 12)
    datasets.write_table(ref, pa.table({"doc_id": ["a", "b"]}))
    con = catalog.connect(root)
    assert con.execute("select count(*) from mem__ingest").fetchone()[0] == 2


def test_sandboxed_connection_cannot_write_files_or_attach(tmp_path):
    _commit(str(tmp_path), "signals", 2)
    con = catalog.connect(str(tmp_path), sandbox=True)
    assert con.execute("select count(*) from toy__signals").fetchone()[0] == 2
    with pytest.raises(duckdb.Error):
        con.execute(f"copy (select 1) to '{tmp_path}/evil.csv'")
    with pytest.raises(duckdb.Error):
        con.execute(f"attach '{tmp_path}/other.duckdb'")
    assert not (tmp_path / "evil.csv").exists()
