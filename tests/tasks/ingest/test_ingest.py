"""Readers: every shared sample format becomes documents; broken records become quarantine rows, never a crash."""

import gzip
import io
import json

import pytest

from tasks.ingest.records import DOCUMENT_SCHEMA, doc_id
from tasks.ingest.sources import IngestSource, detect_format
from tasks.ingest.stage import read_source, rows_to_tables
from tests.conftest import shared_path


def _read(data: bytes, name: str, **spec):
    rows = list(read_source(io.BytesIO(data), name, IngestSource(path=name, **spec)))
    return rows_to_tables(rows)


def _read_file(path, **spec):
    with open(path, "rb") as f:
        return rows_to_tables(list(read_source(f, str(path), IngestSource(path=str(path), **spec))))


def test_c4_jsonl_gives_every_document_with_url_and_stable_ids():
    path = shared_path("web", "c4_sample", "c4_sample.jsonl")
    docs, bad = _read_file(path, domain="web", lang="en")
    assert docs.num_rows == 1000 and bad.num_rows == 0
    assert docs.schema == DOCUMENT_SCHEMA
    assert docs["text"][0].as_py().startswith("Beginners BBQ Class")
    assert docs["url"][0].as_py().startswith("https://klyq.com/")
    assert len(set(docs["doc_id"].to_pylist())) == 1000
    # a single-file source: the file is its own source, named by its file name (where it is mounted is no part of it)
    assert docs["doc_id"][0].as_py() == doc_id("c4_sample.jsonl", "line:1")
    assert docs["source"][0].as_py() == str(path) and docs["source_path"][0].as_py() == "c4_sample.jsonl"
    assert json.loads(docs["meta"][0].as_py())["timestamp"] == "2019-04-25 12:57:54"  # nothing lost


def test_gzipped_dolma_jsonl_takes_url_from_id():
    docs, bad = _read_file(shared_path("web", "dolma_samples", "cc_en_head-0091.jsonl.gz"))
    assert docs.num_rows == 10 and bad.num_rows == 0
    assert all(u.startswith("http") for u in docs["url"].to_pylist())


@pytest.mark.parametrize(
    "parts,expected",
    [
        (("web", "dolma_samples", "sample-0000.warc.gz"), 22),
        (("web", "dolma_samples", "sample-0001.warc.gz"), 15),
        (("web", "warc_resiliparse", "warcfile.warc.gz"), 16),
        (("web", "warc_resiliparse", "clueweb-quirk.warc.gz"), 29),
        (("web", "warc_warcio", "example.warc.gz"), 1),
        (("web", "warc_warcio", "example-iana.org-chunked.warc"), 1),
        (("web", "warc_warcio", "example.arc.gz"), 1),
        (("web", "cc_whirlwind", "whirlwind.warc.gz"), 1),
    ],
)
def test_warc_response_records_become_documents_with_warc_metadata(parts, expected):
    docs, bad = _read_file(shared_path(*parts))
    assert docs.num_rows + bad.num_rows == expected
    assert docs.num_rows >= 1
    row = docs.slice(0, 1).to_pylist()[0]
    assert row["warc_type"] in ("response", "resource") and row["url"] and row["text"].strip()
    assert row["position"].startswith("offset:")


def test_wet_conversion_record_keeps_text_as_is():
    docs, bad = _read_file(shared_path("web", "cc_whirlwind", "whirlwind.warc.wet.gz"))
    assert docs.num_rows == 1 and docs["warc_type"][0].as_py() == "conversion"
    assert docs["url"][0].as_py() == "https://an.wikipedia.org/wiki/Escopete"


def test_html_pages_extract_main_text_containing_the_expected_snippets():
    path = shared_path("web", "html_pages", "trafilatura_eval_pages.jsonl.gz")
    docs, bad = _read_file(path, html_field="html", limit=60)
    assert docs.num_rows == 60
    with gzip.open(path, "rt") as f:
        pages = [json.loads(line) for _, line in zip(range(200), f, strict=False)]
    by_url = {p["url"]: p for p in pages}
    hits = total = 0
    for row in docs.to_pylist():
        for snippet in by_url[row["url"]]["with"]:
            total += 1
            hits += snippet in row["text"]
    assert total > 50 and hits / total > 0.6  # main-text extraction keeps most of what trafilatura's eval expects


def test_stackexchange_html_fragments_with_titles():
    docs, bad = _read_file(
        shared_path("domains", "stackexchange", "cardano_posts.jsonl"),
        html_field="body_html", title_field="title", main_content=False, limit=5,
    )
    assert docs["text"][0].as_py().startswith("How Cardano is different from Ethereum")
    assert "<p>" not in docs["text"][0].as_py()


def test_bad_json_wrong_types_non_utf8_and_nul_are_quarantined_with_position():
    lines = [
        b'{"text": "good one", "url": "http://a"}',
        b'{"text": "broken',
        b'{"text": 42}',
        b'["not", "an", "object"]',
        '{"text": "caf\u00e9"}'.encode("latin-1"),
        b'{"text": "nul\\u0000byte"}',
        b'{"text": "   "}',
        b'{"body": "no text field"}',
        b'{"text": "good two"}',
    ]
    docs, bad = _read(b"\n".join(lines) + b"\n", "bad.jsonl")
    assert docs["text"].to_pylist() == ["good one", "good two"]
    reasons = dict(zip(bad["position"].to_pylist(), bad["reason"].to_pylist(), strict=True))
    assert reasons["line:2"].startswith("invalid JSON")
    assert "not a string" in reasons["line:3"]
    assert "not an object" in reasons["line:4"]
    assert reasons["line:5"].startswith("non-UTF-8")
    assert reasons["line:6"] == "NUL byte in text"
    assert reasons["line:7"] == "empty text"
    assert "missing" in reasons["line:8"]
    assert docs.num_rows + bad.num_rows == len(lines)  # nothing silently dropped


def test_truncated_gzip_keeps_what_came_before_and_quarantines_the_rest():
    payload = b"".join(json.dumps({"text": f"document number {i} " * 20}).encode() + b"\n" for i in range(200))
    data = gzip.compress(payload)
    docs, bad = _read(data[: len(data) // 2], "cut.jsonl.gz")
    assert 0 < docs.num_rows < 200
    assert bad.num_rows == 1 and "truncated" in bad["reason"][0].as_py()


def test_gigantic_document_is_quarantined_not_carried():
    docs, bad = _read(json.dumps({"text": "x" * 2000}).encode(), "big.jsonl", max_doc_bytes=1000)
    assert docs.num_rows == 0 and "too large" in bad["reason"][0].as_py()


def test_empty_file_is_recorded_and_broken_warc_is_quarantined():
    docs, bad = _read(b"", "empty.jsonl")  # no documents, but the empty file is named in the quarantine table
    assert docs.num_rows == 0 and bad.num_rows == 1 and "no records in file" in bad["reason"][0].as_py()
    docs, bad = _read(b"WARC/1.0\r\nContent-Length: 999999\r\n\r\nshort", "broken.warc")
    assert docs.num_rows == 0 and bad.num_rows == 1 and "WARC" in bad["reason"][0].as_py()


def test_limit_and_format_detection():
    data = b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(10))
    docs, _ = _read(data, "x.jsonl", limit=3)
    assert docs.num_rows == 3
    assert detect_format("a.jsonl.zst") == "jsonl" and detect_format("b.warc.wet.gz") == "warc"
    with pytest.raises(ValueError, match="format"):
        detect_format("mystery.bin")


def test_truncated_warc_and_wrong_content_length_are_quarantined_not_partial():
    data = shared_path("web", "warc_warcio", "example-iana.org-chunked.warc").read_bytes()
    docs, bad = _read(data[:3000], "cut.warc")
    assert docs.num_rows == 0 and "truncated WARC response record" in bad["reason"][0].as_py()
    broken = data.replace(b"Content-Length: ", b"Content-Length: 9", 1)  # the warcinfo record claims 9137 bytes
    docs, bad = _read(broken, "badlen.warc")
    assert bad.num_rows == 1 and "bytes missing" in bad["reason"][0].as_py() and bad["position"][0].as_py() == "offset:0"
    # the response record it would have swallowed is intact: read at its exact offset, not lost with it
    assert docs["url"].to_pylist() == ["http://www.iana.org/"]
    assert docs["position"].to_pylist() == [f"offset:{broken.index(b'WARC/1.0', 1)}"]
