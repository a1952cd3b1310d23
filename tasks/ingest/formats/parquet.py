"""Parquet: one document per row at ``row:N`` (N counts every row of the file); an unreadable row group is one
quarantine row per row it holds, and the row groups after it are read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import pyarrow as pa

from tasks.ingest.formats.jsonl import record_to_doc
from tasks.ingest.records import guarded, quarantine
from tasks.ingest.sources import IngestSource, Origin


def _parquet_rows(table: pa.Table) -> tuple[list[dict | None], dict[int, str]]:
    """The rows of a row group as dicts; a value Python cannot hold (invalid UTF-8 in a string column) fails only
    its own row: (rows with None there, {row index: reason})."""
    try:
        return table.to_pylist(), {}
    except Exception:
        pass
    columns, bad = {}, {}
    for name in table.column_names:
        col = table.column(name)
        try:
            columns[name] = col.to_pylist()
            continue
        except Exception:
            pass
        values = []
        for i in range(len(col)):
            try:
                values.append(col[i].as_py())
            except Exception as e:
                values.append(None)
                bad.setdefault(i, f"column {name!r} undecodable: {type(e).__name__}: {str(e)[:200]}")
        columns[name] = values
    rows = [None if i in bad else {n: columns[n][i] for n in table.column_names} for i in range(table.num_rows)]
    return rows, bad


def read_parquet(stream: IO[bytes], origin: Origin, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """One document per row at ``row:N`` (N counts every row of the file, so positions and doc_ids do not move when
    a row group before it is unreadable); each row of an unreadable row group is one quarantine row."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(stream)
        sizes = [pf.metadata.row_group(rg).num_rows for rg in range(pf.num_row_groups)]
    except Exception as e:
        yield "quarantine", quarantine(origin, "file", f"unreadable Parquet: {type(e).__name__}: {e}")
        return
    row = 0
    for rg, n in enumerate(sizes):
        try:
            # one thread: ingest runs one file per worker (threads would oversubscribe its CPUs), and pyarrow's
            # decode threads still running after a corrupt page raised have crashed the interpreter (seen in fuzzing)
            table = pf.read_row_group(rg, use_threads=False)
            rows, bad = _parquet_rows(table)
        except Exception as e:
            reason = f"unreadable row group {rg} (rows {row}-{row + n - 1}): {type(e).__name__}: {str(e)[:200]}"
            for r in range(row, row + n):
                yield "quarantine", quarantine(origin, f"row:{r}", reason)
            row += n
            continue
        for i, rec in enumerate(rows):
            position = f"row:{row + i}"
            if rec is None:
                yield "quarantine", quarantine(origin, position, bad[i])
            else:
                yield guarded(origin, position, record_to_doc, rec, origin, position, spec)
        row += n

