"""storage/gc.py: which versions `quarry gc` keeps, decided from catalog rows alone (no store, no recipes read).
The CLI's end-to-end gc tests are in tests/test_cli.py."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from storage import gc


def _v(dataset: str, stage: str, version: str, minute: int, parents: tuple[str, ...] = ()) -> dict:
    return {"ref": f"{dataset}/{stage}/{version}", "dataset": dataset, "stage": stage, "version": version,
            "created_at": dt.datetime(2025, 1, 1, 0, minute, tzinfo=dt.timezone.utc), "parents": list(parents)}


def _store() -> list[dict]:
    """toy: ingest (an old and a new version) -> kept; exp: a table derived from toy's old ingest; orphan."""
    return [
        _v("toy", "ingest", "old", 0),
        _v("toy", "ingest", "new", 1),
        _v("toy", "kept", "k1", 2, ("toy/ingest/new",)),
        _v("exp", "table", "t1", 3, ("toy/ingest/old",)),
        _v("orphan", "ingest", "o1", 4),
    ]


def test_the_latest_version_of_a_referenced_dataset_is_kept_with_its_lineage_and_the_rest_goes():
    out = gc.decide(_store(), {"toy": "recipe datasets_cfg/toy.yaml"})
    assert {ref for ref, d in out.items() if d.keep} == {"toy/ingest/new", "toy/kept/k1"}
    assert out["toy/kept/k1"].reason == "recipe datasets_cfg/toy.yaml"
    assert out["toy/ingest/old"].reason == (
        "superseded by toy/ingest/new, and in the lineage of no latest version"
    )
    assert out["orphan/ingest/o1"].reason == "no recipe writes orphan (none in datasets_cfg/)"


def test_lineage_crosses_datasets_and_says_which_latest_version_holds_it():
    """exp's table was derived from toy's *old* ingest: referencing exp keeps that superseded version."""
    out = gc.decide(_store(), {"toy": "recipe a.yaml", "exp": "recipe b.yaml"})
    assert out["toy/ingest/old"].keep
    assert out["toy/ingest/old"].reason == "recipe b.yaml; in the lineage of exp/table/t1"
    assert not out["orphan/ingest/o1"].keep


def test_latest_is_the_newest_by_creation_time_not_by_name():
    rows = [_v("toy", "ingest", "zzz", 0), _v("toy", "ingest", "aaa", 5)]
    out = gc.decide(rows, {"toy": "r"})
    assert out["toy/ingest/aaa"].keep and not out["toy/ingest/zzz"].keep


def test_a_recorded_recipe_counts_only_while_it_exists_and_still_writes_the_dataset():
    configured = [("recipe datasets_cfg/tiny.yaml", {"tiny"}), ("recipe datasets_cfg/other.yaml", {"tiny", "x"})]
    recorded = {"toy": ["/r/toy.yaml"], "gone": ["/r/gone.yaml"], "moved": ["/r/moved.yaml"], "tiny": ["/r/t.yaml"]}
    writes = {"/r/toy.yaml": {"toy"}, "/r/gone.yaml": None, "/r/moved.yaml": {"elsewhere"}, "/r/t.yaml": {"tiny"}}
    referenced, missing = gc.references(configured, recorded, writes)
    assert referenced == {
        "tiny": "recipe datasets_cfg/tiny.yaml",  # the first recipe of datasets_cfg/ wins over later ones and manifests
        "x": "recipe datasets_cfg/other.yaml",
        "toy": "recipe /r/toy.yaml (recorded in its manifests)",
    }
    assert missing == {"gone": ["/r/gone.yaml"], "moved": ["/r/moved.yaml"]}
    out = gc.decide([_v("gone", "ingest", "g1", 0)], referenced, missing)
    assert out["gone/ingest/g1"].reason == (
        "no recipe writes gone (none in datasets_cfg/; recorded /r/gone.yaml no longer exists or names another dataset)"
    )


def test_lineage_lists_each_ancestor_once_nearest_first():
    parents = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert gc.lineage("a", parents) == ["a", "b", "c", "d"]
    assert gc.lineage("x", parents) == ["x"]  # a version no row describes has only itself


def test_decide_reads_the_rows_the_catalog_gives(tmp_path):
    """The rows `quarry gc` passes come from the catalog's versions table: parents as refs, created_at typed."""
    from storage import catalog, datasets
    from storage.datasets import DatasetRef

    root = str(tmp_path)
    old = DatasetRef(root, "toy", "ingest", "0" * 12)
    datasets.write_table(old, pa.table({"doc_id": ["a"]}))
    new = DatasetRef(root, "toy", "ingest", "1" * 12)
    datasets.write_table(new, pa.table({"doc_id": ["a", "b"]}))
    kept = datasets.derive(new, "kept", None, {"n": 1})
    datasets.write_table(kept, pa.table({"doc_id": ["b"]}), parents=[new])
    con = catalog.connect(root)
    rows = catalog.query(con, "select ref, dataset, stage, version, created_at, parents from versions").to_pylist()
    out = gc.decide(rows, {"toy": "recipe toy.yaml"})
    assert {ref for ref, d in out.items() if d.keep} == {str(new), str(kept)}
    assert gc.version_bytes(old.uri) > 0
