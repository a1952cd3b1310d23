"""A read-only web dashboard over the catalog: each panel is one named SQL file in dashboards/sql/.

    quarry dashboard --port 8501                      # or:
    streamlit run dashboards/app.py -- --root data    # root: --root, else $QUARRY_ROOT, else ./data

The viewer only executes those files, on ``storage.catalog.connect(root, sandbox=True)`` (no file access beyond the
committed shards, no writes). A file starts with a comment header:

    -- title: Filter funnel and drop reasons
    -- order: 6
    -- description: ...
    -- chart: bar x=reason y=documents [color=..] [offset=..] [facet=.. [resolve=x,y]] [melt=var:value keep=c1,c2
    --        [values=c3,c4]] [where=<boolean column>] [error=<stderr column>] [log=<facet values>] [y2=<column>]
    --        [rule=<column>: a tick per x at that value, e.g. chance]
    --        (bar | line | point | table | graph source=.. target=..)
    -- empty: run `quarry run curate datasets_cfg/tiny.yaml`
    -- none: no contamination found (shown instead of a chart whose y column is all zero)

A y axis whose values are all whole numbers gets integer ticks (a count of 1 is not drawn with 0.2 steps).

and names the stages it reads by placeholder, resolved against the selected dataset's views (so every panel reads
the stage it names, and says so under its title):

* ``{dataset}``: the dataset name;
* ``{view:stage}``: the view ``{dataset}__{stage}``; ``{view:a|b|c}`` the first of those stages that exists;
* ``{view?:stage}``: the view, or an empty relation with the ingest view's columns when that stage did not run;
* ``{has:stage}``: ``TRUE`` when that stage has a committed version, else ``FALSE``.

A required view that does not exist renders "no data yet: <empty>" instead of failing.
"""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent / "sql"
APP = Path(__file__).resolve()
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{(dataset|view\??|has)(?::([a-z0-9_|]+))?\}")
_TABLE_ROWS = 2000  # rows a panel's table shows (an HTML table in the page, so its numbers can be read and tested)


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
    none: str = ""  # said instead of a chart when every y value is 0 (an empty-looking plot with one 0.0 tick)


@dataclass
class Resolved:
    """A panel's SQL with its placeholders substituted, and the views it reads."""

    sql: str | None
    missing: list[str] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)  # views the SQL reads
    absent: list[str] = field(default_factory=list)  # optional stages that did not run


@dataclass
class PanelResult:
    table: object | None  # a pyarrow Table, or None with a message
    message: str | None


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
                none=header.get("none", ""),
            )
        )
    return sorted(panels, key=lambda p: (p.order, p.name))


def datasets(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT dataset FROM versions ORDER BY 1").fetchall()]


def dataset_views(con, dataset: str) -> dict[str, str]:
    """view -> the version it reads (``dataset/stage/version``; the quarantine union reads every stage's)."""
    rows = con.execute(
        # the versions the views read: the pointers (storage/pointers.py), not the newest created_at
        "SELECT p.stage, v.ref FROM pointers p JOIN versions v USING (dataset, stage, version) "
        "WHERE p.dataset = ? ORDER BY p.stage",
        [dataset],
    ).fetchall()
    existing = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    out = {f"{dataset}__{stage}": ref for stage, ref in rows if f"{dataset}__{stage}" in existing}
    if f"{dataset}__quarantine" in existing:  # the union view of every *_quarantine side output
        out[f"{dataset}__quarantine"] = "every *_quarantine stage"
    return out


def resolve(sql: str, dataset: str, views: dict[str, str]) -> Resolved:
    """Substitute the placeholders (see the module docstring)."""
    if not _IDENT.match(dataset):
        raise ValueError(f"not a dataset name: {dataset!r}")
    out = Resolved(sql=None)

    def sub(m: re.Match) -> str:
        kind, arg = m.group(1), m.group(2) or ""
        if kind == "dataset":
            return dataset
        stages = arg.split("|")
        found = next((f"{dataset}__{s}" for s in stages if f"{dataset}__{s}" in views), None)
        if kind == "has":
            return "TRUE" if found else "FALSE"
        if found:
            if found not in out.reads:
                out.reads.append(found)
            return f'"{found}"'
        if kind == "view?":
            out.absent.append(f"{dataset}__{arg}")
            ingest = f"{dataset}__ingest"
            if ingest not in views:
                out.missing.append(f"no {ingest}")
                return "NULL"
            return f'(SELECT * FROM "{ingest}" WHERE false)'
        out.missing.append(f"no {' or '.join(f'{dataset}__{s}' for s in stages)}")
        return "NULL"

    sql = _PLACEHOLDER.sub(sub, sql)
    if re.search(r"\b(FROM|JOIN)\s+versions\b", sql, re.IGNORECASE):
        out.reads.insert(0, "versions")
    if not out.missing:
        out.sql = sql
    return out


def run_panel(
    con, panel: Panel, dataset: str, views: dict[str, str] | None = None, resolved: Resolved | None = None
) -> PanelResult:
    """The panel's rows, or a 'no data yet' message; SQL errors propagate to the caller."""
    views = dataset_views(con, dataset) if views is None else views
    r = resolved or resolve(panel.sql, dataset, views)
    if r.sql is None:
        return PanelResult(None, f"no data yet: {panel.empty} ({'; '.join(r.missing)})")
    # The sandbox's allowed paths (the root) can be written by COPY: a panel file may only query.
    from storage.catalog import check_read_only  # lazy like the rest of app.py: the test imports it without streamlit
    check_read_only(r.sql)
    table = con.sql(r.sql).to_arrow_table()
    if table.num_rows == 0:
        return PanelResult(None, f"no data yet: {panel.empty} (the query returned no rows)")
    return PanelResult(table, None)


def reads_caption(r: Resolved, views: dict[str, str]) -> str:
    """What a panel reads, in words: each view and the version behind it (``versions`` for catalog panels)."""
    parts = [f"`{v}` ({views[v]})" if v in views else f"the `{v}` table" for v in r.reads]
    text = "reads " + ", ".join(parts) if parts else "reads nothing yet"
    if r.absent:
        text += "; not run: " + ", ".join(f"`{a}`" for a in r.absent)
    return text


# ----------------------------------------------------------------------------------------------- the page


def _root_from_argv() -> tuple[str, str | None]:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=None)
    ap.add_argument("--dataset", default=None)
    args, _ = ap.parse_known_args(sys.argv[1:])
    from storage import datasets as ds

    return args.root or ds.default_root(), args.dataset


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:  # NaN
            return ""
        return f"{v:.6f}".rstrip("0").rstrip(".") if v == 0 or abs(v) >= 1e-4 else f"{v:.3e}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v)
    return str(v)


def html_table(panel: str, table) -> str:
    """A panel's rows as an escaped HTML table (in the page's DOM: readable, searchable, testable). A column
    ``<name>_url`` turns column ``<name>`` into a link to it and is not shown itself."""
    names = table.column_names
    links = {n[: -len("_url")]: n for n in names if n.endswith("_url") and n[: -len("_url")] in names}
    shown = [n for n in names if n not in links.values()]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in shown)
    body = []
    for row in table.slice(0, _TABLE_ROWS).to_pylist():
        cells = []
        for n in shown:
            text = html.escape(_cell(row[n]))
            url = row.get(links[n]) if n in links else None
            if url and str(url).startswith(("http://", "https://")):
                text = f'<a href="{html.escape(str(url), quote=True)}" target="_blank">{text or "run"}</a>'
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>first {_TABLE_ROWS} of {table.num_rows} rows</p>" if table.num_rows > _TABLE_ROWS else ""
    return (
        f'<div class="quarry-panel-table" style="max-height: 420px; overflow: auto; font-size: 0.85rem">'
        f'<table data-panel="{panel}" class="quarry-table panel-{panel}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def lineage_dot(df, src: str = "parent", dst: str = "child") -> str:
    """The lineage as Graphviz DOT, top to bottom: ranks follow the parent -> child depth, so a long pipeline grows
    downwards at a readable size instead of being squeezed into one row."""
    lines = [
        "digraph lineage {",
        "  rankdir=TB; ranksep=0.3; nodesep=0.25;",
        '  node [shape=box, style="rounded", fontsize=11, fontname="Helvetica", margin="0.08,0.03"];',
        "  edge [arrowsize=0.6];",
    ]
    seen = set()
    for _, row in df.iterrows():
        child = row[dst]
        if child not in seen:
            seen.add(child)
            label = f"{row.get('stage', '')}\\n{row.get('version', '')} · {row.get('num_rows', '')} rows"
            latest = row.get("is_latest")
            style = ', penwidth=2.2, color="#1f4e79"' if latest else ', color="gray60", fontcolor="gray40"'
            lines.append(f'  "{child}" [label="{label}"{style}];')
        parent = row[src]
        if parent is not None and parent == parent:  # NaN-safe: versions without a parent have no edge
            lines.append(f'  "{parent}" -> "{child}";')
    lines.append("}")
    return "\n".join(lines)


def _y_axis(alt, df, y: str, log: bool = False):
    """The y encoding: integer ticks when every value is a whole number, a log scale where asked."""
    field = y.split(":")[0]
    values = df[field].dropna() if field in df.columns else []
    whole = len(values) > 0 and all(float(v).is_integer() for v in values)
    axis = alt.Axis(format="d", tickMinStep=1) if whole and not log else alt.Axis()
    return alt.Y(y, axis=axis, scale=alt.Scale(type="log") if log else alt.Undefined)


def chart_spec(panel: Panel, df):
    """The Altair chart of a panel (None: a table-only panel, or a message to show instead, as a string)."""
    import altair as alt

    a = panel.chart_args
    if panel.chart not in ("bar", "line", "point") or "x" not in a or "y" not in a:
        return None
    if "where" in a:  # only some rows are comparable on one axis (documents, not LSH edges or training steps)
        df = df[df[a["where"]].fillna(False).astype(bool)]
    if "melt" in a:  # wide table (one column per domain, say) -> long rows for the chart
        var, value = a["melt"].split(":")
        keep = [c for c in a.get("keep", "").split(",") if c in df.columns]
        values = [c for c in a.get("values", "").split(",") if c in df.columns] or None
        df = df.melt(id_vars=keep, value_vars=values, var_name=var, value_name=value).dropna(subset=[value])
        df[value] = df[value].astype("float64")  # a melted column of mixed int/None columns is object: not a measure
    y = a["y"].split(":")[0]
    if panel.none and y in df.columns and not df[y].fillna(0).astype(bool).any():
        return panel.none
    if "error" in a:  # the standard error the table shows, as a +-1 stderr bar on each score
        df = df.assign(_lo=df[y] - df[a["error"]].fillna(0), _hi=df[y] + df[a["error"]].fillna(0))
    logged = set(a.get("log", "").split(",")) - {""}
    facet = a.get("facet")
    if facet and logged:  # one chart per facet value: a log scale for some (perplexity), linear for the others
        charts = []
        for value in df[facet].drop_duplicates():
            part = df[df[facet] == value]
            charts.append(_one_chart(alt, panel, part, log=value in logged).properties(
                title=f"{facet}: {value}" + (" (log scale)" if value in logged else ""), width=260, height=160))
        return alt.concat(*charts, columns=2)
    chart = _one_chart(alt, panel, df)
    if facet:
        independent = {axis: "independent" for axis in a.get("resolve", "x").split(",")}
        chart = chart.properties(width=260, height=160).facet(facet=facet, columns=2).resolve_scale(**independent)
    return chart


def _one_chart(alt, panel: Panel, df, log: bool = False):
    a = panel.chart_args
    if panel.chart == "point":  # a scatter on zero-free scales: observed vs predicted reads off the diagonal
        mark = alt.Chart(df).mark_point(filled=True, size=60)
        enc = {"x": alt.X(a["x"], scale=alt.Scale(zero=False)), "y": alt.Y(a["y"], scale=alt.Scale(zero=False)),
               "tooltip": [c for c in df.columns if not c.startswith("_")]}  # fmt: skip
    else:
        mark = alt.Chart(df).mark_bar() if panel.chart == "bar" else alt.Chart(df).mark_line(point=len(df) < 60)
        enc = {"x": alt.X(a["x"], sort=None), "y": _y_axis(alt, df, a["y"], log),
               "tooltip": [c for c in df.columns if not c.startswith("_")]}  # fmt: skip
    if "color" in a:
        enc["color"] = a["color"]
    if "offset" in a:  # grouped instead of stacked bars (before/after side by side)
        enc["xOffset"] = a["offset"]
    chart = mark.encode(**enc)
    if "error" in a:
        bars = {"x": alt.X(a["x"], sort=None), "y": alt.Y("_lo:Q", title=a["y"]), "y2": "_hi:Q"}
        if "offset" in a:
            bars["xOffset"] = a["offset"]
        chart = alt.layer(chart, alt.Chart(df).mark_errorbar(color="black").encode(**bars))
    if "rule" in a and a["rule"] in df.columns and df[a["rule"]].notna().any():  # a reference level per x (chance)
        ticks = alt.Chart(df.dropna(subset=[a["rule"]])).mark_tick(color="gray", thickness=2, strokeDash=[3, 2])
        ticks = ticks.encode(x=alt.X(a["x"], sort=None), y=alt.Y(f"{a['rule']}:Q", title=a["y"]))
        if isinstance(chart, alt.LayerChart):  # one flat layer list; the layers' shared data stays on the parent
            chart = alt.layer(*chart.layer, ticks, data=chart.data)
        else:
            chart = alt.layer(chart, ticks)
    if "y2" in a:  # a second measure on its own right-hand axis (the learning rate beside the loss)
        second = alt.Chart(df).mark_line(strokeDash=[4, 3], color="#d62728").encode(
            x=alt.X(a["x"], sort=None), y=alt.Y(a["y2"], axis=alt.Axis(orient="right", titleColor="#d62728")))
        chart = alt.layer(chart, second).resolve_scale(y="independent")
    return chart


def _chart(st, panel: Panel, df) -> None:
    a = panel.chart_args
    if panel.chart == "graph":
        st.graphviz_chart(lineage_dot(df, a.get("source", "parent"), a.get("target", "child")), width="content")
        return
    chart = chart_spec(panel, df)
    if isinstance(chart, str):
        st.success(chart)
    elif chart is not None:
        st.altair_chart(chart, width="content" if "facet" in a else "stretch")


def live_training(root: str, dataset: str, stage: str = "train"):
    """The loss curve of each training run still in flight (an uncommitted train version on a local root): its
    ``run/metrics/steps-*.parquet`` (flushed with each checkpoint) and ``run/live.parquet`` (the steps since,
    rewritten with each progress line), sorted by step; ``[(version, table)]``, newest run first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage import datasets

    base = Path(root) / dataset / stage
    if "://" in root or not base.is_dir():
        return []
    out = []
    for run in sorted(base.glob("*/run"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            if datasets.is_committed(datasets.DatasetRef(root, dataset, stage, run.parent.name)):
                continue  # committed: the training panel's view shows it
        except ValueError:  # not a version folder
            continue
        files = sorted((run / "metrics").glob("steps-*.parquet")) + [p for p in [run / "live.parquet"] if p.exists()]
        tables = []
        for f in files:
            try:  # a file replaced between listing and reading is read at the next refresh
                tables.append(pq.read_table(f, columns=["step", "loss", "lr", "tokens_per_s"]))
            except (OSError, pa.ArrowInvalid):
                continue
        if tables:
            out.append((run.parent.name, pa.concat_tables(tables).sort_by("step")))
    return out


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
    for version, curve in live_training(root, dataset):  # training in flight: its curve so far (Reload refreshes)
        st.header(f"Training in flight: {dataset}/train/{version}")
        st.line_chart(curve.to_pandas(), x="step", y="loss")
        st.caption(f"step {curve['step'][-1]}, loss {curve['loss'][-1].as_py():.4f} · run/metrics + run/live.parquet")
    panels = load_panels()
    st.sidebar.markdown("\n".join(f"- [{p.title}](#{p.name.replace('_', '-')})" for p in panels))
    for panel in panels:
        with st.container(key=f"panel_{panel.name}"):
            st.header(panel.title, anchor=panel.name.replace("_", "-"))
            if panel.description:
                st.caption(panel.description)
            resolved = resolve(panel.sql, dataset, views)
            st.caption(f"{reads_caption(resolved, views)} · dashboards/sql/{panel.name}.sql")
            try:
                result = run_panel(con, panel, dataset, views, resolved)
            except Exception as e:  # one broken panel must not take the page down
                st.error(f"{panel.name}.sql failed: {type(e).__name__}: {e}")
                continue
            if result.table is None:
                st.info(result.message)
                continue
            _chart(st, panel, result.table.to_pandas())
            st.caption(f"{result.table.num_rows} rows")
            st.html(html_table(panel.name, result.table))


# ----------------------------------------------------------------------------------------------- the command


def command(root: str | None = None, *, port: int = 8501, host: str = "127.0.0.1", headless: bool = True) -> list[str]:
    """The ``streamlit run`` command line for this app."""
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port), "--server.address", host, "--server.headless", str(headless).lower(),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",  # no "Deploy" button: this is a read-only viewer, not a Streamlit app
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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: the kernel sends the child SIGTERM when its parent dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(root: str | None = None, *, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Run the dashboard in the foreground until Ctrl-C or SIGTERM (what ``quarry dashboard`` does); the Streamlit
    child stops with it, whichever signal ends this process."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    child = subprocess.Popen(command(root, port=port, host=host, headless=True), preexec_fn=preexec)

    def forward(signum, _frame) -> None:
        child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the child too (same process group): let it finish
                child.send_signal(signal.SIGINT)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    main()
