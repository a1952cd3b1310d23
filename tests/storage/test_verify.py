"""Committed files prove themselves (issue 34): size and xxh64 recorded when written, checked by ``verify`` (all of
it), on every open (stat + footer + page CRCs), and a version that fails is rejected and rewritten, never skipped."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import catalog, datasets, verify
from storage.datasets import DatasetRef, StorageError


def _table(n: int = 300) -> pa.Table:
    # texts of different lengths per shard, so two shards never have the same size (a swap changes sizes)
    return pa.table({"doc_id": [f"d{i:04d}" for i in range(n)],
                     "text": [f"document {i} " * (5 + i // 100 * 7) for i in range(n)]})


def _committed(root) -> DatasetRef:
    ref = DatasetRef(str(root), "toy", "ingest", "a" * 12)
    datasets.write_table(ref, _table(), max_rows_per_shard=100)
    return ref


def _path(ref: DatasetRef, i: int) -> str:
    return os.path.join(ref.uri, datasets.read_manifest(ref)["files"][i]["name"])


def _flip(path: str, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _data_page_byte(path: str) -> int:
    """The last byte of the text column's chunk: inside a data page's body (what the page CRC covers)."""
    col = pq.ParquetFile(path).metadata.row_group(0).column(1)
    return (col.dictionary_page_offset or col.data_page_offset) + col.total_compressed_size - 1


def _footer_byte(path: str) -> int:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(size - 8)
        n = int.from_bytes(f.read(4), "little")
    return size - 8 - n // 2  # the middle of the Thrift metadata


def swap(ref):
    a, b = _path(ref, 0), _path(ref, 1)
    os.rename(a, a + ".x")
    os.rename(b, a)
    os.rename(a + ".x", b)


def flip_data(ref):
    _flip(_path(ref, 0), _data_page_byte(_path(ref, 0)))


def flip_footer(ref):
    _flip(_path(ref, 0), _footer_byte(_path(ref, 0)))


def truncate(ref):
    p = _path(ref, 0)
    os.truncate(p, os.path.getsize(p) // 2)


def empty(ref):
    os.truncate(_path(ref, 0), 0)


def delete(ref):
    os.remove(_path(ref, 0))


# what `verify` says about the first shard, and what a plain open says (full checksums find every change)
CASES = {swap: ("size", "size"), flip_data: ("checksum", "CRC"), flip_footer: ("checksum", "footer checksum"),
         truncate: ("size", "size"), empty: ("size", "size"), delete: ("missing", "missing")}


def test_the_manifest_records_each_files_size_and_checksum_computed_while_writing(tmp_path):
    ref = _committed(tmp_path)
    m = datasets.read_manifest(ref)
    assert len(m["files"]) == 3
    for f in m["files"]:
        path = os.path.join(ref.uri, f["name"])
        assert (f["bytes"], f["xxh64"]) == verify.file_checksum(path)  # the write-time hash is the file's
        assert f["bytes"] == os.path.getsize(path)
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).to_dict()  # a valid footer
    raw = (tmp_path / "toy" / "ingest" / ref.version / "_manifest.json").read_text()
    assert str(tmp_path) not in raw  # nothing absolute: the root can move
    assert json.loads(raw)["path"] == "toy/ingest/" + ref.version
    assert verify.verify_version(ref) == []


@pytest.mark.parametrize("corrupt", list(CASES), ids=lambda f: f.__name__)
def test_every_corruption_is_found_by_verify_and_by_an_open_naming_the_file(tmp_path, corrupt):
    ref = _committed(tmp_path)
    bad = _path(ref, 0)
    corrupt(ref)
    problems = verify.verify_version(ref)
    kind, on_open = CASES[corrupt]
    assert problems and problems[0].uri == bad and problems[0].kind == kind, problems
    if corrupt is swap:  # both files moved: both named
        assert [p.uri for p in problems] == [bad, _path(ref, 1)]
    with pytest.raises(StorageError, match=on_open) as err:
        datasets.read_table(ref)
    assert bad in str(err.value)


def test_the_quick_check_finds_what_a_stat_and_a_footer_show(tmp_path):
    ref = _committed(tmp_path)
    flip_footer(ref)
    assert [p.kind for p in verify.verify_version(ref, full=False)] == ["footer"]


def test_a_rejected_version_is_rewritten_where_it_was_bad_and_nothing_else_is_deleted(tmp_path, caplog):
    ref = _committed(tmp_path)
    good = [_path(ref, 1), _path(ref, 2)]
    mtimes = [os.stat(p).st_mtime_ns for p in good]
    flip_data(ref)
    stray = os.path.join(ref.uri, "notes.txt")
    open(stray, "w").write("someone else's")
    problems = verify.verify_version(ref)
    aside = verify.reject(ref, problems)
    assert not datasets.is_committed(ref) and os.path.exists(aside)  # moved aside, kept
    assert datasets.existing_shards(ref) == {os.path.basename(p) for p in good}
    with caplog.at_level(logging.WARNING, logger="quarry"):
        datasets.write_table(ref, _table(), max_rows_per_shard=100)
    assert f"replacing {_path(ref, 0)}" in caplog.text
    assert verify.verify_version(ref) == []
    assert [os.stat(p).st_mtime_ns for p in good] == mtimes  # the good shards were not rewritten
    assert os.path.exists(stray)
    assert datasets.read_table(ref).equals(_table())


def test_torn_and_empty_shards_of_an_uncommitted_version_are_rewritten_not_committed(tmp_path, caplog):
    """Power loss after a rename without fsync: a 0-byte and a truncated shard. Neither is trusted, the commit
    refuses to list them (naming them), and the resume rewrites exactly those two."""
    ref = DatasetRef(str(tmp_path), "toy", "ingest", "b" * 12)
    datasets.write_shards(ref, _table(), max_rows_per_shard=100)
    p0, p1 = (os.path.join(ref.uri, datasets.shard_name(i)) for i in (0, 1))
    os.truncate(p0, 0)
    os.truncate(p1, os.path.getsize(p1) - 10)
    assert datasets.existing_shards(ref) == {datasets.shard_name(2)}
    assert set(datasets.untrusted_shards(ref)) == {datasets.shard_name(0), datasets.shard_name(1)}
    with pytest.raises(StorageError, match="cannot commit") as err:
        datasets.commit(ref)
    assert p0 in str(err.value) and p1 in str(err.value)
    with caplog.at_level(logging.WARNING, logger="quarry"):
        datasets.write_table(ref, _table(), max_rows_per_shard=100)
    assert f"replacing {p0}" in caplog.text and f"replacing {p1}" in caplog.text
    assert verify.verify_version(ref) == [] and datasets.read_table(ref).equals(_table())


def test_a_resume_rehashes_what_an_earlier_attempt_left(tmp_path):
    ref = DatasetRef(str(tmp_path), "toy", "ingest", "c" * 12)
    datasets.write_shards(ref, _table(), max_rows_per_shard=100)
    path = os.path.join(ref.uri, datasets.shard_name(1))
    _flip(path, _data_page_byte(path))  # same size: only the hash can tell
    assert datasets.shard_name(1) in datasets.existing_shards(ref)
    redo = verify.check_resume(ref)
    assert list(redo) == [path] and "xxh64" in redo[path]
    assert datasets.shard_name(1) not in datasets.existing_shards(ref)


def test_a_copied_root_is_read_whole_from_its_new_place(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    ref = _committed(old)
    # an older manifest stored the absolute uri it was written at: it must be ignored, not followed
    other = DatasetRef(str(old), "toy", "signals", "d" * 12)
    datasets.write_table(other, pa.table({"x": [1, 2]}))
    mpath = old / "toy" / "signals" / other.version / "_manifest.json"
    m = json.loads(mpath.read_text())
    m.pop("path")
    m["uri"] = other.uri
    mpath.write_text(json.dumps(m))
    shutil.copytree(old, new)
    shutil.rmtree(old)
    moved = DatasetRef(str(new), "toy", "ingest", ref.version)
    assert datasets.read_table(moved).equals(_table())
    assert all(f.startswith(str(new)) for f in datasets.files(moved))
    con = catalog.connect(str(new), sandbox=True)  # the dashboard's connection: only listed files readable
    try:
        assert con.execute("select count(*) from toy__ingest").fetchone()[0] == 300
        assert con.execute("select sum(x) from toy__signals").fetchone()[0] == 3
        pinned = f'"toy__signals@{other.version}"'
        assert catalog.query(con, f"select sum(x) as s from {pinned}").column("s").to_pylist() == [3]
    finally:
        con.close()
    assert verify.verify_root(str(new))[1] == []


def test_integrity_can_be_switched_off_for_overhead_benchmarks(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.INTEGRITY_ENV, "0")
    ref = _committed(tmp_path)
    assert not [n for n in os.listdir(ref.uri) if n.startswith(datasets.SUM_PREFIX)]
    assert len(datasets.existing_shards(ref)) == 3
    assert "xxh64" not in datasets.read_manifest(ref)["files"][0]
    assert datasets.read_table(ref).equals(_table())
