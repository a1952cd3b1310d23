"""Incremental (cross-batch) exact and MinHash dedup: a new batch is deduplicated against every earlier batch through
persistent indexes, at the cost of the new batch and the index, never the corpus (issue 30).

Each index is a committed version (``{dataset}/xb_exact_index``, ``{dataset}/xb_minhash_index``) whose parents are
the batch's dedup outputs and the previous index: the previous rows plus this batch's, ordered by a hash-prefix
partition (``part``) so each lookup pass reads the row groups of one partition (Parquet min/max statistics).
A batch that fails commits no index; the next run recomputes it from the same inputs (stages are content-addressed).

Semantics are those of one run over the union with a "first batch wins" survivor priority: an earlier batch's
document always survives (published batches are immutable), ties inside a batch follow the recipe's priority.

* exact: per key (URL, then text) the index holds every hash an earlier document entered that key's pass with, and
  the pass's winner; a new document whose hash is there is its duplicate (`ed_duplicate_of` = the earlier winner,
  `ed_duplicate_batch` = its batch); the others are grouped among themselves as in `exact_dedup_sql`.
* MinHash: the index holds the LSH band keys of every earlier document that entered MinHash dedup (survivors and
  the duplicates they absorbed, so a chain through a dropped copy still matches, as in one connected-components
  run), each with its cluster's survivor and batch. A new document sharing a bucket with an earlier one joins that
  survivor's component: every new member is dropped (`mh_cluster_id` = the earlier survivor, `mh_duplicate_batch`).
  The one difference from a union run: a new document bridging two earlier clusters does not merge them (both
  earlier survivors stay published).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.common.stage import implements
from tasks.dedup.exact import LENGTH_COLUMN as ED_LENGTH
from tasks.dedup.exact import ExactDedupParams
from tasks.dedup.minhash import LENGTH_COLUMN as MH_LENGTH
from tasks.dedup.minhash import MinhashDedupParams
from tasks.dedup.minhash_sql import fuzzy_dedup_sql, propagate_labels, sql_priority

HEX_PARTS = 16  # exact index partitions: the first hex digit of the (sha1) hash
EXACT_INDEX = ("part", "key_kind", "hash", "winner", "batch")
MINHASH_INDEX = ("part", "band", "key", "survivor", "batch")
_EARLIER = "chr(1)"  # prefix of an earlier survivor's node in the component graph: sorts before every doc_id


@dataclass(frozen=True, kw_only=True, slots=True)
class IncrementalParams:
    """A dedup section's params plus the batch being curated (its ingest version), which index rows name."""

    dedup: Any  # ExactDedupParams | MinhashDedupParams
    batch: str


def _prior(exprs: dict[str, str], names: tuple[str, ...], types: tuple[str, ...]) -> str:
    if "prior" in exprs:
        return exprs["prior"]
    cols = ", ".join(f"NULL::{t} AS {n}" for n, t in zip(names, types, strict=True))
    return f"(SELECT {cols} WHERE false)"


def _exact_prior(exprs: dict[str, str]) -> str:
    return _prior(exprs, EXACT_INDEX, ("INTEGER", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR"))


def _hex_part(col: str) -> str:
    return f"(position(substr({col}, 1, 1) in '0123456789abcdef') - 1)"


# ---------------------------------------------------------------------------------------------------------------------
# exact
# ---------------------------------------------------------------------------------------------------------------------


def exact_reads(params: IncrementalParams, available: list[str]) -> list[str]:
    p: ExactDedupParams = params.dedup
    cols = [p.doc_id_column, "keep", "drop_reason", *(f"ed_{k}_hash" for k in p.keys)]
    return cols + p.survivor.input_columns(p.text_column, ED_LENGTH, available) + list(EXACT_INDEX)


@implements("xb_exact_keepers")
def xb_exact_keepers(con: Any, exprs: dict[str, str], params: IncrementalParams, columns: dict[str, list[str]]) -> str:
    """`exact_dedup_sql` with the index: per key and hash partition, a new document whose hash an earlier batch
    holds is that winner's duplicate; the rest rank among themselves. Leaves ``ed_keepers`` (+ ed_duplicate_batch)."""
    p: ExactDedupParams = params.dedup
    cols = columns["hashes"]
    if p.priority == "longest":
        prio = f"{ED_LENGTH if ED_LENGTH in cols else 'length(' + repr(p.text_column) + ')'} DESC NULLS LAST, doc_id"
    elif p.priority == "lowest_doc_id":
        prio = "doc_id"
    else:
        prio = f'"{p.survivor.column}" {p.survivor.order.upper()} NULLS LAST, doc_id'
    keep = "AND coalesce(x.keep, false)" if p.only_kept and "keep" in cols else ""
    rename = "" if p.doc_id_column == "doc_id" else f', x."{p.doc_id_column}"::VARCHAR AS doc_id'
    docs, prior = exprs["hashes_in_order"], _exact_prior(exprs)
    con.execute("CREATE OR REPLACE TEMP TABLE ed_keepers (doc_id VARCHAR, ed_keep BOOLEAN, ed_duplicate_of VARCHAR, "
                "ed_reason VARCHAR, ed_duplicate_batch VARCHAR)")
    con.execute("CREATE OR REPLACE TEMP TABLE ed_gone (__shard VARCHAR, __row BIGINT)")
    for key in p.keys:
        h = f"ed_{key}_hash"
        for part in range(HEX_PARTS):
            con.execute(f"""
CREATE OR REPLACE TEMP TABLE ed_d AS
SELECT x.*{rename} FROM {docs} x ANTI JOIN ed_gone g ON g.__shard = x.__shard AND g.__row = x.__row
WHERE x.{h} IS NOT NULL {keep} AND {_hex_part('x.' + h)} = {part}""")
            # an earlier batch's winner: one lookup in this key's partition of the index
            con.execute(f"""
CREATE OR REPLACE TEMP TABLE ed_x AS
SELECT d.doc_id, d.__shard, d.__row, i.winner, i.batch FROM ed_d d
JOIN (SELECT hash, winner, batch FROM {prior} WHERE part = {part} AND key_kind = '{key}') i ON i.hash = d.{h}""")
            con.execute(f"INSERT INTO ed_keepers SELECT doc_id, false, winner, 'ed_{key}_duplicate', batch FROM ed_x")
            con.execute(f"""
CREATE OR REPLACE TEMP TABLE ed_ranked AS
WITH d AS (SELECT * FROM ed_d ANTI JOIN ed_x USING (__shard, __row)),
m AS (SELECT {h} FROM d GROUP BY 1 HAVING count(*) > 1)
SELECT doc_id, __shard, __row, first_value(doc_id) OVER w AS _winner, row_number() OVER w AS _rn
FROM d WHERE {h} IN (SELECT {h} FROM m) WINDOW w AS (PARTITION BY {h} ORDER BY {prio})""")
            con.execute(f"INSERT INTO ed_keepers SELECT doc_id, false, _winner, 'ed_{key}_duplicate', NULL "
                        "FROM ed_ranked WHERE _rn > 1 AND doc_id <> _winner")
            con.execute("INSERT INTO ed_gone SELECT __shard, __row FROM ed_ranked WHERE _rn > 1 "
                        "UNION ALL SELECT __shard, __row FROM ed_x")
    for t in ("ed_d", "ed_x", "ed_ranked", "ed_gone"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return "ed_keepers"


def exact_index_reads(params: IncrementalParams, available: list[str]) -> list[str]:
    p: ExactDedupParams = params.dedup
    return [p.doc_id_column, "keep", "drop_reason", "drop_stage", *(f"ed_{k}_hash" for k in p.keys), *EXACT_INDEX]


@implements("xb_exact_index")
def xb_exact_index(con: Any, exprs: dict[str, str], params: IncrementalParams, columns: dict[str, list[str]]) -> str:
    """The previous index plus this batch's winners per key: a document that entered the key's pass (kept before
    exact dedup, or dropped by it) and did not lose it. Their hashes are new (a known one would have lost)."""
    p: ExactDedupParams = params.dedup
    entered = "(coalesce(d.keep, false) OR d.drop_stage = 'exact_dedup')" if p.only_kept else "true"
    lost = []
    selects = []
    for key in p.keys:
        lost.append(f"'ed_{key}_duplicate'")
        h = f"d.ed_{key}_hash"
        selects.append(f"""
SELECT {_hex_part(h)}::INTEGER AS part, '{key}' AS key_kind, {h} AS hash, d."{p.doc_id_column}"::VARCHAR AS winner,
       '{params.batch}' AS batch
FROM {exprs['docs']} d WHERE {entered} AND {h} IS NOT NULL
  AND coalesce(d.drop_reason NOT IN ({', '.join(lost)}, 'ed_repeated_doc_id'), true)""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE xb_exact AS
SELECT * FROM (SELECT {', '.join(EXACT_INDEX)} FROM {_exact_prior(exprs)} UNION ALL {' UNION ALL '.join(selects)})
ORDER BY key_kind, part, hash""")
    return "xb_exact"


# ---------------------------------------------------------------------------------------------------------------------
# MinHash
# ---------------------------------------------------------------------------------------------------------------------


def _minhash_prior(exprs: dict[str, str]) -> str:
    return _prior(exprs, MINHASH_INDEX, ("INTEGER", "INTEGER", "UBIGINT", "VARCHAR", "VARCHAR"))


def minhash_reads(params: IncrementalParams, available: list[str]) -> list[str]:
    p: MinhashDedupParams = params.dedup
    cols = ["band", "key", "part", p.doc_id_column]
    return cols + p.survivor.input_columns(p.text_column, MH_LENGTH, available) + list(MINHASH_INDEX)


@implements("xb_minhash_clusters")
def xb_minhash_clusters(con: Any, exprs: dict[str, str], params: IncrementalParams,
                        columns: dict[str, list[str]]) -> str:
    """Buckets of the new edges plus, per partition, the new edges' matches in the index (new doc -> earlier
    survivor node), connected components, then one survivor per component: an earlier survivor when the component
    holds one (every new member dropped), else the recipe's priority. Leaves ``mh_clusters``."""
    p: MinhashDedupParams = params.dedup
    if p.verify:
        raise ValueError("minhash_dedup verify: true is not available incrementally (the index keeps band keys, "
                         "not the earlier documents' signatures)")
    parts = max(1, int(p.num_partitions))
    edges, docs, prior = exprs["edges"], exprs["docs"], _minhash_prior(exprs)
    con.execute("CREATE OR REPLACE TEMP TABLE mh_cand (src VARCHAR, dst VARCHAR)")
    for part in range(parts):
        con.execute(f"""
INSERT INTO mh_cand
WITH e AS (SELECT band, "key", doc_id FROM {edges} WHERE "key" % {parts} = {part}),
buckets AS (SELECT band, "key", min(doc_id) AS root FROM e GROUP BY band, "key" HAVING count(*) > 1)
SELECT e.doc_id, b.root FROM e JOIN buckets b USING (band, "key") WHERE e.doc_id <> b.root
UNION ALL
SELECT DISTINCT e.doc_id, {_EARLIER} || i.survivor FROM e
JOIN (SELECT band, "key", survivor FROM {prior} WHERE part = {part}) i USING (band, "key")""")
    con.execute("CREATE OR REPLACE TABLE mh_pairs AS SELECT DISTINCT src, dst FROM mh_cand")
    con.execute("DROP TABLE mh_cand")
    propagate_labels(con, fuzzy_dedup_sql(edges, docs, p))
    priority = sql_priority(p, MH_LENGTH in columns.get("docs", []))
    if priority is None:
        prio_cte, join, order = "", "", "m.doc_id"
    else:
        agg, direction = priority
        prio_cte = (f',\np AS (SELECT d."{p.doc_id_column}" AS doc_id, {agg} AS _prio FROM {docs} d '
                    f'WHERE d."{p.doc_id_column}" IN (SELECT doc_id FROM m) GROUP BY 1)')
        join, order = " LEFT JOIN p ON p.doc_id = m.doc_id", f"p._prio {direction} NULLS LAST, m.doc_id"
    con.execute(f"""
CREATE OR REPLACE TABLE mh_clusters AS
WITH m AS (SELECT node AS doc_id, lbl AS cluster_id FROM mh_labels WHERE NOT starts_with(node, {_EARLIER})){prio_cte},
b AS (SELECT DISTINCT survivor, batch FROM {prior}),
r AS (SELECT m.doc_id, m.cluster_id, count(*) OVER (PARTITION BY m.cluster_id) AS n,
             row_number() OVER (PARTITION BY m.cluster_id ORDER BY {order}) AS rn,
             first_value(m.doc_id) OVER (PARTITION BY m.cluster_id ORDER BY {order}) AS best
      FROM m{join})
SELECT r.doc_id,
       CASE WHEN starts_with(r.cluster_id, {_EARLIER}) THEN substr(r.cluster_id, 2) ELSE r.cluster_id END AS cluster_id,
       r.n + CASE WHEN starts_with(r.cluster_id, {_EARLIER}) THEN 1 ELSE 0 END AS cluster_size,
       NOT starts_with(r.cluster_id, {_EARLIER}) AND r.rn = 1 AS keep,
       CASE WHEN starts_with(r.cluster_id, {_EARLIER}) THEN substr(r.cluster_id, 2) ELSE r.best END AS survivor,
       b.batch AS mh_duplicate_batch
FROM r LEFT JOIN b ON starts_with(r.cluster_id, {_EARLIER}) AND b.survivor = substr(r.cluster_id, 2)""")
    return "mh_clusters"


def minhash_index_reads(params: IncrementalParams, available: list[str]) -> list[str]:
    return ["part", "band", "key", "doc_id", "survivor", "mh_duplicate_batch", *MINHASH_INDEX]


@implements("xb_minhash_index")
def xb_minhash_index(con: Any, exprs: dict[str, str], params: IncrementalParams, columns: dict[str, list[str]]) -> str:
    """The previous index plus the band keys of every new document that entered MinHash dedup (one row per distinct
    (band, key, survivor): the copies of one page mostly share their bands), each naming its survivor and batch."""
    p: MinhashDedupParams = params.dedup
    parts = max(1, int(p.num_partitions))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE xb_mh AS
SELECT * FROM (
  SELECT {', '.join(MINHASH_INDEX)} FROM {_minhash_prior(exprs)}
  UNION ALL
  SELECT DISTINCT ("key" % {parts})::INTEGER AS part, e.band, e."key", coalesce(c.survivor, e.doc_id) AS survivor,
         coalesce(c.mh_duplicate_batch, '{params.batch}') AS batch
  FROM {exprs['edges']} e LEFT JOIN {exprs['clusters']} c ON c.doc_id = e.doc_id)
ORDER BY part, band, "key\"""")
    return "xb_mh"


def run_section(stage: Any, name: str, docs: Any, params: Any, profile: Any, prior: dict, batch: str) -> Any:
    """The exact_dedup / minhash_dedup section of one batch, against `prior[name]` (the index after the earlier
    batches, None for the first); sets `prior[name]` to the index after this batch and returns the filtered docs.
    ``stage(name, inputs, params, profile)`` runs one registry stage (flows/run.py's Prefect task)."""
    xp = IncrementalParams(dedup=params, batch=batch)
    if name == "exact_dedup":
        hashes = stage("exact_dedup_hashes", [docs], params, profile)
        keepers = prior["xb_exact_keepers"] = stage("xb_exact_keepers", [hashes, prior.get(name)], xp, profile)
        out = stage("exact_dedup", [hashes, keepers], params, profile)
        prior[name] = stage("xb_exact_index", [out, prior.get(name)], xp, profile)
        return out
    edges = stage("minhash_edges", [docs], params, profile)
    clusters = prior["xb_minhash_clusters"] = stage("xb_minhash_clusters", [edges, docs, prior.get(name)], xp, profile)
    out = stage("minhash_dedup", [docs, clusters], params, profile)
    prior[name] = stage("xb_minhash_index", [edges, clusters, prior.get(name)], xp, profile)
    return out


INCREMENTAL = ("exact_dedup", "minhash_dedup")  # the sections that match a batch against the earlier ones


# ---------------------------------------------------------------------------------------------------------------------
# the union: one row per curated batch (the ``corpus`` stage; catalog views {dataset}__corpus_docs read every batch)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class CorpusParams:
    batch: str  # the batch's ingest version
    documents: int  # its ingested documents
    cross_batch_duplicates: int  # of them, dropped as copies of an earlier batch's documents
    exact_index: str | None = None  # the indexes after this batch: the next batch starts from them
    minhash_index: str | None = None
    union_views: bool = True  # the catalog's {dataset}__corpus_docs / __batch_<n> views read the version_ref column


def corpus_schema():
    import pyarrow as pa

    return pa.schema([("batch_no", pa.int32()), ("batch", pa.string()), ("version_ref", pa.string()),
                      ("documents", pa.int64()), ("kept", pa.int64()), ("cross_batch_duplicates", pa.int64()),
                      ("corpus_kept", pa.int64()), ("exact_index", pa.string()), ("minhash_index", pa.string())])


@implements("corpus")
def corpus_stage(tables: dict, params: CorpusParams, ctx: Any) -> Any:
    """The previous batches' rows plus this batch's: its curated version, sizes, and the corpus size after it. Its
    parents (the curated batch and the previous corpus) keep every batch alive through gc, as watch_state does."""
    import pyarrow as pa

    schema = corpus_schema()
    previous = tables["previous"].cast(schema) if "previous" in tables else schema.empty_table()
    curated, kept = ctx.input_ref("batch"), ctx.input_manifest("batch")["num_rows"]
    before = previous.column("corpus_kept")[-1].as_py() if previous.num_rows else 0
    row = {"batch_no": previous.num_rows + 1, "batch": params.batch, "version_ref": curated, "documents": params.documents,
           "kept": kept, "cross_batch_duplicates": params.cross_batch_duplicates,
           "corpus_kept": before + kept, "exact_index": params.exact_index, "minhash_index": params.minhash_index}
    return pa.concat_tables([previous, pa.Table.from_pylist([row], schema=schema)])
