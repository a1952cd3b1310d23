"""A DuckDB catalog over versioned Parquet: files are the truth, the catalog is rebuilt from manifests.

    from storage import catalog
    con = catalog.connect("data")            # in-memory DuckDB
    con.sql("select * from versions").show()
    con.sql("select count(*) from tiny__ingest").show()

* ``versions``: one row per committed version (dataset, stage, version, parents, num_rows, ``created_at``
  TIMESTAMPTZ, ``params``/``stats``/``run`` JSON, and the run that made it: ``flow_run_id``, ``deployment``,
  ``ray_job_id``, ``recipe``, ``recipe_hash``, ``run_url``).
* ``{dataset}__{stage}``: a view over the current version - the one the dataset/stage's pointer names
  (storage/pointers.py: moved by every run that commits or reuses a version), else, on a root from before pointers,
  the newest created_at - reading exactly the files its manifest lists, so a stage that is still writing (no
  manifest yet) is invisible: the catalog works read-only during a flow.
* ``pointers``: the current version of every dataset/stage and the move that set it (``reason`` commit / reuse /
  adopt, or ``newest`` for the fallback; ``run_id``, ``flow_run_name``, ``recipe``, ``recipe_hash``, ``moved_at``);
  ``pointer_history``: every move, oldest first (``select * from pointer_history where dataset = 'tiny'``).
* ``"{dataset}__{stage}@{version}"``: one pinned version (quoted: ``@`` is not an identifier character), created
  when a query names it (``query`` / ``pin_versions``); a unique prefix of the version is enough.
* ``{dataset}__quarantine``: the union of every ``*_quarantine`` side output of the latest versions.
* ``lineage(con, ref)``: which versions a version came from (recursive over ``parents``), once per version.

Remote roots (s3://, gs://, memory://) are reached through fsspec (``register_filesystem``), because DuckDB's
httpfs extension cannot be installed offline.
"""

from __future__ import annotations

import json
import re
import warnings

import duckdb
import pyarrow as pa

from storage import datasets, layers, pointers

_IDENT_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# a pinned view named in SQL: "tiny__ingest@0123456789ab" (quoted), or a unique prefix of the version (>= 4 hex)
_PINNED_RE = re.compile(r'"([a-z][a-z0-9_]*)__([a-z][a-z0-9_]*)@([0-9a-f]{4,12})"')
# the run fields the versions table shows as columns (the whole run context is the `run` JSON column)
RUN_COLUMNS = ("flow_run_id", "flow_run_name", "deployment", "ray_job_id", "recipe", "recipe_hash", "run_url")


def _quote_list(uris: list[str]) -> str:
    return "[" + ", ".join("'" + u.replace("'", "''") + "'" for u in uris) + "]"


def _register_fs(con: duckdb.DuckDBPyConnection, root: str) -> None:
    fs, _ = datasets.filesystem(root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        con.register_filesystem(fs)


def versions_table(root: str, manifests: list[dict] | None = None) -> pa.Table:
    """One row per committed manifest under ``root`` (JSON fields as text; ``refresh`` types them)."""
    rows = []
    for m in datasets.iter_manifests(root) if manifests is None else manifests:
        run = m.get("run") or {}
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
                "run": json.dumps(run) if run else None,
                **{k: run.get(k) for k in RUN_COLUMNS},
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
            ("run", pa.string()),
            *((k, pa.string()) for k in RUN_COLUMNS),
            ("files", pa.list_(pa.string())),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def connect(root: str | None = None, database: str = ":memory:", *, sandbox: bool = False,
            allow_root: bool = False) -> duckdb.DuckDBPyConnection:
    """Open DuckDB with the ``versions`` table and one view per dataset/stage over its latest committed version.

    ``sandbox=True`` gives a connection that cannot read or write arbitrary files or attach databases once the
    catalog is built: for user-supplied SQL (filters, dashboards), which is data, not code. ``allow_root`` also lets
    it read any file under the root (manifests, globs over shards; ``quarry sql``). DuckDB lets an allowed path be
    *written* too (``COPY ... TO`` a committed shard with ``use_tmp_file false`` overwrites it): run user SQL through
    ``check_read_only`` first.
    """
    root = root or datasets.default_root()
    con = duckdb.connect(database)
    _register_fs(con, root)
    refresh(con, root)
    if sandbox:
        # Only committed shard files stay readable (every version's, so pinned views work); nothing can be written
        # or attached.
        files = [r[0] for r in con.execute("SELECT unnest(files) FROM versions").fetchall()]
        con.execute(f"SET allowed_paths = {_quote_list(files)}")
        if allow_root:
            con.execute(f"SET allowed_directories = {_quote_list([root.rstrip('/') + '/'])}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def refresh(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """(Re)build ``versions`` and the views from the manifests under ``root``."""
    manifests = list(datasets.iter_manifests(root))
    by_ref = {f"{m['dataset']}/{m['stage']}/{m['version']}": m for m in manifests}
    table = versions_table(root, manifests)
    con.register("_versions_arrow", table)
    con.execute(
        "CREATE OR REPLACE TABLE versions AS SELECT * REPLACE (created_at::TIMESTAMPTZ AS created_at, "
        "params::JSON AS params, stats::JSON AS stats, run::JSON AS run) FROM _versions_arrow"
    )
    con.unregister("_versions_arrow")
    current = pointers.current(root, manifests)
    _pointer_tables(con, root, current)
    rows = {(r["dataset"], r["stage"], r["version"]): r for r in table.to_pylist()}
    latest = {key: rows[(*key, e["version"])] for key, e in current.items()}
    quarantines: dict[str, list[str]] = {}
    for (dataset, stage), row in sorted(latest.items()):
        if not (_IDENT_RE.match(dataset) and _IDENT_RE.match(stage)):
            continue
        view = f"{dataset}__{stage}"
        if row["files"]:
            try:
                con.execute(f'CREATE OR REPLACE VIEW "{view}" AS {_relation(root, row["ref"], by_ref)}')
            except (duckdb.Error, KeyError, OSError) as e:  # one unreadable version must not take the catalog down
                warnings.warn(f"catalog: no view {view} for {row['ref']}: {e}", stacklevel=2)
                continue
            if stage.endswith("_quarantine"):
                quarantines.setdefault(dataset, []).append(view)
        else:
            con.execute(f'CREATE OR REPLACE VIEW "{view}" AS SELECT NULL AS empty WHERE false')
    for dataset, views in quarantines.items():
        union = " UNION ALL BY NAME ".join(f'SELECT * FROM "{v}"' for v in views)
        con.execute(f'CREATE OR REPLACE VIEW "{dataset}__quarantine" AS {union}')
    _corpus_views(con, root, latest, by_ref)


def _corpus_views(con: duckdb.DuckDBPyConnection, root: str, latest: dict, by_ref: dict) -> None:
    """A table of versions (params ``union_views``: one row per part, ``batch_no`` and ``version_ref``, e.g. a living
    corpus's batches, issue 30) gives ``{dataset}__corpus_docs``, the union of those versions with ``batch_no``, and
    ``{dataset}__batch_<n>``, one of them."""
    for (dataset, _), row in sorted(latest.items()):
        manifest = by_ref.get(row["ref"]) or {}
        if not (manifest.get("params") or {}).get("union_views") or not _IDENT_RE.match(dataset) or not row["files"]:
            continue
        try:
            parts_table = datasets.read_table(datasets.ref_from_string(root, row["ref"]), ["batch_no", "version_ref"])
            parts = []
            for no, ref in zip(*(parts_table.column(c).to_pylist() for c in ("batch_no", "version_ref")), strict=True):
                rel = f"SELECT *, {int(no)} AS batch_no FROM ({_relation(root, ref, by_ref)})"
                con.execute(f'CREATE OR REPLACE VIEW "{dataset}__batch_{int(no)}" AS {rel}')
                parts.append(rel)
            con.execute(f'CREATE OR REPLACE VIEW "{dataset}__corpus_docs" AS {" UNION ALL BY NAME ".join(parts)}')
        except (duckdb.Error, KeyError, OSError) as e:  # one unreadable part must not take the catalog down
            warnings.warn(f"catalog: no union views for {row['ref']}: {e}", stacklevel=2)


POINTER_COLUMNS = ("dataset", "stage", "version", "reason", "moved_at", "run_id", "pid", "host", "flow_run_id",
                   "flow_run_name", "recipe", "recipe_hash")


def _pointer_tables(con: duckdb.DuckDBPyConnection, root: str, current: dict) -> None:
    """``pointers`` (the current version of each dataset/stage and why) and ``pointer_history`` (every move)."""
    schema = pa.schema([(c, pa.int64() if c == "pid" else pa.string()) for c in POINTER_COLUMNS])
    for name, entries in (("pointers", list(current.values())), ("pointer_history", pointers.history(root))):
        arrow = pa.Table.from_pylist([{c: e.get(c) for c in POINTER_COLUMNS} for e in entries], schema=schema)
        con.register("_pointers_arrow", arrow)
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * REPLACE (moved_at::TIMESTAMPTZ AS moved_at) "
                    "FROM _pointers_arrow ORDER BY moved_at NULLS FIRST, dataset, stage")
        con.unregister("_pointers_arrow")


# every ancestor once, at its shortest distance (a version reached along two paths, e.g. dedup's side inputs, is
# still one row), with its parents, so the DAG reads from the rows
LINEAGE_SQL = """
WITH RECURSIVE edges AS (
    SELECT ref, unnest(parents) AS parent FROM versions
), lineage(ref, depth) AS (
    SELECT ?::VARCHAR, 0
    UNION
    SELECT e.parent, l.depth + 1 FROM lineage l JOIN edges e ON e.ref = l.ref
), nearest AS (
    SELECT ref, min(depth) AS depth FROM lineage GROUP BY ref
)
SELECT n.depth, n.ref, v.stage, v.num_rows, v.parents, v.created_at
FROM nearest n LEFT JOIN versions v USING (ref)
ORDER BY n.depth, v.created_at, n.ref
"""


class UnknownVersion(KeyError):
    """A ``dataset/stage[/version]`` that names no committed version; the message says what exists."""

    def __str__(self) -> str:
        return str(self.args[0])


def resolve_ref(con: duckdb.DuckDBPyConnection, text: str | datasets.DatasetRef) -> str:
    """``dataset/stage/version`` (a unique version prefix is enough) or ``dataset/stage`` (= its current version)."""
    text = str(text).strip().strip("/")
    parts = text.split("/")
    cur = con.cursor()
    if len(parts) not in (2, 3) or not all(parts):
        raise UnknownVersion(f"{text!r} is not dataset/stage or dataset/stage/version")
    dataset, stage = parts[0], parts[1]
    rows = cur.execute(
        "SELECT ref, version FROM versions WHERE dataset = ? AND stage = ? ORDER BY created_at DESC", [dataset, stage]
    ).fetchall()
    if not rows:
        sql = "SELECT DISTINCT stage FROM versions WHERE dataset = ? ORDER BY 1"
        stages = [r[0] for r in cur.execute(sql, [dataset]).fetchall()]
        known = f"stages of {dataset}: {', '.join(stages)}" if stages else f"no dataset {dataset!r} in this catalog"
        raise UnknownVersion(f"no committed version of {dataset}/{stage} ({known})")
    if len(parts) == 2:
        sql = "SELECT dataset || '/' || stage || '/' || version FROM pointers WHERE dataset = ? AND stage = ?"
        hit = cur.execute(sql, [dataset, stage]).fetchone()
        return hit[0] if hit else rows[0][0]
    matches = [ref for ref, version in rows if version.startswith(parts[2])]
    if len(matches) != 1:
        what = "no version" if not matches else f"{len(matches)} versions"
        raise UnknownVersion(
            f"{what} of {dataset}/{stage} match {parts[2]!r} (committed: {', '.join(v for _, v in rows[:8])})"
        )
    return matches[0]


def lineage(con: duckdb.DuckDBPyConnection, ref: str | datasets.DatasetRef) -> pa.Table:
    """Every version ``ref`` was derived from, once each (depth 0 is ``ref`` itself); ``dataset/stage`` means its
    latest version, and a ref that names no committed version raises ``UnknownVersion``."""
    # a cursor (same database) so a caller's half-fetched result on ``con`` does not block this query (DuckDB 2)
    return con.cursor().sql(LINEAGE_SQL, params=[resolve_ref(con, ref)]).to_arrow_table()


def views(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The catalog's relations: ``versions`` and every view, with its columns and the version it reads."""
    cur = con.cursor()
    latest = dict(
        cur.execute("SELECT dataset || '__' || stage, dataset || '/' || stage || '/' || version FROM pointers").fetchall()
    )
    names = ["versions"] + sorted(
        r[0] for r in cur.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    )
    rows = []
    for name in names:
        cols = cur.execute(f'DESCRIBE "{name}"').fetchall()
        reads = latest.get(name) or ("every *_quarantine view" if name.endswith("__quarantine") else None)
        kind = "table" if name == "versions" else "view"
        rows.append({"name": name, "kind": kind, "reads": reads, "columns": [f"{c[0]} {c[1]}" for c in cols]})
    return pa.Table.from_pylist(rows)


def pin_versions(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """Create the pinned views ``"{dataset}__{stage}@{version}"`` that ``sql`` names; returns their names."""
    made = []
    cur = con.cursor()
    for dataset, stage, version in set(_PINNED_RE.findall(sql)):
        ref = resolve_ref(con, f"{dataset}/{stage}/{version}")
        files = cur.execute("SELECT files FROM versions WHERE ref = ?", [ref]).fetchone()[0]
        name = f"{dataset}__{stage}@{version}"
        root = cur.execute("SELECT uri FROM versions WHERE ref = ?", [ref]).fetchone()[0]
        root = root[: -len(ref)].rstrip("/") if root and root.endswith(ref) else datasets.default_root()
        body = _relation(root, ref) if files else "SELECT NULL AS empty WHERE false"
        cur.execute(f'CREATE OR REPLACE VIEW "{name}" AS {body}')
        made.append(name)
    return made


READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")  # DESCRIBE, SHOW, SUMMARIZE, FROM-first and VALUES parse as SELECT


def _strip_sql_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.DOTALL)


def check_read_only(sql: str) -> None:
    """Refuse SQL with a statement that is not a query (COPY, EXPORT, ATTACH, CREATE, INSTALL/LOAD, SET, CALL...):
    the sandbox's allowed paths can be written, so what a sandboxed user query may *do* is decided here."""
    for st in duckdb.extract_statements(sql):
        kind = st.type.name
        # DuckDB parses PIVOT/UNPIVOT as MULTI (it plans an enum type, then the query); any other statement beside it
        # is its own entry in this list and is checked on its own.
        if kind == "MULTI" and re.match(r"\s*(UN)?PIVOT\b", _strip_sql_comments(st.query), re.IGNORECASE):
            continue
        if kind not in READ_ONLY_STATEMENTS:
            raise PermissionError(f"{kind} statements are refused on the sandboxed catalog; only queries "
                                  f"({', '.join(READ_ONLY_STATEMENTS)}) run")


def query(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run SQL and return an Arrow table (pinned ``"{dataset}__{stage}@{version}"`` views are made on the way)."""
    pin_versions(con, sql)
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


def _relation(root: str, ref: str, manifests: dict | None = None) -> str:
    """The SELECT behind a version's view: its files, or, for a layer, its columns joined to the versions it lies on
    (storage/layers.py), so every view keeps the wide shape of the stage and its ancestors."""
    # a layer no longer aligned with the shards below it gives a view that refuses every query (layers.view_sql)
    return layers.view_sql(datasets.ref_from_string(root, ref), manifests=manifests)


def parquet_expr(files: list[str]) -> str:
    """A ``read_parquet([...])`` table expression over an explicit file list (a manifest's files)."""
    return f"read_parquet({_quote_list(files)}, union_by_name=true)"
