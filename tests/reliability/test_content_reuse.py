"""Issue 34: reuse across versions keys on the exact text a row reads, never on its id.

augment reuses earlier generations (the only stage that reads other versions of itself: ``Stage.history``). A source
file replaced at the same path, or a text redacted by pii, keeps each document's doc_id; the augment version made
from the new text must hold generations of the new text, and still reuse every row whose text did not change. The
teacher is the harness's deterministic OpenAI-compatible server on loopback (a hash of the prompt), whose request
count says how many documents were really generated.
"""

from __future__ import annotations

import json

import pytest

from storage import datasets
from tests import stages
from tests.reliability import _harness as h


@pytest.fixture(scope="module")
def llm():
    server, url = h.start_llm_server()
    yield url
    server.shutdown()


def _docs(n: int, start: int = 0) -> list[dict]:
    with h.C4.open(encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(start + n), f, strict=False)][start:]
    return [{"text": r["text"][:300], "url": r["url"]} for r in rows]


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _augment(root: str, src, llm: str):
    before = len(h._LLMHandler.seen_keys)
    ref = stages.run("augment", [src], h.augment_params(llm), h.serial())
    rows = datasets.read_table(ref).to_pylist()
    return ref, rows, len(h._LLMHandler.seen_keys) - before


def _source(tmp_path, name: str):
    from tasks.ingest.sources import IngestSource

    return IngestSource(path=str(tmp_path / name), domain="web", lang="en")


def _check_rows_follow_their_text(rows: list[dict]) -> None:
    for r in rows:
        assert r["aug_error"] is None and r["aug_source_id"] == r["doc_id"]
        assert r["aug_text"].startswith(r["text"][:40]), (r["doc_id"], r["text"][:40], r["aug_text"][:40])


def test_a_source_replaced_at_the_same_path_is_augmented_anew_except_its_unchanged_documents(tmp_path, llm,
                                                                                             monkeypatch):
    monkeypatch.setenv(h.API_KEY_ENV, "sk-reliability")
    root, path = str(tmp_path / "store"), tmp_path / "docs.jsonl"
    old = _docs(5)
    _write(path, old)
    ing = stages.ingest([_source(tmp_path, "docs.jsonl")], root=root, dataset="rel", docs_per_shard=5,
                        profile=h.serial())
    first, rows, calls = _augment(root, ing, llm)
    assert calls == 5 and len(rows) == 5
    _check_rows_follow_their_text(rows)

    new = [old[0], *_docs(4, start=10)]  # same path, same positions: 4 of 5 documents are other text now
    _write(path, new)
    ing2 = stages.ingest([_source(tmp_path, "docs.jsonl")], root=root, dataset="rel", docs_per_shard=5,
                         profile=h.serial())
    assert ing2 != ing
    second, rows2, calls2 = _augment(root, ing2, llm)
    assert second != first and len(rows2) == 5
    _check_rows_follow_their_text(rows2)  # no row carries an old text's generation
    old_texts = {d["text"] for d in old[1:]}
    assert not any(r["text"] in old_texts or any(t in r["aug_text"] for t in old_texts) for r in rows2)
    assert calls2 == 4  # the unchanged document's generation is reused, the four replaced ones are generated
    reused = next(r for r in rows2 if r["text"] == old[0]["text"])
    assert reused["aug_thinking"] == next(r for r in rows if r["text"] == old[0]["text"])["aug_thinking"]


def test_redacted_text_is_augmented_anew_not_served_the_unredacted_generation(tmp_path, llm, monkeypatch):
    from tasks.filter.pii import PiiParams

    monkeypatch.setenv(h.API_KEY_ENV, "sk-reliability")
    root, path = str(tmp_path / "store"), tmp_path / "docs.jsonl"
    docs = _docs(5)
    for i in (0, 2):  # two documents carry an e-mail address
        docs[i]["text"] = f"Contact jane.doe{i}@example.com for details. " + docs[i]["text"]
    _write(path, docs)
    ing = stages.ingest([_source(tmp_path, "docs.jsonl")], root=root, dataset="rel", docs_per_shard=5,
                        profile=h.serial())
    _, plain, calls = _augment(root, ing, llm)
    assert calls == 5 and sum("@example.com" in r["aug_text"] for r in plain) == 2

    red = stages.run("pii", [ing], PiiParams(mode="redact"), h.serial())
    _, rows, calls2 = _augment(root, red, llm)
    assert len(rows) == 5
    _check_rows_follow_their_text(rows)
    assert not any("@example.com" in (r["aug_text"] or "") for r in rows)
    assert sum("<EMAIL>" in r["aug_text"] for r in rows) == 2
    assert calls2 == 2  # the three documents redaction did not touch are reused
