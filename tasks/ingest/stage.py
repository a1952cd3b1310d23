"""The ``ingest`` stage: raw files (JSONL, Parquet, text, WARC/WET/ARC, HTML) into one documents schema.

``read_source`` reads an already opened binary stream with the reader of its format (``read_file`` opens a URI on
any fsspec filesystem) and yields plain rows: documents, or quarantine rows with the reason and the source location.
Nothing is dropped silently and nothing a file holds crashes the reader: a record that cannot be decoded becomes a
quarantine row at its exact position (``line:N``, ``row:N``, ``offset:N``), a file that cannot be read at all becomes
one row naming the file, and the rest is still read. Memory per record is bounded (``max_record_bytes``) whatever
the compression ratio.

    from tasks.ingest.stage import read_source
    from tasks.ingest.sources import IngestSource
    with open("c4.jsonl.gz", "rb") as f:
        for kind, row in read_source(f, "c4.jsonl.gz", IngestSource(path="c4.jsonl.gz", domain="web")):
            ...

The rooms of the package: ``sources`` (recipe sources, the input files, each file's place in its source),
``records`` (the row builders, schemas and ``doc_id``), ``compression`` (bounded decompression and lines),
``formats/`` (one reader per format: ``jsonl``, ``parquet``, ``whole`` for text and HTML files, ``warc`` over
``warc_frames``; ``html`` extracts main text). Every reader goes through the same bounded-stream primitives and the
same record guards (``records.document``, ``records.quarantine``, ``records.guarded``) that the count identity
"input records = documents + quarantine rows" rests on.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Annotated

import annotated_types
import pyarrow as pa

from tasks.common.stage import implements
from tasks.ingest.formats.jsonl import read_jsonl
from tasks.ingest.formats.parquet import read_parquet
from tasks.ingest.formats.warc import read_warc
from tasks.ingest.formats.whole import read_html, read_text
from tasks.ingest.records import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA, quarantine, storable
from tasks.ingest.sources import IngestSource, Origin, detect_format, not_regular, origin, plan_sources

_READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "text": read_text, "html": read_html, "warc": read_warc}


def read_source(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """Rows ("document" | "quarantine", row) of one file read from URI ``source``; stops after ``spec.limit``
    documents. Nothing in the file raises: a record that cannot be read is a quarantine row, a file that cannot be
    read at all is one, and so is a file whose share of bad records passes ``spec.max_bad_share`` (``_bad_share``).
    The rows' doc_ids follow the file's place in its source (``sources.origin``): below ``spec.root`` when it is
    set, else the file is a source of its own."""
    where = origin(spec, source)
    if not storable(source):
        yield "quarantine", quarantine(where, "file", "file name is not valid UTF-8 (its documents could not name it)")
        return
    try:
        fmt = spec.format if spec.format != "auto" else detect_format(source)
    except ValueError as e:
        yield "quarantine", quarantine(where, "file", str(e))
        return
    kept = seen = 0
    for kind, row in _bad_share(_unraised(_READERS[fmt](stream, where, spec), where), where, spec):
        seen += 1
        if kind == "document":
            if spec.limit is not None and kept >= spec.limit:
                return
            kept += 1
        yield kind, row
    if seen == 0:  # a 0-byte (or blank) file: say so in the quarantine table rather than pass over it in silence
        yield "quarantine", quarantine(where, "file", "no records in file (empty or only blank lines)")


def _unraised(rows: Iterator[tuple[str, dict]], where: Origin) -> Iterator[tuple[str, dict]]:
    """A reader's rows; an I/O error mid-file (or a reader bug) ends them with a row that says so rather than lose
    the rest in silence."""
    seen = 0
    while True:
        try:
            kind, row = next(rows)
        except StopIteration:
            return
        except Exception as e:
            yield "quarantine", quarantine(where, "file", f"reading stopped after {seen} records: {type(e).__name__}: {str(e)[:300]}")
            return
        seen += 1
        yield kind, row


def _bad_share(rows: Iterator[tuple[str, dict]], where: Origin, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """``rows``, unless bad records (quarantine rows) pass ``spec.max_bad_share`` of them: a binary, endless or
    wrongly named file (200 MB of garbage lines, /dev/urandom as .jsonl) then becomes one row naming the file with
    the counts instead of a row per garbage record, and the rest is never read.

    The first ``bad_share_min_records`` rows are held (a bounded number) and judged together: past the share, the
    file is quarantined whole (its few good records dropped with it, the row says how many). Past them the rows
    stream, and the share so far is judged again every ``bad_share_min_records`` records: a file that turns to
    garbage stops there with a row for the unread rest. A file with fewer records is never judged."""
    cap, n = spec.max_bad_share, spec.bad_share_min_records
    if cap is None:
        yield from rows
        return
    held: list[tuple[str, dict]] | None = []
    seen = bad = 0
    for kind, row in rows:
        seen += 1
        bad += kind == "quarantine"
        if held is not None:
            held.append((kind, row))
            if seen < n:
                continue
            if bad > cap * seen:
                excerpt = next((r["raw_excerpt"] for k, r in held if k == "quarantine" and r["raw_excerpt"]), None)
                yield "quarantine", quarantine(where, "file", (
                    f"file quarantined whole: {bad} of its first {seen} records bad ({bad / seen:.0%} > "
                    f"max_bad_share={cap}); {seen} records read, none kept ({seen - bad} good among them), the rest "
                    "of the file not read"), excerpt)
                return
            yield from held
            held = None
            continue
        yield kind, row
        if seen % n == 0 and bad > cap * seen:
            yield "quarantine", quarantine(where, "file", (
                f"reading stopped after record {seen}: {bad} of {seen} records bad ({bad / seen:.0%} > "
                f"max_bad_share={cap}); those {seen} records are accounted for above, the rest of the file not read"))
            return
    if held:
        yield from held


def read_file(uri: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """``read_source`` of a file on any fsspec filesystem; a file that cannot be opened is one quarantine row, and
    so is a special file (FIFO, device, socket, symlink loop), which is never opened."""
    import fsspec

    if (why := not_regular(uri)) is not None:
        yield "quarantine", quarantine(origin(spec, uri), "file", f"not a regular file: {why}; not read")
        return
    try:
        # a local path opens without fsspec's URL parsing (a third of the cost of a small file)
        f = open(uri, "rb") if "://" not in uri else fsspec.open(uri, "rb").open()  # noqa: SIM115 (closed below)
    except Exception as e:
        yield "quarantine", quarantine(origin(spec, uri), "file", f"cannot open file: {type(e).__name__}: {str(e)[:300]}")
        return
    with f:
        yield from read_source(f, uri, spec)


def rows_to_tables(rows: list[tuple[str, dict]]) -> tuple[pa.Table, pa.Table]:
    """Split reader rows into a documents table and a quarantine table with the fixed schemas; a document row Arrow
    cannot store (the readers make none) becomes a quarantine row rather than failing the file."""
    docs = [r for k, r in rows if k == "document"]
    bad = [r for k, r in rows if k == "quarantine"]
    try:
        table = pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA)
    except Exception:
        good = []
        for r in docs:
            try:
                pa.Table.from_pylist([r], schema=DOCUMENT_SCHEMA)
                good.append(r)
            except Exception as e:
                reason = f"document row not storable: {type(e).__name__}: {str(e)[:200]}"
                where = Origin(str(r.get("source")), str(r.get("source_path")), "")
                bad.append(quarantine(where, str(r.get("position")), reason, str(r.get("text"))))
        table = pa.Table.from_pylist(good, schema=DOCUMENT_SCHEMA)
    return table, pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA)


# ---------------------------------------------------------------------------------------------------------------
# the ``ingest`` stage (kind ``source``): the executor lists the files, packs them into work items by size, reads
# each item on a worker and writes its shards as the rows come


# A shard of input files is cut at this many input bytes (as stored): small files are packed together up to it (and
# up to docs_per_shard files), so 20,000 files of 1 KB make one work item and a few output shards, not 20,000 of
# each; a file larger than it is a work item of its own. 128 MiB is DuckDB's and Spark's usual input split size
# (spark.sql.files.maxPartitionBytes), and what one worker reads in seconds.
DEFAULT_BYTES_PER_SHARD = 128 * 2**20
# Spark's split planning (FilePartition.maxSplitBytes and getFilePartitions): each file costs its size plus
# OPEN_COST_BYTES (its fixed cost: open, stat, fingerprint, ~0.4 ms here, what ~15 KB of JSONL take to read; 64 KiB
# leaves room for an object store's request), and an item holds min(bytes_per_shard, max(OPEN_COST_BYTES, total cost /
# WORK_ITEMS)): a small input still spreads over WORK_ITEMS workers instead of one. Constants, not the cluster's
# size: the plan must be the same on a resume elsewhere (Spark's openCostInBytes is 4 MB, an HDFS open).
WORK_ITEMS, OPEN_COST_BYTES = 16, 64 * 1024
BATCH_ROWS = 5_000  # rows turned into Arrow at a time while a work item is read (memory: one batch of dicts)
QUARANTINE_ROWS_PER_SHARD = 20_000  # quarantine rows are written out every this many, whatever a file holds


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestParams:
    """The ``ingest`` recipe section: the sources, how many documents go into one shard, and how many input bytes
    one work item packs."""

    # the length bounds are read by the recipe schema too, so its errors name `ingest.sources` / `...docs_per_shard`
    sources: Annotated[tuple[IngestSource, ...], annotated_types.MinLen(1)]
    docs_per_shard: Annotated[int, annotated_types.Gt(0)] = 50_000  # output shards hold at most this many documents
    bytes_per_shard: Annotated[int, annotated_types.Gt(0)] = DEFAULT_BYTES_PER_SHARD  # input bytes per work item

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("ingest needs at least one source")
        if self.docs_per_shard < 1:
            raise ValueError(f"docs_per_shard must be >= 1, got {self.docs_per_shard}")
        if self.bytes_per_shard < 1:
            raise ValueError(f"bytes_per_shard must be >= 1, got {self.bytes_per_shard}")

    def version_params(self) -> dict:
        return {"sources": list(self.sources), "docs_per_shard": self.docs_per_shard,
                "bytes_per_shard": self.bytes_per_shard}


def pack(sizes: list[int], max_files: int, max_bytes: int) -> list[list[int]]:
    """Consecutive file indexes grouped into work items of at most ``max_files`` files and ``max_bytes`` bytes of
    ``sizes`` (a larger file alone): one pass, constant work per file. Listing order is kept, so the plan (and every shard name)
    is the same on a rerun over the same files: what resume relies on."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if current and (len(current) >= max_files or total + size > max_bytes):
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        groups.append(current)
    return groups


def input_files(params: IngestParams) -> tuple[list[tuple[dict, str]], dict]:
    """(reader settings, file URI) per input file, and the listing's stats: the repeats left out, the special files
    refused, and ``groups``, the work items (file indexes packed by size, see ``pack``) that the executor pops. Each
    file's settings are its source's with ``name`` and ``root`` resolved (one dict per source, shared by its files),
    so a worker gives the file's records the doc_ids of their place in the source."""
    plan = plan_sources(params.sources)
    specs = [dataclasses.asdict(s) for s in plan.sources]
    stats: dict = {"repeated_inputs": plan.repeats}
    if plan.refused:
        stats["refused_inputs"] = plan.refused
    costs = [size + OPEN_COST_BYTES for size in plan.sizes]
    budget = min(params.bytes_per_shard, max(OPEN_COST_BYTES, -(-sum(costs) // WORK_ITEMS)))
    stats["groups"] = pack(costs, params.docs_per_shard, budget)
    return [(specs[s], uri) for s, uri in plan.files], stats


def _new_summary(uri: str) -> dict:
    return {"file": uri, "documents": 0, "quarantined": 0, "bytes": 0, "domains": {}}


def summarize_row(summary: dict, kind: str, row: dict) -> None:
    """Count one row into its file's summary (what ``ingest_stats`` adds up)."""
    if kind == "document":
        summary["documents"] += 1
        summary["bytes"] += row["raw_bytes"]
        summary["domains"][row["domain"]] = summary["domains"].get(row["domain"], 0) + 1
    else:
        summary["quarantined"] += 1


@implements("ingest")
def read_files(files: list[tuple[str, dict]], batch_rows: int = BATCH_ROWS) -> Iterator[tuple[pa.Table, pa.Table, list[dict]]]:
    """The ``ingest`` stage's work on one work item (one file, or many small ones): (documents, quarantine rows,
    summaries of the files finished) in batches of about ``batch_rows`` rows across files, so a file of a million
    bad records or a hundred thousand tiny files are held one batch at a time. Yields at least once."""
    rows: list[tuple[str, dict]] = []
    done: list[dict] = []
    yielded = False
    for uri, spec in files:
        summary = _new_summary(uri)
        for kind, row in read_file(uri, IngestSource(**spec)):
            summarize_row(summary, kind, row)
            rows.append((kind, row))
            if len(rows) >= batch_rows:
                yield (*rows_to_tables(rows), done)
                rows, done, yielded = [], [], True
        done.append(summary)
    if rows or done or not yielded:
        yield (*rows_to_tables(rows), done)


def read_file_tables(uri: str, spec: dict) -> tuple[pa.Table, pa.Table]:
    """One input file whole: (documents, quarantine rows). For tests and tools; the stage streams (``read_files``)."""
    docs, bad = zip(*((d, b) for d, b, _ in read_files([(uri, spec)])), strict=True)
    return pa.concat_tables(docs), pa.concat_tables(bad)


# the manifest lists each file's counts up to this many files (then the files with quarantine rows first): a million
# small files would otherwise make a manifest of a hundred megabytes
PER_FILE_LISTED = 10_000


def ingest_stats(results: list[dict], elapsed: float) -> dict:
    """The manifest stats of an ingest from its per-file summaries."""
    from collections import Counter

    domains: Counter = Counter()
    for r in results:
        domains.update(r["domains"])
    docs = sum(r["documents"] for r in results)
    listed = results
    if len(results) > PER_FILE_LISTED:
        listed = sorted(results, key=lambda r: r["quarantined"] == 0)[:PER_FILE_LISTED]  # stable: files in order
    stats = {
        "files": len(results),
        "documents": docs,
        "quarantined": sum(r["quarantined"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "domains": dict(domains),
        "seconds": round(elapsed, 3),
        "docs_per_s": round(docs / elapsed, 1) if elapsed else None,
        "files_per_s": round(len(results) / elapsed, 1) if elapsed else None,
        "per_file": [{"file": r["file"], "documents": r["documents"], "quarantined": r["quarantined"]} for r in listed],
    }
    if len(listed) < len(results):
        stats["per_file_omitted"] = len(results) - len(listed)
    return stats


def ingest_artifacts(manifest: dict) -> list[tuple[str, list[dict], str]]:

    s = manifest.get("stats") or {}
    rows = [{**r, "file": posixpath.basename(r["file"])} for r in s.get("per_file", [])]
    return [("ingest-counts", rows, f"ingest of {manifest['dataset']}: {s.get('documents')} documents, "
             f"{s.get('quarantined')} quarantined")]
