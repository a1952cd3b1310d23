"""How `quarry sql` (and the other catalog commands) print a result: what a user sees is exactly what the data says.

Cell values are data, never Rich markup (a value ``a[b]c`` prints as ``a[b]c``, ``[/]`` does not raise), NULL is
the dim word ``NULL``. Long and wide results follow DuckDB's own CLI (its ``box`` renderer, https://duckdb.org/docs/
stable/clients/cli/dot_commands: ``.maxrows`` 40 by default, ``.maxwidth`` the terminal's): the first rows and a
"N more rows" line, middle columns elided as ``…`` when the table does not fit, long cells cut with ``…``, and a
``line`` mode (``.mode line``) that shows each row whole, one ``column = value`` line per column.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "line", "markdown", "csv", "json", "json-array", "parquet")
MAX_ROWS = 40  # DuckDB CLI's .maxrows default
CELL_WIDTH = 60  # a table cell longer than this is cut with an ellipsis (the full value: --format line, csv, json)
_ELLIPSIS = "…"


class RenderError(ValueError):
    """A bad format or output choice, said in one line."""


def cell_text(v, width: int | None = CELL_WIDTH) -> str:
    """The text of one value in the table/line/markdown formats: floats to 6 significant digits, control characters
    shown escaped (a newline in a document must not break the row), cut to ``width``."""
    s = f"{v:.6g}" if isinstance(v, float) else str(v)
    s = s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") if _needs_escape(s) else s
    if width is not None and len(s) > width:
        s = s[: width - 1] + _ELLIPSIS
    return s


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n:,} rows"


def _needs_escape(s: str) -> bool:
    return "\n" in s or "\r" in s or "\t" in s


def _cell(v, width: int | None) -> Text:
    return Text("NULL", style="dim") if v is None else Text(cell_text(v, width))


def _is_number(table, name: str) -> bool:
    import pyarrow.types as t

    typ = table.schema.field(name).type
    return t.is_integer(typ) or t.is_floating(typ) or t.is_decimal(typ)


def _fit_columns(widths: list[int], available: int) -> list[int] | None:
    """Indices of the columns to show when ``widths`` (each column's content width) must fit ``available`` columns
    of the terminal: all of them, or the outer ones with the middle elided (DuckDB keeps both ends). ``None``: all."""
    cost = [w + 3 for w in widths]  # a space either side and a border
    if sum(cost) + 1 <= available:
        return None
    budget = available - 1 - 4  # the frame, and the elision column
    left, right, used = [], [], 0
    lo, hi = 0, len(widths) - 1
    take_left = True
    while lo <= hi:
        i = lo if take_left else hi
        if used + cost[i] > budget:
            break
        used += cost[i]
        if take_left:
            left.append(lo)
            lo += 1
        else:
            right.insert(0, hi)
            hi -= 1
        take_left = not take_left
    if not left:  # not even one column fits: show the first, Rich cuts it
        left = [0]
    return left + right


def table_lines(table, *, width: int | None, max_rows: int = MAX_ROWS) -> tuple[Table, list[str]]:
    """A Rich table of ``table`` fitted to ``width`` terminal columns (None: every column), and the notes to print
    under it (rows and columns not shown, and how to see them)."""
    total = table.num_rows
    shown_rows = table.slice(0, max_rows) if max_rows and total > max_rows else table
    names = table.column_names
    rows = shown_rows.to_pylist()
    widths = [
        max([len(n)] + [len(cell_text(r[n])) if r[n] is not None else 4 for r in rows]) if rows else len(n)
        for n in names
    ]
    keep = _fit_columns(widths, width) if width else None
    idx = list(range(len(names))) if keep is None else keep
    out = Table(show_lines=False)
    gap = next((k for k in range(1, len(idx)) if idx[k] != idx[k - 1] + 1), None)
    for pos, i in enumerate(idx):
        if gap is not None and pos == gap:
            out.add_column(_ELLIPSIS, no_wrap=True)
        out.add_column(Text(names[i]), no_wrap=True, overflow="ellipsis",
                       justify="right" if _is_number(table, names[i]) else "left")  # fmt: skip
    for r in rows:
        cells = [_cell(r[names[i]], CELL_WIDTH) for i in idx]
        if gap is not None:
            cells.insert(gap, Text(_ELLIPSIS, style="dim"))
        out.add_row(*cells)
    notes = []
    if len(rows) < total:
        notes.append(f"{total:,} rows, first {len(rows):,} shown: {total - len(rows):,} more rows "
                     "(--max-rows 0 shows every row)")  # fmt: skip
    else:
        notes.append(_rows(total))
    if keep is not None:
        notes.append(f"{len(idx)} of {len(names)} columns shown ({_ELLIPSIS} = {len(names) - len(idx)} elided): "
                     "--format line shows each row whole, or select fewer columns")  # fmt: skip
    return out, notes


def text_table(headers: list[str], rows: list[list], *, show_lines: bool = False) -> Table:
    """A Rich table of plain text cells (names, refs, reasons: data, so never markup); cells fold, not cut."""
    out = Table(show_lines=show_lines)
    for name in headers:
        out.add_column(Text(name), overflow="fold")
    for row in rows:
        out.add_row(*[Text("NULL", style="dim") if v is None else Text(str(v)) for v in row])
    return out


def line_text(table, *, max_rows: int = MAX_ROWS) -> tuple[str, list[str]]:
    """DuckDB's ``.mode line``: one ``column = value`` line per column, a blank line between rows; values whole."""
    total = table.num_rows
    rows = (table.slice(0, max_rows) if max_rows and total > max_rows else table).to_pylist()
    pad = max((len(n) for n in table.column_names), default=0)
    blocks = ["\n".join(f"{n:>{pad}} = {'NULL' if v is None else cell_text(v, None)}" for n, v in r.items())
              for r in rows]  # fmt: skip
    notes = [_rows(total) if len(rows) == total else
             f"{total:,} rows, first {len(rows):,} shown: {total - len(rows):,} more rows (--max-rows 0 shows every row)"]  # fmt: skip
    return "\n\n".join(blocks), notes


def markdown_text(table, *, max_rows: int = 0) -> tuple[str, list[str]]:
    """A GitHub-flavoured Markdown table (numbers right-aligned; ``|`` escaped, newlines as ``<br>``)."""
    total = table.num_rows
    rows = (table.slice(0, max_rows) if max_rows and total > max_rows else table).to_pylist()
    names = table.column_names

    def md(v) -> str:
        if v is None:
            return "NULL"
        s = f"{v:.6g}" if isinstance(v, float) else str(v)
        return s.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")

    lines = ["| " + " | ".join(md(n) for n in names) + " |",
             "|" + "|".join("---:" if _is_number(table, n) else "---" for n in names) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(md(r[n]) for n in names) + " |" for r in rows]
    notes = [] if len(rows) == total else [f"{total - len(rows):,} more rows (--max-rows 0 shows every row)"]
    return "\n".join(lines), notes


def json_lines(table) -> str:
    return "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in table.to_pylist())


def json_array(table) -> str:
    rows = [json.dumps(r, default=str, ensure_ascii=False) for r in table.to_pylist()]
    return "[\n" + ",\n".join(rows) + ("\n" if rows else "") + "]\n"


def emit(table, fmt: str, console: Console, *, output: Path | None = None, force: bool = False,
         max_rows: int = MAX_ROWS, stdout: IO[bytes] | None = None) -> None:  # fmt: skip
    """Print ``table`` to the terminal in ``fmt``, or write it to ``output`` (every row and column; an existing file
    only with ``force``) and say what was written. ``max_rows`` caps the table, line and markdown formats on the
    terminal (0: every row)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt not in FORMATS:
        raise RenderError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if max_rows < 0:
        raise RenderError("--max-rows must be 0 (every row) or more")
    if fmt == "parquet" and output is None:
        raise RenderError("--format parquet needs --output FILE")
    if output is not None:
        if output.exists() and not force:
            raise RenderError(f"{output} already exists; --force overwrites it (nothing was written)")
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")  # the file appears only when complete
        try:
            if fmt == "parquet":
                pq.write_table(table, tmp)
            elif fmt == "csv":
                pacsv.write_csv(table, str(tmp))
            else:
                tmp.write_text(_text(table, fmt, width=None, max_rows=0), encoding="utf-8")
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)
        cols = "1 column" if table.num_columns == 1 else f"{table.num_columns} columns"
        console.print(f"wrote {_rows(table.num_rows)}, {cols} to {output} ({fmt})",
                      markup=False, highlight=False)  # fmt: skip
        return
    if fmt == "csv":
        pacsv.write_csv(table, stdout or _stdout_buffer())
        return
    if fmt in ("json", "json-array"):
        console.file.write(json_lines(table) if fmt == "json" else json_array(table))
        return
    if fmt == "table":
        rich_table, notes = table_lines(table, width=console.width, max_rows=max_rows)
        console.print(rich_table)
        for note in notes:
            console.print(note, style="dim", markup=False, highlight=False)
        return
    text, notes = line_text(table, max_rows=max_rows) if fmt == "line" else markdown_text(table, max_rows=max_rows)
    console.file.write(text + "\n")
    for note in notes:
        console.print(note, style="dim", markup=False, highlight=False)


def _text(table, fmt: str, *, width: int | None, max_rows: int) -> str:
    """The table, line, markdown or JSON text written to a file (no colour, every column)."""
    if fmt == "json":
        return json_lines(table)
    if fmt == "json-array":
        return json_array(table)
    if fmt == "line":
        return line_text(table, max_rows=max_rows)[0] + "\n"
    if fmt == "markdown":
        return markdown_text(table, max_rows=max_rows)[0] + "\n"
    import io

    buf = io.StringIO()
    rich_table, notes = table_lines(table, width=width, max_rows=max_rows)
    file_console = Console(file=buf, width=10**6, color_system=None, highlight=False)
    file_console.print(rich_table, crop=False)
    file_console.print("\n".join(notes), markup=False)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def _stdout_buffer():
    import sys

    return sys.stdout.buffer
