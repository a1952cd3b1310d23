"""SemDeDup inside clusters: planted near-duplicates, brute-force parity, ranking strategies, real MiniLM embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tasks.balance.semdedup import SemDeDupParams, semdedup

C4 = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "web" / "c4_sample" / "c4_sample.jsonl"


def _table(x, clusters, dist=None, ids=None):
    x = np.asarray(x, dtype=np.float32)
    cols = {
        "doc_id": ids or [f"d{i}" for i in range(len(x))],
        "km_l1": pa.array(clusters, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
    }
    if dist is not None:
        cols["km_l1_dist"] = pa.array(dist, pa.float32())
    return pa.table(cols)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _brute_force(x, clusters, dist, eps):
    """Reference: per cluster, rank farthest-first, drop j if max_{i<j} cos(i, j) >= 1 - eps."""
    x = _unit(x)
    keep = np.ones(len(x), dtype=bool)
    for c in np.unique(clusters):
        m = np.flatnonzero(clusters == c)
        ranked = m[np.lexsort((m, -dist[m]))]
        for pos in range(1, len(ranked)):
            sims = x[ranked[:pos]] @ x[ranked[pos]]
            if sims.max() >= 1 - eps:
                keep[ranked[pos]] = False
    return keep


def test_exact_duplicate_in_a_cluster_is_dropped_and_points_to_the_kept_copy():
    rng = np.random.default_rng(0)
    base = _unit(rng.standard_normal((4, 8)))
    x = np.concatenate([base, base[1:2]])  # d4 duplicates d1
    out = semdedup(_table(x, [0, 0, 0, 0, 0], dist=[0.1, 0.5, 0.2, 0.3, 0.4]))
    assert out.column("sd_keep").to_pylist() == [True, True, True, True, False]
    assert out.column("sd_duplicate_of").to_pylist() == [None, None, None, None, "d1"]
    assert out.column("sd_max_similarity")[4].as_py() == pytest.approx(1.0, abs=1e-5)
    assert out.column("sd_max_similarity")[1].as_py() is None  # ranked first (farthest): nothing earlier


def test_duplicates_in_different_clusters_are_not_compared():
    v = _unit(np.ones((1, 8)))
    out = semdedup(_table(np.concatenate([v, v]), [0, 1]))
    assert out.column("sd_keep").to_pylist() == [True, True]


def test_hard_keeps_the_member_farther_from_the_centroid_and_easy_the_closer():
    v = _unit(np.arange(1, 9)[None, :])
    t = _table(np.concatenate([v, v]), [3, 3], dist=[0.1, 0.9])
    assert semdedup(t, SemDeDupParams(which_to_keep="hard")).column("sd_keep").to_pylist() == [False, True]
    assert semdedup(t, SemDeDupParams(which_to_keep="easy")).column("sd_keep").to_pylist() == [True, False]


def test_eps_sets_the_similarity_threshold():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.2), np.sin(0.2), 0.0])  # cosine 0.980
    t = _table([a, b], [0, 0], dist=[0.2, 0.1])
    assert semdedup(t, SemDeDupParams(eps=0.01)).column("sd_keep").to_pylist() == [True, True]
    assert semdedup(t, SemDeDupParams(eps=0.03)).column("sd_keep").to_pylist() == [True, False]


@pytest.mark.parametrize("block_bytes", [64, 4096, 1 << 27])
def test_matches_brute_force_with_planted_near_duplicates_for_any_block_size(block_bytes):
    rng = np.random.default_rng(1)
    base = _unit(rng.standard_normal((120, 16)))
    noisy = _unit(base[:40] + 0.05 * rng.standard_normal((40, 16)))  # cos ≈ 0.98 to their source
    x = np.concatenate([base, noisy])
    clusters = rng.integers(0, 3, size=len(x))
    clusters[120:] = clusters[:40]  # most near-duplicates share their source's cluster
    clusters[150:] = (clusters[30:40] + 1) % 3  # ...but ten do not, so they must survive
    dist = rng.random(len(x))
    for eps in (0.01, 0.03, 0.07):
        out = semdedup(_table(x, clusters, dist), SemDeDupParams(eps=eps, block_bytes=block_bytes))
        assert (
            out.column("sd_keep").to_numpy(zero_copy_only=False).tolist()
            == _brute_force(x, clusters, dist, eps).tolist()
        )
    dropped = ~semdedup(_table(x, clusters, dist), SemDeDupParams(eps=0.07)).column("sd_keep").to_numpy(
        zero_copy_only=False
    )
    assert dropped.sum() >= 25


def test_larger_eps_never_keeps_more():
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((200, 4)))  # low dimension: many close pairs
    t = _table(x, rng.integers(0, 4, size=200))
    kept = [sum(semdedup(t, SemDeDupParams(eps=e)).column("sd_keep").to_pylist()) for e in (0.0, 0.01, 0.05, 0.2)]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1]


def test_random_strategy_is_deterministic_under_a_seed():
    rng = np.random.default_rng(3)
    x = _unit(rng.standard_normal((100, 3)))
    t = _table(x, np.zeros(100, dtype=int))
    a = semdedup(t, SemDeDupParams(eps=0.05, which_to_keep="random", seed=4))
    assert a.equals(semdedup(t, SemDeDupParams(eps=0.05, which_to_keep="random", seed=4)))


def test_null_embedding_is_a_clear_error_and_bad_params_are_rejected():
    t = pa.table(
        {"doc_id": ["a", "b"], "km_l1": [0, 0], "embedding": pa.array([[1.0, 0.0], None], pa.list_(pa.float32()))}
    )
    with pytest.raises(ValueError, match="null 'embedding'"):
        semdedup(t)
    with pytest.raises(ValueError, match="which_to_keep"):
        SemDeDupParams(which_to_keep="furthest")
    with pytest.raises(ValueError, match="eps"):
        SemDeDupParams(eps=1.5)


@pytest.mark.skipif(not C4.exists(), reason=f"shared C4 sample absent: {C4}")
def test_real_minilm_embeddings_flag_lightly_edited_copies_of_c4_docs():
    from tasks.balance.embed import Embedder, EmbedParams
    from tasks.balance.hkmeans import HKMeansParams, fit_hierarchical_kmeans, hkmeans_assignments

    with C4.open() as f:
        docs = [json.loads(line)["text"] for _, line in zip(range(10), f, strict=False)]
    copies = [docs[i].replace(".", "!", 1) + " Click here to subscribe." for i in (0, 3, 7)]
    texts = docs + copies
    ids = [f"c4_{i}" for i in range(10)] + ["copy_0", "copy_3", "copy_7"]
    emb = Embedder(EmbedParams(max_seq_length=128, device="cpu")).embed_texts(texts)
    result = fit_hierarchical_kmeans(emb, HKMeansParams(levels=(2,), iterations=10, device="cpu"))
    table = hkmeans_assignments(result, ids).append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    )
    out = semdedup(table, SemDeDupParams(eps=0.05))
    pairs = {
        frozenset((d, o))
        for d, k, o in zip(ids, out["sd_keep"].to_pylist(), out["sd_duplicate_of"].to_pylist(), strict=True)
        if not k
    }
    assert pairs == {frozenset(("c4_0", "copy_0")), frozenset(("c4_3", "copy_3")), frozenset(("c4_7", "copy_7"))}
