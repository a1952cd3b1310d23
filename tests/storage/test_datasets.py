"""Versioned Parquet storage: content-addressed versions, atomic shards, manifest-last commits, races."""

import json
import os
import threading

import fsspec
import pyarrow as pa
import pytest

from storage import datasets
from storage.datasets import DatasetRef


def _table(n, start=0):
    return pa.table({"doc_id": [f"d{i}" for i in range(start, start + n)], "x": list(range(start, start + n))})


def _params(**kw):
    return {"min_words": 5, **kw}


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    uid = request.node.name.replace("[", "_").replace("]", "_")
    yield f"memory://quarry-tests/{uid}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/quarry-tests/{uid}"):
        fs.rm(f"/quarry-tests/{uid}", recursive=True)


def _src(root):
    return DatasetRef(root, "toy", "ingest", "0" * 12)


def test_version_depends_on_parent_stage_params_and_code(root):
    src = _src(root)
    a = datasets.derive(src, "quality_filter", _table, _params())
    assert a == datasets.derive(src, "quality_filter", _table, _params())
    assert a.version != datasets.derive(src, "quality_filter", _table, _params(min_words=6)).version
    assert a.version != datasets.derive(src, "dedup", _table, _params()).version
    other_parent = DatasetRef(root, "toy", "ingest", "1" * 12)
    assert a.version != datasets.derive(other_parent, "quality_filter", _table, _params()).version
    assert a.version != datasets.derive(src, "quality_filter", json.dumps, _params()).version  # other module source


def test_manifest_written_last_lists_files_rows_and_schema(root):
    ref = datasets.derive(_src(root), "stage_a", _table, _params())
    datasets.write_shard(ref, datasets.shard_name(0), _table(3))
    assert not datasets.is_committed(ref)
    datasets.write_shard(ref, datasets.shard_name(1), _table(2, 3))
    m = datasets.commit(ref, parents=[_src(root)], params=_params(), code="abc")
    assert datasets.is_committed(ref)
    assert m["num_rows"] == 5 and [f["rows"] for f in m["files"]] == [3, 2]
    assert m["parents"] == ["toy/ingest/000000000000"] and m["params"] == _params()
    assert {"name": "doc_id", "type": "string"} in m["schema"]
    assert m["created_at"] and "git_commit" in m
    assert datasets.read_table(ref)["x"].to_pylist() == [0, 1, 2, 3, 4]


def test_no_temporary_files_left_after_writes(root):
    ref = datasets.derive(_src(root), "stage_b", _table, _params())
    for i in range(3):
        datasets.write_shard(ref, datasets.shard_name(i), _table(2))
    datasets.commit(ref)
    fs, base = datasets.filesystem(ref.uri)
    assert not [p for p in fs.ls(base, detail=False) if "_tmp." in p]


def test_commit_of_committed_version_is_a_noop(root):
    ref = datasets.derive(_src(root), "stage_c", _table, _params())
    first = datasets.write_table(ref, _table(4))
    second = datasets.write_table(ref, _table(99))  # would be different data: must not be written
    assert first == second and datasets.read_table(ref).num_rows == 4


def test_stale_temporaries_of_a_killed_writer_are_cleaned_at_commit(tmp_path):
    ref = datasets.derive(_src(str(tmp_path)), "stage_d", _table, _params())
    datasets.write_shard(ref, datasets.shard_name(0), _table(2))
    (tmp_path / "toy" / "stage_d" / ref.version / "_tmp.deadbeef.part-00001.parquet").write_bytes(b"PAR1 half")
    assert datasets.existing_shards(ref) == {"part-00000.parquet"}
    m = datasets.commit(ref)
    assert [f["name"] for f in m["files"]] == ["part-00000.parquet"]
    assert not list((tmp_path / "toy" / "stage_d" / ref.version).glob("_tmp.*"))


def test_two_racing_committers_exactly_one_wins(tmp_path):
    ref = datasets.derive(_src(str(tmp_path)), "stage_e", _table, _params())
    datasets.write_shard(ref, datasets.shard_name(0), _table(2))
    results, barrier = [], threading.Barrier(8)

    def go(i):
        barrier.wait()
        results.append(datasets.commit(ref, extra={"writer": i}))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = {r["writer"] for r in results}
    assert len(winners) == 1  # every committer sees the same, single manifest
    assert datasets.read_manifest(ref)["writer"] in winners


def test_refs_reject_bad_names():
    with pytest.raises(ValueError, match="snake_case"):
        DatasetRef("/tmp", "Bad-Name", "ingest", "0" * 12)
    with pytest.raises(ValueError, match="12 hex"):
        DatasetRef("/tmp", "ok", "ingest", "xyz")


def test_commit_never_removes_a_live_writers_temporary(tmp_path):
    """The race two runs of one stage hit: run A's commit must not delete run B's half-written shard. Only
    temporaries whose writer is gone (or whose lease ran out) are removed."""
    import subprocess
    import sys
    import time

    ref = datasets.derive(_src(str(tmp_path)), "stage_live", _table, _params())
    datasets.write_shard(ref, datasets.shard_name(0), _table(2))
    folder = tmp_path / "toy" / "stage_live" / ref.version
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        from storage.temporaries import HOST_TAG as host
        live_tmp = folder / f"_tmp.{live.pid}@{host}.{'a' * 32}.part-00001.parquet"
        dead_tmp = folder / f"_tmp.{dead.pid}@{host}.{'b' * 32}.part-00002.parquet"
        old_tmp = folder / f"_tmp.{live.pid}@{host}.{'c' * 32}.part-00003.parquet"
        for p in (live_tmp, dead_tmp, old_tmp):
            p.write_bytes(b"PAR1 half")
        expired = time.time() - datasets.TMP_LEASE_S - 60
        os.utime(old_tmp, (expired, expired))
        m = datasets.commit(ref)
        assert [f["name"] for f in m["files"]] == ["part-00000.parquet"]
        assert live_tmp.exists()  # the live writer's shard survives the other run's commit
        assert not dead_tmp.exists() and not old_tmp.exists()
    finally:
        live.kill()
        live.wait()


def test_temporary_names_carry_their_owner():
    name = datasets.tmp_name("part-00000.parquet")
    assert name.startswith(f"_tmp.{os.getpid()}@") and name.endswith(".part-00000.parquet")
    assert not datasets.is_abandoned(name, mtime=None)  # this process is alive


def test_shards_have_bounded_row_groups(tmp_path, monkeypatch):
    """A shard of long documents is split into row groups near ROW_GROUP_BYTES (a reader holds one at a time),
    a shard of many small rows into groups of at most ROW_GROUP_ROWS; every row is still there, in order."""
    import pyarrow.parquet as pq

    from storage import datasets as D

    ref = D.DatasetRef(str(tmp_path), "d", "s", "0123456789ab")
    monkeypatch.setattr(D, "ROW_GROUP_BYTES", 1 << 20)
    long_docs = pa.table({"i": list(range(200)), "text": ["x" * 50_000] * 200})  # ~10 MB in memory
    D.write_shard(ref, "part-00000.parquet", long_docs)
    monkeypatch.setattr(D, "ROW_GROUP_ROWS", 1000)
    D.write_shard(ref, "part-00001.parquet", pa.table({"i": list(range(4500))}))
    D.write_shard(ref, "part-00002.parquet", pa.table({"i": pa.array([], pa.int64())}))
    f0 = pq.ParquetFile(tmp_path / "d" / "s" / ref.version / "part-00000.parquet")
    assert f0.metadata.num_row_groups >= 8
    assert max(f0.metadata.row_group(g).num_rows for g in range(f0.metadata.num_row_groups)) <= 21
    f1 = pq.ParquetFile(tmp_path / "d" / "s" / ref.version / "part-00001.parquet")
    assert [f1.metadata.row_group(g).num_rows for g in range(f1.metadata.num_row_groups)] == [1000] * 4 + [500]
    assert f0.read().equals(long_docs) and f1.read().column("i").to_pylist() == list(range(4500))
    assert pq.read_table(tmp_path / "d" / "s" / ref.version / "part-00002.parquet").num_rows == 0
