"""datatrove_signals under a per-document budget (issue 35): a document that makes datatrove's filters quadratic
(spaCy on a run of ``:``; 32 KB took 85 s) is flagged ``dt_budget_timeout`` within the budget, the rest of the batch
gets the same reasons as an unbudgeted run, and every row stays."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from tasks.signals.datatrove_signals import REASON_COLUMNS, DatatroveSignalsParams, datatrove_signals

pytest.importorskip("spacy", reason="datatrove's English word tokenizer needs spacy")

NORMAL = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "A short line.\nAnother short line that ends without punctuation\nAnd a third one, which does end.",
    "Click here to subscribe! " * 5,
]


def test_a_quadratic_document_is_flagged_within_its_budget_and_the_batch_completes():
    texts = [NORMAL[0], ":" * 60_000, None, NORMAL[1], "x" * 3_000, NORMAL[2]]
    batch = pa.table({"doc_id": [str(i) for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    params = DatatroveSignalsParams(doc_timeout_s=2.0, max_doc_chars=2_000)
    datatrove_signals(batch.slice(0, 1), params)  # the budget child's start (spaCy load) is not the document's
    t0 = time.monotonic()
    out = datatrove_signals(batch, params)
    elapsed = time.monotonic() - t0
    # 60 KB of ':' runs for minutes unbudgeted; here: 2 s budget + one child restart (spaCy load, ~10 s loaded)
    assert elapsed < 60, elapsed
    assert out.num_rows == batch.num_rows  # every input record is a row, flagged where it could not be run
    reasons = {c: out.column(c).to_pylist() for c in REASON_COLUMNS}
    assert all(reasons[c][1] == "dt_budget_too_large" for c in REASON_COLUMNS)  # 60,000 > 2,000 characters
    assert all(reasons[c][4] == "dt_budget_too_large" for c in REASON_COLUMNS)
    assert all(reasons[c][2] == "dt_null_text" for c in REASON_COLUMNS)
    reference = datatrove_signals(batch.take([0, 3, 5]), DatatroveSignalsParams(doc_timeout_s=None))
    for c in (*REASON_COLUMNS, "dt_c4_text_length"):
        assert out.column(c).take([0, 3, 5]).to_pylist() == reference.column(c).to_pylist(), c


def test_timeout_flags_the_slow_document_and_restarts_for_the_rest():
    texts = [NORMAL[0], ":" * 40_000, NORMAL[1]]
    batch = pa.table({"text": pa.array(texts, pa.string())})
    params = DatatroveSignalsParams(doc_timeout_s=1.0, max_doc_chars=None)
    datatrove_signals(batch.slice(0, 1), params)
    t0 = time.monotonic()
    out = datatrove_signals(batch, params)
    assert time.monotonic() - t0 < 60
    assert [out.column(c)[1].as_py() for c in REASON_COLUMNS] == ["dt_budget_timeout"] * len(REASON_COLUMNS)
    assert out.column("dt_c4_text_length")[1].as_py() is None
    reference = datatrove_signals(batch.take([0, 2]), DatatroveSignalsParams(doc_timeout_s=None))
    for c in REASON_COLUMNS:
        assert out.column(c).take([0, 2]).to_pylist() == reference.column(c).to_pylist(), c


@pytest.mark.parametrize("bad", [{"doc_timeout_s": 0}, {"doc_timeout_s": -1.0}, {"max_doc_chars": 0}])
def test_budget_params_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DatatroveSignalsParams(**bad)
