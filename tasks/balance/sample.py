"""Balanced hierarchical sampling with water-filling (Vo et al. 2024, arXiv 2405.15613 §3.3), and the ``balance``
stage: the quota of each cluster is split among its children so that every part of the support is represented.

    sample = balanced_sample(table, BalanceParams(target_size=1000))  # selected rows + bal_copies
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.balance.report import level_columns
from tasks.common.stage import implements

# ---------------------------------------------------------------------------------------------------------------
# Balanced hierarchical sampling


@dataclass(frozen=True, kw_only=True, slots=True)
class BalanceParams:
    """Balanced hierarchical sampling (spec §"Balanced hierarchical sampling"; arXiv 2405.15613 §3.3).

    target_size: N*, in documents, or in `weight_column` units (e.g. tokens) when that is set.
    multiplier: m, the most copies of one document (1 = no duplication).
    strategy: "r" random within a leaf (the paper's choice for the final sample) or "c" closest to the centroid.
    weight_column: per-row non-negative integer weight (token count); None = count documents.
    levels: number of km_l* levels to use; 0 = every km_l<t> column present.
    """

    target_size: int
    multiplier: int = 1
    strategy: str = "r"
    weight_column: str | None = None
    levels: int = 0
    seed: int = 0
    doc_id_column: str = "doc_id"
    distance_column: str = "km_l1_dist"

    def __post_init__(self) -> None:
        if self.target_size < 0:
            raise ValueError(f"target_size must be >= 0, got {self.target_size}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.strategy not in ("r", "c"):
            raise ValueError(
                f"strategy must be 'r' (random) or 'c' (closest); 'furthest' is known to be bad, got {self.strategy!r}"
            )
        if self.levels < 0:
            raise ValueError(f"levels must be >= 0 (0 = every km_l* column), got {self.levels}")


def water_fill(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Quotas: largest integer cap x with Σ min(x, s_i) ≤ target, remainder +1 to random clusters with room."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if target >= sizes.sum():
        return sizes.copy()
    lo, hi = 0, int(sizes.max())
    while lo < hi:  # largest x with f(x) <= target; f is monotone
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= target:
            lo = mid
        else:
            hi = mid - 1
    quotas = np.minimum(sizes, lo)
    rem = int(target - quotas.sum())
    if rem:
        room = np.flatnonzero(sizes > lo)  # rem < len(room), else lo + 1 would fit
        quotas[rng.choice(room, size=rem, replace=False)] += 1
    return quotas


def balanced_sample(table: pa.Table, params: BalanceParams) -> pa.Table:
    """Kind (c): the selected rows (with all input columns) plus `bal_copies` (1..m); unselected rows are omitted.

    The top level is water-filled, each cluster's quota is split among its children with one shared cap bounded by
    each child's flat size, and a leaf takes ⌊quota/|leaf|⌋ full copies plus the rest by strategy.
    """
    cols = level_columns(table, params.levels)
    n = table.num_rows
    for c in cols:
        if table.column(c).null_count:
            raise ValueError(f"{table.column(c).null_count} rows have a null {c!r} (unclustered); drop them first")
    labels = [table.column(c).to_numpy().astype(np.int64) for c in cols]
    if params.weight_column is None:
        w = np.ones(n, dtype=np.int64)
    else:
        wcol = table.column(params.weight_column)
        if wcol.null_count:
            raise ValueError(f"{wcol.null_count} rows have a null {params.weight_column!r}")
        w = wcol.to_numpy().astype(np.int64)
        if (w < 0).any():
            raise ValueError(f"{params.weight_column!r} must be non-negative")
    m = params.multiplier
    rng = np.random.default_rng(params.seed)
    # Flat size of each cluster at each level: m × (documents or tokens) below it.
    flat = [
        np.bincount(lab, weights=w, minlength=int(lab.max()) + 1 if n else 0).astype(np.int64) * m for lab in labels
    ]
    top = len(cols) - 1
    present = np.flatnonzero(np.bincount(labels[top], minlength=len(flat[top])) > 0) if n else np.zeros(0, np.int64)
    quota = np.zeros(len(flat[top]), dtype=np.int64)
    if len(present):
        quota[present] = water_fill(flat[top][present], params.target_size, rng)
    for t in range(top, 0, -1):  # split each parent's quota among its children (level t -> t-1)
        pairs = np.unique(np.stack([labels[t], labels[t - 1]], 1), axis=0)  # (parent, child), parent-sorted
        child_quota = np.zeros(len(flat[t - 1]), dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
        for s, e in zip(starts, np.r_[starts[1:], len(pairs)], strict=True):
            parent, children = pairs[s, 0], pairs[s:e, 1]
            if quota[parent] > 0:
                child_quota[children] = water_fill(flat[t - 1][children], int(quota[parent]), rng)
        quota = child_quota
    # Leaves: full copies, then the rest by strategy, vectorised over all leaves.
    leaf = labels[0]
    leaf_w = flat[0] // m
    full = np.where(leaf_w > 0, quota // np.maximum(leaf_w, 1), 0)
    rest = quota - full * leaf_w
    if params.strategy == "c":
        if params.distance_column not in table.column_names:
            raise ValueError(f"strategy 'c' needs {params.distance_column!r}")
        key = table.column(params.distance_column).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        key = rng.random(n)
    order = np.lexsort((np.arange(n), key, leaf))
    cum = np.cumsum(w[order])
    lab_sorted = leaf[order]
    starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]]) if n else np.zeros(0, np.int64)
    seg_start = np.repeat(cum[starts] - w[order][starts], np.diff(np.r_[starts, n]))
    within = cum - seg_start  # inclusive running weight inside the leaf
    extra = (within <= rest[lab_sorted]) & (w[order] > 0) & (rest[lab_sorted] > 0)
    copies = np.zeros(n, dtype=np.int64)
    copies[order] = full[lab_sorted] + extra
    copies = np.minimum(copies, m)
    sel = np.flatnonzero(copies > 0)
    return table.take(pa.array(sel)).append_column("bal_copies", pa.array(copies[sel], pa.int32()))


REPORTS = ("level_stats", "cluster_sizes", "size_histogram", "domain_mix")


@implements("balance")
def balance_stage(tables: dict, params: BalanceParams, ctx) -> tuple[dict[str, pa.Table], dict]:
    """The ``balance`` stage: the pool (clustered kept documents, minus semantic duplicates) -> the balanced sample,
    plus the balance report as side tables ``balance_{report}``."""
    import pyarrow.compute as pc

    from tasks.balance.report import balance_report
    from tasks.select.selection import attach

    pool = attach(tables["hkmeans"], tables["docs"])
    if "semdedup" in tables:  # semantic duplicates leave the pool before sampling
        pool = attach(pool, tables["semdedup"])
        pool = pool.filter(pc.fill_null(pool.column("sd_keep"), True)).drop_columns(["sd_keep"])
    selected = balanced_sample(pool, params)
    report = balance_report(pool, selected)
    out = {"balance": selected, **{f"balance_{r}": report[r] for r in REPORTS if r in report}}
    return out, {"levels": report["level_stats"].to_pylist()}


def balance_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    rows = (manifest.get("stats") or {}).get("levels") or []
    ref = f"{manifest['dataset']}/{manifest['stage']}/{manifest['version']}"
    return [("balance-report", rows, f"balance report of {ref}: per-level Gini, entropy, KL to uniform")]
