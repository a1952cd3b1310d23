"""A read-only web dashboard over the catalog: each panel is one named SQL file in dashboards/sql/.

    quarry dashboard --port 8501                      # or:
    streamlit run dashboards/app.py -- --root data    # root: --root, else $QUARRY_ROOT, else ./data

The viewer only executes those files, on ``storage.catalog.connect(root, sandbox=True)`` (no file access beyond the
committed shards, no writes). A file starts with a comment header:

    -- title: Filter funnel and drop reasons
    -- order: 6
    -- description: ...
    -- chart: bar x=reason y=documents [color=..] [facet=..]   (bar | line | table | graph source=.. target=..)
    -- empty: run `quarry run curate datasets_cfg/tiny.yaml`

and may name relations by placeholder, resolved against the selected dataset's views:
``{dataset}`` the dataset name; ``{view:stage}`` the view ``{dataset}__{stage}``; ``{last:col,...}`` /
``{first:col,...}`` the most recently / first created view that has all those columns (so a panel follows the data,
not a stage name). A placeholder that resolves to nothing renders "no data yet: <empty>" instead of failing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent / "sql"
APP = Path(__file__).resolve()
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{(dataset|view|last|first)(?::([a-z0-9_,]+))?\}")
_TABLE_ROWS = 40  # panels up to this many rows render as an HTML table (readable, searchable, in the page DOM)


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    order: int
    description: str
    chart: str
    chart_args: dict[str, str]
    empty: str
    sql: str


def load_panels(sql_dir: Path = SQL_DIR) -> list[Panel]:
    """Every ``*.sql`` file with its header, in ``order``."""
    panels = []
    for path in sorted(sql_dir.glob("*.sql")):
        text = path.read_text()
        header = {}
        for line in text.splitlines():
            m = re.match(r"^--\s*(\w+):\s*(.*)$", line)
            if not line.startswith("--"):
                break
            if m:
                header[m.group(1)] = m.group(2).strip()
        kind, *args = (header.get("chart") or "table").split()
        panels.append(
            Panel(
                name=path.stem,
                title=header.get("title", path.stem),
                order=int(header.get("order", 999)),
                description=header.get("description", ""),
                chart=kind,
                chart_args=dict(a.split("=", 1) for a in args if "=" in a),
                empty=header.get("empty", "run the flow that produces this table"),
                sql=text,
            )
        )
    return sorted(panels, key=lambda p: (p.order, p.name))


def datasets(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT dataset FROM versions ORDER BY 1").fetchall()]


def dataset_views(con, dataset: str) -> list[tuple[str, set[str]]]:
    """(view, its columns) of a dataset, oldest first (by the created_at of the version behind the view)."""
    rows = con.execute(
        "SELECT stage, max(created_at) FROM versions WHERE dataset = ? GROUP BY stage ORDER BY 2, 1", [dataset]
    ).fetchall()
    existing = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    out = []
    for stage, _ in rows:
        view = f"{dataset}__{stage}"
        if view in existing:
            cols = {r[0] for r in con.execute(f'DESCRIBE "{view}"').fetchall()}
            out.append((view, cols))
    quarantine = f"{dataset}__quarantine"
    if quarantine in existing:  # the union view of every *_quarantine side output
        out.append((quarantine, {r[0] for r in con.execute(f'DESCRIBE "{quarantine}"').fetchall()}))
    return out


def resolve(sql: str, dataset: str, views: list[tuple[str, set[str]]]) -> tuple[str | None, str | None]:
    """Substitute the placeholders; returns (sql, None) or (None, what is missing)."""
    if not _IDENT.match(dataset):
        raise ValueError(f"not a dataset name: {dataset!r}")
    names = {v for v, _ in views}
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        kind, arg = m.group(1), m.group(2) or ""
        if kind == "dataset":
            return dataset
        if kind == "view":
            view = f"{dataset}__{arg}"
            if view not in names:
                missing.append(f"no {view}")
                return "NULL"
            return f'"{view}"'
        cols = set(arg.split(","))
        having = [v for v, c in views if cols <= c]
        if not having:
            missing.append(f"no stage of {dataset} with column(s) {', '.join(sorted(cols))}")
            return "NULL"
        return f'"{having[-1] if kind == "last" else having[0]}"'

    out = _PLACEHOLDER.sub(sub, sql)
    return (None, "; ".join(missing)) if missing else (out, None)


def run_panel(con, panel: Panel, dataset: str, views=None):
    """(arrow table, None) or (None, a 'no data yet' message); SQL errors propagate to the caller."""
    views = dataset_views(con, dataset) if views is None else views
    sql, missing = resolve(panel.sql, dataset, views)
    if sql is None:
        return None, f"no data yet: {panel.empty} ({missing})"
    table = con.sql(sql).to_arrow_table()
    if table.num_rows == 0:
        return None, f"no data yet: {panel.empty} (the query returned no rows)"
    return table, None


# ----------------------------------------------------------------------------------------------- the page


def _root_from_argv() -> str:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=None)
    ap.add_argument("--dataset", default=None)
    args, _ = ap.parse_known_args(sys.argv[1:])
    from storage import datasets as ds

    return args.root or ds.default_root(), args.dataset


def _chart(st, panel: Panel, df) -> None:
    import altair as alt

    a = panel.chart_args
    if panel.chart == "graph":
        src, dst = a.get("source", "parent"), a.get("target", "child")
        lines = ["digraph lineage {", "  rankdir=LR; node [shape=box, fontsize=10, style=rounded];"]
        for _, row in df.iterrows():
            label = f"{row[dst]}\\n{row.get('num_rows', '')} rows"
            bold = ", penwidth=2.5" if row.get("is_latest") else ""
            lines.append(f'  "{row[dst]}" [label="{label}"{bold}];')
            if row[src] is not None and row[src] == row[src]:  # NaN-safe: versions without a parent have no edge
                lines.append(f'  "{row[src]}" -> "{row[dst]}";')
        lines.append("}")
        st.graphviz_chart("\n".join(lines))
        return
    if panel.chart not in ("bar", "line") or "x" not in a or "y" not in a:
        return
    mark = alt.Chart(df).mark_bar() if panel.chart == "bar" else alt.Chart(df).mark_line(point=len(df) < 60)
    enc = {"x": alt.X(a["x"], sort=None), "y": alt.Y(a["y"]), "tooltip": list(df.columns)}
    if "color" in a:
        enc["color"] = a["color"]
    if "offset" in a:  # grouped instead of stacked bars (before/after side by side)
        enc["xOffset"] = a["offset"]
    chart = mark.encode(**enc)
    if "facet" in a:
        chart = (
            chart.properties(width=260, height=160).facet(facet=a["facet"], columns=2).resolve_scale(x="independent")
        )
    st.altair_chart(chart, use_container_width="facet" not in a)


def main() -> None:
    import streamlit as st

    from storage import catalog

    root, wanted = _root_from_argv()
    st.set_page_config(page_title="quarry dashboard", layout="wide")
    st.title("quarry")
    st.caption(f"catalog at `{root}` (read-only)")

    @st.cache_resource(show_spinner=False)
    def _connect(root: str):
        return catalog.connect(root, sandbox=True)

    if st.sidebar.button("Reload catalog"):
        _connect.clear()
    con = _connect(root).cursor()  # one cursor per script run: DuckDB connections are not shared across threads
    names = datasets(con)
    if not names:
        st.info(f"no data yet: run `quarry run ingest datasets_cfg/tiny.yaml` (nothing committed under {root})")
        return
    dataset = st.sidebar.selectbox("dataset", names, index=names.index(wanted) if wanted in names else 0)
    views = dataset_views(con, dataset)
    panels = load_panels()
    st.sidebar.markdown("\n".join(f"- [{p.title}](#{p.name.replace('_', '-')})" for p in panels))
    for panel in panels:
        st.header(panel.title, anchor=panel.name.replace("_", "-"))
        if panel.description:
            st.caption(panel.description)
        try:
            table, message = run_panel(con, panel, dataset, views)
        except Exception as e:  # one broken panel must not take the page down
            st.error(f"{panel.name}.sql failed: {type(e).__name__}: {e}")
            continue
        if table is None:
            st.info(message)
            continue
        df = table.to_pandas()
        _chart(st, panel, df)
        st.caption(f"{table.num_rows} rows · dashboards/sql/{panel.name}.sql")
        if table.num_rows <= _TABLE_ROWS:
            st.table(df)
        else:
            st.dataframe(df, use_container_width=True, hide_index=True)


# ----------------------------------------------------------------------------------------------- the command


def command(root: str | None = None, *, port: int = 8501, host: str = "127.0.0.1", headless: bool = True) -> list[str]:
    """The ``streamlit run`` command line for this app."""
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port), "--server.address", host, "--server.headless", str(headless).lower(),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]  # fmt: skip
    if root:
        cmd += ["--", "--root", root]
    return cmd


def start(root: str | None = None, *, port: int = 8501, host: str = "127.0.0.1", log=None) -> subprocess.Popen:
    """Start the dashboard in the background (its own session, so the caller can end exactly it)."""
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    return subprocess.Popen(
        command(root, port=port, host=host), env=env, stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def serve(root: str | None = None, *, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Run the dashboard in the foreground until Ctrl-C (what ``quarry dashboard`` does)."""
    return subprocess.call(command(root, port=port, host=host, headless=True))


if __name__ == "__main__":
    main()
