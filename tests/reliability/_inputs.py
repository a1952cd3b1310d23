"""Builders of (hostile) input files for the reliability tests: the tests know how many records they made, so they
can check that the readers account for every one (documents + quarantine rows)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.ingest.sources import IngestSource
from tasks.ingest.stage import read_source, rows_to_tables


def read(data: bytes, name: str, **spec) -> tuple[pa.Table, pa.Table]:
    """(documents, quarantine) of one in-memory file, through the Arrow tables the ingest stage writes."""
    rows = list(read_source(io.BytesIO(data), name, IngestSource(path=name, **spec)))
    return rows_to_tables(rows)


def jsonl(records: Sequence[dict | bytes]) -> bytes:
    """One line per record (dicts as JSON, bytes as they are)."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def html_page(text: str) -> bytes:
    return f"<html><body><article><p>{text}</p></article></body></html>".encode()


def _raw(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def warc_record(uri: str, body: bytes, *, declared: int | None = None, rtype: str = "response") -> bytes:
    """A WARC record; ``declared`` overrides its Content-Length (a wrong one). Response records hold an HTTP 200
    with an HTML body; conversion records hold the body as plain text (WET)."""
    if rtype == "response":
        block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body
        ctype = "application/http; msgtype=response"
    else:
        block, ctype = body, "text/plain"
    length = len(block) if declared is None else declared
    head = (
        f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Record-ID: <urn:uuid:{hashlib.md5(_raw(uri)).hexdigest()}>\r\n"
        f"WARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Target-URI: {uri}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    return head + block + b"\r\n\r\n"


def warc_gz(records: Sequence[bytes]) -> bytes:
    """A .warc.gz as crawlers write it: one gzip member per record."""
    return b"".join(gzip.compress(r, mtime=0) for r in records)


def parquet(table: pa.Table, row_group_size: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size, compression="zstd")
    return buf.getvalue()


def corrupt_row_group(data: bytes, rg: int) -> bytes:
    """``data`` with the column chunks of row group ``rg`` overwritten (footer intact: the file still opens)."""
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(rg)
    out = bytearray(data)
    for c in range(meta.num_columns):
        col = meta.column(c)
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        out[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    return bytes(out)


def traced_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn(), the most Python memory it held at once). Tracing is on only while fn runs; tracemalloc.stop() racing
    another thread that allocates segfaults CPython 3.11, which is why read_parquet decodes on its own thread."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
