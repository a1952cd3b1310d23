"""Hostile input never crashes an ingest and never drops a document in silence (issue 14, the input side).

Every record that cannot be decoded is a quarantine row at its exact position, a file that cannot be read at all is
one row naming it, and the rest is read: input records = documents + quarantine rows, checked wherever it applies.
The same input listed twice is read once, and dedup never calls a document a duplicate of itself.
"""

from __future__ import annotations

import gzip
import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import tasks.dedup.minhash as minhash_mod
import tasks.dedup.minhash_sql as minhash_sql
import tasks.select.selection as select_mod
from ray_cluster import runtime
from storage import datasets
from tasks import registry
from tasks.dedup.exact import (
    ExactDedupParams,
    exact_dedup_filter,
    exact_dedup_hashes,
    exact_dedup_sql,
)
from tasks.filter.quality_filter import QualityFilterParams
from tasks.ingest.records import doc_id
from tasks.ingest.sources import IngestSource, list_input_files, plan_inputs
from tasks.ingest.stage import IngestParams, read_file
from tests import stages
from tests.oracles.dedup import exact_dedup_keepers, select_cluster_keepers
from tests.reliability._inputs import corrupt_row_group, html_page, jsonl, parquet, read, warc_gz, warc_record

GOOD = [{"text": f"good document {i} with enough words to be a real document", "url": f"http://ok/{i}"} for i in range(4)]
SERIAL = runtime.load_profile("serial")


def _assert_accounted(docs: pa.Table, bad: pa.Table, records: int) -> None:
    assert docs.num_rows + bad.num_rows == records, (docs.num_rows, bad.to_pylist())


# ------------------------------------------------------------------------------------------------ records that crashed


@pytest.mark.parametrize(
    "line,field",
    [
        (b'{"text": "lone \\ud800 surrogate"}', "of the text"),
        (b'{"text": "fine text here", "url": "http://x/\\udfff"}', "'url'"),
        (b'{"text": "fine text here", "lang": "\\ud83d"}', "'lang'"),
        (b'{"text": "fine text here", "author": "\\udc00"}', "'author'"),
        (b'{"text": "fine text here", "\\ud800key": 1}', "key"),
        (b'{"text": "fine text here", "meta": {"tags": ["ok", "\\ud800"]}}', "'meta.tags[1]'"),
    ],
)
def test_lone_surrogate_in_any_field_is_quarantined_at_its_line(line, field):
    docs, bad = read(jsonl([GOOD[0], line, GOOD[1]]), "s.jsonl")
    assert docs["text"].to_pylist() == [GOOD[0]["text"], GOOD[1]["text"]]
    assert bad["position"].to_pylist() == ["line:2"]
    assert "lone surrogate" in bad["reason"][0].as_py() and field in bad["reason"][0].as_py()
    _assert_accounted(docs, bad, 3)


def test_lone_surrogate_with_encoding_errors_replace_keeps_the_document_with_u_fffd():
    docs, bad = read(jsonl([b'{"text": "a \\ud800 b", "url": "http://x/\\udc00"}']), "s.jsonl", encoding_errors="replace")
    assert bad.num_rows == 0
    assert docs["text"].to_pylist() == ["a \ufffd b"] and docs["url"].to_pylist() == ["http://x/\ufffd"]


def test_surrogate_pair_escapes_are_characters_not_errors():
    docs, bad = read(jsonl([b'{"text": "emoji \\ud83d\\ude00 here"}']), "s.jsonl")
    assert bad.num_rows == 0 and docs["text"][0].as_py() == "emoji \U0001f600 here"


def test_json_nested_100000_deep_is_quarantined_not_a_recursion_error():
    deep = b'{"text": "ok", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    docs, bad = read(jsonl([GOOD[0], deep, b"[" * 100_000, GOOD[1]]), "deep.jsonl")
    assert docs.num_rows == 2 and bad["position"].to_pylist() == ["line:2", "line:3"]
    assert all("recursion limit" in r for r in bad["reason"].to_pylist())
    _assert_accounted(docs, bad, 4)


def test_5000_digit_integer_is_quarantined_not_a_value_error():
    huge = b'{"text": "fine text here", "n": ' + b"7" * 5000 + b"}"
    docs, bad = read(jsonl([huge, GOOD[0], b'{"text": ' + b"1" * 5000 + b"}"]), "int.jsonl")
    assert docs.num_rows == 1 and bad["position"].to_pylist() == ["line:1", "line:3"]
    assert all(r.startswith("invalid JSON") and "digits" in r for r in bad["reason"].to_pylist())


def test_parquet_string_column_with_invalid_utf8_quarantines_only_its_row():
    texts = pa.array([b"first good text", b"bad \xff\xfe bytes", b"third good text"], pa.binary()).view(pa.string())
    urls = pa.array([b"http://a", b"http://b", b"http://\xc3"], pa.binary()).view(pa.string())
    data = parquet(pa.table({"text": texts, "url": urls}), row_group_size=10)
    docs, bad = read(data, "bad_utf8.parquet")
    assert docs["position"].to_pylist() == ["row:0"]
    assert bad["position"].to_pylist() == ["row:1", "row:2"]
    assert "'text'" in bad["reason"][0].as_py() and "'url'" in bad["reason"][1].as_py()
    _assert_accounted(docs, bad, 3)


def test_rows_after_a_corrupt_parquet_row_group_keep_their_exact_position_and_doc_id():
    table = pa.table({"text": [f"document number {i} with words" for i in range(12)], "url": [f"http://x/{i}" for i in range(12)]})
    clean = parquet(table, row_group_size=4)
    clean_docs, _ = read(clean, "f.parquet")
    docs, bad = read(corrupt_row_group(clean, 1), "f.parquet")
    assert bad["position"].to_pylist() == [f"row:{i}" for i in range(4, 8)]  # one row per lost record
    assert all("unreadable row group 1 (rows 4-7)" in r for r in bad["reason"].to_pylist())
    expected = clean_docs.filter(pa.array([not 4 <= i < 8 for i in range(12)]))
    assert docs["position"].to_pylist() == expected["position"].to_pylist()
    assert docs["doc_id"].to_pylist() == expected["doc_id"].to_pylist()  # stable: hash of source + position
    assert docs["text"].to_pylist() == expected["text"].to_pylist()
    _assert_accounted(docs, bad, 12)


def test_unreadable_parquet_footer_is_one_row_naming_the_file():
    docs, bad = read(parquet(pa.table({"text": ["a b c"]}), 10)[:-20], "cut.parquet")
    assert docs.num_rows == 0 and bad["position"].to_pylist() == ["file"] and "unreadable Parquet" in bad["reason"][0].as_py()


# ------------------------------------------------------------------------------------------------ whole files


def test_a_file_that_cannot_be_read_is_one_row_naming_it_and_the_rest_goes_on(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "ok.jsonl").write_bytes(jsonl(GOOD))
    (inputs / "mystery.bin").write_bytes(b"\x00\x01")
    (tmp_path / "crawl.wat").mkdir()  # a folder whose name looks like a file: open fails
    rows = list(read_file(str(inputs / "mystery.bin"), IngestSource(path="x")))
    assert [(k, r["position"]) for k, r in rows] == [("quarantine", "file")] and "format" in rows[0][1]["reason"]
    rows = list(read_file(str(tmp_path / "crawl.wat"), IngestSource(path="x")))
    assert [(k, r["position"]) for k, r in rows] == [("quarantine", "file")] and "cannot open" in rows[0][1]["reason"]
    ref = stages.ingest([IngestSource(path=str(inputs))], root=str(tmp_path / "store"), dataset="files",
                       docs_per_shard=100, profile=SERIAL)
    quarantined = datasets.read_table(ref.sibling("ingest_quarantine"))
    assert datasets.read_manifest(ref)["num_rows"] == len(GOOD)
    assert sorted(os.path.basename(s) for s in quarantined["source"].to_pylist()) == ["mystery.bin"]


def test_a_file_name_that_is_not_utf8_is_one_row_not_a_crash():
    name = os.fsdecode(b"/data/caf\xe9.jsonl")  # what listing a latin-1 named file gives: a lone surrogate
    docs, bad = read(jsonl(GOOD), name)
    assert docs.num_rows == 0 and bad.num_rows == 1 and "not valid UTF-8" in bad["reason"][0].as_py()
    assert bad["source"][0].as_py() == "/data/caf\\udce9.jsonl"


# ------------------------------------------------------------------------------------------------ WARC framing


def _warc_docs(n: int) -> list[bytes]:
    return [warc_record(f"http://ok/{i}", html_page(f"Paragraph number {i} of a real page. " * 10)) for i in range(n)]


def _with_length_delta(record: bytes, delta: int) -> bytes:
    length = int(record.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return record.replace(f"Content-Length: {length}".encode(), f"Content-Length: {length + delta}".encode())


# too short; too long into the next record; too long past the end; past max_record_bytes
@pytest.mark.parametrize("delta", [-40, -1, 5, 40, 10_000_000, 100_000_000])
def test_wrong_content_length_in_the_middle_costs_one_record_not_the_rest(delta):
    records = _warc_docs(5)
    records[2] = _with_length_delta(records[2], delta)
    docs, bad = read(b"".join(records), "len.warc")
    offsets = [sum(map(len, records[:i])) for i in range(5)]
    assert docs["position"].to_pylist() == [f"offset:{offsets[i]}" for i in (0, 1, 3, 4)]
    assert bad["position"].to_pylist() == [f"offset:{offsets[2]}"] and "Content-Length" in bad["reason"][0].as_py()
    _assert_accounted(docs, bad, 5)


def test_content_length_off_by_blank_trailer_bytes_only_keeps_the_record_whole():
    # a length that ends inside the blank lines after the payload frames the same record: nothing is lost
    records = _warc_docs(3)
    plain, _ = read(b"".join(records), "ok.warc")
    docs, bad = read(b"".join([records[0], _with_length_delta(records[1], 2), records[2]]), "cr.warc")
    assert bad.num_rows == 0 and docs["text"].to_pylist() == plain["text"].to_pylist()


def test_gzip_warc_member_offsets_match_warcio_and_a_cut_member_is_one_row():
    records = _warc_docs(4)
    data = warc_gz(records)
    members = [len(warc_gz(records[:i])) for i in range(4)]
    docs, bad = read(data, "a.warc.gz")
    assert docs["position"].to_pylist() == [f"offset:{m}" for m in members] and bad.num_rows == 0
    docs, bad = read(data[: members[3] + 30], "cut.warc.gz")
    assert docs.num_rows == 3 and bad["position"].to_pylist() == [f"offset:{members[3]}"]


def test_garbage_between_warc_records_is_reported_and_the_next_record_read():
    records = _warc_docs(3)
    data = records[0] + b"\x00\xff junk that is no record \x00\r\n" + records[1] + records[2]
    docs, bad = read(data, "junk.warc")
    assert docs.num_rows == 3 and bad.num_rows == 1 and "not a WARC record" in bad["reason"][0].as_py()


# ------------------------------------------------------------------------------------------------ listing inputs


def test_path_with_a_literal_bracket_is_that_file_and_only_a_missing_path_is_a_glob(tmp_path):
    (tmp_path / "crawl[1].jsonl").write_bytes(jsonl(GOOD[:1]))
    (tmp_path / "crawl1.jsonl").write_bytes(jsonl(GOOD[1:3]))  # what the glob crawl[1].jsonl matches
    literal = str(tmp_path / "crawl[1].jsonl")
    assert list_input_files([IngestSource(path=literal)]) == [(0, literal)]
    files, _ = registry.stage("ingest").list_inputs(IngestParams(sources=(IngestSource(path=literal),)))
    assert [uri for _, uri in files] == [literal]  # the ingest stage lists through the same function
    assert list_input_files([IngestSource(path=str(tmp_path / "crawl[12].jsonl"))]) == [(0, str(tmp_path / "crawl1.jsonl"))]
    ref = stages.ingest([IngestSource(path=literal)], root=str(tmp_path / "s"), dataset="br", docs_per_shard=10, profile=SERIAL)
    assert datasets.read_table(ref)["text"].to_pylist() == [GOOD[0]["text"]]
    with pytest.raises(FileNotFoundError, match=r"crawl\[9\]"):
        list_input_files([IngestSource(path=str(tmp_path / "crawl[9].jsonl"))])


def _curate(ref, profile):
    """The dedup part of the curate flow, with its real stage functions: signatures, a filter, exact, MinHash, kept."""
    ref = stages.run("minhash_signatures", [ref], minhash_mod.MinhashSignaturesParams(), profile)
    ref = stages.run("quality_filter", [ref], QualityFilterParams(rules=(("has_text", "length(text) > 0"),)), profile)
    ref = stages.section("exact_dedup", ref, ExactDedupParams(), profile)
    ref = stages.section("minhash_dedup", ref, minhash_mod.MinhashDedupParams(), profile)
    return ref, stages.run("kept", [ref], select_mod.KeptParams(), profile)


def _distinct_docs(n: int) -> list[dict]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau upsilon".split()
    return [{"text": " ".join(f"{w}{i}" for w in words) + f" {i} " * 3, "url": f"http://distinct/{i}"} for i in range(n)]


def test_the_same_input_twice_is_read_once_and_dedup_keeps_every_document(tmp_path):
    docs = _distinct_docs(6)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part-a.jsonl").write_bytes(jsonl(docs[:4]))
    (tmp_path / "in" / "part-b.jsonl").write_bytes(jsonl(docs[4:]))
    os.symlink(tmp_path / "in" / "part-a.jsonl", tmp_path / "alias.jsonl")
    a = str(tmp_path / "in" / "part-a.jsonl")
    sources = [
        IngestSource(path=a),
        IngestSource(path=a),  # the same file twice
        IngestSource(path=str(tmp_path / "in" / "part-*.jsonl")),  # a glob over it
        IngestSource(path=str(tmp_path / "in")),  # the folder holding both
        IngestSource(path=str(tmp_path / "alias.jsonl")),  # a symlink to it
    ]
    files, repeats = plan_inputs(sources)
    assert files == [(0, a), (2, str(tmp_path / "in" / "part-b.jsonl"))]
    assert [(r["source"], r["first_source"]) for r in repeats] == [(1, 0), (2, 0), (3, 0), (3, 2), (4, 0)]
    ref = stages.ingest(sources, root=str(tmp_path / "store"), dataset="twice", docs_per_shard=100, profile=SERIAL)
    manifest = datasets.read_manifest(ref)
    assert manifest["num_rows"] == 6 and len(manifest["stats"]["repeated_inputs"]) == 5
    dedup, kept = _curate(ref, SERIAL)
    assert datasets.read_manifest(kept)["num_rows"] == 6  # was 0: every row the "duplicate" of itself
    table = datasets.read_table(dedup)
    assert table["keep"].to_pylist() == [True] * 6


def test_repeated_doc_ids_reaching_dedup_keep_exactly_one_survivor_never_their_own_duplicate(tmp_path):
    # what an ingest of one file twice used to commit: every row twice under one doc_id (plus a real text duplicate)
    base = _distinct_docs(4)
    base.append({**base[0], "url": "http://elsewhere/0"})
    rows = [{"doc_id": doc_id("f.jsonl", f"line:{i}"), "text": d["text"], "url": d["url"]} for i, d in enumerate(base)]
    table = pa.Table.from_pylist(rows + rows)
    ref = datasets.DatasetRef(str(tmp_path / "store"), "repeats", "ingest", "0" * 12)
    datasets.write_table(ref, table, params=None, code="test")
    dedup, kept = _curate(ref, SERIAL)
    out = datasets.read_table(dedup).to_pylist()
    survivors = [r["doc_id"] for r in out if r["keep"]]
    ids = [r["doc_id"] for r in rows]
    assert len(survivors) == len(set(survivors)) == 4  # one row per doc_id, and one of docs 0 and 4 (same text)
    assert set(ids[1:4]) <= set(survivors) and len({ids[0], ids[4]} & set(survivors)) == 1
    assert all(r["ed_duplicate_of"] != r["doc_id"] for r in out)
    assert {r["drop_reason"] for r in out if not r["keep"]} == {"ed_repeated_doc_id", "ed_text_duplicate"}
    assert datasets.read_manifest(kept)["num_rows"] == 4


@pytest.mark.parametrize("priority", ["longest", "lowest_doc_id", "score:desc"])
def test_exact_dedup_keepers_arrow_and_duckdb_never_name_a_row_its_own_duplicate(priority):
    import duckdb

    batch = pa.table({"doc_id": ["a", "b", "a", "c", "b"], "text": ["same", "other", "same", "same", "other"],
                      "url": ["u1", "u2", "u1", "u3", "u2"], "score": [0.1, 0.2, 0.1, 0.9, 0.2]})
    params = ExactDedupParams(priority=priority)
    hashed = exact_dedup_hashes(batch, params)
    arrow = exact_dedup_keepers(hashed, params)
    con = duckdb.connect()
    con.register("hashed", hashed.append_column("__shard", pa.array(["s"] * 5)).append_column(
        "__row", pa.array(range(5), pa.int64())))
    for stmt in exact_dedup_sql("hashed", params, parts=2):
        con.execute(stmt)
    sql = con.sql("SELECT * FROM ed_keepers").to_arrow_table()
    for keepers in (arrow, sql):
        assert all(r["doc_id"] != r["ed_duplicate_of"] for r in keepers.to_pylist())
        out = exact_dedup_filter(hashed, params, keepers=keepers).to_pylist()
        assert sorted(r["doc_id"] for r in out if r["ed_keep"]) == sorted({"b", min(("a", "c"), key=_winner(priority))})
        assert all(r["ed_duplicate_of"] != r["doc_id"] for r in out)


def _winner(priority):
    return {"longest": lambda d: d, "lowest_doc_id": lambda d: d, "score:desc": lambda d: -{"a": 0.1, "c": 0.9}[d]}[priority]


def test_minhash_keepers_count_a_repeated_doc_id_once_in_arrow_and_duckdb():
    import duckdb

    members = pa.table({"doc_id": ["x", "x", "y"], "cluster_id": ["x", "x", "x"], "text": ["short", "short", "a longer text"]})
    for priority in ("longest", "lowest_doc_id"):
        params = minhash_mod.MinhashDedupParams(priority=priority)
        kept = select_cluster_keepers(members, params).to_pylist()
        assert sorted(r["doc_id"] for r in kept) == ["x", "y"] and all(r["cluster_size"] == 2 for r in kept)
        assert [r["doc_id"] for r in kept if r["keep"]] == (["y"] if priority == "longest" else ["x"])
    con = duckdb.connect()
    con.register("docs", members.select(["doc_id", "text"]))
    con.execute("CREATE TABLE mh_labels AS SELECT * FROM (VALUES ('x', 'x'), ('y', 'x')) t(node, lbl)")
    con.execute(minhash_sql.fuzzy_dedup_sql("e", "docs", minhash_mod.MinhashDedupParams())["clusters"])
    rows = con.execute("SELECT doc_id, cluster_size, keep FROM mh_clusters ORDER BY doc_id").fetchall()
    assert rows == [("x", 2, False), ("y", 2, True)]  # x once: never both kept and dropped
    batch = pa.table({"doc_id": ["x", "y", "x"], "keep": [True, True, True], "drop_reason": [None, None, None]})
    out = minhash_mod.minhash_filter(batch, minhash_mod.MinhashDedupParams(), clusters=pa.table(
        {"doc_id": ["x", "y"], "cluster_id": ["x", "x"], "cluster_size": [2, 2], "keep": [True, False]})).to_pylist()
    assert [r["keep"] for r in out] == [True, False, False]
    assert [r["drop_reason"] for r in out] == [None, "mh_duplicate", "mh_repeated_doc_id"]


# ------------------------------------------------------------------------------------------------ the flow level


def test_hostile_corpus_through_the_ingest_stage_accounts_for_every_record(tmp_path):
    """input records = committed rows + quarantine rows, through the real ingest stage and its committed versions."""
    table = pa.table({"text": [f"parquet document {i} with words" for i in range(8)]})
    corpus = {  # name -> (bytes, records in it)
        "surrogates.jsonl": (jsonl([GOOD[0], b'{"text": "\\ud800"}', b'{"text": "ok text", "u": "\\udfff"}', GOOD[1]]), 4),
        "deep.jsonl": (jsonl([b"[" * 100_000, GOOD[2]]), 2),
        "digits.jsonl": (jsonl([b'{"text": ' + b"9" * 5000 + b"}", GOOD[3]]), 2),
        "bomb.jsonl.gz": (gzip.compress(jsonl([GOOD[0]]) + b'{"text": "' + b"x" * (4 << 20) + b'"}\n', 1), 2),
        "rowgroup.parquet": (corrupt_row_group(parquet(table, 2), 2), 8),
        "len.warc": (b"".join(_warc_docs(2)).replace(b"Content-Length: ", b"Content-Length: 1", 1), 2),
        # issue 35: 1,200 garbage lines are one row naming the file (max_bad_share), a FIFO one row, never opened
        "garbage.jsonl": (b"\xff\xfe not json at all\n" * 1200, 1),
        "fifo.jsonl": (None, 1),
    }
    for name, (data, _) in corpus.items():
        if data is None:
            os.mkfifo(tmp_path / name)
        else:
            (tmp_path / name).write_bytes(data)
    sources = [IngestSource(path=str(tmp_path / name), max_doc_bytes=256 * 1024) for name in corpus]
    ref = stages.ingest(sources, root=str(tmp_path / "store"), dataset="hostile", docs_per_shard=100, profile=SERIAL)
    docs = datasets.read_table(ref)
    bad = datasets.read_table(ref.sibling("ingest_quarantine"))
    for name, (_, records) in corpus.items():
        src = str(tmp_path / name)
        n_docs = docs.filter(pc.equal(docs["source"], src)).num_rows
        n_bad = bad.filter(pc.equal(bad["source"], src)).num_rows
        assert n_docs + n_bad == records, (name, n_docs, n_bad)
    assert docs.num_rows + bad.num_rows == sum(r for _, r in corpus.values())
    assert len(set(docs["doc_id"].to_pylist())) == docs.num_rows
    assert datasets.read_manifest(ref)["stats"]["quarantined"] == bad.num_rows
