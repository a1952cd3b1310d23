"""Document ids follow the bytes and their place inside their source, never the mount point.

One small corpus (a JSONL file with a broken line, a real WARC.gz, a Parquet file holding copies of some JSONL
documents) is read from its folder, through a symlink, through a glob, from a copy in another folder and from an
s3:// bucket (a local moto server, real s3fs): every spelling gives the same doc_ids (quarantine rows included),
the same held-out split and the same kept set after the doc_id-dependent stages (held-out split, exact and MinHash
dedup, whose survivors and cluster ids are chosen by doc_id). A different source name, or a file moved inside the
source, does change them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.dedup.exact as ed
import tasks.dedup.minhash as mh
from ray_cluster import runtime
from storage import datasets
from tasks.ingest.records import doc_id
from tasks.ingest.sources import IngestSource, plan_inputs, plan_sources
from tasks.ingest.stage import IngestParams, input_files, read_file_tables
from tasks.select.selection import HeldoutParams, KeptParams, split_by_doc_id
from tests import stages
from tests.conftest import moto_s3, shared_path

SERIAL = runtime.load_profile("serial")


def _corpus(folder) -> None:
    """corpus/web/c4.jsonl (40 C4 documents and one broken line), corpus/crawl/sample-0000.warc.gz (22 pages),
    corpus/tables/c4.parquet (30 more C4 documents and exact copies of 5 JSONL ones)."""
    with shared_path("web", "c4_sample", "c4_sample.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(70), f, strict=False)]
    (folder / "web").mkdir(parents=True)
    lines = [json.dumps(r) for r in rows[:40]]
    lines.insert(7, '{"text": "a broken line')
    (folder / "web" / "c4.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "crawl").mkdir()
    shutil.copyfile(shared_path("web", "dolma_samples", "sample-0000.warc.gz"), folder / "crawl" / "sample-0000.warc.gz")
    (folder / "tables").mkdir()
    table = [{"text": r["text"], "url": r["url"]} for r in rows[40:70] + rows[:5]]
    pq.write_table(pa.Table.from_pylist(table), folder / "tables" / "c4.parquet")


@pytest.fixture(scope="module")
def s3():
    """A local moto S3 server that fsspec reaches through its environment configuration (as tests/storage do)."""
    with moto_s3("quarry-ids") as fs:
        yield fs


@pytest.fixture(scope="module")
def spellings(tmp_path_factory, s3):
    """The same corpus as six source paths: its folder, a symlink of another name, a glob, a copy elsewhere, the
    folder with a trailing slash, and an s3:// prefix."""
    tmp = tmp_path_factory.mktemp("ids")
    corpus = tmp / "data" / "corpus"
    _corpus(corpus)
    (tmp / "link").symlink_to(corpus, target_is_directory=True)
    shutil.copytree(corpus, tmp / "elsewhere" / "deeper" / "corpus")
    s3.put(str(corpus), "quarry-ids/mirror/corpus", recursive=True)
    assert sorted(s3.find("quarry-ids/mirror/corpus")) == [
        "quarry-ids/mirror/corpus/crawl/sample-0000.warc.gz", "quarry-ids/mirror/corpus/tables/c4.parquet",
        "quarry-ids/mirror/corpus/web/c4.jsonl"]
    return {
        "folder": str(corpus),
        "symlink": str(tmp / "link"),
        "glob": str(corpus / "*" / "*"),
        "copy": str(tmp / "elsewhere" / "deeper" / "corpus"),
        "slash": str(corpus) + "/",
        "s3": "s3://quarry-ids/mirror/corpus",
    }, tmp


def _key(table: pa.Table, columns: list[str]) -> list[tuple]:
    return sorted(zip(*(table.column(c).to_pylist() for c in columns), strict=True))


@pytest.fixture(scope="module")
def ingested(spellings):
    """Each spelling through the real ingest stage (registry + executor), into its own store."""
    paths, tmp = spellings
    out = {}
    for name, path in paths.items():
        ref = stages.ingest([IngestSource(path=path, domain="web")], root=str(tmp / f"store-{name}"), dataset="ids",
                            docs_per_shard=25, profile=SERIAL)
        out[name] = (ref, datasets.read_table(ref), datasets.read_table(ref.sibling("ingest_quarantine")))
    return out


def test_every_spelling_of_the_source_gives_the_same_doc_ids_and_quarantine_ids(ingested):
    _, docs, bad = ingested["folder"]
    assert docs.num_rows == 40 + 22 + 35 and bad.num_rows == 1  # every record is a document or a quarantine row
    assert len(set(docs["doc_id"].to_pylist())) == docs.num_rows
    assert set(docs["source_path"].to_pylist()) == {"corpus/web/c4.jsonl", "corpus/crawl/sample-0000.warc.gz",
                                                    "corpus/tables/c4.parquet"}
    # the id is the documented hash of the row's place: source name / path inside the source # position
    assert all(d == doc_id(s, p) for d, s, p in zip(*(docs[c].to_pylist() for c in ("doc_id", "source_path", "position")),
                                                     strict=True))
    assert bad.to_pylist()[0]["position"] == "line:8" and bad["doc_id"][0].as_py() == doc_id("corpus/web/c4.jsonl", "line:8")
    want = _key(docs, ["doc_id", "source_path", "position", "text", "url"])
    for name, (_, other, other_bad) in ingested.items():
        assert _key(other, ["doc_id", "source_path", "position", "text", "url"]) == want, name
        assert _key(other_bad, ["doc_id", "source_path", "position", "reason"]) == _key(
            bad, ["doc_id", "source_path", "position", "reason"]), name
    # the source column keeps where the bytes were read from (provenance)
    assert all(s.startswith("s3://quarry-ids/mirror/corpus/") for s in ingested["s3"][1]["source"].to_pylist())
    assert all("/elsewhere/deeper/corpus/" in s for s in ingested["copy"][1]["source"].to_pylist())
    assert all("/link/" in s for s in ingested["symlink"][1]["source"].to_pylist())


def test_every_spelling_holds_out_the_same_documents(ingested):
    held = {name: sorted(split_by_doc_id(docs, HeldoutParams(side="heldout"))["doc_id"].to_pylist())
            for name, (_, docs, _) in ingested.items()}
    train = {name: sorted(split_by_doc_id(docs, HeldoutParams())["doc_id"].to_pylist())
             for name, (_, docs, _) in ingested.items()}
    assert held["folder"] and train["folder"]
    assert all(h == held["folder"] for h in held.values()), held
    assert all(t == train["folder"] for t in train.values())


def test_every_spelling_keeps_the_same_documents_after_split_and_dedup(ingested):
    """train split -> MinHash signatures -> exact dedup -> MinHash dedup -> kept, through the executor: the kept
    set (survivors chosen by doc_id among the planted copies) is the same for every spelling."""
    kept_sets = {}
    for name, (ref, _, _) in ingested.items():
        train = stages.run("train_split", [ref], HeldoutParams(), SERIAL)
        sig = stages.run("minhash_signatures", [train], mh.MinhashSignaturesParams(), SERIAL)
        exact = stages.section("exact_dedup", sig, ed.ExactDedupParams(priority="lowest_doc_id"), SERIAL)
        fuzzy = stages.section("minhash_dedup", exact, mh.MinhashDedupParams(), SERIAL)
        kept = stages.run("kept", [fuzzy], KeptParams(), SERIAL)
        funnel = datasets.read_table(fuzzy, columns=["doc_id", "drop_reason"])
        kept_sets[name] = sorted(datasets.read_table(kept, columns=["doc_id"])["doc_id"].to_pylist())
        assert sum(r is not None and r.startswith("ed_") for r in funnel["drop_reason"].to_pylist()) >= 1, name
    assert all(k == kept_sets["folder"] for k in kept_sets.values())


def _ids(path: str, **spec) -> dict[tuple[str, str], str]:
    """(file name, position) -> doc_id of every document of one source, through the stage's own entry points."""
    files, _ = input_files(IngestParams(sources=(IngestSource(path=path, **spec),)))
    out = {}
    for settings, uri in files:
        docs, _ = read_file_tables(uri, settings)
        for d, p in zip(docs["doc_id"].to_pylist(), docs["position"].to_pylist(), strict=True):
            out[(os.path.basename(uri), p)] = d
    return out


def test_a_declared_source_name_names_the_ids_and_two_names_never_share_one(spellings):
    paths, tmp = spellings
    default, a, b = _ids(paths["folder"]), _ids(paths["folder"], name="crawl-a"), _ids(paths["folder"], name="crawl-b")
    assert default.keys() == a.keys() == b.keys()
    assert not set(a.values()) & set(b.values()) and not set(a.values()) & set(default.values())
    # a declared name makes a copy under any folder name read as the same source
    renamed = tmp / "renamed"
    shutil.copytree(paths["folder"], renamed)
    assert _ids(str(renamed), name="crawl-a") == a
    assert not set(_ids(str(renamed)).values()) & set(default.values())  # renaming the source folder renames it


def test_a_file_moved_inside_its_source_gets_new_ids_and_the_others_keep_theirs(spellings):
    paths, tmp = spellings
    moved = tmp / "moved" / "corpus"
    shutil.copytree(paths["folder"], moved)
    (moved / "archive").mkdir()
    (moved / "web").rename(moved / "archive" / "web")
    before, after = _ids(paths["folder"]), _ids(str(moved))
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key[0] == "c4.jsonl":
            assert after[key] != value, key  # corpus/archive/web/c4.jsonl is another place in the source
        else:
            assert after[key] == value, key


def test_a_single_file_source_is_named_by_its_file_wherever_it_lies(spellings):
    paths, tmp = spellings
    (tmp / "single").mkdir()
    shutil.copyfile(os.path.join(paths["folder"], "web", "c4.jsonl"), tmp / "single" / "c4.jsonl")
    here, there = _ids(os.path.join(paths["folder"], "web", "c4.jsonl")), _ids(str(tmp / "single" / "c4.jsonl"))
    assert here == there and here[("c4.jsonl", "line:1")] == doc_id("c4.jsonl", "line:1")


def test_a_file_read_on_its_own_with_its_sources_name_and_root_keeps_its_ids(spellings):
    """What the watch flow does with a new file of a watched folder: one source per file, keeping the folder's
    resolved name and root, so a file ingested by watch has the ids a full ingest of the folder gives it."""
    paths, _ = spellings
    full = _ids(paths["symlink"])
    plan = plan_sources([IngestSource(path=paths["symlink"], domain="web")])
    assert plan.sources[0].name == "corpus" and plan.sources[0].root == paths["symlink"]
    one_by_one = {}
    for s, uri in plan.files:
        pinned = dataclasses.replace(plan.sources[s], path=uri, exclude=())
        one_by_one.update(_ids(pinned.path, name=pinned.name, root=pinned.root))
    assert one_by_one == full


def test_two_sources_that_would_give_different_files_one_id_are_refused(tmp_path):
    for part in ("a", "b"):
        (tmp_path / part / "data").mkdir(parents=True)
        (tmp_path / part / "data" / "part-0.jsonl").write_text(json.dumps({"text": f"document of {part}"}) + "\n")
    same_name = [IngestSource(path=str(tmp_path / part / "data")) for part in ("a", "b")]
    with pytest.raises(ValueError, match=r"sources 0 and 1 .* same doc_ids \(data/part-0\.jsonl.*`name:`"):
        plan_inputs(same_name)
    named = [IngestSource(path=str(tmp_path / part / "data"), name=f"data-{part}") for part in ("a", "b")]
    assert len(plan_inputs(named)[0]) == 2
    # the same file listed twice is still read once (not refused): it is one file, not two with one id
    twice = [IngestSource(path=str(tmp_path / "a" / "data")), IngestSource(path=str(tmp_path / "a" / "data" / "part-0.jsonl"))]
    files, repeats = plan_inputs(twice)
    assert len(files) == 1 and len(repeats) == 1


@pytest.mark.parametrize("name", ["", "a/b", " "])
def test_a_source_name_that_cannot_name_a_source_is_refused(name):
    with pytest.raises(ValueError, match="source name"):
        IngestSource(path="x", name=name)
