"""The ingest flow end to end under a real Prefect API and a real local Ray: idempotent and resumable."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from ray_cluster import runtime
from storage import catalog, datasets, pointers
from tests.conftest import shared_path
from tests.stages import adhoc


def _recipe(tmp_path, name="flowtest"):
    sources = [
        {"path": str(shared_path("web", "c4_sample", "c4_sample.jsonl")), "domain": "web", "limit": 90},
        {"path": str(shared_path("web", "dolma_samples", "sample-0000.warc.gz")), "domain": "web"},
        {"path": str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), "domain": "arxiv", "text_field": "abstract", "limit": 50},
        {"path": str(shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")), "domain": "wikipedia", "text_field": "eng_Latn", "limit": 30},
    ]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": name,
        "storage_root": str(tmp_path / "store"),
        "ingest": {"docs_per_shard": 20, "sources": sources},
    }))
    return path


def _doc_ids(root, dataset):
    con = catalog.connect(root)
    return [r[0] for r in con.execute(f"select doc_id from {dataset}__ingest").fetchall()]


def test_ingest_twice_second_run_is_a_noop(tmp_path, prefect_api, ray_local):
    from flows.ingest import ingest

    recipe = _recipe(tmp_path)
    first = ingest(str(recipe))
    ref = datasets.ref_from_string(str(tmp_path / "store"), first)
    manifest = datasets.read_manifest(ref)
    assert manifest["num_rows"] == 90 + 22 + 50 + 30
    assert manifest["stats"]["domains"] == {"web": 112, "arxiv": 50, "wikipedia": 30}
    store = tmp_path / "store"

    def data_files() -> dict:  # the run's bookkeeping (pointer moves, leases) is written on purpose; data is not
        return {p: p.stat().st_mtime_ns for p in store.rglob("*")
                if not p.relative_to(store).parts[0].startswith(("_pointers", "_leases"))}

    mtimes = data_files()
    second = ingest(str(recipe))
    assert second == first
    assert data_files() == mtimes  # nothing rewritten
    moves = [(m["version"], m["reason"]) for m in pointers.history(str(store), "flowtest", "ingest")]
    assert moves == [(ref.version, "commit"), (ref.version, "reuse")]  # the re-run recorded that it reused
    ids = _doc_ids(str(tmp_path / "store"), "flowtest")
    assert len(ids) == len(set(ids)) == manifest["num_rows"]


def test_killed_ingest_resumes_with_the_same_doc_ids_and_no_duplicates(tmp_path, prefect_api, ray_local):
    from flows.ingest import ingest

    (tmp_path / "a").mkdir()
    reference = ingest(str(_recipe(tmp_path / "a", "resume_ref")))
    expected = sorted(_doc_ids(str(tmp_path / "a" / "store"), "resume_ref"))

    (tmp_path / "b").mkdir()
    recipe = _recipe(tmp_path / "b", "resume_ref")
    with pytest.raises(Exception, match="injected failure"):
        ingest(str(recipe), fail_from_shard=2)  # files 0 and 1 get written, the rest fail
    store = tmp_path / "b" / "store"
    partial = list(store.rglob("part-*.parquet"))
    assert partial and not list(store.rglob("_manifest.json"))  # partial shards, nothing committed
    before = {p: p.stat().st_mtime_ns for p in partial}
    resumed = ingest(str(recipe))
    assert resumed == reference  # same inputs and code: the same version, wherever it is stored
    got = sorted(_doc_ids(str(store), "resume_ref"))
    assert got == expected and len(got) == len(set(got))
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished shards were not redone
    assert not list(store.rglob("_tmp.*"))


def _count_words(batch: pa.Table, params: dict) -> pa.Table:
    return batch.append_column("qs_words", pc.list_value_length(pc.utf8_split_whitespace(batch["text"])))


def test_map_stage_resumes_after_a_failure_at_shard_k(tmp_path, ray_local):
    root = str(tmp_path / "store")
    src = datasets.DatasetRef(root, "toy", "ingest", "a" * 12)
    texts = [" ".join([f"doc {i}"] + ["word"] * (i % 7)) for i in range(100)]
    datasets.write_table(src, pa.table({"doc_id": [f"d{i:03d}" for i in range(100)], "text": texts}), max_rows_per_shard=10)
    profile = runtime.load_profile("local")
    with pytest.raises(Exception, match="injected failure"):
        adhoc(src, "word_count", _count_words, {"v": 1}, profile, fail_from_shard=4)
    dst = datasets.derive(src, "word_count", _count_words, {"v": 1})
    assert not datasets.is_committed(dst) and len(datasets.existing_shards(dst)) == 4
    out = adhoc(src, "word_count", _count_words, {"v": 1}, profile)
    m = datasets.read_manifest(out)
    assert m["stats"]["shards_resumed"] == 4 and m["stats"]["shards_computed"] == 6
    table = datasets.read_table(out)
    assert sorted(table["doc_id"].to_pylist()) == [f"d{i:03d}" for i in range(100)]
    assert table["qs_words"].to_pylist()[:3] == [2, 3, 4]
