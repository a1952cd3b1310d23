"""Issue 34: a layer joins the rows below it by shard name and row position, so a committed shard swapped, reordered
or replaced below it (a bad copy, a sync tool, a restore) must be an error naming the layer and the shard, never a
silent join that gives documents another document's signals.

The root is real: ingest (4 documents a shard) -> quality_signals (columns) -> quality_filter (columns) -> kept (rows),
the production stages through the executor, built once; each test damages a copy of it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from ray_cluster.runtime import ShardsFailed
from storage import catalog, datasets, layers
from tests import stages
from tests.reliability import _harness as harness


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    import tasks.signals.quality_signals as qs
    from tasks.filter.quality_filter import QualityFilterParams
    from tasks.select.selection import KeptParams

    base = tmp_path_factory.mktemp("alignment")
    prof = harness.serial()
    ing = stages.ingest(harness.sources(base / "inputs"), root=str(base / "data"), dataset="rel", docs_per_shard=4,
                        profile=prof)
    sig = stages.run("quality_signals", [ing], qs.QualitySignalsParams(language="en"), prof)
    flt = stages.run("quality_filter", [sig], QualityFilterParams(), prof)
    stages.run("kept", [flt], KeptParams(), prof)
    return base / "data"


def _copy(built: Path, tmp_path: Path) -> dict[str, datasets.DatasetRef]:
    root = tmp_path / "data"
    shutil.copytree(built, root)
    return {s: datasets.latest(str(root), "rel", s) for s in ("ingest", "quality_signals", "quality_filter", "kept")}


def _shard_rows(ref: datasets.DatasetRef) -> dict[str, int]:
    return {f["name"]: f["rows"] for f in datasets.read_manifest(ref)["files"]}


def _swap(ref: datasets.DatasetRef, a: str, b: str) -> None:
    pa_, pb = Path(datasets.shard_uri(ref, a)), Path(datasets.shard_uri(ref, b))
    tmp = pa_.with_name("swap.tmp")
    pa_.rename(tmp)
    pb.rename(pa_)
    tmp.rename(pb)


def _two(ref: datasets.DatasetRef, same_rows: bool) -> tuple[str, str]:
    rows = _shard_rows(ref)
    names = sorted(rows)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if (rows[a] == rows[b]) == same_rows and rows[a] and rows[b]:
                return a, b
    raise AssertionError(f"no two shards with {'equal' if same_rows else 'different'} row counts: {rows}")


def _catalog(root: str) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """A catalog over ``root`` and the warnings its refresh gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        con = catalog.connect(root)
    return con, [str(w.message) for w in caught]


def test_an_unmodified_root_passes_and_every_layer_records_what_it_was_computed_from(built, tmp_path):
    refs = _copy(built, tmp_path)
    kept = refs["kept"]
    assert layers.verify_alignment(kept) == []
    for stage in ("quality_signals", "quality_filter", "kept"):
        ref = refs[stage]
        parent = datasets.ref_from_string(ref.root, datasets.read_manifest(ref)["layer"]["of"])
        for f in datasets.read_manifest(ref)["files"]:
            # the record is the parent shard's row count and the hash of its doc_ids read now, and the footer stamp
            assert f[layers.OF_ROWS] == _shard_rows(parent)[f["name"]] if stage != "quality_filter" else True
            assert {k: f[k] for k in (layers.OF_ROWS, layers.OF_DOC_IDS)} == layers.fingerprint(parent, f["name"])
            assert layers._footer(ref, f["name"])[1] == {k: f[k] for k in (layers.OF_ROWS, layers.OF_DOC_IDS)}
        assert (layers.OF_ID_STATS in datasets.read_manifest(ref)["files"][0]) == (stage == "quality_signals")
    wide = layers.read_table(kept, ["doc_id", "keep"])
    assert wide.num_rows == datasets.read_manifest(kept)["num_rows"] > 0
    con, warned = _catalog(kept.root)
    assert con.sql("SELECT count(*), count(DISTINCT doc_id) FROM rel__kept").fetchall() == [(wide.num_rows,) * 2]
    assert not [w for w in warned if "refuses" in w]


def test_two_swapped_ingest_shards_of_one_row_count_are_named_not_joined(built, tmp_path):
    refs = _copy(built, tmp_path)
    a, b = _two(refs["ingest"], same_rows=True)
    _swap(refs["ingest"], a, b)
    sig = refs["quality_signals"]

    problems = layers.verify_alignment(refs["kept"])
    assert {p.split(":")[0] for p in problems} == {f"layer {sig} shard {a}", f"layer {sig} shard {b}"}, problems
    assert all("doc_id" in p for p in problems)
    # the footer's doc_id statistics catch the swap on every open, before any row is joined
    with pytest.raises(layers.MisalignedLayer, match=rf"layer {sig} shard {a}: .*doc_id footer statistics"):
        layers.read_table(refs["kept"])
    with pytest.raises(layers.MisalignedLayer, match=rf"layer {sig} shard {a}"):
        datasets.read_table(refs["quality_filter"], ["doc_id", "keep"])
    # the catalog builds, says which view refuses, and that view answers no query
    con, warned = _catalog(refs["kept"].root)
    for view in ("rel__quality_signals", "rel__quality_filter", "rel__kept"):
        assert any(f"view of {refs[view[5:]]} refuses" in w and f"shard {a}" in w for w in warned), warned
        with pytest.raises(duckdb.Error, match=rf"layer {sig} shard {a}"):
            con.sql(f"SELECT count(*) FROM {view}").fetchall()
    # a full version's view still answers (its rows are what its files say)
    n = datasets.read_manifest(refs["ingest"])["num_rows"]
    assert con.sql("SELECT count(*) FROM rel__ingest").fetchall() == [(n,)]


def test_swapped_ingest_shards_of_different_row_counts_are_refused_on_open(built, tmp_path):
    refs = _copy(built, tmp_path)
    a, b = _two(refs["ingest"], same_rows=False)
    rows = _shard_rows(refs["ingest"])
    _swap(refs["ingest"], a, b)
    sig = refs["quality_signals"]
    with pytest.raises(layers.MisalignedLayer,
                       match=rf"layer {sig} shard {a}: computed from {rows[a]} rows of .*which now holds {rows[b]}"):
        layers.read_table(refs["kept"], ["doc_id", "keep"])
    problems = layers.verify_alignment(refs["kept"])
    assert sorted(p.split(":")[0] for p in problems) == sorted([f"layer {sig} shard {a}", f"layer {sig} shard {b}"])
    con, _ = _catalog(refs["kept"].root)
    with pytest.raises(duckdb.Error, match=rf"shard {a}: computed from {rows[a]} rows"):
        con.sql("SELECT doc_id, keep FROM rel__quality_filter").fetchall()


def test_a_reordered_shard_is_caught_by_the_doc_id_hash_in_verify_and_when_a_stage_builds_on_it(built, tmp_path):
    """Same rows, same row count, same footer statistics (one row group): only the doc_id hash tells."""
    from tasks.select.selection import KeptParams

    refs = _copy(built, tmp_path)
    name = next(n for n, r in _shard_rows(refs["ingest"]).items() if r > 1)
    path = datasets.shard_uri(refs["ingest"], name)
    table = pq.read_table(path)
    pq.write_table(table.take(list(reversed(range(table.num_rows)))), path)
    sig = refs["quality_signals"]

    problems = layers.verify_alignment(refs["kept"])
    assert [p.split(":")[0] for p in problems] == [f"layer {sig} shard {name}"], problems
    assert "doc_ids hashed" in problems[0]
    # a new stage over the filter layer reads the doc_ids along and refuses to build on the misaligned rows
    with pytest.raises(ShardsFailed, match=rf"MisalignedLayer: layer {refs['quality_filter']} shard {name}: computed"):
        # other params: a version not committed yet, so it is computed (it reads `keep`, and doc_id along)
        stages.run("kept", [refs["quality_filter"]], KeptParams(drop_columns=()), harness.serial())


def test_a_swapped_layer_shard_is_refused_by_its_own_footer_stamp(built, tmp_path):
    refs = _copy(built, tmp_path)
    a, b = _two(refs["quality_signals"], same_rows=True)
    _swap(refs["quality_signals"], a, b)
    with pytest.raises(layers.MisalignedLayer, match=rf"layer {refs['quality_signals']} shard {a}: its file's own"):
        layers.read_table(refs["kept"])
    assert any(p.startswith(f"layer {refs['quality_signals']} shard {a}: its file's own")
               for p in layers.verify_alignment(refs["kept"]))


def test_manifests_without_records_keep_working_unchecked(built, tmp_path):
    """Layers committed before issue 34 have no record: they are read as before (nothing to check)."""
    refs = _copy(built, tmp_path)
    before = layers.read_table(refs["kept"])
    for stage in ("quality_signals", "quality_filter", "kept"):
        path = Path(datasets.manifest_uri(refs[stage]))
        m = json.loads(path.read_text())
        for f in m["files"]:
            for k in layers.RECORD:
                f.pop(k, None)
        path.write_text(json.dumps(m))
    layers._cached_manifest.cache_clear()
    assert layers.verify_alignment(refs["kept"]) == []
    assert layers.read_table(refs["kept"]).equals(before)
