"""One view of the catalog written as a single materialized file (the wide table, every layer joined).

    rows, fmt = export.export_view("data", "tiny__curated", Path("curated.parquet"))

DuckDB's COPY streams the view to the file, so a view larger than memory exports too; the file appears only when
complete (written under a temporary name, then renamed). Every refusal is an ``ExportError`` with a one-line message
and nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from storage import catalog

FORMATS = {"parquet": "(FORMAT parquet, COMPRESSION zstd)", "jsonl": "(FORMAT json)"}
EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}


class ExportError(ValueError):
    """An export that cannot run as asked; the message says why in one line."""


def export_view(root: str, view: str, out: Path, format: str | None = None) -> tuple[int, str]:
    """Write ``view`` (or a pinned ``"{dataset}__{stage}@{version}"``) of the catalog at ``root`` to ``out``, which
    must not exist, as ``format`` (default: from the extension); returns (rows written, format)."""
    fmt = format or EXTENSIONS.get(out.suffix.lower())
    if fmt not in FORMATS:
        given = f"--format {format!r}" if format else f"the extension of {out.name!r}"
        raise ExportError(f"cannot tell the format from {given}; use --format parquet or --format jsonl")
    if out.exists():
        raise ExportError(f"{out} already exists; remove it or choose another path (nothing was written)")
    if not out.parent.is_dir():
        raise ExportError(f"the folder {out.parent} does not exist")
    if '"' in view or not view.strip():
        raise ExportError(f"{view!r} is not a view name (see `quarry views`)")
    con = catalog.connect(root)
    try:
        catalog.pin_versions(con, f'"{view}"')
    except catalog.UnknownVersion as e:
        raise ExportError(str(e)) from None
    names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if view not in names | {"versions"}:
        prefix = view.split("__")[0]
        near = sorted(n for n in names if n.startswith(prefix + "__"))[:12]
        hint = f"; views of {prefix}: {', '.join(near)}" if near else "; `quarry views` lists them"
        raise ExportError(f"no view {view!r} in the catalog at {root}{hint}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    target = str(tmp).replace("'", "''")
    try:
        rows = con.execute(f"COPY (SELECT * FROM \"{view}\") TO '{target}' {FORMATS[fmt]}").fetchone()[0]
        os.replace(tmp, out)
    except duckdb.Error as e:
        raise ExportError(f"{view}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return rows, fmt
