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


def test_lineage_lists_each_ancestor_once_even_when_reached_along_two_paths(tmp_path):
    root = str(tmp_path)
    ingest = DatasetRef(root, "toy", "ingest", "0" * 12)
    datasets.write_table(ingest, pa.table({"doc_id": ["a"]}))
    hashes = _commit(root, "hashes", 1, parent=ingest)
    keepers = _commit(root, "keepers", 1, parent=hashes)
    dedup = datasets.derive([hashes, keepers], "dedup", _commit, {})  # two parents, both descending from hashes
    datasets.write_table(dedup, pa.table({"doc_id": ["a"]}), parents=[hashes, keepers])
    con = catalog.connect(root)
    lin = catalog.lineage(con, dedup).to_pylist()
    assert [r["ref"] for r in lin] == [str(dedup), str(hashes), str(keepers), str(ingest)]
    assert [r["depth"] for r in lin] == [0, 1, 1, 2]  # hashes at its nearest depth, once
    assert lin[0]["parents"] == [str(hashes), str(keepers)]


def test_a_ref_without_version_means_the_latest_and_an_unknown_one_is_an_error(tmp_path):
    root = str(tmp_path)
    _commit(root, "signals", 3)
    time.sleep(0.01)
    newer = _commit(root, "signals", 5)
    con = catalog.connect(root)
    assert catalog.resolve_ref(con, "toy/signals") == str(newer)
    assert catalog.resolve_ref(con, f"toy/signals/{newer.version[:6]}") == str(newer)  # a unique prefix
    with pytest.raises(catalog.UnknownVersion, match="no committed version of toy/nope"):
        catalog.lineage(con, "toy/nope")
    with pytest.raises(catalog.UnknownVersion, match="no version of toy/signals match 'ffffff'"):
        catalog.resolve_ref(con, "toy/signals/ffffff")
    with pytest.raises(catalog.UnknownVersion, match="not dataset/stage"):
        catalog.resolve_ref(con, "toy")


def test_a_quoted_view_name_with_at_version_pins_that_version(tmp_path):
    root = str(tmp_path)
    older = _commit(root, "signals", 3)
    time.sleep(0.01)
    _commit(root, "signals", 5)
    con = catalog.connect(root, sandbox=True)  # older versions' shards are readable in the sandbox too
    pinned = f'"toy__signals@{older.version}"'
    assert catalog.query(con, f"select count(*) n from {pinned}").to_pylist() == [{"n": 3}]
    assert catalog.query(con, "select count(*) n from toy__signals").to_pylist() == [{"n": 5}]
    short = f'"toy__signals@{older.version[:5]}"'
    assert catalog.query(con, f"select count(*) n from {short}").to_pylist() == [{"n": 3}]


def test_versions_types_created_at_as_timestamp_and_params_as_json(tmp_path):
    ref = DatasetRef(str(tmp_path), "toy", "signals", "1" * 12)
    datasets.write_table(ref, pa.table({"doc_id": ["a"]}), params={"n": 2, "rules": ["a", "b"]})
    con = catalog.connect(str(tmp_path))
    types = dict(con.execute("select column_name, column_type from (describe versions)").fetchall())
    assert types["created_at"] == "TIMESTAMP WITH TIME ZONE" and types["params"] == "JSON" and types["run"] == "JSON"
    assert con.execute("select params->>'$.rules[1]' from versions").fetchone()[0] == "b"


def test_the_run_context_is_recorded_in_manifests_and_versions_without_secrets(tmp_path, monkeypatch):
    root = str(tmp_path)
    monkeypatch.setenv("QUARRY_RUN_CONTEXT", '{"ray_job_id": "quarry-curate-toy-1", "api_key": "sk-secret"}')
    with datasets.using_run(flow_run_id="1234", deployment="curate/toy", run_url="http://user:pw@prefect/runs/1",
                            recipe_hash="abc") as committed:  # fmt: skip
        ref = _commit(root, "signals", 2)
    assert committed == [str(ref)]
    run = datasets.read_manifest(ref)["run"]
    assert run == {"ray_job_id": "quarry-curate-toy-1", "flow_run_id": "1234", "deployment": "curate/toy",
                   "run_url": "http://prefect/runs/1", "recipe_hash": "abc"}  # fmt: skip
    outside = _commit(root, "other", 1)  # outside the block only the environment's part remains
    assert datasets.read_manifest(outside)["run"] == {"ray_job_id": "quarry-curate-toy-1"}
    con = catalog.connect(root)
    row = con.execute("select flow_run_id, deployment, ray_job_id, recipe_hash from versions where stage = 'signals'")
    assert row.fetchone() == ("1234", "curate/toy", "quarry-curate-toy-1", "abc")
    assert "sk-secret" not in (tmp_path / "toy").joinpath("signals", ref.version, "_manifest.json").read_text()
