"""A living corpus (issue 30): three batches of real C4 documents, with exact and near copies planted across and
within batches, arrive one at a time through the ``watch`` flow, which ingests and curates each against the
batches before it. The kept set must equal one dedup run over the union with "first batch wins" priority."""

import json
import types

import pytest
import yaml

from storage import datasets
from tests.conftest import shared_path
from tests.oracles.incremental import union_first_batch_wins


def _near(text: str) -> str:
    """A near copy: one word in the middle changed (13-gram Jaccard ~0.9 for the long documents used here)."""
    words = text.split(" ")
    words[len(words) // 2] = "zyxwvut"
    return " ".join(words)


def _batches() -> list[list[dict]]:
    rows = [json.loads(line) for line in shared_path("web", "c4_sample", "c4_sample.jsonl").open()]
    long_ = [r for r in rows if len(r["text"].split()) >= 250][:12]  # near copies of these stay above J = 0.8
    rest = [r for r in rows if r not in long_]
    a = rest[:40] + long_[:6] + [dict(long_[0]), {**long_[1], "text": _near(long_[1]["text"])}]  # in-batch copies
    b = rest[40:80] + long_[6:9] + [
        dict(long_[2]),                                                  # exact copy of an A document
        {**long_[3], "url": long_[3]["url"] + "#frag"},                 # the same URL (fragment ignored)
        {**long_[4], "text": _near(long_[4]["text"]), "url": "https://example.org/b4"},  # near copy of A
        {**long_[5], "text": _near(long_[5]["text"]), "url": "https://example.org/b5"},
        {**rest[41], "url": "https://example.org/b41"},                 # in-batch exact copy (text)
    ]
    c = rest[80:120] + [
        {**long_[6], "url": "https://example.org/c6"},                  # exact copy of a B document
        {**long_[7], "text": _near(long_[7]["text"]), "url": "https://example.org/c7"},  # near copy of B
        {**long_[0], "text": _near(long_[0]["text"]), "url": "https://example.org/c0"},  # near copy of A
        {**long_[1], "url": "https://example.org/c1"},  # exact copy of A's near copy's original (dropped in A)
    ]
    return [a, b, c]


@pytest.fixture(scope="module")
def living(tmp_path_factory, prefect_api):
    """The watch flow run after each of three files lands; then every batch's steps (committed: no-ops)."""
    from flows.curate import curate_batches
    from flows.run import load
    from flows.watch import watch
    from tests import stages

    tmp = tmp_path_factory.mktemp("living")
    incoming = tmp / "incoming"
    incoming.mkdir()
    recipe = tmp / "living.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset": "living", "storage_root": str(tmp / "store"), "cluster": "serial",  # in-process: no Ray start
        "ingest": {"docs_per_shard": 25, "sources": [{"path": str(incoming), "domain": "web"}]},
        "minhash_signatures": {}, "exact_dedup": {}, "minhash_dedup": {},
    }))
    summaries = []
    for i, docs in enumerate(_batches()):
        (incoming / f"batch{i}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        summaries.append(watch(str(recipe)))
    cfg, profile = load(str(recipe))
    executor = types.SimpleNamespace(stage=stages.run, section=stages.section)  # the stages without Prefect tasks
    steps = curate_batches(cfg, profile, executor, recheck=True)  # every stage committed: just its versions
    return {"cfg": cfg, "steps": steps, "summaries": summaries}


def test_incremental_equals_one_shot_first_batch_wins(living):
    steps = living["steps"]
    assert len(steps) == 3
    incremental = [d for s in steps for d in datasets.read_table(s["curated"], columns=["doc_id"]).column(0).to_pylist()]
    assert len(incremental) == len(set(incremental))  # no document kept twice
    expected = union_first_batch_wins([datasets.read_table(s["batch"]) for s in steps])
    assert set(incremental) == expected
    # the planted copies: 2 in A; 5 in B (4 of them of A); 4 in C, all of earlier batches
    sizes = [datasets.read_manifest(s["batch"])["num_rows"] for s in steps]
    kept = [datasets.read_manifest(s["curated"])["num_rows"] for s in steps]
    assert [n - k for n, k in zip(sizes, kept, strict=True)] == [2, 5, 4]


def test_a_cross_batch_duplicate_names_the_earlier_document_and_batch(living):
    steps = living["steps"]
    a, b = str(steps[0]["batch"]), str(steps[1]["batch"])
    keepers = datasets.read_table(steps[1]["xb_exact_keepers"]).to_pylist()
    earlier = [k for k in keepers if k["ed_duplicate_batch"] is not None]
    assert len(earlier) == 2 and {k["ed_reason"] for k in earlier} == {"ed_url_duplicate"}  # same URL as in A
    assert all(k["ed_duplicate_batch"] == a for k in earlier)
    a_ids = set(datasets.read_table(steps[0]["curated"], columns=["doc_id"]).column(0).to_pylist())
    assert {k["ed_duplicate_of"] for k in earlier} <= a_ids  # the winner is a published document of A
    clusters = datasets.read_table(steps[2]["xb_minhash_clusters"]).to_pylist()
    cross = [c for c in clusters if c["mh_duplicate_batch"] is not None]
    assert {c["mh_duplicate_batch"] for c in cross} == {a, b} and not any(c["keep"] for c in cross)
    b_ids = set(datasets.read_table(steps[1]["curated"], columns=["doc_id"]).column(0).to_pylist())
    assert {c["cluster_id"] for c in cross} <= a_ids | b_ids


def test_watch_reports_each_batch_and_earlier_batches_are_never_rewritten(living):
    last = living["summaries"][-1]["batches"]
    assert [r["cross_batch_duplicates"] for r in last] == [0, 4, 4]
    assert [r["new_documents"] for r in last] == [48, 48, 44]
    assert last[-1]["corpus"] == 46 + 43 + 40
    first = living["summaries"][0]["batches"]
    assert first[0]["curated"] == last[0]["curated"]  # batch A's curated version is the one published first
    # each index is a committed version that grew by the batch: the last holds every earlier row
    idx = [datasets.read_table(s["exact_dedup"]).num_rows for s in living["steps"]]
    assert idx[0] < idx[1] < idx[2]


def test_the_union_is_one_dataset_in_the_catalog(living):
    from storage import catalog

    con = catalog.connect(living["cfg"].root)
    rows = con.execute("SELECT batch_no, kept, cross_batch_duplicates, corpus_kept FROM living__corpus "
                       "ORDER BY batch_no").fetchall()
    assert rows == [(1, 46, 0, 46), (2, 43, 4, 89), (3, 40, 4, 129)]
    n, distinct = con.execute("SELECT count(*), count(DISTINCT doc_id) FROM living__corpus_docs").fetchone()
    assert n == distinct == 129
    assert con.execute("SELECT count(*), min(batch_no) FROM living__batch_2").fetchone() == (43, 2)
