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
from tasks.ingest.sources import IngestSource, Origin, detect_format, origin, plan_sources

_READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "text": read_text, "html": read_html, "warc": read_warc}


def read_source(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """Rows ("document" | "quarantine", row) of one file read from URI ``source``; stops after ``spec.limit``
    documents. Nothing in the file raises: a record that cannot be read is a quarantine row, a file that cannot be
    read at all is one. The rows' doc_ids follow the file's place in its source (``sources.origin``): below
    ``spec.root`` when it is set, else the file is a source of its own."""
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
    rows = _READERS[fmt](stream, where, spec)
    while True:
        try:
            kind, row = next(rows)
        except StopIteration:
            break
        except Exception as e:  # an I/O error mid-file (or a reader bug): say so rather than lose the rest in silence
            seen += 1
            yield "quarantine", quarantine(where, "file", f"reading stopped after {seen - 1} records: {type(e).__name__}: {str(e)[:300]}")
            break
        seen += 1
        if kind == "document":
            if spec.limit is not None and kept >= spec.limit:
                return
            kept += 1
        yield kind, row
    if seen == 0:  # a 0-byte (or blank) file: say so in the quarantine table rather than pass over it in silence
        yield "quarantine", quarantine(where, "file", "no records in file (empty or only blank lines)")


def read_file(uri: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """``read_source`` of a file on any fsspec filesystem; a file that cannot be opened is one quarantine row."""
    import fsspec

    try:
        f = fsspec.open(uri, "rb").open()
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
# the ``ingest`` stage (kind ``source``): the executor lists the files, reads each on a worker, writes the shards


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestParams:
    """The ``ingest`` recipe section: the sources, and how many documents go into one shard."""

    # the length bounds are read by the recipe schema too, so its errors name `ingest.sources` / `...docs_per_shard`
    sources: Annotated[tuple[IngestSource, ...], annotated_types.MinLen(1)]
    docs_per_shard: Annotated[int, annotated_types.Gt(0)] = 50_000  # a large input file is split into shards of this many documents

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("ingest needs at least one source")
        if self.docs_per_shard < 1:
            raise ValueError(f"docs_per_shard must be >= 1, got {self.docs_per_shard}")

    def version_params(self) -> dict:
        return {"sources": list(self.sources), "docs_per_shard": self.docs_per_shard}


def input_files(params: IngestParams) -> tuple[list[tuple[dict, str]], dict]:
    """(reader settings, file URI) per input file, what the executor hands each worker; and the repeats left out
    (recorded in the manifest's stats). Each file's settings are its source's with ``name`` and ``root`` resolved,
    so a worker gives the file's records the doc_ids of their place in the source."""
    plan = plan_sources(params.sources)
    return [(dataclasses.asdict(plan.sources[s]), uri) for s, uri in plan.files], {"repeated_inputs": plan.repeats}


@implements("ingest")
def read_file_tables(uri: str, spec: dict) -> tuple[pa.Table, pa.Table]:
    """The ``ingest`` stage's work on one input file: (documents, quarantine rows)."""
    return rows_to_tables(list(read_file(uri, IngestSource(**spec))))


def summarize_file(docs: pa.Table, bad: pa.Table) -> dict:
    from collections import Counter

    import pyarrow.compute as pc

    return {
        "documents": docs.num_rows,
        "quarantined": bad.num_rows,
        "bytes": int(pc.sum(docs["raw_bytes"]).as_py() or 0),
        "domains": dict(Counter(docs["domain"].to_pylist())),
    }


def ingest_stats(results: list[dict], elapsed: float) -> dict:
    from collections import Counter

    domains: Counter = Counter()
    for r in results:
        domains.update(r["domains"])
    docs = sum(r["documents"] for r in results)
    return {
        "files": len(results),
        "documents": docs,
        "quarantined": sum(r["quarantined"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "domains": dict(domains),
        "seconds": round(elapsed, 3),
        "docs_per_s": round(docs / elapsed, 1) if elapsed else None,
        "per_file": [{"file": r["file"], "documents": r["documents"], "quarantined": r["quarantined"]} for r in results],
    }


def ingest_artifacts(manifest: dict) -> list[tuple[str, list[dict], str]]:

    s = manifest.get("stats") or {}
    rows = [{**r, "file": posixpath.basename(r["file"])} for r in s.get("per_file", [])]
    return [("ingest-counts", rows, f"ingest of {manifest['dataset']}: {s.get('documents')} documents, "
             f"{s.get('quarantined')} quarantined")]
