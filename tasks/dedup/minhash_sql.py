"""MinHash dedup steps 3-5 (buckets, connected components, one survivor per cluster) as DuckDB SQL: the
``minhash_clusters`` stage (kind ``sql``) for data past memory. DuckDB spills its group-bys and joins to disk; the
engine owns the connection, and this module only writes SQL text (it never imports duckdb). The band layout and the
params live in `tasks.dedup.minhash`, with the Arrow test oracles of steps 3 and 4 (`oracle_minhash_buckets`,
`oracle_minhash_clusters`; step 5's is tests/oracles/dedup.py); the tests hold the SQL to the same clusters.
"""

from __future__ import annotations

from typing import Any

from tasks.common.stage import implements
from tasks.dedup.minhash import LENGTH_COLUMN, MinhashDedupParams


def sql_priority(params: MinhashDedupParams, has_length: bool = False) -> tuple[str, str] | None:
    """(aggregate over a doc_id's rows, order) of the survivor priority; None for lowest_doc_id (no input needed).
    Aggregated so that a doc_id listed twice in the docs is still one member (never its own duplicate). has_length:
    the docs carry `mh_text_length` (minhash_signatures writes it): "longest" reads that, not the text."""
    if params.priority == "longest":
        if has_length:
            return f'max(d."{LENGTH_COLUMN}")', "DESC"
        return f'max(length(d."{params.text_column}"))', "DESC"
    if params.priority == "lowest_doc_id":
        return None
    p = params.survivor
    return f'{"max" if p.descending else "min"}(d."{p.column}")', p.order.upper()


def fuzzy_dedup_sql(edges: str, docs: str, params: MinhashDedupParams = MinhashDedupParams(), *,
                    has_length: bool = False) -> dict[str, Any]:  # fmt: skip
    """The SQL of the spill-to-disk variant. `edges`/`docs` are table expressions, e.g. "read_parquet('e/*.parquet')".

    Keys: `pairs` (a list of statements, run in order), `labels_init`, `labels_step`, `changed`, `swap` (run
    `labels_step`+`changed`+`swap` until `changed` returns 0), `clusters`. Result tables: mh_pairs(src, dst),
    mh_labels(node, lbl), mh_clusters(doc_id, cluster_id, cluster_size, keep).
    """
    parts = max(1, int(params.num_partitions))
    # RPv2 run_lsh.py: group by (band, key); every member of a bucket with >1 docs points at the bucket's min id.
    # One key partition at a time (a bucket never spans two): the group-by holds 1/num_partitions of the edges, so
    # its memory stays far below the budget at millions of documents instead of growing with N until it spills.
    per_part = [f"""
INSERT INTO mh_cand
WITH e AS (SELECT band, "key", doc_id FROM {edges} WHERE "key" % {parts} = {p}),
buckets AS (SELECT band, "key", min(doc_id) AS root FROM e GROUP BY band, "key" HAVING count(*) > 1)
SELECT e.doc_id AS src, b.root AS dst FROM e JOIN buckets b USING (band, "key") WHERE e.doc_id <> b.root"""
                for p in range(parts)]
    return {
        "pairs": ["CREATE OR REPLACE TEMP TABLE mh_cand (src VARCHAR, dst VARCHAR)", *per_part,
                  f"""
CREATE OR REPLACE TABLE mh_pairs AS
WITH cand AS (SELECT DISTINCT src, dst FROM mh_cand){_verified_pairs(docs, params)}""", "DROP TABLE mh_cand"],
        "labels_init": """
CREATE OR REPLACE TABLE mh_labels AS
SELECT node, min(lbl) AS lbl FROM (SELECT src AS node, dst AS lbl FROM mh_pairs UNION ALL SELECT dst, dst FROM mh_pairs)
GROUP BY node""",
        # one round of min-label propagation over undirected edges, then one pointer jump (label of the label)
        "labels_step": """
CREATE OR REPLACE TABLE mh_labels_next AS
WITH prop AS (
  SELECT node, min(lbl) AS lbl FROM (
    SELECT node, lbl FROM mh_labels
    UNION ALL SELECT p.src AS node, l.lbl FROM mh_pairs p JOIN mh_labels l ON l.node = p.dst
    UNION ALL SELECT p.dst AS node, l.lbl FROM mh_pairs p JOIN mh_labels l ON l.node = p.src
  ) GROUP BY node)
SELECT p.node, least(p.lbl, coalesce(j.lbl, p.lbl)) AS lbl FROM prop p LEFT JOIN prop j ON j.node = p.lbl""",
        "changed": "SELECT count(*) FROM mh_labels_next n JOIN mh_labels o USING (node) WHERE n.lbl <> o.lbl",
        "swap": "DROP TABLE mh_labels; ALTER TABLE mh_labels_next RENAME TO mh_labels",
        "clusters": _clusters_sql(docs, params, has_length),
    }


def _verified_pairs(docs: str, params: MinhashDedupParams) -> str:
    """The pairs' final SELECT: every candidate, or (verify) those whose signatures agree on >= similarity of their
    values. A doc_id listed twice in the docs is one document: its first signature stands for it."""
    if not params.verify:
        return "\nSELECT src, dst FROM cand"
    d = params.doc_id_column
    return f"""\n, ends AS (SELECT src AS doc_id FROM cand UNION SELECT dst FROM cand),
sig AS (SELECT d."{d}" AS doc_id, first(d.mh_values) AS v FROM {docs} d
        WHERE d."{d}" IN (SELECT doc_id FROM ends) AND d.mh_values IS NOT NULL GROUP BY 1)
SELECT c.src, c.dst FROM cand c JOIN sig a ON a.doc_id = c.src JOIN sig b ON b.doc_id = c.dst
WHERE len(list_filter(list_zip(a.v, b.v), lambda x: x[1] = x[2])) >= {params.similarity!r} * len(a.v)"""


def _clusters_sql(docs: str, params: MinhashDedupParams, has_length: bool = False) -> str:
    priority = sql_priority(params, has_length)
    if priority is None:
        prio_cte, join, order = "", "", "m.doc_id"
    else:
        agg, direction = priority
        prio_cte = (
            f',\np AS (SELECT d."{params.doc_id_column}" AS doc_id, {agg} AS _prio FROM {docs} d '
            f'WHERE d."{params.doc_id_column}" IN (SELECT doc_id FROM m) GROUP BY 1)'
        )
        join, order = " LEFT JOIN p ON p.doc_id = m.doc_id", f"p._prio {direction} NULLS LAST, m.doc_id"
    return f"""
CREATE OR REPLACE TABLE mh_clusters AS
WITH m AS (SELECT node AS doc_id, lbl AS cluster_id FROM mh_labels){prio_cte}
SELECT m.doc_id, m.cluster_id,
       count(*) OVER (PARTITION BY m.cluster_id) AS cluster_size,
       row_number() OVER (PARTITION BY m.cluster_id ORDER BY {order}) = 1 AS keep
FROM m{join}"""


def run_fuzzy_dedup_sql(
    con: Any,
    edges: str,
    docs: str,
    params: MinhashDedupParams = MinhashDedupParams(),
    max_iter: int = 100,
    *,
    has_length: bool = False,
) -> int:
    """Run `fuzzy_dedup_sql` on a DB-API-like connection (DuckDB: `con.execute(sql).fetchone()`); returns rounds.

    Leaves `mh_clusters` in the connection; the engine COPYs it to Parquet and joins it back (or calls
    `minhash_filter(batch, params, clusters=...)`). Set DuckDB's `temp_directory`/`memory_limit` to spill.
    """
    sql = fuzzy_dedup_sql(edges, docs, params, has_length=has_length)
    for stmt in sql["pairs"]:
        con.execute(stmt)
    rounds = propagate_labels(con, sql, max_iter)
    con.execute(sql["clusters"])
    return rounds


def propagate_labels(con, sql: dict, max_iter: int = 100) -> int:
    """Min-label propagation over `mh_pairs` (the statements of `fuzzy_dedup_sql`) until no label changes; returns
    the rounds it took."""
    con.execute(sql["labels_init"])
    for rounds in range(1, max_iter + 1):  # noqa: B007 (returned after the loop)
        con.execute(sql["labels_step"])
        changed = con.execute(sql["changed"]).fetchone()[0]
        for stmt in sql["swap"].split(";"):
            con.execute(stmt)
        if changed == 0:
            break
    else:
        raise RuntimeError(f"label propagation did not converge in {max_iter} rounds")
    return rounds


def clusters_reads(params: MinhashDedupParams, available: list[str]) -> list[str]:
    """The columns `minhash_clusters_duckdb` reads, both roles: the edges' bucket columns; of the documents the ids,
    the survivor priority's input (`sql_priority`) and, with verify, the values. Undeclared, the docs role joined
    every layer of the chain on 2M rows only to read the text."""
    cols = ["band", "key", params.doc_id_column]
    cols += params.survivor.input_columns(params.text_column, LENGTH_COLUMN, available)
    return cols + (["mh_values"] if params.verify else [])


@implements("minhash_clusters")
def minhash_clusters_duckdb(con: Any, exprs: dict[str, str], params: MinhashDedupParams, columns: dict[str, list[str]]) -> str:
    """The ``minhash_clusters`` stage (kind ``sql``): buckets -> connected components -> keepers, in DuckDB."""
    if params.verify and "mh_values" not in columns.get("docs", ["mh_values"]):
        raise ValueError("minhash_dedup verify: true needs the documents' `mh_values` (minhash_signatures writes them; "
                         "stored RPv2 band keys alone cannot be re-checked)")
    has_length = LENGTH_COLUMN in columns.get("docs", [])
    run_fuzzy_dedup_sql(con, exprs["edges"], exprs["docs"], params, has_length=has_length)
    return "mh_clusters"
