import json
import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from tasks.dedup.exact import (
    ExactDedupParams,
    exact_dedup_filter,
    exact_dedup_hashes,
    exact_dedup_sql,
    normalize_url,
)
from tests.oracles.dedup import exact_dedup_keepers

C4 = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "web" / "c4_sample" / "c4_sample.jsonl"


def test_text_hash_ignores_case_whitespace_and_ascii_punctuation_but_not_words():
    batch = pa.table(
        {
            "doc_id": ["a", "b", "c", "d", "e"],
            "text": ["Hello, World!\n", "  hello   world ", "hello there world", "", None],
            "url": ["http://x.org/a"] * 5,
        }
    )
    h = exact_dedup_hashes(batch, ExactDedupParams()).column("ed_text_hash").to_pylist()
    assert h[0] == h[1] and h[0] != h[2]
    assert h[3] is None and h[4] is None  # empty docs never form a duplicate group


def test_url_normalization_collapses_case_default_port_fragment_and_trailing_slash():
    same = ["HTTP://Example.COM:80/", "http://example.com#top", "http://example.com/"]
    assert len({normalize_url(u) for u in same}) == 1
    assert normalize_url("http://example.com/a?x=1") != normalize_url("http://example.com/a?x=2")
    assert normalize_url("https://example.com:8443/p") == "https://example.com:8443/p"


def test_keepers_url_first_then_text_among_survivors_so_no_text_is_lost():
    batch = pa.table(
        {
            "doc_id": ["a", "b", "c", "d"],
            "text": ["same text here", "Same text, here!", "other text", "third text that is longest"],
            "url": ["u1", "u2", "u2", "u2"],
        }
    )
    hashed = exact_dedup_hashes(batch, ExactDedupParams())
    dups = {
        r["doc_id"]: r for r in exact_dedup_keepers(hashed, ExactDedupParams(priority="lowest_doc_id")).to_pylist()
    }
    # u2 keeps b; then the text group {a, b} keeps a
    assert dups["c"]["ed_reason"] == "ed_url_duplicate" and dups["c"]["ed_duplicate_of"] == "b"
    assert dups["d"]["ed_reason"] == "ed_url_duplicate" and dups["d"]["ed_duplicate_of"] == "b"
    assert dups["b"]["ed_reason"] == "ed_text_duplicate" and dups["b"]["ed_duplicate_of"] == "a"
    assert set(dups) == {"b", "c", "d"}
    longest = {r["doc_id"] for r in exact_dedup_keepers(hashed, ExactDedupParams(priority="longest")).to_pylist()}
    # u2 keeps d (longest); b's text then survives through a, which text-first order would have dropped too
    assert longest == {"b", "c"}


def test_filter_keeps_every_row_and_respects_earlier_drop_reason():
    batch = pa.table(
        {
            "doc_id": ["a", "b", "c"],
            "text": ["x y", "x y", "x y"],
            "url": ["1", "2", "3"],
            "keep": [True, True, False],
            "drop_reason": [None, None, "c4_curly_bracket"],
        }
    )
    params = ExactDedupParams(priority="lowest_doc_id")
    hashed = exact_dedup_hashes(batch, params)
    keepers = exact_dedup_keepers(hashed, params)
    out = exact_dedup_filter(hashed, params, keepers=keepers).to_pylist()
    assert [r["keep"] for r in out] == [True, False, False]
    assert [r["drop_reason"] for r in out] == [None, "ed_text_duplicate", "c4_curly_bracket"]
    assert [r["drop_stage"] for r in out] == [None, "exact_dedup", None]  # c's earlier drop keeps its (unknown) stage
    assert [r["ed_duplicate_of"] for r in out] == [None, "a", None]  # c was rejected before, so it is no dup


def test_missing_url_column_is_a_clear_error():
    with pytest.raises(ValueError, match="url"):
        exact_dedup_hashes(pa.table({"doc_id": ["a"], "text": ["t"]}), ExactDedupParams())


@pytest.mark.skipif(not C4.exists(), reason="shared C4 sample (../shared/data/web/c4_sample) is absent")
@pytest.mark.parametrize("priority", ["longest", "lowest_doc_id", "score:desc"])
def test_duckdb_sql_equals_arrow_keepers_on_c4_with_planted_copies(tmp_path, priority):
    rng = random.Random(0)
    with open(C4) as f:
        docs = [json.loads(line) for line in f][:300]
    rows = [
        {"doc_id": f"c{i:04d}", "text": d["text"], "url": d["url"], "score": rng.random()} for i, d in enumerate(docs)
    ]
    for i in range(60):  # whitespace/case copies under a new URL, and same-URL re-crawls with new text
        src = rows[rng.randrange(300)]
        rows.append({**src, "doc_id": f"t{i:03d}", "text": src["text"].upper() + "  ", "url": f"http://copy/{i}"})
        src = rows[rng.randrange(300)]
        rows.append({**src, "doc_id": f"u{i:03d}", "text": f"recrawl {i} " + src["text"][:50]})
    table = pa.Table.from_pylist(rows)
    params = ExactDedupParams(priority=priority)
    hashed = exact_dedup_hashes(table, params)
    arrow = sorted(tuple(r.values()) for r in exact_dedup_keepers(hashed, params).to_pylist())
    keyed = hashed.append_column("__shard", pa.array(["s"] * hashed.num_rows)).append_column(
        "__row", pa.array(range(hashed.num_rows), pa.int64()))
    con = duckdb.connect()
    con.register("hashed", keyed)
    for parts in (1, 3):  # one pass, or three hash partitions per key: the same rows
        for stmt in exact_dedup_sql("hashed", params, parts=parts):
            con.execute(stmt)
        sql = sorted(con.execute("SELECT * FROM ed_keepers").fetchall())
        assert sql == arrow, parts
    reasons = {r[3] for r in arrow}
    assert reasons == {"ed_text_duplicate", "ed_url_duplicate"}
    assert len(arrow) >= 100
