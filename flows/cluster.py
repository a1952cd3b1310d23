"""Embedding-space curation (Vo et al. 2024): embed -> hierarchical k-means -> SemDeDup -> balanced sample.

Engine glue only: the maths is in tasks/embed.py, tasks/kmeans_balance.py and tasks/semdedup.py. Every step is a
versioned stage; k-means saves each level as it finishes (``hkmeans_levels``/``hkmeans_centroids``), so a killed
fit resumes at the next level.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

import tasks.embed as embed_mod
import tasks.kmeans_balance as km_mod
import tasks.semdedup as sd_mod
from flows.stage import _logger, _publish_table, run_stage
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef

_DOC_COLUMNS = ["doc_id", "domain", "raw_bytes"]


def _asdict(ref: DatasetRef) -> dict:
    return {"root": ref.root, "dataset": ref.dataset, "stage": ref.stage, "version": ref.version}


def _embedded(ref: DatasetRef) -> pa.Table:
    """doc_id + embedding of the rows that got one (rows with emb_error stay out of clustering, visibly)."""
    table = datasets.read_table(ref, columns=["doc_id", "embedding", "emb_error"])
    return table.filter(pc.is_null(table.column("emb_error"))).select(["doc_id", "embedding"])


def _attach(left: pa.Table, right: pa.Table, key: str = "doc_id") -> pa.Table:
    """Inner join on ``key`` by index lookup (Arrow's hash join cannot carry fixed-size-list embedding columns)."""
    idx = pc.index_in(left.column(key), value_set=right.column(key).combine_chunks())
    rows = pc.indices_nonzero(pc.is_valid(idx))
    out, pick = left.take(rows), pc.take(idx, rows)
    for name in right.column_names:
        if name != key and name not in out.column_names:
            out = out.append_column(name, right.column(name).take(pick))
    return out


# ------------------------------------------------------------------------------------------------ hierarchical k-means


def _saved_levels(assign_ref: DatasetRef, cent_ref: DatasetRef) -> list[km_mod.LevelResult]:
    have_a, have_c = datasets.existing_shards(assign_ref), datasets.existing_shards(cent_ref)
    done, level = [], 1
    while datasets.shard_name(level) in have_a and datasets.shard_name(level) in have_c:
        a = datasets.read_shard(assign_ref, datasets.shard_name(level))
        c = datasets.read_shard(cent_ref, datasets.shard_name(level))
        done.append(km_mod.level_from_tables(level, a.drop_columns(["level"]), c.drop_columns(["level"])))
        level += 1
    return done


def _hkmeans_work(emb: dict, dst: dict, params: km_mod.KMeansParams) -> dict:
    table = _embedded(DatasetRef(**emb))
    x = km_mod.embeddings_matrix(table)
    ref = DatasetRef(**dst)
    assign_ref, cent_ref = ref.sibling("hkmeans_levels"), ref.sibling("hkmeans_centroids")
    done = _saved_levels(assign_ref, cent_ref)

    def save(level: km_mod.LevelResult) -> None:  # centroids last: both shards present = the level is complete
        a, c = km_mod.level_to_tables(level)
        tag = pa.array([level.level] * a.num_rows, pa.int64())
        datasets.write_shard(assign_ref, datasets.shard_name(level.level), a.append_column("level", tag))
        datasets.write_shard(cent_ref, datasets.shard_name(level.level), c.append_column("level", pa.array([level.level] * c.num_rows, pa.int64())))

    result = km_mod.fit_hierarchical_kmeans(x, params, done=done, on_level=save)
    datasets.write_shards(ref, km_mod.hkmeans_assignments(result, table.column("doc_id").combine_chunks()))
    datasets.write_shards(ref.sibling("hkmeans_tree"), km_mod.hkmeans_tree(result).drop_columns(["centroid"]))
    return {"levels": [len(lv.centroids) for lv in result.levels], "resumed_levels": len(done), "docs": len(x)}


@task(retries=1, cache_policy=NO_CACHE, task_run_name="hkmeans")
def hkmeans(emb: DatasetRef, params: km_mod.KMeansParams, profile: runtime.Profile) -> DatasetRef:
    """Fit the hierarchical k-means on one worker (GPU when the profile gives one); resumable per level."""
    dst = datasets.derive(emb, "hkmeans", km_mod, params)
    if datasets.is_committed(dst):
        return dst
    t0 = time.perf_counter()
    stats = runtime.run_remote(_hkmeans_work, _asdict(emb), _asdict(dst), params, resources=profile.resources("hkmeans"), profile=profile)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    for side in ("hkmeans_levels", "hkmeans_centroids", "hkmeans_tree"):
        datasets.commit(dst.sibling(side), parents=[emb], params=params, code=datasets.code_hash(km_mod))
    datasets.commit(dst, parents=[emb], params=params, code=datasets.code_hash(km_mod), extra={"stats": stats})
    _logger().info(f"hkmeans: clusters per level {stats['levels']} over {stats['docs']} docs -> {dst.uri}")
    return dst


# ------------------------------------------------------------------------------------------------ SemDeDup


def _semdedup_work(emb: dict, hk: dict, dst: dict, params: sd_mod.SemDeDupParams) -> int:
    table = _attach(_embedded(DatasetRef(**emb)), datasets.read_table(DatasetRef(**hk)))
    out = sd_mod.semdedup(table, params)
    datasets.write_shards(DatasetRef(**dst), out)
    return int(out.num_rows - pc.sum(out.column("sd_keep")).as_py())


@task(retries=1, cache_policy=NO_CACHE, task_run_name="semdedup")
def semdedup(emb: DatasetRef, hk: DatasetRef, params: sd_mod.SemDeDupParams, profile: runtime.Profile) -> DatasetRef:
    """Semantic near-duplicates inside each level-1 cluster (Abbas et al. 2023), before balancing."""
    dst = datasets.derive([emb, hk], "semdedup", sd_mod, params)
    if datasets.is_committed(dst):
        return dst
    dropped = runtime.run_remote(_semdedup_work, _asdict(emb), _asdict(hk), _asdict(dst), params, resources=profile.resources("semdedup"), profile=profile)
    datasets.commit(dst, parents=[emb, hk], params=params, code=datasets.code_hash(sd_mod), extra={"stats": {"duplicates": dropped}})
    _logger().info(f"semdedup: {dropped} semantic duplicates marked -> {dst.uri}")
    return dst


# ------------------------------------------------------------------------------------------------ balanced sampling

REPORTS = ("level_stats", "cluster_sizes", "size_histogram", "domain_mix")


def _balance_work(hk: dict, docs: dict, sd: dict | None, dst: dict, params: km_mod.BalanceParams) -> list[dict]:
    pool = _attach(datasets.read_table(DatasetRef(**hk)), datasets.read_table(DatasetRef(**docs), columns=_DOC_COLUMNS))
    if sd is not None:  # semantic duplicates leave the pool before sampling
        pool = _attach(pool, datasets.read_table(DatasetRef(**sd), columns=["doc_id", "sd_keep"]))
        pool = pool.filter(pc.fill_null(pool.column("sd_keep"), True)).drop_columns(["sd_keep"])
    selected = km_mod.balanced_sample(pool, params)
    ref = DatasetRef(**dst)
    report = km_mod.balance_report(pool, selected)
    for name in REPORTS:
        if name in report:
            datasets.write_shards(ref.sibling(f"balance_{name}"), report[name])
    datasets.write_shards(ref, selected)
    return report["level_stats"].to_pylist()


@task(retries=1, cache_policy=NO_CACHE, task_run_name="balance")
def balance(
    hk: DatasetRef, docs: DatasetRef, sd: DatasetRef | None, params: km_mod.BalanceParams, profile: runtime.Profile
) -> DatasetRef:
    """Hierarchical balanced sampling with water-filling; the balance report becomes ``balance_*`` tables."""
    parents = [hk, docs] + ([sd] if sd is not None else [])
    dst = datasets.derive(parents, "balance", km_mod, params)
    if datasets.is_committed(dst):
        return dst
    stats = runtime.run_remote(
        _balance_work, _asdict(hk), _asdict(docs), _asdict(sd) if sd else None, _asdict(dst), params,
        resources=profile.resources("balance"), profile=profile,
    )
    for name in REPORTS:
        side = dst.sibling(f"balance_{name}")
        if datasets.existing_shards(side):
            datasets.commit(side, parents=[dst], params=params, code=datasets.code_hash(km_mod))
    datasets.commit(dst, parents=parents, params=params, code=datasets.code_hash(km_mod), extra={"stats": {"levels": stats}})
    _publish_table("balance-report", stats, f"balance report of {dst}: per-level Gini, entropy, KL to uniform")
    for s in stats:
        _logger().info(
            f"balance level {s['level']}: {s['clusters']} clusters, KL to uniform {s['kl_uniform_before']:.3f} -> "
            f"{s['kl_uniform_after']:.3f}, Gini {s['gini_before']:.3f} -> {s['gini_after']:.3f}"
        )
    return dst


def embedding_curation(kept: DatasetRef, cfg, profile: runtime.Profile) -> DatasetRef:
    """kept documents -> embed -> hkmeans -> (semdedup) -> balance -> the selected documents (with copies)."""
    import tasks.select as select_mod

    emb = run_stage(kept, "embed", embed_mod.Embedder, cfg.embed, profile, stateful=True)
    hk = hkmeans(emb, cfg.hkmeans, profile)
    sd = semdedup(emb, hk, cfg.semdedup, profile) if cfg.semdedup else None
    if cfg.balance is None:
        return kept
    bal = balance(hk, kept, sd, cfg.balance, profile)
    return run_stage(kept, "curated", select_mod.selected_documents, select_mod.SelectedParams(copies_column="bal_copies"), profile, side={"selection": bal})
