"""Composite stages: engine glue that runs the pure logic of tasks/ with DuckDB and side inputs.

Each function here is a few stage calls in a row; the versions they produce are ordinary stage versions
(``{dataset}/{stage}/{version}``), so each step is resumable and visible in the catalog on its own.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

import tasks.exact_dedup as exact_mod
import tasks.minhash_dedup as minhash_mod
import tasks.quality_filter as filter_mod
from flows.stage import map_stage, sql_over_batch, sql_stage
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef


def _has_column(ref: DatasetRef, column: str) -> bool:
    return any(f["name"] == column for f in datasets.read_manifest(ref)["schema"])


# ------------------------------------------------------------------------------------------------ quality filter


def quality_filter_batch(batch: pa.Table, params: filter_mod.QualityFilterParams) -> pa.Table:
    """The recipe's rules are SQL over the signal columns: DuckDB (sandboxed) evaluates them on each batch."""
    out = sql_over_batch(filter_mod.quality_filter_sql, params, batch)
    if params.line_rules:
        out = filter_mod.line_filter(out, params)
    return out


def quality_filter(src: DatasetRef, params: filter_mod.QualityFilterParams, profile: runtime.Profile) -> DatasetRef:
    return map_stage(src, "quality_filter", quality_filter_batch, params, profile, code=(quality_filter_batch, filter_mod))


# ------------------------------------------------------------------------------------------------ exact dedup


def _exact_keepers(con: Any, hashes: str, params: exact_mod.ExactDedupParams, has_keep: bool) -> str:
    con.execute(f"CREATE TABLE ed_keepers AS {exact_mod.exact_dedup_sql(hashes, params, has_keep=has_keep)}")
    return "ed_keepers"


def _exact_keepers_kept(con, hashes, params):
    return _exact_keepers(con, hashes, params, True)


def _exact_keepers_all(con, hashes, params):
    return _exact_keepers(con, hashes, params, False)


def exact_dedup(src: DatasetRef, params: exact_mod.ExactDedupParams, profile: runtime.Profile) -> DatasetRef:
    """Hash (map) -> duplicates per key (DuckDB window, spills) -> mark duplicates (map); no row is removed."""
    hashes = map_stage(src, "exact_dedup_hashes", exact_mod.exact_dedup_hashes, params, profile)
    run = _exact_keepers_kept if _has_column(src, "keep") else _exact_keepers_all
    keepers = sql_stage(hashes, "exact_dedup_keepers", run, params, code=(run, exact_mod))
    return map_stage(hashes, "exact_dedup", exact_mod.exact_dedup_filter, params, profile, side={"keepers": keepers})


# ------------------------------------------------------------------------------------------------ fuzzy dedup


def _fuzzy_clusters(con: Any, edges: str, docs: str, params: minhash_mod.FuzzyDedupParams) -> str:
    minhash_mod.run_fuzzy_dedup_sql(con, edges, docs, params)
    return "mh_clusters"


def minhash_dedup(src: DatasetRef, params: minhash_mod.FuzzyDedupParams, profile: runtime.Profile) -> DatasetRef:
    """LSH edges (map) -> buckets + connected components + keepers (DuckDB, spills) -> mark duplicates (map)."""
    edges = map_stage(src, "minhash_edges", minhash_mod.minhash_edges, params, profile)
    clusters = sql_stage([edges, src], "minhash_clusters", _fuzzy_clusters, params, code=(_fuzzy_clusters, minhash_mod))
    return map_stage(src, "minhash_dedup", minhash_mod.minhash_filter, params, profile, side={"clusters": clusters})
