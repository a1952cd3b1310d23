"""Line (CCNet) and 3-sentence-span (C4/datatrove) dedup on the shared web samples, through the real executor
(serial profile: hashes map -> DuckDB duplicates -> rewrite map), against a plain sequential reference."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ray_cluster import runtime
from storage import datasets
from tasks.dedup.line import LineDedupParams, line_dedup, line_hashes, normalize_line
from tasks.dedup.sentence import SentenceDedupParams, span_hashes, split_sentences
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.conftest import shared_path


def _sources() -> list[IngestSource]:
    c4 = shared_path("web", "c4_sample", "c4_sample.jsonl")
    gold = shared_path("gold", "c4_docs.jsonl")  # the first 30 C4 documents again: every line a duplicate
    warc = shared_path("web", "dolma_samples", "sample-0000.warc.gz")  # real pages: shared boilerplate lines
    return [IngestSource(path=str(c4), domain="web", limit=200), IngestSource(path=str(gold), domain="web", limit=30),
            IngestSource(path=str(warc), domain="web")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    prof = runtime.load_profile("serial")
    root = tmp_path_factory.mktemp("ld")
    ing = stages.ingest(_sources(), root=str(root), dataset="ld", docs_per_shard=64, profile=prof)
    return prof, ing


def _reference_lines(texts: list[str]) -> list[str]:
    """CCNet's sequential formulation: drop a line whose normalized hash was seen before, anywhere earlier."""
    seen, out = set(), []
    for text in texts:
        kept = []
        for line, h in zip(text.split("\n"), line_hashes(text), strict=True):
            if h is None or h not in seen:
                kept.append(line)
            if h is not None:
                seen.add(h)
        out.append("\n".join(kept))
    return out


def _reference_spans(texts: list[str], n: int = 3) -> list[str]:
    seen, out = set(), []
    for text in texts:
        sents = split_sentences(text)
        drop = set()
        for i, h in enumerate(span_hashes(text, n)):
            if h is not None and h in seen:
                drop.update(range(i, i + n))
            if h is not None:
                seen.add(h)
        head = text[: sents[0][0]] if sents else ""
        out.append(head + "".join(text[s:e] for j, (s, e) in enumerate(sents) if j not in drop) if drop else text)
    return out


def test_line_dedup_equals_sequential_ccnet_reference_and_keeps_every_row(corpus):
    prof, ing = corpus
    out = stages.section("line_dedup", ing, LineDedupParams(), prof)
    before = datasets.read_table(ing, columns=["doc_id", "text"])
    after = datasets.read_table(out)
    # same rows, same order (the stage only rewrites columns)
    assert after.column("doc_id").to_pylist() == before.column("doc_id").to_pylist()
    texts, new = before.column("text").to_pylist(), after.column("text").to_pylist()
    assert new == _reference_lines(texts)
    removed = after.column("ld_lines_removed").to_pylist()
    assert sum(removed) >= 100  # 30 whole C4 copies plus the WARC's repeated boilerplate
    fractions = after.column("ld_removed_char_fraction").to_pylist()
    for t, n, f in zip(texts, new, fractions, strict=True):
        assert f == pytest.approx((len(t) - len(n)) / len(t) if t else 0.0)
    # after dedup no normalized non-blank line occurs twice in the corpus, and none was lost altogether
    lines_after = [normalize_line(x) for t in new for x in t.split("\n") if normalize_line(x)]
    lines_before = {normalize_line(x) for t in texts for x in t.split("\n") if normalize_line(x)}
    assert len(lines_after) == len(set(lines_after)) and set(lines_after) == lines_before
    # the second copies of C4 documents are emptied: keep=false with the stage's reason
    reasons = dict(zip(after.column("doc_id").to_pylist(), after.column("drop_reason").to_pylist(), strict=True))
    emptied = [d for d, t in zip(after.column("doc_id").to_pylist(), new, strict=True) if not t.strip()]
    assert len(emptied) >= 25 and all(reasons[d] == "ld_empty_after_dedup" for d in emptied)
    assert sum(r is not None for r in reasons.values()) == len(emptied)
    stages_ = dict(zip(after.column("doc_id").to_pylist(), after.column("drop_stage").to_pylist(), strict=True))
    assert {d: s for d, s in stages_.items() if s is not None} == dict.fromkeys(emptied, "line_dedup")
    # idempotent: the same section on the same input is the same committed version
    assert stages.section("line_dedup", ing, LineDedupParams(), prof) == out


def test_sentence_dedup_equals_sequential_reference_and_drops_short_leftovers(corpus):
    prof, ing = corpus
    params = SentenceDedupParams()
    out = stages.section("sentence_dedup", ing, params, prof)
    before = datasets.read_table(ing, columns=["doc_id", "text"])
    after = datasets.read_table(out)
    assert after.column("doc_id").to_pylist() == before.column("doc_id").to_pylist()
    texts, new = before.column("text").to_pylist(), after.column("text").to_pylist()
    assert new == _reference_spans(texts)
    assert sum(after.column("sn_sentences_removed").to_pylist()) >= 100
    for t, n, k, r, s in zip(texts, new, after.column("keep").to_pylist(), after.column("drop_reason").to_pylist(),
                             after.column("drop_stage").to_pylist(), strict=True):
        changed_short = n != t and len(n.split()) < params.min_doc_words
        assert (not k) == changed_short and (r == "sn_too_short_after_dedup") == changed_short
        assert s == ("sentence_dedup" if changed_short else None)


def test_earlier_drop_wins_and_rejected_docs_take_no_part():
    docs = pa.table({"doc_id": ["a", "b", "c"], "text": ["menu\nhello world", "menu\nother", "menu"],
                     "keep": [True, False, True], "drop_reason": [None, "gopher_word_count", None]})
    from tasks.dedup.line import line_dedup_hashes

    hashes = line_dedup_hashes(docs, LineDedupParams())
    assert hashes.column("doc_id").to_pylist() == ["a", "a", "c"]  # b was rejected: it takes no part
    dups = pa.table({"doc_id": ["c"], "dup_pos": pa.array([[0]], pa.list_(pa.int32()))})
    out = line_dedup(docs, LineDedupParams(), duplicates=dups).to_pylist()
    assert [r["text"] for r in out] == ["menu\nhello world", "menu\nother", ""]
    assert [r["drop_reason"] for r in out] == [None, "gopher_word_count", "ld_empty_after_dedup"]
    assert [r["drop_stage"] for r in out] == [None, None, "line_dedup"]  # b's earlier drop predates drop_stage
    assert [r["keep"] for r in out] == [True, False, False]


def test_normalization_is_ccnet_and_blank_lines_are_never_duplicates():
    assert normalize_line("  Café, Déjà-vu 2024!  ") == "cafe dejavu 0000"
    assert line_hashes("a\n\n  \nA.") == [line_hashes("a")[0], None, None, line_hashes("a")[0]]


def test_missing_text_column_is_a_clear_error():
    from tasks.dedup.line import line_dedup_hashes

    with pytest.raises(ValueError, match="'text'"):
        line_dedup_hashes(pa.table({"doc_id": ["a"]}), LineDedupParams())
