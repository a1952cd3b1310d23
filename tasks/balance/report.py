"""Measures of balance (spec §"Measures of balance"): Gini, entropy and KL to uniform of cluster sizes per level,
before and after balanced sampling, cluster-size histograms and the domain mix.

    report = balance_report(pool, sample)   # dict of Arrow tables: level_stats, cluster_sizes, size_histogram, ...
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

# ---------------------------------------------------------------------------------------------------------------
# Balance report


def gini(sizes: np.ndarray) -> float:
    """Gini coefficient of cluster sizes (0 = all equal)."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    i = np.arange(1, len(x) + 1)
    return float(2 * (i * x).sum() / (len(x) * x.sum()) - (len(x) + 1) / len(x))


def entropy(sizes: np.ndarray) -> float:
    """Shannon entropy (nats) of the size distribution."""
    p = np.asarray(sizes, dtype=np.float64)
    p = p[p > 0] / p.sum() if p.sum() > 0 else p[:0]
    return float(-(p * np.log(p)).sum())


def kl_to_uniform(sizes: np.ndarray) -> float:
    """KL(sizes/Σ ‖ uniform over len(sizes)) = log k - H."""
    return float(math.log(len(sizes)) - entropy(sizes)) if len(sizes) else 0.0


def balance_report(
    before: pa.Table, after: pa.Table, *, domain_column: str = "domain", copies_column: str = "bal_copies"
) -> dict[str, pa.Table]:
    """Balance measures (spec §"Measures of balance") as Arrow tables, keyed by name.

    level_stats: per level, clusters, Gini/entropy/KL-to-uniform before and after, leaf (cluster) coverage,
        duplicate rate. cluster_sizes: level, cluster, size before/after. size_histogram: log2 bins of cluster sizes.
    domain_mix: domain share before/after (only when `domain_column` is in both tables).
    """
    cols = level_columns(before, 0)
    copies = (
        after.column(copies_column).to_numpy().astype(np.int64)
        if copies_column in after.column_names
        else np.ones(after.num_rows, dtype=np.int64)
    )
    n_sel = int(copies.sum())
    dup_rate = float((n_sel - after.num_rows) / n_sel) if n_sel else 0.0
    stats, sizes_parts, hist_parts = [], [], []
    for t, c in enumerate(cols, 1):
        b_lab = before.column(c).to_numpy().astype(np.int64)
        a_lab = after.column(c).to_numpy().astype(np.int64)
        k = int(max(b_lab.max(initial=-1), a_lab.max(initial=-1))) + 1
        b = np.bincount(b_lab, minlength=k)
        a = np.bincount(a_lab, weights=copies, minlength=k).astype(np.int64)
        present = b > 0
        b, a, ids = b[present], a[present], np.flatnonzero(present)
        stats.append(
            {
                "level": t,
                "clusters": int(len(b)),
                "docs_before": int(b.sum()),
                "docs_after": int(a.sum()),
                "gini_before": gini(b),
                "gini_after": gini(a),
                "entropy_before": entropy(b),
                "entropy_after": entropy(a),
                "max_entropy": math.log(len(b)) if len(b) else 0.0,
                "kl_uniform_before": kl_to_uniform(b),
                "kl_uniform_after": kl_to_uniform(a),
                "coverage": float((a > 0).mean()) if len(a) else 0.0,
                "duplicate_rate": dup_rate,
            }
        )
        sizes_parts.append(
            pa.table(
                {
                    "level": pa.array(np.full(len(b), t), pa.int32()),
                    "cluster": pa.array(ids, pa.int64()),
                    "size_before": pa.array(b, pa.int64()),
                    "size_after": pa.array(a, pa.int64()),
                }
            )
        )
        top = int(max(b.max(initial=1), a.max(initial=1)))
        edges = 2 ** np.arange(0, int(math.ceil(math.log2(top + 1))) + 1)  # bins [1,2) [2,4) ...; 0 counted apart
        edges = np.r_[0, edges]
        hb, _ = np.histogram(b, bins=edges)
        ha, _ = np.histogram(a, bins=edges)
        hist_parts.append(
            pa.table(
                {
                    "level": pa.array(np.full(len(hb), t), pa.int32()),
                    "bin_lo": pa.array(edges[:-1], pa.int64()),
                    "bin_hi": pa.array(edges[1:], pa.int64()),
                    "clusters_before": pa.array(hb, pa.int64()),
                    "clusters_after": pa.array(ha, pa.int64()),
                }
            )
        )
    report = {
        "level_stats": pa.Table.from_pylist(stats),
        "cluster_sizes": pa.concat_tables(sizes_parts),
        "size_histogram": pa.concat_tables(hist_parts),
    }
    if domain_column in before.column_names and domain_column in after.column_names:
        db = before.column(domain_column).fill_null("<null>").to_pylist()
        da = after.column(domain_column).fill_null("<null>").to_pylist()
        names = sorted(set(db) | set(da))
        cb = {d: 0 for d in names}
        ca = {d: 0 for d in names}
        for d in db:
            cb[d] += 1
        for d, cp in zip(da, copies, strict=True):
            ca[d] += int(cp)
        tb, ta = max(sum(cb.values()), 1), max(sum(ca.values()), 1)
        report["domain_mix"] = pa.table(
            {
                "domain": names,
                "docs_before": [cb[d] for d in names],
                "share_before": [cb[d] / tb for d in names],
                "docs_after": [ca[d] for d in names],
                "share_after": [ca[d] / ta for d in names],
            }
        )
    return report


def level_columns(table: pa.Table, levels: int) -> list[str]:
    names = []
    t = 1
    while f"km_l{t}" in table.column_names and (levels == 0 or t <= levels):
        names.append(f"km_l{t}")
        t += 1
    if not names or (levels and len(names) < levels):
        raise ValueError(f"balanced_sample needs km_l1..km_l{levels or 'T'} columns; have {table.column_names}")
    return names
