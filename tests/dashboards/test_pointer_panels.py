"""The dashboard shows what the views read: the version each dataset/stage's pointer names (storage/pointers.py),
not the newest created_at. Recipe A, then B, then A again (reused) leaves B's versions newest on disk while the
pointers name A's: every panel that speaks of "the current version" must follow the pointer."""

from __future__ import annotations

import pyarrow as pa

from dashboards import app
from storage import catalog, datasets, pointers
from storage.datasets import DatasetRef


def _panel(name: str) -> app.Panel:
    return next(p for p in app.load_panels() if p.name == name)


def test_panels_follow_the_pointer_not_the_newest_version(tmp_path):
    root = str(tmp_path)
    a = DatasetRef(root, "rev", "ingest", "a" * 12)
    datasets.write_table(a, pa.table({"doc_id": ["x", "y", "z"], "text": ["1", "2", "3"]}))
    pointers.move(a, "commit")
    b = DatasetRef(root, "rev", "ingest", "b" * 12)  # recipe B: newer on disk
    datasets.write_table(b, pa.table({"doc_id": ["x"], "text": ["1"]}))
    pointers.move(b, "commit")
    pointers.move(a, "reuse")  # recipe A again: reuses its version, the pointer goes back

    con = catalog.connect(root, sandbox=True)
    assert con.execute("select count(*) from rev__ingest").fetchone()[0] == 3  # the view reads A
    views = app.dataset_views(con, "rev")
    assert views["rev__ingest"].endswith(a.version)

    rows = app.run_panel(con, _panel("versions"), "rev").table.to_pylist()
    assert {r["version"]: r["current"] for r in rows} == {a.version: True, b.version: False}
    lineage = app.run_panel(con, _panel("lineage"), "rev").table.to_pylist()
    assert {r["version"]: r["is_latest"] for r in lineage} == {a.version: True, b.version: False}
    yield_rows = app.run_panel(con, _panel("stage_yield"), "rev").table.to_pylist()
    assert [(r["version"], r["rows_out"]) for r in yield_rows] == [(a.version, 3)]
