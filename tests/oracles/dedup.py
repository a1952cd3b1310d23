"""Test oracles for dedup: the Arrow restatements of the DuckDB global steps, used only by tests.

The engine runs ``exact_dedup_keepers`` as DuckDB SQL (``tasks.dedup.exact.exact_dedup_sql``, the
``exact_dedup_keepers`` stage) and MinHash's keep-one-per-cluster inside ``tasks.dedup.minhash_sql`` (the
``minhash_clusters`` stage); these in-memory versions say the same thing another way, so the tests check the SQL
against them (same rows, same survivors, same reasons). The Arrow buckets and connected components that a benchmark
also times stay in tasks as ``tasks.dedup.minhash.oracle_minhash_buckets`` / ``oracle_minhash_clusters``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.dedup.exact import KEEPERS_SCHEMA, LENGTH_COLUMN, ExactDedupParams
from tasks.dedup.minhash import CLUSTERS_SCHEMA, MinhashDedupParams, later_repeats

# ------------------------------------------------------------------------------------------------------ exact dedup


def _order(t: pa.Table, key: str, params: ExactDedupParams) -> list[tuple[str, str]]:
    if params.priority == "longest":
        return [(key, "ascending"), ("_len", "descending"), ("doc_id", "ascending")]
    if params.priority == "lowest_doc_id":
        return [(key, "ascending"), ("doc_id", "ascending")]
    p = params.survivor
    return [(key, "ascending"), (p.column, "descending" if p.descending else "ascending"), ("doc_id", "ascending")]


def _first_per_group(t: pa.Table, key: str, params: ExactDedupParams) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """For rows with a non-null key: (doc_id, winner doc_id of its group, is_winner)."""
    t = t.filter(pc.is_valid(t.column(key)))
    if t.num_rows == 0:
        return pa.array([], pa.string()), pa.array([], pa.string()), np.zeros(0, bool)
    s = t.sort_by(_order(t, key, params))
    k = s.column(key).to_numpy(zero_copy_only=False)
    first = np.ones(len(k), dtype=bool)
    first[1:] = k[1:] != k[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))
    ids = s.column("doc_id").combine_chunks()
    return ids, ids.take(pa.array(group_start)), first


def exact_dedup_keepers(hashes: pa.Table, params: ExactDedupParams) -> pa.Table:
    """Test oracle: the ``exact_dedup_keepers`` stage (``exact_dedup_sql``) as an Arrow sort + group-first.

    Global keep-first step over (doc_id, ed_*_hash, priority input[, keep]); returns duplicates only:
    (doc_id, ed_keep=False, ed_duplicate_of, ed_reason) — absent docs are kept."""
    cols = {"doc_id": hashes.column(params.doc_id_column).cast(pa.string())}
    for key in params.keys:
        cols[key] = hashes.column(f"ed_{key}_hash")
    if params.priority == "longest":
        if LENGTH_COLUMN in hashes.column_names:
            cols["_len"] = hashes.column(LENGTH_COLUMN)
        else:
            cols["_len"] = pc.utf8_length(hashes.column(params.text_column))
        cols["_len"] = pc.fill_null(cols["_len"], -1)
    elif params.priority != "lowest_doc_id":
        column = params.survivor.column
        cols[column] = hashes.column(column)
    t = pa.table(cols)
    if params.only_kept and "keep" in hashes.column_names:
        t = t.filter(pc.fill_null(hashes.column("keep"), False))
    dup_ids, dup_of, reasons = [], [], []
    for key in params.keys:  # sequential: each key only among the survivors of the previous one
        ids, winner, first = _first_per_group(t, key, params)
        # a row with the winner's own doc_id is the winner again (an input read twice), never its duplicate
        losers = ~first & pc.not_equal(ids, winner).to_numpy(zero_copy_only=False)
        if losers.any():
            mask = pa.array(losers)
            dup_ids.append(ids.filter(mask))
            dup_of.append(winner.filter(mask))
            reasons.append(pa.array([f"ed_{key}_duplicate"] * int(losers.sum()), pa.string()))
            t = t.filter(pc.invert(pc.is_in(t.column("doc_id"), value_set=ids.filter(mask))))
    if not dup_ids:
        return KEEPERS_SCHEMA.empty_table()
    n = sum(len(a) for a in dup_ids)
    return pa.table(
        [
            pa.concat_arrays(dup_ids),
            pa.array(np.zeros(n, bool)),
            pa.concat_arrays(dup_of),
            pa.concat_arrays(reasons),
        ],
        schema=KEEPERS_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------------- minhash dedup


def _priority_sort_keys(params: MinhashDedupParams) -> list[tuple[str, str]]:
    if params.priority == "longest":
        return [("_len", "descending"), ("doc_id", "ascending")]
    if params.priority == "lowest_doc_id":
        return [("doc_id", "ascending")]
    p = params.survivor
    return [(p.column, "descending" if p.descending else "ascending"), ("doc_id", "ascending")]


def select_cluster_keepers(members: pa.Table, params: MinhashDedupParams) -> pa.Table:
    """Test oracle: the keepers part of the ``minhash_clusters`` stage (``tasks.dedup.minhash_sql``) in Arrow.

    One survivor per cluster. `members`: doc_id, cluster_id and the priority input (`text`, a text-length
    column `text_length`, or the `<column>` of `priority`). Returns (doc_id, cluster_id, cluster_size, keep)."""
    if members.num_rows == 0:
        return CLUSTERS_SCHEMA.empty_table()
    cols = {"doc_id": members.column("doc_id"), "cluster_id": members.column("cluster_id")}
    if params.priority == "longest":
        if "text_length" in members.column_names:
            cols["_len"] = members.column("text_length")
        elif params.text_column in members.column_names:
            cols["_len"] = pc.utf8_length(members.column(params.text_column))
        else:
            raise ValueError("priority 'longest' needs a `text` or `text_length` column in members")
        cols["_len"] = pc.fill_null(cols["_len"], -1)
    elif params.priority != "lowest_doc_id":
        column = params.survivor.column
        if column not in members.column_names:
            raise ValueError(f"priority column {column!r} missing from members")
        cols[column] = members.column(column)
    t = pa.table(cols)
    # nulls sort last in both orders (pyarrow default), so a doc without a score never beats one with a score
    order = t.sort_by([("cluster_id", "ascending"), *_priority_sort_keys(params)])
    repeat = later_repeats(order.column("doc_id"))
    if repeat.any():  # one doc_id is one document: its best row stands for it, so it is never its own duplicate
        order = order.filter(pa.array(~repeat))
    cid = order.column("cluster_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(cid), dtype=bool)
    first[1:] = cid[1:] != cid[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(cid)))
    size = np.repeat(sizes, sizes)
    return pa.table(
        [order.column("doc_id"), order.column("cluster_id"), pa.array(size, pa.int64()), pa.array(first)],
        schema=CLUSTERS_SCHEMA,
    )
