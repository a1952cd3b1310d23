"""A DuckDB catalog over versioned Parquet: files are the truth, the catalog is rebuilt from manifests.

    from storage import catalog
    con = catalog.connect("data")            # in-memory DuckDB
    con.sql("select * from versions").show()
    con.sql("select count(*) from tiny__ingest").show()

* ``versions``: one row per committed version (dataset, stage, version, parents, num_rows, created_at, params, ...).
* ``{dataset}__{stage}``: a view over the latest committed version, reading exactly the files its manifest lists,
  so a stage that is still writing (no manifest yet) is invisible: the catalog works read-only during a flow.
* ``{dataset}__quarantine``: the union of every ``*_quarantine`` side output of the latest versions.
* ``lineage(con, ref)``: which versions a version came from (recursive over ``parents``).

Remote roots (s3://, gs://, memory://) are reached through fsspec (``register_filesystem``), because DuckDB's
httpfs extension cannot be installed offline.
"""

from __future__ import annotations

import json
import re
import warnings

import duckdb
import pyarrow as pa

from storage import datasets

_IDENT_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _quote_list(uris: list[str]) -> str:
    return "[" + ", ".join("'" + u.replace("'", "''") + "'" for u in uris) + "]"


def _register_fs(con: duckdb.DuckDBPyConnection, root: str) -> None:
    fs, _ = datasets.filesystem(root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        con.register_filesystem(fs)


def versions_table(root: str) -> pa.Table:
    rows = []
    for m in datasets.iter_manifests(root):
        rows.append(
            {
                "dataset": m["dataset"],
                "stage": m["stage"],
                "version": m["version"],
                "ref": f"{m['dataset']}/{m['stage']}/{m['version']}",
                "uri": m.get("uri"),
                "parents": list(m.get("parents", [])),
                "num_rows": int(m.get("num_rows", 0)),
                "num_files": len(m.get("files", [])),
                "created_at": m.get("created_at"),
                "code_hash": m.get("code_hash"),
                "git_commit": m.get("git_commit"),
                "params": json.dumps(m.get("params")),
                "stats": json.dumps(m.get("stats")) if m.get("stats") is not None else None,
                "files": [datasets._join(m["uri"], f["name"]) for f in m.get("files", [])],
            }
        )
    schema = pa.schema(
        [
            ("dataset", pa.string()),
            ("stage", pa.string()),
            ("version", pa.string()),
            ("ref", pa.string()),
            ("uri", pa.string()),
            ("parents", pa.list_(pa.string())),
            ("num_rows", pa.int64()),
            ("num_files", pa.int64()),
            ("created_at", pa.string()),
            ("code_hash", pa.string()),
            ("git_commit", pa.string()),
            ("params", pa.string()),
            ("stats", pa.string()),
            ("files", pa.list_(pa.string())),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def connect(root: str | None = None, database: str = ":memory:", *, sandbox: bool = False) -> duckdb.DuckDBPyConnection:
    """Open DuckDB with the ``versions`` table and one view per dataset/stage over its latest committed version.

    ``sandbox=True`` gives a connection that cannot read or write arbitrary files or attach databases once the
    catalog is built: for user-supplied SQL (filters, dashboards), which is data, not code.
    """
    root = root or datasets.default_root()
    con = duckdb.connect(database)
    _register_fs(con, root)
    files = refresh(con, root)
    if sandbox:
        # Only the committed shard files behind the views stay readable; nothing can be written or attached.
        con.execute(f"SET allowed_paths = {_quote_list(files)}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def refresh(con: duckdb.DuckDBPyConnection, root: str) -> list[str]:
    """(Re)build ``versions`` and the views from the manifests under ``root``; returns the files the views read."""
    table = versions_table(root)
    con.register("_versions_arrow", table)
    con.execute("CREATE OR REPLACE TABLE versions AS SELECT * FROM _versions_arrow")
    con.unregister("_versions_arrow")
    latest: dict[tuple[str, str], dict] = {}
    for row in table.to_pylist():
        key = (row["dataset"], row["stage"])
        if key not in latest or row["created_at"] > latest[key]["created_at"]:
            latest[key] = row
    quarantines: dict[str, list[str]] = {}
    files: list[str] = []
    for (dataset, stage), row in sorted(latest.items()):
        if not (_IDENT_RE.match(dataset) and _IDENT_RE.match(stage)):
            continue
        view = f"{dataset}__{stage}"
        if row["files"]:
            try:
                con.execute(
                    f'CREATE OR REPLACE VIEW "{view}" AS SELECT * FROM read_parquet({_quote_list(row["files"])}, '
                    "union_by_name=true)"
                )
            except duckdb.Error as e:  # one unreadable version must not take the whole catalog down
                warnings.warn(f"catalog: no view {view} for {row['ref']}: {e}", stacklevel=2)
                continue
            files.extend(row["files"])
            if stage.endswith("_quarantine"):
                quarantines.setdefault(dataset, []).append(view)
        else:
            con.execute(f'CREATE OR REPLACE VIEW "{view}" AS SELECT NULL AS empty WHERE false')
    for dataset, views in quarantines.items():
        union = " UNION ALL BY NAME ".join(f'SELECT * FROM "{v}"' for v in views)
        con.execute(f'CREATE OR REPLACE VIEW "{dataset}__quarantine" AS {union}')
    return files


LINEAGE_SQL = """
WITH RECURSIVE lineage(ref, depth) AS (
    SELECT ?::VARCHAR, 0
    UNION
    SELECT p.parent, l.depth + 1
    FROM lineage l
    JOIN (SELECT ref, unnest(parents) AS parent FROM versions) p ON p.ref = l.ref
)
SELECT l.depth, l.ref, v.stage, v.num_rows, v.created_at
FROM lineage l LEFT JOIN versions v USING (ref)
ORDER BY l.depth, l.ref
"""


def lineage(con: duckdb.DuckDBPyConnection, ref: str | datasets.DatasetRef) -> pa.Table:
    """Every version ``ref`` was derived from (depth 0 is ``ref`` itself)."""
    # a cursor (same database) so a caller's half-fetched result on ``con`` does not block this query (DuckDB 2)
    return con.cursor().sql(LINEAGE_SQL, params=[str(ref)]).to_arrow_table()


def query(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run SQL and return an Arrow table."""
    result = con.cursor().sql(sql)
    if result is None:
        return pa.table({})
    return result.to_arrow_table()


def scratch(root: str, *, temp_directory: str | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for engine-side global SQL (dedup group-bys) that spills to disk past ``memory_limit``."""
    con = duckdb.connect()
    _register_fs(con, root)
    if temp_directory:
        con.execute(f"SET temp_directory = '{temp_directory}'")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")  # lets big group-bys/sorts stream and spill
    return con


def parquet_expr(files: list[str]) -> str:
    """A ``read_parquet([...])`` table expression over an explicit file list (a manifest's files)."""
    return f"read_parquet({_quote_list(files)}, union_by_name=true)"
