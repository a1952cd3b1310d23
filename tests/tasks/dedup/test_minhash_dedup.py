import hashlib
import json
import random
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tasks.dedup.minhash import (
    MinhashDedupParams,
    MinhashSignaturesParams,
    band_keys,
    lsh_bands,
    minhash_edges,
    minhash_filter,
    minhash_signatures,
    minhash_values,
    oracle_minhash_buckets,
    oracle_minhash_clusters,
    rpv2_normalize,
    rpv2_permutations,
)
from tasks.dedup.minhash_sql import run_fuzzy_dedup_sql
from tests.oracles.dedup import select_cluster_keepers

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
GOLD = DATA / "gold"
C4 = DATA / "web" / "c4_sample" / "c4_sample.jsonl"
SIMS = (1.0, 0.9, 0.8, 0.7)


def _jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_permutations_checksum_matches_rpv2_worker_log():
    # RPv2 Worker logs sha256(permutations.tobytes()) as __MINHASH_PERM_CHECKSUM__; permutations has shape (2, 128)
    a, b = rpv2_permutations(128, 42)
    digest = hashlib.sha256(np.stack([a, b]).tobytes()).hexdigest()
    assert digest == "6a5665743fa1884640a8eb3543348255a90b4dbd55b093f39e3d61ac90eac9e1"


def test_band_layout_is_datasketch_optimum_used_by_rpv2():
    assert [lsh_bands(s, 128) for s in SIMS] == [(1, 128), (5, 25), (9, 13), (14, 9)]


def test_normalization_keeps_unicode_punctuation_and_decomposes_accents():
    assert rpv2_normalize("  Café, “Hi”!\n\tDon't  ") == "cafe\u0301 “hi” dont"


def test_fast_normalization_equals_rpv2_reference_formulation_on_odd_whitespace():
    import re
    import string
    import unicodedata

    def reference(text: str) -> str:  # RPv2 utilities/text/normalization.py, verbatim semantics
        text = text.translate(str.maketrans("", "", string.punctuation)).lower().strip()
        return unicodedata.normalize("NFD", re.sub(r"\s+", " ", text))

    odd = "A\x1cB\x1f C\xa0D\u2028E\u3000F\u200bG\u0085H\r\nİ ǅ ß Ω ½ 日本 «x» — a-b_c \x0b\x0c end."
    assert rpv2_normalize(odd) == reference(odd)
    assert rpv2_normalize(" \t\n ") == reference(" \t\n ") == ""


@pytest.mark.skipif(not GOLD.exists(), reason="shared gold data (../shared/data/gold) is absent")
@pytest.mark.parametrize("name", ["c4", "edge"])
def test_signatures_identical_to_rpv2_gold(name):
    docs = _jsonl(GOLD / f"{name}_docs.jsonl")
    gold = {g["id"]: g for g in _jsonl(GOLD / f"{name}_rpv2_signals.jsonl")}
    batch = pa.table({"doc_id": [d["id"] for d in docs], "text": [d["text"] for d in docs]})
    out = minhash_signatures(batch, MinhashSignaturesParams(band_keys=True))
    assert out.schema.field("mh_values").type == pa.list_(pa.uint32())
    for s in SIMS:  # the keys derived from the values (what minhash_edges uses by default) are the same bytes
        assert band_keys(out.column("mh_values"), s).to_pylist() == out.column(f"minhash_signature_{s}").to_pylist()
    rows = out.to_pylist()
    assert len(rows) == len(gold) == len(docs)
    for row in rows:
        g = gold[row["doc_id"]]
        assert row["mh_values"] == g["minhash_values"], row["doc_id"]
        for s in SIMS:
            ours = row[f"minhash_signature_{s}"]
            want = g[f"minhash_signature_{s}"]
            assert (None if ours is None else [k.hex() for k in ours]) == want, (row["doc_id"], s)
    if name == "edge":  # the edge set covers both sides of the 13-word cut-off
        assert sum(r["mh_values"] is None for r in rows) == 7


def test_short_and_null_texts_get_null_signatures_without_dropping_rows():
    batch = pa.table({"doc_id": ["a", "b", "c"], "text": ["one two three", None, " ".join(["w"] * 30)]})
    out = minhash_signatures(batch, MinhashSignaturesParams())
    assert out.num_rows == 3
    assert out.column("mh_values").to_pylist()[:2] == [None, None]
    assert len(out.column("mh_values")[2].as_py()) == 128
    assert "minhash_signature_0.8" not in out.column_names  # derived on demand: 4x the bytes of the values
    keys = minhash_signatures(batch, MinhashSignaturesParams(band_keys=True)).column("minhash_signature_0.8")
    assert keys.to_pylist()[:2] == [None, None] and keys[2].as_py() is not None


def test_missing_text_column_is_a_clear_error():
    with pytest.raises(ValueError, match="text"):
        minhash_signatures(pa.table({"doc_id": ["a"]}), MinhashSignaturesParams())


def _sig_table(ids: list[str], texts: list[str], **extra) -> pa.Table:
    return minhash_signatures(pa.table({"doc_id": ids, "text": texts, **extra}), MinhashSignaturesParams(similarities=(0.8,)))


BASE = " ".join(f"word{i}" for i in range(200))


def _edit(text: str, positions: list[int], token: str) -> str:
    words = text.split()
    for p in positions:
        words[p] = f"{token}{p}"
    return " ".join(words)


def test_chain_of_near_duplicates_forms_one_cluster_with_min_id():
    # d3 ~ d1 and d2 ~ d1 but d2, d3 can be farther apart: transitivity through the component
    texts = {
        "d3": BASE,
        "d1": _edit(BASE, [199], "x"),
        "d2": _edit(BASE, [0], "y"),
        "d0": " ".join(f"other{i}" for i in range(200)),
    }
    sig = _sig_table(list(texts), list(texts.values()))
    pairs = oracle_minhash_buckets(minhash_edges(sig, MinhashDedupParams(num_partitions=1)))
    clusters = oracle_minhash_clusters(pairs)
    got = dict(zip(clusters.column("doc_id").to_pylist(), clusters.column("cluster_id").to_pylist(), strict=True))
    assert got == {"d1": "d1", "d2": "d1", "d3": "d1"}  # d0 is a singleton and never enters the pair graph


def test_long_chain_converges_to_min_label():
    n = 500
    ids = [f"n{i:04d}" for i in range(n)]
    pairs = pa.table({"src": ids[1:][::-1], "dst": ids[:-1][::-1]})  # a path graph, worst case for propagation
    out = oracle_minhash_clusters(pairs)
    assert set(out.column("cluster_id").to_pylist()) == {"n0000"}
    assert out.num_rows == n


def test_keep_priority_longest_lowest_id_and_column():
    members = pa.table(
        {
            "doc_id": ["a", "b", "c", "d", "e"],
            "cluster_id": ["a", "a", "a", "d", "d"],
            "text": ["xx", "xxxx", "xxxx", "x", "x"],
            "score": [0.9, 0.1, None, 0.2, 0.3],
        }
    )

    def kept(priority):
        out = select_cluster_keepers(members, MinhashDedupParams(priority=priority))
        return sorted(r["doc_id"] for r in out.to_pylist() if r["keep"])

    assert kept("longest") == ["b", "d"]  # b and c tie on length: lowest doc_id wins
    assert kept("lowest_doc_id") == ["a", "d"]
    assert kept("score:desc") == ["a", "e"]
    assert kept("score:asc") == ["b", "d"]  # null score never wins
    sizes = select_cluster_keepers(members, MinhashDedupParams()).to_pylist()
    assert {r["doc_id"]: r["cluster_size"] for r in sizes} == {"a": 3, "b": 3, "c": 3, "d": 2, "e": 2}


def test_bad_priority_is_rejected():
    with pytest.raises(ValueError, match="priority"):
        MinhashDedupParams(priority="longest; drop table x")


def test_filter_keeps_every_row_and_folds_duplicates_into_drop_reason():
    batch = pa.table(
        {
            "doc_id": ["a", "b", "c", "z"],
            "keep": [True, True, False, True],
            "drop_reason": [None, None, "gopher_short", None],
            "drop_stage": [None, None, "quality_filter", None],
        }
    )
    clusters = pa.table(
        {
            "doc_id": ["a", "b", "c"],
            "cluster_id": ["a", "a", "a"],
            "cluster_size": [3, 3, 3],
            "keep": [True, False, False],
        }
    )
    out = minhash_filter(batch, MinhashDedupParams(), clusters=clusters).to_pylist()
    assert [r["keep"] for r in out] == [True, False, False, True]
    assert [r["drop_reason"] for r in out] == [None, "mh_duplicate", "gopher_short", None]
    assert [r["drop_stage"] for r in out] == [None, "minhash_dedup", "quality_filter", None]
    assert [r["mh_cluster_id"] for r in out] == ["a", "a", "a", "z"]
    assert [r["mh_cluster_size"] for r in out] == [3, 3, 3, 1]


def test_rejected_docs_do_not_enter_lsh():
    sig = _sig_table(["a", "b"], [BASE, BASE], keep=[True, False])
    edges = minhash_edges(sig, MinhashDedupParams())
    assert set(edges.column("doc_id").to_pylist()) == {"a"}


# --- planted near-duplicate corpus from real C4 docs --------------------------------------------------------------


def _planted_corpus(n_base: int = 150, seed: int = 0) -> tuple[list[str], list[str]]:
    """Real C4 docs plus edited copies: k random word substitutions (k spans true Jaccard ~0.3..1.0) or truncation."""
    rng = random.Random(seed)
    docs = [d["text"] for d in _jsonl(C4)]
    docs = [t for t in docs if 150 <= len(t.split()) <= 900][:n_base]
    ids, texts = [], []
    for i, text in enumerate(docs):
        ids.append(f"b{i:03d}")
        texts.append(text)
        if i % 2:  # half of the base docs get near-duplicates
            continue
        words = text.split()
        for j, k in enumerate(rng.sample([1, 2, 3, 4, 5, 6, 8, 10, 14, 20], 4)):
            w = list(words)
            for p in rng.sample(range(len(w)), k):
                w[p] = f"edit{rng.randrange(10**6)}"
            ids.append(f"b{i:03d}_v{j}")
            texts.append(" ".join(w))
        cut = rng.uniform(0.75, 0.95)  # truncated copy (boilerplate-trimmed page)
        ids.append(f"b{i:03d}_t")
        texts.append(" ".join(words[: int(len(words) * cut)]))
    return ids, texts


def _shingles(text: str) -> set[str]:
    w = rpv2_normalize(text).split()
    return {" ".join(w[i : i + 13]) for i in range(len(w) - 12)}


@pytest.mark.skipif(not C4.exists(), reason="shared C4 sample (../shared/data/web/c4_sample) is absent")
def test_precision_recall_at_0_8_against_true_jaccard_on_planted_near_duplicates():
    ids, texts = _planted_corpus()
    sig = _sig_table(ids, texts)
    params = MinhashDedupParams(similarity=0.8, num_partitions=4)
    edges = minhash_edges(sig, params)
    parts = [oracle_minhash_buckets(edges.filter(pa.compute.equal(edges.column("part"), p))) for p in range(4)]
    clusters = oracle_minhash_clusters(parts)
    cluster_of = dict(
        zip(clusters.column("doc_id").to_pylist(), clusters.column("cluster_id").to_pylist(), strict=True)
    )
    buckets: dict[tuple, list[int]] = {}
    pos = {d: i for i, d in enumerate(ids)}
    for band, key, doc in zip(*(edges.column(c).to_pylist() for c in ("band", "key", "doc_id")), strict=True):
        buckets.setdefault((band, key), []).append(pos[doc])
    candidates = {(i, j) for m in buckets.values() for i in m for j in m if i < j}

    sh = [_shingles(t) for t in texts]
    b, r = lsh_bands(0.8, 128)
    true_pairs, cluster_pairs = set(), set()
    exp_tp = exp_pos = 0.0
    bins = np.zeros((10, 2))  # per true-Jaccard decile: [pairs, candidate pairs]
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            inter = len(sh[i] & sh[j])
            if not inter:
                continue
            jac = inter / (len(sh[i]) + len(sh[j]) - inter)
            p_cand = 1 - (1 - jac**r) ** b  # LSH S-curve: P(share a bucket | Jaccard)
            exp_pos += p_cand
            if jac >= 0.8:
                true_pairs.add((i, j))
                exp_tp += p_cand
            bins[min(int(jac * 10), 9)] += (1, (i, j) in candidates)
            if cluster_of.get(ids[i]) is not None and cluster_of.get(ids[i]) == cluster_of.get(ids[j]):
                cluster_pairs.add((i, j))
    c_tp, k_tp = len(true_pairs & candidates), len(true_pairs & cluster_pairs)
    c_prec, c_rec = c_tp / len(candidates), c_tp / len(true_pairs)
    k_prec, k_rec = k_tp / len(cluster_pairs), k_tp / len(true_pairs)
    print(
        f"\nplanted corpus: {len(ids)} docs, {len(true_pairs)} pairs with true Jaccard>=0.8\n"
        f"  bucket pairs : {len(candidates)} precision={c_prec:.3f} recall={c_rec:.3f} "
        f"(S-curve expectation precision={exp_tp / exp_pos:.3f} recall={exp_tp / len(true_pairs):.3f})\n"
        f"  cluster pairs: {len(cluster_pairs)} precision={k_prec:.3f} recall={k_rec:.3f}\n"
        "  candidate rate by true Jaccard: "
        + " ".join(f"[{d / 10:.1f},{(d + 1) / 10:.1f}):{int(c)}/{int(n)}" for d, (n, c) in enumerate(bins) if n)
    )
    assert len(true_pairs) >= 100
    # the implementation behaves as the b=9, r=13 S-curve predicts (RPv2's 0.8 layout; its midpoint is ~0.845)
    assert abs(c_rec - exp_tp / len(true_pairs)) <= 0.08
    assert abs(c_prec - exp_tp / exp_pos) <= 0.08
    assert bins[9, 1] / bins[9, 0] >= 0.95  # >=0.9 Jaccard is nearly always caught
    assert bins[:5, 1].sum() == 0  # below 0.5 the collision chance is <0.12 % per pair
    assert k_rec >= c_rec  # components add transitive pairs, never lose bucket pairs


@pytest.mark.skipif(not C4.exists(), reason="shared C4 sample (../shared/data/web/c4_sample) is absent")
def test_duckdb_sql_variant_gives_same_clusters_and_keepers_as_arrow(tmp_path):
    ids, texts = _planted_corpus(n_base=60, seed=1)
    sig = _sig_table(ids, texts)
    params = MinhashDedupParams(num_partitions=3)
    edges = minhash_edges(sig, params)
    arrow_clusters = oracle_minhash_clusters(
        [oracle_minhash_buckets(edges.filter(pa.compute.equal(edges.column("part"), p))) for p in range(3)]
    )
    members = arrow_clusters.append_column(
        "text", pa.array([texts[ids.index(d)] for d in arrow_clusters.column("doc_id").to_pylist()])
    )
    arrow_keep = select_cluster_keepers(members, params)

    import pyarrow.parquet as pq

    pq.write_table(edges, tmp_path / "edges.parquet")
    pq.write_table(sig.select(["doc_id", "text"]), tmp_path / "docs.parquet")
    con = duckdb.connect()
    con.execute(f"SET temp_directory='{tmp_path / 'spill'}'")
    rounds = run_fuzzy_dedup_sql(
        con, f"read_parquet('{tmp_path}/edges.parquet')", f"read_parquet('{tmp_path}/docs.parquet')", params
    )
    assert rounds >= 1
    sql_rows = con.execute("SELECT doc_id, cluster_id, cluster_size, keep FROM mh_clusters ORDER BY doc_id").fetchall()
    arrow_rows = sorted(tuple(r.values()) for r in arrow_keep.to_pylist())
    assert sql_rows == arrow_rows
    assert any(not r[3] for r in sql_rows)  # the corpus has duplicates to drop
    # the same keepers from the length minhash_signatures wrote, with the text never read
    assert sig.column("mh_text_length").to_pylist() == [None if t is None else len(t) for t in texts]
    pq.write_table(sig.select(["doc_id", "mh_text_length"]), tmp_path / "lengths.parquet")
    run_fuzzy_dedup_sql(con, f"read_parquet('{tmp_path}/edges.parquet')", f"read_parquet('{tmp_path}/lengths.parquet')",
                        params, has_length=True)  # fmt: skip
    assert con.execute("SELECT doc_id, cluster_id, cluster_size, keep FROM mh_clusters ORDER BY doc_id").fetchall() == sql_rows


def test_kernel_sha1_matches_hashlib_across_block_boundaries():
    """The numba SHA-1 behind the signatures equals hashlib on every length around the 55/56/64-byte padding edges."""
    import hashlib
    import struct

    import numpy as np

    from tasks.dedup._minhash_kernel import sha1_hash32

    rng = np.random.default_rng(0)
    for length in [*range(0, 130), 191, 192, 500, 4096]:
        data = rng.integers(0, 256, length, dtype=np.uint8)
        want = struct.unpack("<I", hashlib.sha1(data.tobytes()).digest()[:4])[0]
        assert int(sha1_hash32(data, 0, length)) == want, length


def test_minhash_values_single_doc_matches_the_batch():
    texts = [" ".join(f"w{i}" for i in range(40)), "too short", None]
    out = minhash_signatures(pa.table({"doc_id": ["a", "b", "c"], "text": texts}), MinhashSignaturesParams())
    assert minhash_values(texts[0]).tolist() == out.column("mh_values")[0].as_py()
    assert minhash_values(texts[1]) is None


def test_edges_number_bands_per_document_around_null_signatures():
    long = [" ".join(f"{w}{i}" for i in range(30)) for w in ("a", "b")]
    batch = pa.table({"doc_id": ["x", "short", "y"], "text": [long[0], "tiny", long[1]]})
    out = minhash_signatures(batch, MinhashSignaturesParams(band_keys=True))
    edges = minhash_edges(out, MinhashDedupParams(similarity=0.8))
    bands, rows = lsh_bands(0.8)
    assert sorted(set(edges.column("doc_id").to_pylist())) == ["x", "y"]
    # from the stored RPv2 keys or from the values: the same buckets
    from_keys = minhash_edges(out.drop_columns(["mh_values"]), MinhashDedupParams(similarity=0.8))
    assert from_keys.equals(edges)
    for doc in ("x", "y"):
        got = edges.filter(pa.compute.equal(edges.column("doc_id"), doc))
        assert sorted(got.column("band").to_pylist()) == list(range(bands))
        values = out.filter(pa.compute.equal(out.column("doc_id"), doc)).column("mh_values")[0].as_py()
        # a band's key changes when one of its rows does, and only then
        other = list(values)
        other[rows] ^= 1  # first row of band 1
        changed = minhash_edges(pa.table({"doc_id": ["z"], "mh_values": pa.array([other], pa.list_(pa.uint32()))}),
                                MinhashDedupParams(similarity=0.8, only_kept=False))
        mine = dict(zip(got.column("band").to_pylist(), got.column("key").to_pylist(), strict=True))
        theirs = dict(zip(changed.column("band").to_pylist(), changed.column("key").to_pylist(), strict=True))
        assert [b for b in range(bands) if mine[b] != theirs[b]] == [1]


@pytest.mark.skipif(not C4.exists(), reason="shared C4 sample (../shared/data/web/c4_sample) is absent")
def test_verify_keeps_exactly_the_candidates_whose_signatures_agree_on_the_threshold(tmp_path):
    ids, texts = _planted_corpus(n_base=120, seed=2)
    sig = _sig_table(ids, texts)
    import pyarrow.parquet as pq

    pq.write_table(minhash_edges(sig, MinhashDedupParams(num_partitions=2)), tmp_path / "edges.parquet")
    pq.write_table(sig.select(["doc_id", "text", "mh_values"]), tmp_path / "docs.parquet")
    pairs = {}
    for verify in (False, True):
        con = duckdb.connect()
        run_fuzzy_dedup_sql(con, f"read_parquet('{tmp_path}/edges.parquet')", f"read_parquet('{tmp_path}/docs.parquet')",
                            MinhashDedupParams(num_partitions=2, verify=verify))  # fmt: skip
        pairs[verify] = set(con.execute("SELECT src, dst FROM mh_pairs").fetchall())
    values = {d: np.array(v) for d, v in zip(sig.column("doc_id").to_pylist(), sig.column("mh_values").to_pylist(), strict=True)}
    agree = {p: float(np.mean(values[p[0]] == values[p[1]])) for p in pairs[False]}
    assert pairs[True] == {p for p, a in agree.items() if a >= 0.8}  # exactly the candidates at the threshold
    assert pairs[False] - pairs[True], "the corpus should hold LSH candidates below the threshold"
    sh = {d: _shingles(t) for d, t in zip(ids, texts, strict=True)}

    def low(ps):  # share of pairs whose true 13-gram Jaccard is below the 0.8 threshold
        jac = [len(sh[a] & sh[b]) / len(sh[a] | sh[b]) for a, b in ps]
        return sum(j < 0.8 for j in jac) / len(jac)

    assert low(pairs[True]) < low(pairs[False])


def test_verify_without_mh_values_is_a_clear_error():
    from tasks.dedup.minhash_sql import minhash_clusters_duckdb

    with pytest.raises(ValueError, match="mh_values"):
        minhash_clusters_duckdb(None, {}, MinhashDedupParams(verify=True), {"docs": ["doc_id", "minhash_signature_0.8"]})
