"""Readers that turn raw files (JSONL, Parquet, text, WARC/WET/ARC, HTML) into one documents schema.

Each reader consumes an already opened binary stream (the engine opens it on any fsspec filesystem) and yields
plain rows: documents, or quarantine rows with the reason and the source location. Nothing is dropped silently:
a broken record becomes a quarantine row and the rest of the file is still read.

    from tasks.ingest import IngestSource, read_source
    with open("c4.jsonl.gz", "rb") as f:
        for kind, row in read_source(f, "c4.jsonl.gz", IngestSource(path="c4.jsonl.gz", domain="web")):
            ...
"""

from __future__ import annotations

import hashlib
import json
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Annotated, Any, Literal

import annotated_types
import pyarrow as pa

Format = Literal["auto", "jsonl", "parquet", "text", "warc", "html"]

DOCUMENT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("url", pa.string()),
        ("source", pa.string()),
        ("domain", pa.string()),
        ("lang", pa.string()),
        ("raw_bytes", pa.int64()),
        ("position", pa.string()),
        ("warc_record_id", pa.string()),
        ("warc_date", pa.string()),
        ("warc_type", pa.string()),
        ("warc_content_type", pa.string()),
        ("meta", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("source", pa.string()),
        ("position", pa.string()),
        ("reason", pa.string()),
        ("doc_id", pa.string()),
        ("raw_excerpt", pa.string()),
    ]
)

# A document larger than this is quarantined rather than carried through every stage (RPv2 and datatrove cap
# documents too; 10 MB of text is far beyond any real web page after extraction).
DEFAULT_MAX_DOC_BYTES = 10_000_000
_EXCERPT = 500


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestSource:
    """One input of a recipe: a file, a folder or a glob on any fsspec filesystem."""

    path: str  # file, folder or glob; relative paths are resolved against the recipe file's folder
    format: Format = "auto"  # auto: from the extension (.jsonl/.json(.gz|.zst), .parquet, .txt, .warc/.wet/.arc, .html)
    domain: str = "web"  # label carried by every document (web, wikipedia, code, stackexchange, arxiv, ...)
    lang: str | None = None  # language when known for the whole source; a record's own lang field wins
    text_field: str = "text"  # JSONL/Parquet: the column holding the text
    html_field: str | None = None  # JSONL/Parquet: a column holding HTML to extract text from (instead of text_field)
    title_field: str | None = None  # prepended to the text as its first line when present (StackExchange titles)
    url_field: str | None = "url"  # JSONL/Parquet: the URL column; falls back to `id` when it looks like a URL
    lang_field: str | None = "lang"
    limit: int | None = None  # keep at most this many documents per file (tiny recipes, smoke tests)
    extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"  # HTML main-text extraction
    main_content: bool = True  # extract the main content only (boilerplate removal) for full pages
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES
    encoding_errors: Literal["quarantine", "replace"] = "quarantine"  # non-UTF-8 records
    exclude: tuple[str, ...] = field(default_factory=tuple)  # glob patterns of files to skip inside a folder

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path must not be empty")
        # limit -1 / 0 read nothing (`kept >= limit` holds at once): a silently empty source, never what was meant
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or absent for no limit), got {self.limit}")
        if self.max_doc_bytes < 1:
            raise ValueError(f"max_doc_bytes must be >= 1, got {self.max_doc_bytes}")
        for name in ("text_field", "domain"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")


def detect_format(name: str) -> Format:
    """The reader for a file name, from its extension (compression suffixes ignored)."""
    base = name.lower()
    for suffix in (".gz", ".zst", ".zstd", ".xz", ".bz2"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if base.endswith((".parquet", ".pq")):
        return "parquet"
    if base.endswith((".warc", ".wet", ".arc", ".wat")):
        return "warc"
    if base.endswith((".html", ".htm")):
        return "html"
    if base.endswith((".txt", ".md", ".text")):
        return "text"
    raise ValueError(f"cannot tell the format of {name!r} from its extension; set `format:` in the recipe source")


def doc_id(source: str, position: str) -> str:
    """A stable id: the same file and position always give the same id, across machines and re-runs."""
    return hashlib.sha1(f"{source}#{position}".encode()).hexdigest()[:20]


def _quarantine(source: str, position: str, reason: str, raw: bytes | str | None = None) -> dict:
    if isinstance(raw, bytes):
        raw = raw[:_EXCERPT].decode("utf-8", errors="replace")
    elif isinstance(raw, str):
        raw = raw[:_EXCERPT]
    return {
        "stage": "ingest",
        "source": source,
        "position": position,
        "reason": reason,
        "doc_id": doc_id(source, position),
        "raw_excerpt": raw,
    }


def _document(source: str, position: str, text: str, spec: IngestSource, **extra: Any) -> tuple[str, dict]:
    """A document row, or a quarantine row when the text is unusable (empty, NUL bytes, gigantic)."""
    raw_bytes = len(text.encode("utf-8", errors="surrogatepass"))
    if raw_bytes > spec.max_doc_bytes:
        return "quarantine", _quarantine(source, position, f"document too large: {raw_bytes} bytes > max_doc_bytes={spec.max_doc_bytes}", text)
    if "\x00" in text:
        return "quarantine", _quarantine(source, position, "NUL byte in text", text)
    if not text.strip():
        return "quarantine", _quarantine(source, position, "empty text", text)
    meta = extra.pop("meta", None)
    row = {
        "doc_id": doc_id(source, position),
        "text": text,
        "url": extra.pop("url", None),
        "source": source,
        "domain": spec.domain,
        "lang": extra.pop("lang", None) or spec.lang,
        "raw_bytes": raw_bytes,
        "position": position,
        "warc_record_id": None,
        "warc_date": None,
        "warc_type": None,
        "warc_content_type": None,
        "meta": json.dumps(meta, ensure_ascii=False, default=str) if meta else None,
    }
    row.update(extra)
    return "document", row


# ------------------------------------------------------------------------------------------------- HTML


def extract_html(html: str | bytes, *, extractor: str = "resiliparse", main_content: bool = True) -> str:
    """Main text of an HTML page (resiliparse by default: fast; trafilatura on request: more precise)."""
    if isinstance(html, bytes):
        from resiliparse.parse.encoding import bytes_to_str, detect_encoding

        html = bytes_to_str(html, detect_encoding(html))
    if extractor == "trafilatura":
        import trafilatura

        return trafilatura.extract(html, include_comments=False, favor_precision=main_content) or ""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=main_content, alt_texts=False, links=False, list_bullets=True) or ""


# ------------------------------------------------------------------------------------------------- JSONL / Parquet


def _record_to_doc(rec: dict, source: str, position: str, spec: IngestSource) -> tuple[str, dict]:
    if not isinstance(rec, dict):
        return "quarantine", _quarantine(source, position, f"record is a JSON {type(rec).__name__}, not an object", json.dumps(rec)[:_EXCERPT])
    if spec.html_field:
        html = rec.get(spec.html_field)
        if not isinstance(html, str):
            return "quarantine", _quarantine(source, position, f"field {spec.html_field!r} missing or not a string", json.dumps(rec, default=str))
        text = extract_html(html, extractor=spec.extractor, main_content=spec.main_content)
        if not text.strip():
            return "quarantine", _quarantine(source, position, "no extractable text in HTML", html)
        used = {spec.html_field}
    else:
        text = rec.get(spec.text_field)
        if text is None:
            return "quarantine", _quarantine(source, position, f"field {spec.text_field!r} missing", json.dumps(rec, default=str))
        if not isinstance(text, str):
            return "quarantine", _quarantine(source, position, f"field {spec.text_field!r} is {type(text).__name__}, not a string", json.dumps(rec, default=str))
        used = {spec.text_field}
    if spec.title_field and isinstance(rec.get(spec.title_field), str) and rec[spec.title_field].strip():
        text = rec[spec.title_field].strip() + "\n" + text
        used.add(spec.title_field)
    url = rec.get(spec.url_field) if spec.url_field else None
    if url is None and isinstance(rec.get("id"), str) and rec["id"].startswith(("http://", "https://")):
        url = rec["id"]
    lang = rec.get(spec.lang_field) if spec.lang_field else None
    meta = {k: v for k, v in rec.items() if k not in used and k != spec.url_field}
    return _document(source, position, text, spec, url=str(url) if url is not None else None, lang=lang if isinstance(lang, str) else None, meta=meta or None)


class TruncatedArchive(EOFError):
    """A compressed stream ended before its end-of-stream marker."""


def _decompressor(name: str):
    lower = name.lower()
    if lower.endswith(".gz"):
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header, multi-member handled by the caller
    if lower.endswith((".zst", ".zstd")):
        import zstandard

        return lambda: zstandard.ZstdDecompressor().decompressobj()
    if lower.endswith(".xz"):
        return lzma.LZMADecompressor
    if lower.endswith(".bz2"):
        import bz2

        return bz2.BZ2Decompressor
    return None


def _chunks(stream: IO[bytes], name: str, size: int = 1 << 16) -> Iterator[bytes]:
    """Decompressed chunks; a truncated archive yields everything before the cut, then raises TruncatedArchive."""
    make = _decompressor(name)
    if make is None:
        while chunk := stream.read(size):
            yield chunk
        return
    d, started = make(), False
    while chunk := stream.read(size):
        while chunk:
            out = d.decompress(chunk)
            started = True
            if out:
                yield out
            if getattr(d, "eof", False):
                chunk = d.unused_data  # concatenated members/frames (gzip -c a b, pigz, zstd frames)
                if chunk:
                    d = make()
            else:
                chunk = b""
    if started and not getattr(d, "eof", True):
        raise TruncatedArchive("compressed stream ended before its end-of-stream marker")


def _lines(stream: IO[bytes], name: str) -> Iterator[bytes]:
    buf = b""
    for chunk in _chunks(stream, name):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf:
        yield buf


def read_jsonl(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """One document per JSON line; bad lines, non-UTF-8 lines and a truncated archive become quarantine rows."""
    lineno = 0
    lines = _lines(stream, source)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except Exception as e:  # TruncatedArchive, zlib.error, lzma.LZMAError, zstandard.ZstdError
            yield "quarantine", _quarantine(source, f"line:{lineno + 1}", f"truncated or corrupt archive after line {lineno}: {type(e).__name__}: {e}")
            return
        lineno += 1
        position = f"line:{lineno}"
        if not line.strip():
            continue  # blank separator lines are not records
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            if spec.encoding_errors == "replace":
                text = line.decode("utf-8", errors="replace")
            else:
                yield "quarantine", _quarantine(source, position, f"non-UTF-8 bytes at byte {e.start} of the line", line)
                continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            yield "quarantine", _quarantine(source, position, f"invalid JSON: {e.msg} at column {e.colno}", line)
            continue
        yield _record_to_doc(rec, source, position, spec)


def read_parquet(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(stream)
    except Exception as e:
        yield "quarantine", _quarantine(source, "file", f"unreadable Parquet: {type(e).__name__}: {e}")
        return
    row = 0
    for rg in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(rg)
        except Exception as e:
            yield "quarantine", _quarantine(source, f"row_group:{rg}", f"unreadable row group: {type(e).__name__}: {e}")
            continue
        for rec in table.to_pylist():
            yield _record_to_doc(rec, source, f"row:{row}", spec)
            row += 1


def read_text(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """A whole text file is one document."""
    try:
        data = b"".join(_chunks(stream, source))
    except Exception as e:
        yield "quarantine", _quarantine(source, "file", f"truncated or corrupt archive: {type(e).__name__}: {e}")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if spec.encoding_errors != "replace":
            yield "quarantine", _quarantine(source, "file", f"non-UTF-8 bytes at byte {e.start}", data)
            return
        text = data.decode("utf-8", errors="replace")
    yield _document(source, "file", text, spec)


def read_html(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """A whole HTML file is one document (main text extracted)."""
    try:
        data = b"".join(_chunks(stream, source))
    except Exception as e:
        yield "quarantine", _quarantine(source, "file", f"truncated or corrupt archive: {type(e).__name__}: {e}")
        return
    text = extract_html(data, extractor=spec.extractor, main_content=spec.main_content)
    if not text.strip():
        yield "quarantine", _quarantine(source, "file", "no extractable text in HTML", data)
        return
    yield _document(source, "file", text, spec)


# ------------------------------------------------------------------------------------------------- WARC / WET / ARC


def read_warc(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """WARC response records (HTML → main text), WET conversion records (text as is), resource records; ARC too.

    Positions are record offsets in the (compressed) file, which is what a WARC index (CDX) would point to.
    """
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    it = ArchiveIterator(stream, arc2warc=True)
    index = 0
    while True:
        try:
            record = next(it)
        except StopIteration:
            return
        except (ArchiveLoadFailed, EOFError, OSError, zlib.error, ValueError) as e:
            yield "quarantine", _quarantine(source, f"record:{index}", f"broken WARC record after record {index}: {type(e).__name__}: {e}")
            return
        index += 1
        # it.get_record_offset() would consume the payload; the offset the iterator already tracks is the same value
        position = f"offset:{it.offset}"
        rtype = record.rec_type
        headers = record.rec_headers
        wanted = rtype in ("response", "conversion", "resource")
        try:
            payload = record.content_stream().read() if wanted else record.raw_stream.read()
        except Exception as e:  # chunked/compressed payload errors
            yield "quarantine", _quarantine(source, position, f"unreadable payload: {type(e).__name__}: {e}")
            continue
        missing = getattr(record.raw_stream, "limit", 0) or 0
        if missing > 0:
            # fewer bytes than Content-Length: a truncated file or a wrong length; the text would be partial
            yield "quarantine", _quarantine(source, position, f"truncated WARC {rtype or 'untyped'} record: {missing} bytes missing of Content-Length {record.length}", payload)
            continue
        if rtype is None:
            yield "quarantine", _quarantine(source, position, "record without WARC-Type", payload)
            continue
        if not wanted:
            continue  # request, metadata, warcinfo, revisit: no document text
        url = headers.get_header("WARC-Target-URI")
        if url and url.startswith("metadata:"):
            continue  # crawler logs stored as resource records (wget's warc log), not web documents
        if rtype == "response" and record.http_headers is not None:
            ctype = (record.http_headers.get_header("Content-Type") or "").lower()
            status = record.http_headers.get_statuscode()
        else:
            ctype = (headers.get_header("Content-Type") or "").lower()
            status = None
        if status is not None and not str(status).startswith("2"):
            continue  # redirects and errors carry no page text; not a document to lose
        meta = {"http_status": status} if status else None
        extra = {
            "url": url,
            "warc_record_id": headers.get_header("WARC-Record-ID"),
            "warc_date": headers.get_header("WARC-Date"),
            "warc_type": rtype,
            "warc_content_type": ctype or None,
            "meta": meta,
        }
        if rtype == "conversion" or ctype.startswith("text/plain"):
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as e:
                if spec.encoding_errors != "replace":
                    yield "quarantine", _quarantine(source, position, f"non-UTF-8 bytes at byte {e.start}", payload)
                    continue
                text = payload.decode("utf-8", errors="replace")
        elif "html" in ctype or (not ctype and payload.lstrip()[:1] == b"<"):
            text = extract_html(payload, extractor=spec.extractor, main_content=spec.main_content)
            if not text.strip():
                yield "quarantine", _quarantine(source, position, "no extractable text in HTML", payload)
                continue
        else:
            continue  # images, PDFs, scripts: not text documents
        yield _document(source, position, text, spec, **extra)


_READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "text": read_text, "html": read_html, "warc": read_warc}


def read_source(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """Rows ("document" | "quarantine", row) of one file; stops after ``spec.limit`` documents."""
    fmt = spec.format if spec.format != "auto" else detect_format(source)
    kept = seen = 0
    for kind, row in _READERS[fmt](stream, source, spec):
        seen += 1
        if kind == "document":
            if spec.limit is not None and kept >= spec.limit:
                return
            kept += 1
        yield kind, row
    if seen == 0:  # a 0-byte (or blank) file: say so in the quarantine table rather than pass over it in silence
        yield "quarantine", _quarantine(source, "file", "no records in file (empty or only blank lines)")


def rows_to_tables(rows: list[tuple[str, dict]]) -> tuple[pa.Table, pa.Table]:
    """Split reader rows into a documents table and a quarantine table with the fixed schemas."""
    docs = [r for k, r in rows if k == "document"]
    bad = [r for k, r in rows if k == "quarantine"]
    return (
        pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA),
        pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA),
    )


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


def list_input_files(sources: Any) -> list[tuple[int, str]]:
    """(source index, file URI) for every input file, in a stable order; a missing input is an error."""
    import fnmatch
    import posixpath

    import fsspec

    out: list[tuple[int, str]] = []
    for i, src in enumerate(sources):
        fs, path = fsspec.core.url_to_fs(src.path)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if any(ch in path for ch in "*?["):
            found = sorted(fs.glob(path))
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if not posixpath.basename(p).startswith("."))
        elif fs.exists(path):
            found = [path]
        else:
            raise FileNotFoundError(f"ingest source {i} not found: {src.path}")
        found = [p for p in found if not any(fnmatch.fnmatch(posixpath.basename(p), pat) for pat in src.exclude)]
        if not found:
            raise FileNotFoundError(f"ingest source {i} matched no files: {src.path}")
        for p in found:
            out.append((i, p if protocol in ("file", "local") else f"{protocol}://{p}"))
    return out


def input_files(params: IngestParams) -> list[tuple[dict, str]]:
    """(reader settings, file URI) per input file: what the executor hands each worker."""
    import dataclasses

    return [(dataclasses.asdict(params.sources[s]), uri) for s, uri in list_input_files(params.sources)]


def read_file(stream: IO[bytes], uri: str, spec: dict) -> tuple[pa.Table, pa.Table]:
    """One input file -> (documents, quarantine rows)."""
    return rows_to_tables(list(read_source(stream, uri, IngestSource(**spec))))


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
    import posixpath

    s = manifest.get("stats") or {}
    rows = [{**r, "file": posixpath.basename(r["file"])} for r in s.get("per_file", [])]
    return [("ingest-counts", rows, f"ingest of {manifest['dataset']}: {s.get('documents')} documents, "
             f"{s.get('quarantined')} quarantined")]
