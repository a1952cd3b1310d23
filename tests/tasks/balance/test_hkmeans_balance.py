"""Hierarchical k-means, balanced sampling and the balance report on synthetic mixtures (spec hkmeans_balancing.md)."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.cluster import KMeans

from tasks.balance.hkmeans import (
    HKMeansParams,
    assign_clusters,
    fit_hierarchical_kmeans,
    fit_level,
    hkmeans_assignments,
    hkmeans_tree,
    level_from_tables,
    level_to_tables,
)
from tasks.balance.kmeans import KMeansShard, assign_and_partial_sums, fit_level_distributed, kmeans, update_centroids
from tasks.balance.report import balance_report, entropy, gini, kl_to_uniform
from tasks.balance.sample import BalanceParams, balanced_sample, water_fill

# Very unequal component sizes: the largest is 500× the smallest.
SIZES = (5000, 2000, 800, 400, 200, 100, 60, 40, 20, 10)


def _mixture(sizes=SIZES, dim=16, seed=0, spread=0.15):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((len(sizes), dim)) * 2.0
    x = np.concatenate([means[i] + spread * rng.standard_normal((n, dim)) for i, n in enumerate(sizes)])
    comp = np.repeat(np.arange(len(sizes)), sizes)
    return x.astype(np.float32), comp


def _inertia(x, c):
    labels, d = KMeansShard(x, device="cpu").assign(c)
    return float(d.astype(np.float64).sum())


def _kl_uniform_over(comp_counts):
    return kl_to_uniform(np.asarray(comp_counts, dtype=np.float64))


@pytest.fixture(scope="module")
def mixture_fit():
    x, comp = _mixture()
    params = HKMeansParams(levels=(300, 60, 10), iterations=20, seed=3, device="cpu")
    result = fit_hierarchical_kmeans(x, params)
    table = hkmeans_assignments(result, [f"d{i}" for i in range(len(x))]).append_column("comp", pa.array(comp))
    return x, comp, params, result, table


def test_balanced_sample_is_far_closer_to_uniform_over_components_than_random(mixture_fit):
    x, comp, _, _, table = mixture_fit
    target = 1000
    sample = balanced_sample(table, BalanceParams(target_size=target, seed=0))
    got = np.bincount(sample.column("comp").to_numpy(), weights=sample.column("bal_copies").to_numpy(), minlength=10)
    kl_balanced = _kl_uniform_over(got)
    rand = np.random.default_rng(0).choice(len(x), size=target, replace=False)
    kl_random = _kl_uniform_over(np.bincount(comp[rand], minlength=10))
    # Random sampling follows the density: KL ≈ KL(sizes ‖ uniform) ≈ 1.0 nats here.
    assert kl_random > 0.9
    # The best any m=1 sample can do is water-filling over the true components (the 5 smallest give everything).
    ideal = _kl_uniform_over(water_fill(np.array(SIZES), target, np.random.default_rng(0)))
    assert kl_balanced < ideal + 0.05
    assert kl_balanced < kl_random / 4
    assert (got > 0).all(), "every component, even the 10-point one, is represented"


def test_kmeans_matches_sklearn_and_faiss_inertia_from_same_init():
    x, _ = _mixture(sizes=(1500, 700, 300, 200, 100), dim=32, seed=1, spread=0.6)
    k, iters = 25, 25
    init, _, _, _ = kmeans(x, k, iterations=0, seed=7, device="cpu")
    ours, _, _, hist = kmeans(x, k, iterations=iters, init=init, device="cpu")
    sk = KMeans(n_clusters=k, init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)
    fk = faiss.Kmeans(x.shape[1], k, niter=iters, seed=1, max_points_per_centroid=10**6)
    fk.train(x, init_centroids=init)
    ours_inertia = _inertia(x, ours)
    assert hist[-1] == pytest.approx(ours_inertia, rel=1e-5)
    assert ours_inertia == pytest.approx(_inertia(x, sk.cluster_centers_.astype(np.float32)), rel=0.01)
    assert ours_inertia == pytest.approx(_inertia(x, fk.centroids), rel=0.01)
    assert ours_inertia < _inertia(x, init), "Lloyd iterations reduce the k-means++ potential"


def test_kmeanspp_init_beats_random_init_potential():
    x, _ = _mixture(seed=2)
    pp, _, _, _ = kmeans(x, 10, iterations=0, seed=0, device="cpu")
    rand = x[np.random.default_rng(0).choice(len(x), 10, replace=False)]
    assert _inertia(x, pp) < 0.5 * _inertia(x, rand)


def test_empty_cluster_keeps_its_centroid():
    x, _ = _mixture(sizes=(200, 200), dim=4, seed=3)
    far = np.full((1, 4), 1e3, dtype=np.float32)
    init = np.concatenate([x[:2], far])
    c, labels, _, _ = kmeans(x, 3, iterations=5, init=init, device="cpu")
    assert np.array_equal(c[2], far[0])
    assert not (labels == 2).any()
    kept = update_centroids(np.ones((2, 4)), np.array([0, 2]), np.zeros((2, 4), np.float32))
    assert kept[0].tolist() == [0, 0, 0, 0] and kept[1].tolist() == [0.5] * 4


def test_partial_sums_over_shards_add_up_to_the_whole_and_match_float64_numpy():
    x, _ = _mixture(sizes=(300, 200, 100), dim=8, seed=4)
    c = x[:5]
    whole = assign_and_partial_sums(x, c, device="cpu")
    parts = [assign_and_partial_sums(s, c, device="cpu") for s in np.array_split(x, 3)]
    assert whole[0].dtype == np.float64
    labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), 1)
    exact = np.stack([x[labels == j].astype(np.float64).sum(0) for j in range(5)])
    assert np.allclose(whole[0], exact, rtol=0, atol=1e-9)
    assert np.allclose(sum(p[0] for p in parts), whole[0], rtol=0, atol=1e-9)
    assert np.array_equal(sum(p[1] for p in parts), whole[1])
    assert sum(p[2] for p in parts) == pytest.approx(whole[2], rel=1e-9)


def test_distributed_driver_over_three_shards_equals_one_shard():
    x, _ = _mixture(sizes=(600, 300, 100), dim=8, seed=5)
    one = fit_level_distributed([KMeansShard(x, device="cpu")], 12, iterations=10, seed=11)
    shards = [KMeansShard(s, device="cpu") for s in np.array_split(x, 3)]
    calls = []

    def call(shard, method, *args):  # what a Ray actor handle's `.remote` would start
        calls.append(method)
        return getattr(shard, method)(*args)

    three = fit_level_distributed(shards, 12, iterations=10, seed=11, call=call, gather=list)
    assert np.allclose(one[0], three[0], atol=1e-5)
    assert np.array_equal(one[1], three[1])
    assert calls.count("partial_sums") == 30


def test_fit_is_deterministic_under_a_seed_and_changes_with_it():
    x, _ = _mixture(sizes=(800, 300, 100), dim=8, seed=6)
    p = HKMeansParams(levels=(30, 8, 3), iterations=10, seed=1, device="cpu")
    a, b = fit_hierarchical_kmeans(x, p), fit_hierarchical_kmeans(x, p)
    for la, lb in zip(a.levels, b.levels, strict=True):
        assert np.array_equal(la.centroids, lb.centroids) and np.array_equal(la.labels, lb.labels)
    c = fit_hierarchical_kmeans(x, HKMeansParams(levels=(30, 8, 3), iterations=10, seed=2, device="cpu"))
    assert not np.array_equal(a.levels[0].centroids, c.levels[0].centroids)


def test_resuming_level_two_from_saved_level_one_gives_identical_results(tmp_path):
    x, _ = _mixture(sizes=(800, 300, 100), dim=8, seed=7)
    p = HKMeansParams(levels=(40, 10, 3), iterations=10, seed=4, device="cpu")
    full = fit_hierarchical_kmeans(x, p)
    saved = []
    fit_hierarchical_kmeans(x, HKMeansParams(levels=(40,), iterations=10, seed=4, device="cpu"), on_level=saved.append)
    assign_t, cent_t = level_to_tables(saved[0])
    pq.write_table(assign_t, tmp_path / "l1_assign.parquet")
    pq.write_table(cent_t, tmp_path / "l1_centroids.parquet")
    l1 = level_from_tables(
        1, pq.read_table(tmp_path / "l1_assign.parquet"), pq.read_table(tmp_path / "l1_centroids.parquet")
    )
    resumed = fit_hierarchical_kmeans(x, p, done=[l1])
    for lf, lr in zip(full.levels, resumed.levels, strict=True):
        assert np.array_equal(lf.centroids, lr.centroids)
        assert np.array_equal(lf.labels, lr.labels)
        assert np.array_equal(lf.distances, lr.distances)
    # fit_level alone needs only level 1's centroids
    l2 = fit_level(l1.centroids, 2, p, n_docs=len(x))
    assert np.array_equal(l2.labels, full.levels[1].labels)


def test_level_assignments_are_sorted_by_cluster_then_distance(mixture_fit):
    _, _, _, result, _ = mixture_fit
    assign_t, _ = level_to_tables(result.levels[0])
    cl = assign_t.column("cluster").to_numpy()
    d = assign_t.column("distance").to_numpy()
    assert (np.diff(cl) >= 0).all()
    assert (np.diff(d)[np.diff(cl) == 0] >= 0).all()


def test_resampling_moves_level_one_centroids_out_of_the_dense_component():
    x, comp = _mixture(seed=8)
    base = HKMeansParams(levels=(100,), iterations=15, seed=0, device="cpu", resampling_steps=(1,))
    res = HKMeansParams(levels=(100,), iterations=15, seed=0, device="cpu", resampling_steps=(6,))

    def share_on_largest(p):
        lr = fit_hierarchical_kmeans(x, p).levels[0]
        owner = np.array([np.bincount(comp[lr.labels == c], minlength=10).argmax() for c in np.unique(lr.labels)])
        return (owner == 0).mean()

    # Density-following k-means puts ~p^{d/(d+2)} of the centroids in the 57 % component; resampling spreads them.
    assert share_on_largest(res) < share_on_largest(base)


def test_tree_parents_compose_to_doc_labels(mixture_fit):
    _, _, _, result, table = mixture_fit
    l1 = table.column("km_l1").to_numpy()
    assert np.array_equal(table.column("km_l2").to_numpy(), result.parents(1)[l1])
    tree = hkmeans_tree(result)
    top = tree.filter(pc.equal(tree["level"], 3))
    assert top.column("parent").null_count == top.num_rows
    assert tree.filter(pc.equal(tree["level"], 1)).column("n_points").to_numpy().sum() == table.num_rows


def test_default_levels_scale_with_the_corpus():
    ks, steps, rs = HKMeansParams().resolve(100_000)
    assert ks == (5000, 500, 100, 20) and steps == (1, 10, 10, 10) and rs == (0, 0, 0, 0)
    assert HKMeansParams().resolve(40)[0] == (2, 2, 2, 2)


def test_split_level_one_fits_clusters_inside_coarse_clusters():
    x, _ = _mixture(sizes=(600, 300, 100), dim=8, seed=9)
    p = HKMeansParams(levels=(24, 4), iterations=10, level1_split=4, seed=0, device="cpu")
    r = fit_hierarchical_kmeans(x, p)
    assert len(r.levels[0].centroids) <= 24
    assert set(np.unique(r.levels[0].labels)) <= set(range(len(r.levels[0].centroids)))
    with pytest.raises(ValueError, match="cannot be combined"):
        HKMeansParams(levels=(24,), level1_split=4, resampling_steps=(3,))


def test_assign_clusters_reproduces_fit_labels_and_nulls_missing_embeddings(mixture_fit):
    x, _, params, result, table = mixture_fit
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x[:50].reshape(-1)), x.shape[1])
    batch = pa.table({"doc_id": table.column("doc_id")[:50], "embedding": emb})
    out = assign_clusters(batch, params, result=result)
    for t in (1, 2, 3):
        assert out.column(f"km_l{t}").to_pylist() == table.column(f"km_l{t}")[:50].to_pylist()
    with_null = pa.table({"embedding": pa.array([x[0].tolist(), None], pa.list_(pa.float32()))})
    labelled = assign_clusters(with_null, params, result=result)
    assert labelled.column("km_l1").to_pylist()[1] is None and labelled.column("km_l1_dist").null_count == 1


def test_nan_embeddings_are_a_clear_error():
    x = np.ones((10, 4), dtype=np.float32)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_hierarchical_kmeans(x, HKMeansParams(levels=(2,), device="cpu"))


# ---------------------------------------------------------------------------------------------------------------
# water-filling and balanced sampling


def test_water_fill_meets_the_target_exactly_and_respects_caps():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 50, size=rng.integers(1, 30))
        target = int(rng.integers(0, sizes.sum() + 10))
        q = water_fill(sizes, target, np.random.default_rng(1))
        assert q.sum() == min(target, sizes.sum())
        assert (q <= sizes).all() and (q >= 0).all()
        unfilled = q < sizes
        if unfilled.any():  # one shared cap: every unfilled cluster is within 1 of the largest quota
            assert q[unfilled].min() >= q.max() - 1


def test_water_fill_small_clusters_give_everything():
    q = water_fill(np.array([2, 3, 100, 100]), 25, np.random.default_rng(0))
    assert q[:2].tolist() == [2, 3] and sorted(q[2:].tolist()) == [10, 10]


@pytest.mark.parametrize("strategy", ["r", "c"])
def test_balanced_sample_meets_document_target_exactly(mixture_fit, strategy):
    *_, table = mixture_fit
    s = balanced_sample(table, BalanceParams(target_size=777, strategy=strategy, seed=5))
    assert pc.sum(s["bal_copies"]).as_py() == 777 and s.num_rows == 777
    assert len(set(s.column("doc_id").to_pylist())) == 777


def test_multiplier_copies_small_clusters_up_to_m_times_and_meets_target(mixture_fit):
    *_, table = mixture_fit
    target = table.num_rows + 2000
    s = balanced_sample(table, BalanceParams(target_size=target, multiplier=3, seed=0))
    copies = s.column("bal_copies").to_numpy()
    assert copies.sum() == target and copies.max() == 3 and copies.min() >= 1
    everything = balanced_sample(table, BalanceParams(target_size=10**9, multiplier=2))
    assert (everything.column("bal_copies").to_numpy() == 2).all() and everything.num_rows == table.num_rows


def test_strategy_c_takes_the_points_closest_to_the_centroid(mixture_fit):
    *_, table = mixture_fit
    s = balanced_sample(table, BalanceParams(target_size=600, strategy="c"))
    chosen = set(s.column("doc_id").to_pylist())
    ids = table.column("doc_id").to_pylist()
    leaf = table.column("km_l1").to_numpy()
    dist = table.column("km_l1_dist").to_numpy()
    sel = np.array([d in chosen for d in ids])
    for c in np.unique(leaf[sel]):
        inside = leaf == c
        if (~sel & inside).any():
            assert dist[sel & inside].max() <= dist[~sel & inside].min()


def test_token_target_uses_the_weight_column(mixture_fit):
    *_, table = mixture_fit
    tokens = np.random.default_rng(0).integers(50, 500, size=table.num_rows)
    t = table.append_column("tok_count", pa.array(tokens))
    target = 200_000
    s = balanced_sample(t, BalanceParams(target_size=target, weight_column="tok_count", seed=1))
    got = int((s.column("tok_count").to_numpy() * s.column("bal_copies").to_numpy()).sum())
    leaves = len(np.unique(table.column("km_l1").to_numpy()))
    assert got <= target and got >= target - leaves * 500  # each leaf undershoots by less than one document
    with pytest.raises(ValueError, match="null"):
        balanced_sample(
            t.set_column(t.schema.get_field_index("tok_count"), "tok_count", pa.nulls(t.num_rows, pa.int64())),
            BalanceParams(target_size=10, weight_column="tok_count"),
        )


def test_balanced_sample_is_deterministic_under_a_seed(mixture_fit):
    *_, table = mixture_fit
    a = balanced_sample(table, BalanceParams(target_size=500, seed=9))
    b = balanced_sample(table, BalanceParams(target_size=500, seed=9))
    c = balanced_sample(table, BalanceParams(target_size=500, seed=10))
    assert a.equals(b)
    assert a.column("doc_id").to_pylist() != c.column("doc_id").to_pylist()


def test_balance_params_reject_furthest_strategy_and_missing_levels():
    with pytest.raises(ValueError, match="furthest"):
        BalanceParams(target_size=1, strategy="f")
    with pytest.raises(ValueError, match="km_l1"):
        balanced_sample(pa.table({"doc_id": ["a"]}), BalanceParams(target_size=1))


# ---------------------------------------------------------------------------------------------------------------
# report


def test_measures_on_known_distributions():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 12]) == pytest.approx(0.75)
    assert entropy([1, 1, 1, 1]) == pytest.approx(math.log(4))
    assert kl_to_uniform([1, 1]) == pytest.approx(0.0)
    assert kl_to_uniform([1, 0]) == pytest.approx(math.log(2))


def test_balance_report_shows_flatter_clusters_and_domain_mix_after_sampling(mixture_fit):
    *_, table = mixture_fit
    domains = np.where(table.column("comp").to_numpy() == 0, "web", "code")
    t = table.append_column("domain", pa.array(domains))
    s = balanced_sample(t, BalanceParams(target_size=1000, seed=0))
    rep = balance_report(t, s)
    stats = {r["level"]: r for r in rep["level_stats"].to_pylist()}
    assert set(stats) == {1, 2, 3}
    assert stats[3]["kl_uniform_after"] < stats[3]["kl_uniform_before"]
    assert stats[3]["gini_after"] < stats[3]["gini_before"]
    assert stats[3]["entropy_after"] <= stats[3]["max_entropy"] + 1e-12
    assert stats[1]["docs_after"] == 1000 and stats[1]["duplicate_rate"] == 0.0
    assert 0 < stats[1]["coverage"] <= 1
    sizes = rep["cluster_sizes"]
    assert pc.sum(sizes.filter(pc.equal(sizes["level"], 2))["size_after"]).as_py() == 1000
    hist = rep["size_histogram"].filter(pc.equal(rep["size_histogram"]["level"], 1))
    assert pc.sum(hist["clusters_before"]).as_py() == stats[1]["clusters"]
    mix = {r["domain"]: r for r in rep["domain_mix"].to_pylist()}
    assert mix["web"]["share_before"] == pytest.approx(5000 / sum(SIZES))
    assert mix["web"]["share_after"] < mix["web"]["share_before"]


@pytest.mark.gpu
def test_cuda_fit_matches_cpu_inertia():
    assert torch.cuda.is_available()
    x, _ = _mixture(seed=10)
    init, _, _, _ = kmeans(x, 50, iterations=0, seed=0, device="cpu")
    cpu, _, _, hc = kmeans(x, 50, iterations=20, init=init, device="cpu")
    gpu, _, _, hg = kmeans(x, 50, iterations=20, init=init, device="cuda")
    assert hg[-1] == pytest.approx(hc[-1], rel=1e-3)
    assert (
        HKMeansParams(device="auto")
        and str(__import__("tasks.balance.kmeans").balance.kmeans.resolve_device()) == "cuda"
    )


def test_sums_do_not_drift_over_millions_of_points():
    x = np.full((2_000_000, 1), 0.1, dtype=np.float32)
    sums, counts, _ = assign_and_partial_sums(x, np.zeros((1, 1), np.float32), device="cpu")
    exact = 2_000_000 * float(np.float32(0.1))
    assert counts[0] == 2_000_000
    assert abs(sums[0, 0] - exact) / exact < 1e-6
    naive = torch.zeros(1, 1).index_add_(0, torch.zeros(2_000_000, dtype=torch.int64), torch.from_numpy(x))
    assert abs(float(naive[0, 0]) - exact) / exact > 1e-4, "a single float32 accumulator would drift"
