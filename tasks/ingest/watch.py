"""Incremental ingest bookkeeping: which files of a watched prefix earlier runs took (the ``watch_state`` stage).

A file is matched by its path: a file rewritten in place after it was taken is reported, not re-ingested
(WARC/WET files are immutable; re-ingesting would duplicate documents).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa

from tasks.common.stage import implements

STATE_SCHEMA = pa.schema(
    [
        ("prefix", pa.string()),
        ("file", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.string()),
        ("batch", pa.string()),
        ("taken_at", pa.string()),
    ]
)


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchParams:
    files: tuple[tuple[str, str], ...]  # (watched prefix, file URI) of every file the new batch took


def fingerprint(uri: str) -> tuple[int | None, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    return info.get("size"), str(mtime)


def new_files(listed: list[tuple[int, str]], state: pa.Table) -> tuple[list[tuple[int, str]], list[str]]:
    """(source index, file) of every listed file not taken yet, and the taken files that changed since."""
    sizes_mtimes = zip(state["size"].to_pylist(), state["mtime"].to_pylist(), strict=True)
    taken = dict(zip(state["file"].to_pylist(), sizes_mtimes, strict=True))
    fresh, changed = [], []
    for s, uri in listed:
        if uri not in taken:
            fresh.append((s, uri))
        elif taken[uri] != fingerprint(uri):
            changed.append(uri)
    return fresh, changed


@implements("watch_state")
def watch_state_stage(tables: dict, params: WatchParams, ctx) -> pa.Table:
    """The previous state's rows plus one row per file of the new batch."""
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    batch = ctx.input_ref("batch")
    rows = []
    for prefix, uri in params.files:
        size, mtime = fingerprint(uri)
        rows.append({"prefix": prefix, "file": uri, "size": size, "mtime": mtime, "batch": batch, "taken_at": now})
    previous = tables["previous"].cast(STATE_SCHEMA) if "previous" in tables else STATE_SCHEMA.empty_table()
    return pa.concat_tables([previous, pa.Table.from_pylist(rows, schema=STATE_SCHEMA)])
