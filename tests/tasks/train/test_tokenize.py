import numpy as np
import pyarrow as pa
import pytest

from tasks.train.tokenize import (
    PackParams,
    TokenizeParams,
    load_packed,
    load_tokenizer,
    pack_sequences,
    save_packed,
    tokenize_docs,
)

DOCS = pa.table(
    {
        "doc_id": [f"d{i}" for i in range(8)],
        "text": [
            "The cat sat on the mat.",
            "def f(x):\n    return x + 1\n",
            "Photosynthesis converts light into chemical energy in plants.",
            "",
            None,
            "Ünïcödé text — with dashes and emoji 🙂.",
            "A longer document " * 20,
            "for i in range(10): print(i)",
        ],
        "domain": ["web", "code", "wikipedia", "web", "web", "web", "wikipedia", "code"],
        "km_l1": [0, 1, 2, 0, 0, 0, 2, 1],
        "url": ["u"] * 8,
    }
)


def _tok():
    return tokenize_docs(DOCS, TokenizeParams())


def test_tokenize_appends_eos_and_matches_plain_tokenizer():
    out = _tok()
    tok = load_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert eos == 0
    for text, ids in zip(DOCS["text"].to_pylist(), out["tok_ids"].to_pylist(), strict=True):
        if text is None:
            assert ids == []
            continue
        assert ids == tok(text, add_special_tokens=False)["input_ids"] + [eos]
        assert ids.count(eos) == 1  # no EOS inside a document
    assert out["tok_count"].to_pylist() == [len(x) for x in out["tok_ids"].to_pylist()]


def test_tokenize_keeps_ids_and_groups_and_flags_null_text():
    out = _tok()
    assert out.column_names == ["doc_id", "domain", "km_l1", "tok_ids", "tok_count", "tok_drop_reason"]
    assert out["doc_id"].to_pylist() == DOCS["doc_id"].to_pylist()
    assert out["tok_drop_reason"].to_pylist() == [None] * 4 + ["tok_null_text"] + [None] * 3


def test_tokenize_empty_doc_is_a_lone_eos():
    assert _tok()["tok_ids"][3].as_py() == [0]


def test_missing_text_column_is_a_clear_error():
    with pytest.raises(KeyError, match="text"):
        tokenize_docs(pa.table({"doc_id": ["a"]}), TokenizeParams())


def test_pack_loses_no_token_and_keeps_order():
    toks = _tok()
    packed = pack_sequences(toks, PackParams(seq_len=16))
    assert packed.tokens.shape[1] == 17 and packed.tokens.dtype == np.uint16
    stream = np.concatenate([packed.tokens[i, : packed.valid[i]] for i in range(len(packed.valid))])
    expected = np.concatenate([np.asarray(x, dtype=np.int64) for x in toks["tok_ids"].to_pylist() if x])
    assert np.array_equal(stream.astype(np.int64), expected)
    assert packed.valid[:-1].tolist() == [17] * (len(packed.valid) - 1)  # only the last row is partial
    assert 0 < packed.valid[-1] <= 17
    assert (packed.tokens[-1, packed.valid[-1] :] == 0).all()  # padding is the eos id


def test_pack_eos_count_equals_document_count():
    toks = _tok()
    packed = pack_sequences(toks, PackParams(seq_len=16))
    real = np.concatenate([packed.tokens[i, : packed.valid[i]] for i in range(len(packed.valid))])
    assert int((real == 0).sum()) == 7  # 8 docs, one with null text


def test_pack_counts_per_domain_and_per_cluster_are_exact():
    toks = _tok()
    lens = dict(zip(DOCS["doc_id"].to_pylist(), toks["tok_count"].to_pylist(), strict=True))
    by_domain = pack_sequences(toks, PackParams(seq_len=16)).counts.to_pylist()
    rows = {r["group"]: r for r in by_domain}
    assert set(rows) == {"web", "code", "wikipedia"}
    assert rows["web"]["tokens_in"] == lens["d0"] + lens["d3"] + lens["d5"]
    assert rows["web"]["docs_in"] == 3 and rows["web"]["docs_skipped"] == 1
    assert rows["code"]["tokens_out"] == lens["d1"] + lens["d7"]
    assert sum(r["tokens_out"] for r in by_domain) == sum(lens.values())
    by_cluster = pack_sequences(toks, PackParams(seq_len=16, mixture_by="km_l1")).counts.to_pylist()
    assert {r["group"]: r["tokens_in"] for r in by_cluster}["2"] == lens["d2"] + lens["d6"]


def test_mixture_weights_hit_target_proportions():
    rng = np.random.default_rng(0)
    n = 400
    toks = pa.table(
        {
            "doc_id": [str(i) for i in range(n)],
            "domain": ["web"] * 300 + ["code"] * 100,
            "tok_ids": [list(rng.integers(1, 1000, size=rng.integers(5, 30))) + [0] for _ in range(n)],
        }
    )
    toks = toks.append_column("tok_count", pa.array([len(x) for x in toks["tok_ids"].to_pylist()], pa.int64()))
    params = PackParams(seq_len=32, mixture_weights={"web": 0.5, "code": 0.5}, target_tokens=20_000)
    counts = {r["group"]: r for r in pack_sequences(toks, params).counts.to_pylist()}
    share = counts["code"]["tokens_out"] / (counts["code"]["tokens_out"] + counts["web"]["tokens_out"])
    assert abs(share - 0.5) < 0.01
    # code has ~1/4 of the natural tokens, so hitting 10k tokens means repeating it (upsampling)
    assert counts["code"]["docs_out"] > 2 * counts["code"]["docs_in"]
    assert abs(counts["code"]["tokens_out"] + counts["web"]["tokens_out"] - 20_000) < 60


def test_upsampling_phase_is_last_and_follows_its_own_mixture():
    rng = np.random.default_rng(1)
    n = 300
    toks = pa.table(
        {
            "domain": ["web"] * 200 + ["wikipedia"] * 100,
            "tok_ids": [list(rng.integers(1, 1000, size=20)) + [0] for _ in range(n)],
            "tok_count": pa.array([21] * n, pa.int64()),
        }
    )
    params = PackParams(seq_len=32, upsample_fraction=0.2, upsample_weights={"wikipedia": 1.0})
    packed = pack_sequences(toks, params)
    assert list(packed.phase) == sorted(packed.phase)  # phase-major
    p1 = {r["group"]: r for r in packed.counts.to_pylist() if r["phase"] == 1}
    assert p1["web"]["tokens_out"] == 0 and p1["wikipedia"]["tokens_out"] > 0
    n1 = int(packed.valid[packed.phase == 1].sum())
    assert abs(n1 / packed.valid.sum() - 0.2) < 0.01


def test_weight_for_absent_group_is_a_clear_error():
    with pytest.raises(ValueError, match="arxiv"):
        pack_sequences(_tok(), PackParams(seq_len=16, mixture_weights={"web": 1, "arxiv": 1}))


def test_save_and_load_roundtrip(tmp_path):
    packed = pack_sequences(_tok(), PackParams(seq_len=16))
    save_packed(packed, tmp_path)
    back = load_packed(tmp_path)
    assert np.array_equal(back.tokens, packed.tokens) and np.array_equal(back.valid, packed.valid)
    assert back.meta["seq_len"] == 16 and back.meta["vocab_size"] == 49152
    assert back.counts.equals(packed.counts)
