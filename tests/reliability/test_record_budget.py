"""One record must not stop a stage (issue 35): a malformed URL, a quadratic document, a setting that empties the
corpus. Each runs through the real executor (serial profile) and checks that every input record is a committed row
(with its reason where it could not be processed), that the stage finishes within a bound, and that a stage
removing most of the corpus says so in the log and in the version's stats."""

from __future__ import annotations

import json
import logging
import time

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tasks.dedup.exact as ed
from ray_cluster.executor import yieldcheck
from storage import datasets
from tasks.dedup.line import LineDedupParams
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.reliability import _harness as h

HOSTILE_URLS = [
    "http://example.com:abc/page", "http://[::1/x", "http://example.com:99999/", "http://ex.com:-1/",
    "http://[zz]/", "http://a]b/", "http://ex.com: 80/", "http://[::1]:x/", "http://ex.com:\u0663/", "::", "",
    "http://\x00x/", "https://example.com/ok", "https://EXAMPLE.com:443/ok#frag",
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _ingest(tmp_path, records, dataset):
    src = IngestSource(path=str(_jsonl(tmp_path / f"{dataset}.jsonl", records)), domain="web", lang="en")
    return stages.ingest([src], root=str(tmp_path / "root"), dataset=dataset, docs_per_shard=50, profile=h.serial())


def test_malformed_urls_do_not_fail_exact_dedup_and_every_record_is_a_row(tmp_path):
    records = [{"id": f"d{i}", "text": f"document {i} body", "url": u} for i, u in enumerate(HOSTILE_URLS * 2)]
    ing = _ingest(tmp_path, records, "urls")
    n_in = datasets.read_manifest(ing)["num_rows"]
    t0 = time.monotonic()
    out = stages.section("exact_dedup", ing, ed.ExactDedupParams(), h.serial())
    assert time.monotonic() - t0 < 120
    table = datasets.read_table(out, columns=["doc_id", "url", "ed_url_error", "keep", "drop_reason"])
    assert table.num_rows == n_in == len(records)  # input records = committed rows (no quarantine needed)
    errors = dict(zip(table.column("url").to_pylist(), table.column("ed_url_error").to_pylist(), strict=True))
    for bad in ("http://example.com:abc/page", "http://[::1/x", "http://example.com:99999/", "http://[zz]/"):
        assert errors[bad] and errors[bad].startswith("ed_url_unparseable"), (bad, errors[bad])
    assert errors["https://example.com/ok"] is None
    # each URL occurs twice: the second copy of a malformed URL is still its first copy's duplicate
    reasons = table.column("drop_reason").to_pylist()
    assert reasons.count("ed_url_duplicate") >= len([u for u in HOSTILE_URLS if u.strip()]) - 1


# hostile URL parts: urllib raises on a bad port or bracket; every one must become a reason, never an exception
_PARTS = st.sampled_from(["http://", "https://", "", "[", "]", "::1", ":", "abc", "99999", "-1", "/", "?", "#",
                          "%", "example.com", "\u0663", " ", "\x00", "@", "[::1]"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_PARTS, max_size=8).map("".join) | st.text(max_size=30) | st.none(), max_size=12))
def test_fuzzed_urls_exact_dedup_hashes_keeps_every_row_and_never_raises(urls):
    batch = pa.table({"doc_id": [str(i) for i in range(len(urls))], "text": pa.array(["t"] * len(urls), pa.string()),
                      "url": pa.array(urls, pa.string())})
    out = ed.exact_dedup_hashes(batch, ed.ExactDedupParams())
    assert out.num_rows == batch.num_rows
    for u, hsh, err in zip(urls, out.column("ed_url_hash").to_pylist(), out.column("ed_url_error").to_pylist(),
                           strict=True):
        if err is not None:  # flagged rows are exactly those urllib refuses
            with pytest.raises(ValueError):
                ed.normalize_url(u)
            assert hsh is not None
        elif u:
            ed.normalize_url(u)


def test_a_stage_that_empties_most_documents_warns_in_the_log_and_the_stats(tmp_path, caplog):
    # CCNet's normalization maps every digit to 0: `doc <i> <n>` are all the line `doc 0 0`
    records = [{"id": f"d{i}", "text": f"doc {i} {i * 7 % 13}"} for i in range(200)]
    ing = _ingest(tmp_path, records, "yield")
    with caplog.at_level(logging.WARNING, logger="quarry"):
        out = stages.section("line_dedup", ing, LineDedupParams(), h.serial())
    table = datasets.read_table(out, columns=["keep", "drop_reason"])
    assert table.num_rows == 200  # every row stays, with its reason
    emptied = table.column("drop_reason").to_pylist().count("ld_empty_after_dedup")
    assert emptied > 100
    stats = datasets.read_manifest(out)["stats"]["yield"]
    assert stats["kept_in"] == 200 and stats["kept_out"] == 200 - emptied
    assert stats["removed_share"] > 0.5 and "line_dedup removed" in stats["warning"]
    assert any("line_dedup removed" in r.getMessage() and "%" in r.getMessage() for r in caplog.records)


def test_a_stage_under_the_threshold_records_its_yield_without_a_warning(tmp_path, caplog, monkeypatch):
    words = ["".join("abcdefghij"[int(c)] for c in f"{i:03d}") for i in range(40)]  # no digits: 0-mapping spares them
    records = [{"id": f"d{i}", "text": f"shared footer\nown line {w}"} for i, w in enumerate(words)]
    ing = _ingest(tmp_path, records, "fine")
    with caplog.at_level(logging.WARNING, logger="quarry"):
        out = stages.section("line_dedup", ing, LineDedupParams(), h.serial())
    stats = datasets.read_manifest(out)["stats"]["yield"]
    assert stats["kept_in"] == 40 and "warning" not in stats
    assert not any("removed" in r.getMessage() for r in caplog.records)


def test_the_threshold_is_validated(monkeypatch):
    monkeypatch.setenv(yieldcheck.ENV, "0.2")
    assert yieldcheck.threshold(LineDedupParams()) == 0.2
    monkeypatch.setenv(yieldcheck.ENV, "lots")
    with pytest.raises(ValueError, match=yieldcheck.ENV):
        yieldcheck.threshold(LineDedupParams())
    monkeypatch.delenv(yieldcheck.ENV)
    assert yieldcheck.threshold(LineDedupParams()) == yieldcheck.DEFAULT_MAX_REMOVED_SHARE


def test_a_quadratic_document_through_the_datatrove_stage_is_flagged_and_the_stage_completes(tmp_path):
    pytest.importorskip("spacy", reason="datatrove's English word tokenizer needs spacy")
    from tasks.signals.datatrove_signals import REASON_COLUMNS, DatatroveSignalsParams, datatrove_signals

    records = [{"id": "colons", "text": ":" * 15_000}, {"id": "big", "text": "word " * 5_000}]
    records += [{"id": f"d{i}", "text": f"An ordinary sentence number {i}. It is followed by another one."}
                for i in range(8)]
    ing = _ingest(tmp_path, records, "dt")
    params = DatatroveSignalsParams(doc_timeout_s=1.0, max_doc_chars=20_000)
    datatrove_signals(pa.table({"text": ["Warm up."]}), params)  # the budget zygote's start (spaCy) is per process
    t0 = time.monotonic()
    out = stages.run("datatrove_signals", [ing], params, h.serial())
    # unbudgeted, 15 KB of ':' runs for minutes; budgeted: 1 s, a fork, 9 ordinary documents, the executor
    assert time.monotonic() - t0 < 60
    table = datasets.read_table(out, columns=["doc_id", "text", *REASON_COLUMNS])
    assert table.num_rows == len(records) == datasets.read_manifest(ing)["num_rows"]
    rows = {r["text"][:5]: r for r in table.to_pylist()}
    assert all(rows["word "][c] == "dt_budget_too_large" for c in REASON_COLUMNS)  # 25,000 > 20,000 characters
    assert all(rows[":::::"][c] == "dt_budget_timeout" for c in REASON_COLUMNS)  # 15 KB of ':' takes ~10 s+
    normal = [r for r in table.to_pylist() if r["text"].startswith("An ")]
    assert len(normal) == 8 and not {r[c] for r in normal for c in REASON_COLUMNS} & {
        "dt_budget_timeout", "dt_budget_too_large"}


def _tag(batch: pa.Table, params: LineDedupParams) -> pa.Table:
    return batch.append_column("tag", pa.array(["x"] * batch.num_rows))


def test_a_documents_stage_without_keep_that_keeps_every_row_is_not_warned_about(tmp_path, caplog):
    """A map stage that returns its documents with one more column and no `keep` (an embedder, a tagger) kept every
    document: counted from its shards' footers (a zero-column read of them loses the row count, which read as 100 %
    removed)."""
    ing = _ingest(tmp_path, [{"id": f"d{i}", "text": f"text {i}"} for i in range(30)], "tagged")
    with caplog.at_level(logging.WARNING, logger="quarry"):
        out = stages.adhoc(ing, "tagger", _tag, LineDedupParams(), h.serial())
    stats = datasets.read_manifest(out)["stats"]["yield"]
    assert stats["kept_in"] == stats["kept_out"] == 30 and stats["removed_share"] == 0 and "warning" not in stats
    assert not any("removed" in r.getMessage() for r in caplog.records)
