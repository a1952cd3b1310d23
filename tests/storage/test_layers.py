"""Layers: a stage's version stores only what it adds, and every reader still sees the wide table.

The Arrow reader (workers, global stages) and the DuckDB views (catalog, dashboards) must both give exactly the
table a full copy would have held: same rows, same order, same values, across shards, empty shards, selections
with repeats, rewritten and hidden columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ray_cluster import executor
from ray_cluster.runtime import load_profile
from storage import catalog, datasets, layers
from storage.datasets import DatasetRef
from tasks import registry
from tasks.common.stage import implements
from tasks.ingest.sources import IngestSource
from tests import stages


def _full(root, rows_per_shard=(5, 0, 7)):
    ref = DatasetRef(str(root), "lay", "docs", "a" * 12)
    start = 0
    for i, n in enumerate(rows_per_shard):
        ids = [f"d{j:03d}" for j in range(start, start + n)]
        datasets.write_shard(ref, datasets.shard_name(i), pa.table({
            "doc_id": pa.array(ids, pa.string()), "text": pa.array([f"text of {d}" for d in ids], pa.string()),
            "keep": pa.array([True] * n, pa.bool_())}))
        start += n
    datasets.commit(ref)
    return ref


def _layer(base, stage, kind, fn, hide=()):
    ref = DatasetRef(base.root, base.dataset, stage, datasets.make_version(stage))
    for name in layers.shard_names(base):
        datasets.write_shard(ref, name, fn(layers.read_shard(base, name)))
    layers.commit_layer(ref, {"kind": kind, "of": str(base), "hide": list(hide)}, parents=[base])
    return ref


def _wide_expected(root):
    """The documents as plain Arrow (the transformations are then redone by hand: what full copies would hold)."""
    return pa.concat_tables(
        [datasets.read_shard(DatasetRef(str(root), "lay", "docs", "a" * 12), datasets.shard_name(i)) for i in range(3)])


def test_column_rows_and_column_layers_read_back_as_the_wide_table(tmp_path):
    base = _full(tmp_path)
    # columns layer: a new column and a rewritten one (keep)
    sig = _layer(base, "signals", "columns", lambda t: pa.table({
        "n_chars": pc.utf8_length(t.column("text")),
        "keep": pc.invert(pc.match_substring(t.column("doc_id"), "3"))}))
    # rows layer: every other kept row, the third one twice, text hidden
    def pick(t):
        pos = [i for i in range(t.num_rows) if i % 2 == 0]
        pos = sorted(pos + pos[1:2])
        return pa.table({layers.POS: pa.array(pos, pa.int64()), "copy": pa.array(range(len(pos)), pa.int64())})
    sel = _layer(sig, "c_selection", "rows", pick, hide=("text",))
    emb = _layer(sel, "d_embed", "columns", lambda t: pa.table({"score": pc.multiply(t.column("n_chars"), 2)}))

    docs = _wide_expected(tmp_path)
    n_chars = pc.utf8_length(docs.column("text"))
    keep = pc.invert(pc.match_substring(docs.column("doc_id"), "3"))
    # expected selection per shard
    want_ids, want_copy = [], []
    offset = 0
    for n in (5, 0, 7):
        pos = [i for i in range(n) if i % 2 == 0]
        pos = sorted(pos + pos[1:2])
        want_ids += [docs.column("doc_id")[offset + p].as_py() for p in pos]
        want_copy += list(range(len(pos)))
        offset += n

    assert layers.column_names(sig) == ["doc_id", "text", "keep", "n_chars"]
    assert layers.column_names(sel) == ["doc_id", "keep", "n_chars", "copy"]
    assert layers.column_names(emb) == ["doc_id", "keep", "n_chars", "copy", "score"]

    wide = datasets.read_table(sig)
    assert wide.column("doc_id").equals(docs.column("doc_id"))
    assert wide.column("keep").to_pylist() == keep.to_pylist()
    assert wide.column("n_chars").to_pylist() == n_chars.to_pylist()

    top = datasets.read_table(emb)
    assert top.column("doc_id").to_pylist() == want_ids
    assert top.column("copy").to_pylist() == want_copy
    by_id = dict(zip(docs.column("doc_id").to_pylist(), n_chars.to_pylist(), strict=True))
    assert top.column("score").to_pylist() == [2 * by_id[d] for d in want_ids]
    # the layer files hold only what each stage added
    assert [f["name"] for f in datasets.read_manifest(sig)["schema"]] == ["n_chars", "keep"]
    assert [f["name"] for f in datasets.read_manifest(sel)["schema"]] == [layers.POS, "copy"]

    # the catalog's views give the same tables, in the same order
    con = catalog.connect(str(tmp_path))
    for ref in (sig, sel, emb):
        view = con.sql(f'SELECT * FROM "{ref.view}"').to_arrow_table()
        arrow = datasets.read_table(ref)
        assert view.column_names == arrow.column_names
        for c in arrow.column_names:
            assert view.column(c).to_pylist() == arrow.column(c).to_pylist(), (ref.stage, c)
    pinned = catalog.query(con, f'SELECT count(*) AS n FROM "lay__d_embed@{emb.version}"')
    assert pinned.column("n").to_pylist() == [len(want_ids)]


def test_batched_reads_of_a_selection_equal_the_whole_shard(tmp_path):
    """Workers stream shards in small batches; a selection over several parent batches must still line up."""
    base = _full(tmp_path, rows_per_shard=(1000,))
    rng = np.random.default_rng(0)
    pos = np.sort(rng.choice(1000, 400, replace=True))
    sel = _layer(base, "c_selection", "rows", lambda t: pa.table({layers.POS: pa.array(pos, pa.int64())}))
    whole = datasets.read_table(sel)
    parts = list(layers.iter_shard(sel, datasets.shard_name(0), ["doc_id", "text"], batch_size=37))
    assert {p.num_rows for p in parts[:-1]} == {37}
    streamed = pa.concat_tables(parts)
    want = [f"d{p:03d}" for p in pos]
    assert streamed.column("doc_id").to_pylist() == want == whole.column("doc_id").to_pylist()
    assert streamed.column("text").to_pylist() == [f"text of {d}" for d in want]


def test_a_layer_whose_rows_do_not_line_up_is_refused(tmp_path):
    base = _full(tmp_path, rows_per_shard=(5,))
    bad = _layer(base, "signals", "columns", lambda t: pa.table({"x": pa.array(range(t.num_rows + 1))}))
    with pytest.raises(datasets.StorageError, match="different row counts"):
        datasets.read_table(bad)


# ---------------------------------------------------------------------------------------------------- the executor


@pytest.fixture
def serial():
    return load_profile("serial")


def _docs(tmp_path, serial, n=40):
    src = tmp_path / "docs.jsonl"
    import json

    with open(src, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"x{i}", "text": f"document number {i} " * (i % 7 + 1)}) + "\n")
    return stages.ingest([IngestSource(path=str(src))], root=str(tmp_path / "root"), dataset="lay",
                         docs_per_shard=16, profile=serial)


def test_a_columns_stage_writes_only_its_columns_and_reads_only_what_it_declares(tmp_path, serial):
    docs = _docs(tmp_path, serial)
    seen: list[list[str]] = []

    @implements("length")
    def length(batch, params):
        seen.append(batch.column_names)
        return batch.append_column("n", pc.utf8_length(batch.column("text")))

    stage = registry.Stage("length", "map", length, None, None, ("src",), layer="columns",
                           reads=lambda p, avail: ["text"])
    ref = executor.run(stage, [docs], None, serial)
    assert seen and all(cols == ["text"] for cols in seen)
    m = datasets.read_manifest(ref)
    assert [f["name"] for f in m["schema"]] == ["n"]
    assert m["layer"]["of"] == str(docs)
    wide = datasets.read_table(ref)
    assert wide.column_names == [*layers.column_names(docs), "n"]
    assert wide.column("n").to_pylist() == pc.utf8_length(datasets.read_table(docs).column("text")).to_pylist()


def test_an_undeclared_change_or_a_lost_row_fails_the_stage(tmp_path, serial):
    docs = _docs(tmp_path, serial)

    @implements("sneaky", "upper")
    def sneaky(batch, params):
        return batch.set_column(batch.column_names.index("text"), "text", pc.utf8_upper(batch.column("text")))

    stage = registry.Stage("sneaky", "map", sneaky, None, None, ("src",), layer="columns")
    with pytest.raises(Exception, match="changed column 'text'"):
        executor.run(stage, [docs], None, serial)
    declared = registry.Stage("upper", "map", sneaky, None, None, ("src",), layer="columns", rewrites=("text",))
    ref = executor.run(declared, [docs], None, serial)
    assert datasets.read_table(ref, ["text"]).column("text").to_pylist()[0].isupper()

    @implements("drops")
    def drops(batch, params):
        return batch.slice(1)

    with pytest.raises(Exception, match="must keep every row"):
        executor.run(registry.Stage("drops", "map", drops, None, None, ("src",), layer="columns"), [docs], None, serial)


def test_quality_filter_reads_signal_columns_not_text():
    from tasks.filter.quality_filter import QualityFilterParams

    stage = registry.stage("quality_filter")
    avail = ["doc_id", "text", "url", "rps_doc_word_count", "rps_doc_mean_word_length", "mh_values"]
    cols = executor.projection(stage, QualityFilterParams(rules="gopher"), avail)
    assert "text" not in cols and "mh_values" not in cols
    assert "rps_doc_word_count" in cols
    for name in ("minhash_signatures", "exact_dedup", "minhash_dedup", "kept", "embed", "quality_signals"):
        assert registry.stage(name).layer is not None, name


def test_minhash_clusters_reads_ids_priority_and_bands_only(tmp_path):
    """The fuzzy-dedup global step reads the documents' ids and survivor priority, never the layers between them:
    its SQL over the docs role is a plain scan of the ingest files, not a join of every layer."""
    from tasks.dedup.minhash import MinhashDedupParams

    stage = registry.stage("minhash_clusters")
    docs = ["doc_id", "text", "url", "rps_doc_word_count", "mh_values", "keep", "drop_reason", "ed_text_length"]
    edges = ["part", "band", "key", "doc_id"]
    assert executor.projection(stage, MinhashDedupParams(), docs) == ["doc_id", "text"]
    # with the length minhash_signatures writes, "longest" never reads the text
    assert executor.projection(stage, MinhashDedupParams(), [*docs, "mh_text_length"]) == ["doc_id", "mh_text_length"]
    assert executor.projection(stage, MinhashDedupParams(), edges) == ["band", "key", "doc_id"]
    assert executor.projection(stage, MinhashDedupParams(priority="lowest_doc_id"), docs) == ["doc_id"]
    assert executor.projection(stage, MinhashDedupParams(priority="rps_doc_word_count:desc", verify=True), docs) == [
        "doc_id", "rps_doc_word_count", "mh_values"]


def test_needs_join_follows_the_readers_walk_of_the_chain(tmp_path):
    """needs_join says whether the relation_sql of those columns joins layers (what the executor flattens first)."""
    base = _full(tmp_path)
    sig = _layer(base, "signals", "columns", lambda t: pa.table({"n_chars": pc.utf8_length(t.column("text"))}))
    sel = _layer(sig, "kept", "rows", lambda t: pa.table({
        layers.POS: pa.array(range(0, t.num_rows, 2), pa.int64()),
        "copy": pa.array([1] * len(range(0, t.num_rows, 2)), pa.int64())}))
    cases = {
        (base, ("doc_id", "text")): False,  # a full version
        (sig, ("n_chars",)): False,  # the layer's own column only
        (sig, ("doc_id",)): False,  # the layer holds none of them: the reader skips it
        (sig, ("doc_id", "n_chars")): True,
        (sel, ("copy",)): False,  # the selection's own column: its files alone
        (sel, ("doc_id",)): True,  # the parent's rows, restricted by the selection
        (sel, ("n_chars", "copy")): True,
    }
    for (ref, cols), joins in cases.items():
        assert layers.needs_join(ref, cols) == joins, (ref.stage, cols)
        assert (" JOIN " in layers.relation_sql(ref, cols, keys=True)) == joins, (ref.stage, cols)


def test_a_column_null_typed_in_its_first_shard_takes_the_type_of_a_later_one(tmp_path):
    """A shard whose values are all null may store the null type; flattening (materialize) and the empty wide table
    take the type a later shard has, instead of failing to cast that shard's strings to null."""
    base = _full(tmp_path)

    def note(t):  # shard 0: no notes at all (a null-typed column); shard 1 is empty; shard 2: strings
        ids = t.column("doc_id").to_pylist()
        if not ids or ids[0] == "d000":
            return pa.table({"note": pa.nulls(t.num_rows)})
        return pa.table({"note": pa.array([f"note {d}" for d in ids])})

    lay = _layer(base, "notes", "columns", note)
    assert pa.types.is_null(pq_schema(lay, 0).field("note").type)  # the case under test really is on disk
    assert layers.empty_table(lay).schema.field("note").type == pa.string()
    n = layers.materialize(lay, ["doc_id", "note"], str(tmp_path / "flat.parquet"))
    flat = pq.read_table(tmp_path / "flat.parquet")
    assert n == 12 and flat.schema.field("note").type == pa.string()
    assert flat.column("note").to_pylist() == [None] * 5 + [f"note d{j:03d}" for j in range(5, 12)]


def pq_schema(ref, i):
    fs, path = datasets.filesystem(datasets.shard_uri(ref, datasets.shard_name(i)))
    with fs.open(path, "rb") as f:
        return pq.read_schema(f)
