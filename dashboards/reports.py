"""Named multi-query reports (``dashboards/reports/*.sql``) printed by flows and the CLI, e.g. the demo summary.

A report file is a sequence of ``-- name: <title>`` headers, each followed by one query that may use
``{dataset}``; ``run(con, "demo", dataset="tiny")`` returns (title, DuckDB relation) pairs.
"""

from __future__ import annotations

import re
from pathlib import Path

REPORTS_DIR = Path(__file__).resolve().parent / "reports"
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


def queries(name: str) -> list[tuple[str, str]]:
    text = (REPORTS_DIR / f"{name}.sql").read_text()
    out = []
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        title, _, sql = block.partition("\n")
        out.append((title.strip(), sql.strip().rstrip(";")))
    return out


def run(con, name: str, **values: str) -> list[tuple[str, object]]:
    for k, v in values.items():  # only identifiers are substituted into SQL
        if not _IDENT.match(v):
            raise ValueError(f"{k} must be a snake_case identifier, got {v!r}")
    return [(title, con.sql(sql.format(**values))) for title, sql in queries(name)]
