"""Readers that turn raw files (JSONL, Parquet, text, WARC/WET/ARC, HTML) into one documents schema.

Each reader consumes an already opened binary stream (``read_file`` opens a URI on any fsspec filesystem) and
yields plain rows: documents, or quarantine rows with the reason and the source location. Nothing is dropped
silently and nothing a file holds crashes the reader: a record that cannot be decoded becomes a quarantine row at its
exact position (``line:N``, ``row:N``, ``offset:N``), a file that cannot be read at all becomes one row naming the
file, and the rest is still read. Memory per record is bounded (``max_record_bytes``) whatever the compression ratio.

    from tasks.ingest.stage import IngestSource, read_source
    with open("c4.jsonl.gz", "rb") as f:
        for kind, row in read_source(f, "c4.jsonl.gz", IngestSource(path="c4.jsonl.gz", domain="web")):
            ...

Size: one module on purpose. Every reader (JSONL, Parquet, text, HTML, WARC) goes through the same bounded-stream
primitives and the same record guards (surrogates, size limits, exact positions) that the count identity
"input records = documents + quarantine rows" rests on; split by format, those private pieces would be imported
across modules and could drift apart.
"""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import io
import json
import logging
import lzma
import os
import posixpath
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Annotated, Any, Literal, NamedTuple

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
# A record's raw form is larger than its text (JSON escapes, HTML markup, other fields); a record may hold this many
# times max_doc_bytes before it is given up while streaming (max_record_bytes overrides it).
RECORD_BYTES_PER_DOC_BYTE = 4
_EXCERPT = 500
_log = logging.getLogger("quarry.ingest")


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
    # raw bytes one record (a JSONL line, a WARC payload, a text or HTML file) may take in memory while it is read;
    # a larger one is quarantined and skipped without being held. None: RECORD_BYTES_PER_DOC_BYTE x max_doc_bytes
    max_record_bytes: int | None = None
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


# ------------------------------------------------------------------------------------------------- input files

_GLOB_CHARS = "*?["


def _folder_files(fs: Any, path: str) -> list[str]:
    return sorted(p for p in fs.find(path) if not posixpath.basename(p).startswith("."))


def plan_inputs(sources: Sequence[IngestSource]) -> tuple[list[tuple[int, str]], list[dict]]:
    """(source index, file URI) of every input file, each once, in a stable order; and the repeats left out.

    A path that exists is that file or folder, even when its name holds glob characters (``crawl[1].jsonl``); only a
    path that does not exist is a glob. A file listed again (the same path twice, overlapping globs, a folder and a
    file in it, a symlink to a listed file) is read once, by the first source that lists it: reading it twice gives
    every document twice under one doc_id, and dedup cannot tell such copies apart. A missing input, or a source
    that matches no file, is an error naming it.
    """
    import fsspec

    files: list[tuple[int, str]] = []
    repeats: list[dict] = []
    first: dict[str, tuple[int, str]] = {}  # resolved path -> (source, URI) of its first listing
    for i, src in enumerate(sources):
        fs, path = fsspec.core.url_to_fs(src.path)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = protocol in ("file", "local")
        if fs.exists(path):
            found = _folder_files(fs, path) if fs.isdir(path) else [path]
        elif any(ch in path for ch in _GLOB_CHARS):
            found = []
            for p, info in sorted(fs.glob(path, detail=True).items()):
                found.extend(_folder_files(fs, p) if info.get("type") == "directory" else [p])
        else:
            raise FileNotFoundError(f"ingest source {i} not found: {src.path}")
        found = [p for p in found if not any(fnmatch.fnmatch(posixpath.basename(p), pat) for pat in src.exclude)]
        if not found:
            raise FileNotFoundError(f"ingest source {i} matched no files: {src.path}")
        for p in found:
            uri = p if local else f"{protocol}://{p}"
            key = os.path.realpath(p) if local else uri
            if key in first:
                j, earlier = first[key]
                repeats.append({"source": i, "file": uri, "first_source": j, "first_file": earlier})
                _log.warning(f"ingest source {i} ({src.path}) lists {uri} again (first listed by source {j}); read once")
                continue
            first[key] = (i, uri)
            files.append((i, uri))
    return files, repeats


def list_input_files(sources: Sequence[IngestSource]) -> list[tuple[int, str]]:
    """(source index, file URI) for every input file, each once, in a stable order (see ``plan_inputs``)."""
    return plan_inputs(sources)[0]


# ------------------------------------------------------------------------------------------------- rows


def doc_id(source: str, position: str) -> str:
    """A stable id: the same file and position always give the same id, across machines and re-runs."""
    # surrogatepass: a file name that is not UTF-8 (os.fsdecode gives surrogates) still hashes; others hash as before
    return hashlib.sha1(f"{source}#{position}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


_SURROGATE = re.compile("[\ud800-\udfff]")
_INPUT_COLUMNS = ("url", "lang", "meta", "warc_record_id", "warc_date", "warc_type", "warc_content_type")


def _storable(s: str) -> bool:
    """Arrow stores UTF-8; a lone surrogate (a JSON escape such as "\\ud800", or an undecodable file name) is not."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _scrub(s: str) -> str:
    """``s`` with each lone surrogate written out as ``\\udXXX`` (for reasons and excerpts, never for documents)."""
    return s if _storable(s) else s.encode("utf-8", "backslashreplace").decode("utf-8")


def _quarantine(source: str, position: str, reason: str, raw: bytes | str | None = None) -> dict:
    if isinstance(raw, bytes):
        raw = raw[:_EXCERPT].decode("utf-8", errors="replace")
    elif isinstance(raw, str):
        raw = _scrub(raw[:_EXCERPT])
    return {
        "stage": "ingest",
        "source": _scrub(source),
        "position": position,
        "reason": _scrub(reason),
        "doc_id": doc_id(source, position),
        "raw_excerpt": raw,
    }


def _surrogate_field(value: Any, path: str) -> str | None:
    """The dotted path of the first string (key or value) in ``value`` holding a lone surrogate."""
    if isinstance(value, str):
        return None if _storable(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and not _storable(k):
                return _scrub(sub)
            if (found := _surrogate_field(v, sub)) is not None:
                return found
    elif isinstance(value, list):
        for n, v in enumerate(value):
            if (found := _surrogate_field(v, f"{path}[{n}]")) is not None:
                return found
    return None


def _document(source: str, position: str, text: str, spec: IngestSource, **extra: Any) -> tuple[str, dict]:
    """A document row, or a quarantine row when the text is unusable (empty, NUL bytes, gigantic, lone surrogates)."""
    try:
        raw_bytes = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # a JSON escape like "\ud800": valid JSON, not a character
        if spec.encoding_errors != "replace":
            return "quarantine", _quarantine(source, position, f"lone surrogate \\u{ord(text[e.start]):04x} at character {e.start} of the text", text)
        text = _SURROGATE.sub("\ufffd", text)
        raw_bytes = len(text.encode("utf-8"))
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
    # every string taken from the input must be storable too: a surrogate in the URL or a meta field would fail the
    # whole shard (isascii is a flag check: the common case costs nothing)
    for column in _INPUT_COLUMNS:
        value = row[column]
        if value is None or value.isascii() or _storable(value):
            continue
        if spec.encoding_errors == "replace":
            row[column] = _SURROGATE.sub("\ufffd", value)
            continue
        where = _surrogate_field(meta, "") if column == "meta" else column
        return "quarantine", _quarantine(source, position, f"lone surrogate in field {where!r}", text)
    return "document", row


def _guarded(source: str, position: str, convert: Any, *args: Any) -> tuple[str, dict] | None:
    """``convert(*args)``, or a quarantine row naming the error: one hostile record never ends the file's reading."""
    try:
        return convert(*args)
    except RecursionError:
        return "quarantine", _quarantine(source, position, "record nested too deeply to decode (Python's recursion limit)")
    except Exception as e:
        return "quarantine", _quarantine(source, position, f"undecodable record: {type(e).__name__}: {str(e)[:300]}")


def _record_limit(spec: IngestSource) -> int:
    if spec.max_record_bytes is not None:
        return spec.max_record_bytes
    return RECORD_BYTES_PER_DOC_BYTE * spec.max_doc_bytes


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


_READ = 1 << 16  # compressed (or plain) bytes read per call
_CHUNK = 1 << 18  # decompressed bytes per step at most (max_length of zlib, lzma, bz2)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAGIC = ((b"\x1f\x8b", "gz"), (_ZSTD_MAGIC, "zst"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bz2"))


def _codec(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".gz"):
        return "gz"
    if lower.endswith((".zst", ".zstd")):
        return "zst"
    if lower.endswith(".xz"):
        return "xz"
    if lower.endswith(".bz2"):
        return "bz2"
    return None


def _new_decompressor(codec: str) -> Any:
    if codec == "gz":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member; the caller starts the next
    if codec == "zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    if codec == "xz":
        return lzma.LZMADecompressor()
    import bz2

    return bz2.BZ2Decompressor()


class _ZstdFrames:
    """A stream that follows the zstd frame layout of the bytes read through it (RFC 8878, 3.1: frame header, 3-byte
    block headers, checksum; skippable frames) to tell a complete stream from a cut one, which zstandard's bounded
    ``stream_reader`` ends in silence. Only headers are parsed; block contents are counted past."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._pending = b""  # the start of a header that straddles two reads
        self._skip = 0  # bytes to pass before the next header
        self._state = "magic"
        self._checksum = False

    @property
    def complete(self) -> bool:
        return self._state == "magic" and not self._skip and not self._pending

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._walk(data)
        return data

    def _walk(self, data: bytes) -> None:
        buf, i = self._pending + data, 0
        while self._state != "corrupt":
            if self._skip:
                take = min(self._skip, len(buf) - i)
                i += take
                self._skip -= take
                if self._skip:
                    break
            need = {"magic": 4, "skippable": 4, "descriptor": 1, "block": 3}[self._state]
            if len(buf) - i < need:
                break
            head, i = buf[i : i + need], i + need
            if self._state == "magic":
                if head == _ZSTD_MAGIC:
                    self._state = "descriptor"
                elif head[0] & 0xF0 == 0x50 and head[1:] == b"\x2a\x4d\x18":
                    self._state = "skippable"
                else:
                    self._state = "corrupt"  # the decompressor reports it
            elif self._state == "skippable":
                self._skip, self._state = int.from_bytes(head, "little"), "magic"
            elif self._state == "descriptor":
                fhd = head[0]
                single = bool(fhd & 0x20)
                fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
                self._skip = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
                self._checksum, self._state = bool(fhd & 0x04), "block"
            else:
                header = int.from_bytes(head, "little")
                kind, size = (header >> 1) & 3, header >> 3
                self._skip = 1 if kind == 1 else size  # an RLE block holds one byte
                if header & 1:  # the frame's last block
                    self._skip += 4 if self._checksum else 0
                    self._state = "magic"
        self._pending = buf[i:]


def _decompress(stream: IO[bytes], codec: str, on_member: Any = None) -> Iterator[bytes]:
    """Decompressed chunks of at most _CHUNK bytes whatever the compression ratio (a 2 MB gzip of one 2 GB line never
    becomes one 2 GB string). Concatenated members/frames (gzip -c a b, pigz, zstd frames) are read on, and
    ``on_member(compressed offset, decompressed offset)`` is told where each gzip/xz/bz2 member begins. A stream that
    ends inside a member yields everything before the cut, then raises TruncatedArchive."""
    if codec == "zst":  # zstandard's decompressobj has no output bound: its stream_reader has
        import zstandard

        frames = _ZstdFrames(stream)
        reader = zstandard.ZstdDecompressor().stream_reader(frames, read_size=_READ, read_across_frames=True)
        while chunk := reader.read(_CHUNK):
            yield chunk
        if not frames.complete:
            raise TruncatedArchive("zstd stream ended inside a frame")
        return
    d = None
    read = produced = 0
    while data := stream.read(_READ):
        read += len(data)
        while data:
            if d is None:
                d = _new_decompressor(codec)
                if on_member is not None:
                    on_member(read - len(data), produced)
            if codec == "gz":
                out = d.decompress(data, _CHUNK)
                data = d.unused_data if d.eof else d.unconsumed_tail
            else:  # xz, bz2 keep unconsumed input themselves: drain what is ready before feeding more
                out = d.decompress(data, _CHUNK)
                while not d.eof and not d.needs_input:
                    if out:
                        produced += len(out)
                        yield out
                    out = d.decompress(b"", _CHUNK)
                data = d.unused_data if d.eof else b""
            if out:
                produced += len(out)
                yield out
            if d.eof:
                d = None
    if d is not None and hasattr(d, "flush"):  # zlib may hold the last bytes of a member
        if out := d.flush():
            produced += len(out)
            yield out
    if d is not None and not d.eof:
        raise TruncatedArchive("compressed stream ended before its end-of-stream marker")


def _chunks(stream: IO[bytes], name: str) -> Iterator[bytes]:
    """The file's bytes in bounded chunks, decompressed by the name's suffix (.gz, .zst, .xz, .bz2)."""
    codec = _codec(name)
    if codec is not None:
        yield from _decompress(stream, codec)
        return
    while chunk := stream.read(_CHUNK):
        yield chunk


class _Oversized(NamedTuple):
    """A record longer than the limit: its size and first bytes, never its whole body."""

    size: int
    head: bytes


def _head(parts: list[bytes], last: bytes = b"") -> bytes:
    out = b""
    for p in (*parts, last):
        out += p[: _EXCERPT - len(out)]
        if len(out) >= _EXCERPT:
            break
    return out


def _lines(chunks: Iterator[bytes], limit: int) -> Iterator[bytes | _Oversized]:
    """Lines without their newline; a line longer than ``limit`` is counted through, not joined (an _Oversized)."""
    parts: list[bytes] = []  # the current line's pieces while it is within the limit
    size = 0
    head: bytes | None = None  # set once the current line passed the limit
    for chunk in chunks:
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            if head is None and size + len(piece) <= limit:
                yield b"".join((*parts, piece)) if parts else piece
            else:
                yield _Oversized(size + len(piece), head if head is not None else _head(parts, piece))
            parts, size, head = [], 0, None
        if rest:
            size += len(rest)
            if head is None and size <= limit:
                parts.append(rest)
            elif head is None:
                head, parts = _head(parts, rest), []
    if size:
        yield b"".join(parts) if head is None else _Oversized(size, head)


def _json_record(line: bytes, source: str, position: str, spec: IngestSource) -> tuple[str, dict]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        if spec.encoding_errors != "replace":
            return "quarantine", _quarantine(source, position, f"non-UTF-8 bytes at byte {e.start} of the line", line)
        text = line.decode("utf-8", errors="replace")
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return "quarantine", _quarantine(source, position, f"invalid JSON: {e.msg} at column {e.colno}", line)
    except RecursionError:
        return "quarantine", _quarantine(source, position, "invalid JSON: nested deeper than Python's recursion limit", line)
    except ValueError as e:  # an integer longer than sys.get_int_max_str_digits() (4300 by default)
        return "quarantine", _quarantine(source, position, f"invalid JSON: {str(e)[:200]}", line)
    return _record_to_doc(rec, source, position, spec)


def read_jsonl(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """One document per JSON line; bad, oversized and non-UTF-8 lines and a truncated archive become quarantine rows."""
    limit = _record_limit(spec)
    lineno = 0
    lines = _lines(_chunks(stream, source), limit)
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
        if isinstance(line, _Oversized):
            yield "quarantine", _quarantine(source, position, f"record too large: {line.size} bytes > max_record_bytes={limit}", line.head)
            continue
        if not line.strip():
            continue  # blank separator lines are not records
        yield _guarded(source, position, _json_record, line, source, position, spec)


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


def read_parquet(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """One document per row at ``row:N`` (N counts every row of the file, so positions and doc_ids do not move when
    a row group before it is unreadable); each row of an unreadable row group is one quarantine row."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(stream)
        sizes = [pf.metadata.row_group(rg).num_rows for rg in range(pf.num_row_groups)]
    except Exception as e:
        yield "quarantine", _quarantine(source, "file", f"unreadable Parquet: {type(e).__name__}: {e}")
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
                yield "quarantine", _quarantine(source, f"row:{r}", reason)
            row += n
            continue
        for i, rec in enumerate(rows):
            position = f"row:{row + i}"
            if rec is None:
                yield "quarantine", _quarantine(source, position, bad[i])
            else:
                yield _guarded(source, position, _record_to_doc, rec, source, position, spec)
        row += n


def _whole(stream: IO[bytes], source: str, limit: int) -> bytes | _Oversized:
    """A whole file (decompressed), or _Oversized as soon as it passes ``limit``: the file is one record."""
    parts, size = [], 0
    for chunk in _chunks(stream, source):
        size += len(chunk)
        if size > limit:
            return _Oversized(size, _head(parts, chunk))
        parts.append(chunk)
    return b"".join(parts)


def _read_whole_file(stream: IO[bytes], source: str, spec: IngestSource) -> bytes | tuple[str, dict]:
    limit = _record_limit(spec)
    try:
        data = _whole(stream, source, limit)
    except Exception as e:
        return "quarantine", _quarantine(source, "file", f"truncated or corrupt archive: {type(e).__name__}: {e}")
    if isinstance(data, _Oversized):
        return "quarantine", _quarantine(source, "file", f"record too large: over max_record_bytes={limit} (reading stopped at {data.size} bytes)", data.head)
    return data


def _text_document(data: bytes, source: str, spec: IngestSource) -> tuple[str, dict]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if spec.encoding_errors != "replace":
            return "quarantine", _quarantine(source, "file", f"non-UTF-8 bytes at byte {e.start}", data)
        text = data.decode("utf-8", errors="replace")
    return _document(source, "file", text, spec)


def _html_document(data: bytes, source: str, spec: IngestSource) -> tuple[str, dict]:
    text = extract_html(data, extractor=spec.extractor, main_content=spec.main_content)
    if not text.strip():
        return "quarantine", _quarantine(source, "file", "no extractable text in HTML", data)
    return _document(source, "file", text, spec)


def read_text(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """A whole text file is one document."""
    data = _read_whole_file(stream, source, spec)
    yield data if isinstance(data, tuple) else _guarded(source, "file", _text_document, data, source, spec)


def read_html(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """A whole HTML file is one document (main text extracted)."""
    data = _read_whole_file(stream, source, spec)
    yield data if isinstance(data, tuple) else _guarded(source, "file", _html_document, data, source, spec)


# ------------------------------------------------------------------------------------------------- WARC / WET / ARC

_WARC_START = b"WARC/"
_NEXT_RECORD = b"\nWARC/"  # where reading resumes after a broken record: the next line that starts a record
_WARC_HEADER_MAX = 1 << 16  # a WARC header block is a few hundred bytes; this many without its blank line is no header
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_NOT_BLANK = re.compile(rb"[^\r\n]")
_WANTED = ("response", "conversion", "resource")


class _Window:
    """The bytes of a (decompressed) stream from ``base`` on, read on demand; offsets are absolute."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self.buf = bytearray()
        self.base = 0
        self.eof = False
        self.error: Exception | None = None  # why the stream ended early (a cut or corrupt archive), once it has
        self.mark = 0  # where the record being read begins (the position of an error that ends the stream)

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def fill(self, upto: int) -> None:
        """Read until ``upto`` is buffered or the stream ends; a decompression error ends it too (kept in ``error``):
        the records before the cut are still read, whatever lookahead reached it first."""
        while self.end < upto and not self.eof:
            try:
                chunk = next(self._chunks, None)
            except Exception as e:  # TruncatedArchive, zlib.error, lzma.LZMAError, zstandard.ZstdError
                chunk, self.error = None, e
            if chunk is None:
                self.eof = True
            else:
                self.buf += chunk

    def get(self, start: int, stop: int) -> bytes:
        self.fill(stop)
        return bytes(self.buf[start - self.base : stop - self.base])

    def drop(self, upto: int) -> None:
        if upto > self.base:
            del self.buf[: upto - self.base]
            self.base = upto

    def skip_blank(self, pos: int, limit: int | None = None) -> int:
        """The first offset at or after ``pos`` that is not CR or LF (the end of the stream if none is). Without a
        ``limit`` the blank bytes are let go as they are passed; with one, nothing is let go and at most ``limit``
        bytes are looked at (then ``pos + limit`` comes back)."""
        stop = None if limit is None else pos + limit
        while True:
            self.fill(pos + 1)
            if pos >= self.end:
                return self.end
            end = len(self.buf) if stop is None else min(len(self.buf), stop - self.base)
            m = _NOT_BLANK.search(self.buf, pos - self.base, end)
            if m:
                return self.base + m.start()
            pos = self.base + end
            if stop is not None and pos >= stop:
                return pos
            if stop is None:
                self.drop(pos)

    def find(self, pattern: bytes, start: int) -> int | None:
        """Offset of the next ``pattern`` at or after ``start``, reading on and letting go of the bytes before it."""
        start = max(start, self.base)
        while True:
            i = self.buf.find(pattern, start - self.base)
            if i >= 0:
                return self.base + i
            if self.eof:
                return None
            start = max(start, self.end - len(pattern) + 1)  # a match may straddle the next chunk
            self.drop(start)
            self.fill(self.end + 1)

    def at_record_start(self, pos: int) -> bool:
        """Whether a record (or the end of the stream) begins at ``pos``."""
        self.fill(pos + len(_WARC_START))
        tail = bytes(self.buf[pos - self.base : pos - self.base + len(_WARC_START)])
        return tail == _WARC_START or (self.eof and _WARC_START.startswith(tail))


def _warc_fields(header: bytes) -> tuple[str, int | str]:
    """(WARC-Type, Content-Length) of a header block; the length is an error message when it is unusable."""
    rtype, length = None, None
    for line in header.split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length" and length is None:
            length = value.strip()
        elif key == b"warc-type" and rtype is None:
            rtype = value.strip()[:40].decode("latin-1")
    rtype = rtype or "untyped"
    if length is None:
        return rtype, f"WARC {rtype} record without Content-Length"
    if not length.isdigit() or len(length) > 18:
        return rtype, f"WARC {rtype} record with an invalid Content-Length {length[:40].decode('latin-1')!r}"
    return rtype, int(length)


def _warc_frames(win: _Window, cap: int) -> Iterator[tuple[str, int, Any, Any, bool]]:
    """Cut a WARC stream into records by Content-Length, checking that each one ends where the next one begins.

    Yields ("record", start, header, payload, False) or ("bad", start, reason, excerpt, cut), where ``cut`` says the
    stream ended inside that record (the only item a cut archive's row stands for too). A wrong Content-Length (too
    short or too long), a garbled or truncated header, or bytes between records are one "bad" item each, and reading
    resumes at the next line that starts with ``WARC/``: a broken record never takes the records after it along.
    A payload over ``cap`` is never held: it is skipped to the next record (one "bad" item).
    """
    pos = 0
    while True:
        win.mark = pos
        pos = win.skip_blank(pos)
        win.drop(pos)
        win.fill(pos + _WARC_HEADER_MAX)
        if pos >= win.end:
            return
        start = win.mark = pos
        if not win.at_record_start(start):
            excerpt = win.get(start, start + _EXCERPT)
            nxt = win.find(_NEXT_RECORD, start)
            stop = win.end if nxt is None else nxt + 1
            yield "bad", start, f"{stop - start} bytes that are not a WARC record", excerpt, False
            if nxt is None:
                return
            pos = nxt + 1
            continue
        m = _HEADER_END.search(win.buf, start - win.base, start - win.base + _WARC_HEADER_MAX)
        if m is None:
            short = win.eof and win.end - start < _WARC_HEADER_MAX
            excerpt = win.get(start, start + _EXCERPT)
            nxt = win.find(_NEXT_RECORD, start + 1)
            if short and nxt is None:
                reason = "truncated WARC record: the file ends inside its header"
            else:
                reason = f"WARC header without its blank line within {_WARC_HEADER_MAX} bytes"
            yield "bad", start, reason, excerpt, short and nxt is None
            if nxt is None:
                return
            pos = nxt + 1
            continue
        body = win.base + m.end()
        header = win.get(start, body)
        rtype, length = _warc_fields(header)
        if isinstance(length, str):
            nxt = win.find(_NEXT_RECORD, body - 1)
            yield "bad", start, length, header, False
            if nxt is None:
                return
            pos = nxt + 1
            continue
        if length > cap:
            excerpt = win.get(body, body + _EXCERPT)
            nxt = win.find(_NEXT_RECORD, body - 1)
            reason = f"record too large: WARC {rtype} record of Content-Length {length} > max_record_bytes={cap}"
            cut = nxt is None and win.end < body + length
            if cut:
                reason = f"truncated WARC {rtype} record: {body + length - win.end} bytes missing of Content-Length {length}"
            yield "bad", start, reason, excerpt, cut
            if nxt is None:
                return
            pos = nxt + 1
            continue
        win.fill(body + length)
        if win.end < body + length:  # the stream ends inside the payload: truncated, or a Content-Length too long
            missing = body + length - win.end
            excerpt = win.get(body, body + _EXCERPT)
            nxt = win.find(_NEXT_RECORD, body - 1)
            reason = f"truncated WARC {rtype} record: {missing} bytes missing of Content-Length {length}"
            if nxt is not None:
                reason += " (wrong Content-Length: the next record starts inside it)"
            yield "bad", start, reason, excerpt, nxt is None
            if nxt is None:
                return
            pos = nxt + 1
            continue
        # the blank lines after the payload are looked at without letting the payload go; a long run of them is
        # left to the next round (a record boundary is all that is asked here)
        after = win.skip_blank(body + length, limit=_WARC_HEADER_MAX)
        trailer = win.get(body + length, body + length + 4) == b"\r\n\r\n"  # WARC 1.1, 4: a record ends so
        if not trailer and after < body + length + _WARC_HEADER_MAX and not win.at_record_start(after):
            # the length ends the record short of its end, or inside the next one
            excerpt = win.get(body + length, body + length + _EXCERPT)
            nxt = win.find(_NEXT_RECORD, body - 1)
            reason = f"wrong Content-Length {length} of a WARC {rtype} record: the bytes after it are not the next record"
            yield "bad", start, reason, excerpt, False
            if nxt is None:
                return
            pos = nxt + 1
            continue
        yield "record", start, header, win.get(body, body + length), False
        pos = after


class _WarcPositions:
    """``offset:N`` of a record: its byte offset in a plain file; in a compressed one the offset of its gzip member
    (what a CDX index and warcio report), ``offset:M+N`` for a later record inside one member."""

    def __init__(self, compressed: bool):
        self.members: list[tuple[int, int]] = []  # (decompressed offset, compressed offset) of each member
        self.compressed = compressed
        self._labelled = -1  # the member that already gave its plain offset to a record

    def member(self, compressed: int, decompressed: int) -> None:
        self.members.append((decompressed, compressed))

    def __call__(self, u: int) -> str:
        if not self.compressed or not self.members:
            return f"offset:{u}"
        i = max(0, bisect.bisect_right(self.members, (u, float("inf"))) - 1)
        ustart, cstart = self.members[i]
        if i > 1024:  # positions only grow: let go of members long passed
            del self.members[: i - 1]
            self._labelled -= i - 1
            i = 1
        if i != self._labelled:
            self._labelled = i
            return f"offset:{cstart}"
        return f"offset:{cstart}+{u - ustart}"


class _Prefixed:
    """A stream whose first bytes were read already (to sniff the format), readable from the start again."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head, self._rest, self._pos = head, rest, 0

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                out, self._head = self._head + self._rest.read(), b""
            else:
                out, self._head = self._head[:size], self._head[size:]
        else:
            out = self._rest.read(size)
        self._pos += len(out)
        return out

    def tell(self) -> int:
        return self._pos


def _sniff(head: bytes) -> tuple[str | None, bytes]:
    """(codec, first decompressed bytes) of a file's first bytes."""
    codec = next((c for magic, c in _MAGIC if head.startswith(magic)), None)
    if codec is None:
        return None, head[:64]
    if codec == "zst":
        import zstandard

        return codec, zstandard.ZstdDecompressor().stream_reader(io.BytesIO(head)).read(64)
    return codec, _new_decompressor(codec).decompress(head, 64)


def _read_upto(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes (warcio's readers return one buffer per read, not ``n`` bytes)."""
    parts, size = [], 0
    while size < n and (chunk := stream.read(min(_CHUNK, n - size))):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _warc_document(record: Any, source: str, position: str, spec: IngestSource, cap: int, framed: bool) -> tuple[str, dict] | None:
    """The document (or quarantine row) of one warcio record; None for records that hold no document."""
    rtype = record.rec_type
    headers = record.rec_headers
    wanted = rtype in _WANTED
    try:
        if wanted:
            payload = _read_upto(record.content_stream(), cap + 1)  # dechunked and decoded: bounded again
        else:
            payload = b""
            if not framed:  # read to the end to see whether it is complete; never held
                while record.raw_stream.read(_READ):
                    pass
    except Exception as e:  # chunked/compressed payload errors
        return "quarantine", _quarantine(source, position, f"unreadable payload: {type(e).__name__}: {e}")
    if len(payload) > cap:
        return "quarantine", _quarantine(source, position, f"record too large: WARC {rtype} payload over max_record_bytes={cap} once decoded", payload)
    missing = 0 if framed else getattr(record.raw_stream, "limit", 0) or 0
    if missing > 0:
        # fewer bytes than Content-Length: a truncated file or a wrong length; the text would be partial
        return "quarantine", _quarantine(source, position, f"truncated WARC {rtype or 'untyped'} record: {missing} bytes missing of Content-Length {record.length}", payload)
    if rtype is None:
        return "quarantine", _quarantine(source, position, "record without WARC-Type", payload)
    if not wanted:
        return None  # request, metadata, warcinfo, revisit: no document text
    url = headers.get_header("WARC-Target-URI")
    if url and url.startswith("metadata:"):
        return None  # crawler logs stored as resource records (wget's warc log), not web documents
    if rtype == "response" and record.http_headers is not None:
        ctype = (record.http_headers.get_header("Content-Type") or "").lower()
        status = record.http_headers.get_statuscode()
    else:
        ctype = (headers.get_header("Content-Type") or "").lower()
        status = None
    if status is not None and not str(status).startswith("2"):
        return None  # redirects and errors carry no page text; not a document to lose
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
                return "quarantine", _quarantine(source, position, f"non-UTF-8 bytes at byte {e.start}", payload)
            text = payload.decode("utf-8", errors="replace")
    elif "html" in ctype or (not ctype and payload.lstrip()[:1] == b"<"):
        text = extract_html(payload, extractor=spec.extractor, main_content=spec.main_content)
        if not text.strip():
            return "quarantine", _quarantine(source, position, "no extractable text in HTML", payload)
    else:
        return None  # images, PDFs, scripts: not text documents
    return _document(source, position, text, spec, **extra)


def _framed_record(header: bytes, payload: bytes, source: str, position: str, spec: IngestSource, cap: int) -> tuple[str, dict] | None:
    from warcio.archiveiterator import ArchiveIterator

    # the frame is exact, so warcio sees exactly one well-formed record (HTTP headers, chunking, content encoding)
    record = next(iter(ArchiveIterator(io.BytesIO(header + payload + b"\r\n\r\n"), arc2warc=True)))
    return _warc_document(record, source, position, spec, cap, framed=True)


def read_warc(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """WARC response records (HTML → main text), WET conversion records (text as is), resource records; ARC too.

    Positions are record offsets in the (compressed) file, which is what a WARC index (CDX) would point to. WARC
    files (plain, or gzip/zstd/xz/bz2 per record or whole) are cut into records here, with every Content-Length
    checked against where the next record begins; ARC files go through warcio's own iterator.
    """
    cap = _record_limit(spec)
    head = stream.read(_READ)
    stream = _Prefixed(head, stream)
    try:
        codec, first = _sniff(head)
    except Exception:  # a corrupt first member: the iterator below reports it
        codec, first = None, b""
    first = first.lstrip(b"\r\n")
    if first.startswith(_WARC_START) or (first and _WARC_START.startswith(first)):
        yield from _read_warc_framed(stream, source, spec, codec, cap)
    else:
        yield from _read_warc_iterated(stream, source, spec, cap)


def _read_warc_framed(stream: IO[bytes], source: str, spec: IngestSource, codec: str | None, cap: int) -> Iterator[tuple[str, dict]]:
    positions = _WarcPositions(compressed=codec is not None)
    if codec is None:
        chunks: Iterator[bytes] = iter(lambda: stream.read(_CHUNK), b"")
    else:
        chunks = _decompress(stream, codec, positions.member)
    win = _Window(chunks)
    held = None  # the record a cut archive ended inside: it and the cut are one row
    for kind, start, a, b, cut in _warc_frames(win, cap):
        position = positions(start)
        if kind == "bad":
            if cut and win.error is not None:
                held = _quarantine(source, position, a, b)
            else:
                yield "quarantine", _quarantine(source, position, a, b)
            continue
        row = _guarded(source, position, _framed_record, a, b, source, position, spec, cap)
        if row is not None:
            yield row
    if win.error is not None:  # the archive is cut or corrupt: what came before the cut is kept, the rest is one row
        reason = f"truncated or corrupt archive: {type(win.error).__name__}: {str(win.error)[:200]}"
        if held is None:
            held = _quarantine(source, positions(win.mark), reason)
        else:
            held["reason"] = f"{reason}; {held['reason']}"
    if held is not None:
        yield "quarantine", held


def _read_warc_iterated(stream: IO[bytes], source: str, spec: IngestSource, cap: int) -> Iterator[tuple[str, dict]]:
    from warcio.archiveiterator import ArchiveIterator

    it = ArchiveIterator(stream, arc2warc=True)
    index = 0
    while True:
        try:
            record = next(it)
        except StopIteration:
            return
        except Exception as e:  # ArchiveLoadFailed, EOFError, zlib.error, ValueError: the rest cannot be framed
            yield "quarantine", _quarantine(source, f"record:{index}", f"broken WARC record after record {index}: {type(e).__name__}: {str(e)[:300]}")
            return
        index += 1
        # it.get_record_offset() would consume the payload; the offset the iterator already tracks is the same value
        position = f"offset:{it.offset}"
        row = _guarded(source, position, _warc_document, record, source, position, spec, cap, False)
        if row is not None:
            yield row


_READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "text": read_text, "html": read_html, "warc": read_warc}


def read_source(stream: IO[bytes], source: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """Rows ("document" | "quarantine", row) of one file; stops after ``spec.limit`` documents. Nothing in the file
    raises: a record that cannot be read is a quarantine row, a file that cannot be read at all is one."""
    if not _storable(source):
        yield "quarantine", _quarantine(source, "file", "file name is not valid UTF-8 (its documents could not name it)")
        return
    try:
        fmt = spec.format if spec.format != "auto" else detect_format(source)
    except ValueError as e:
        yield "quarantine", _quarantine(source, "file", str(e))
        return
    kept = seen = 0
    rows = _READERS[fmt](stream, source, spec)
    while True:
        try:
            kind, row = next(rows)
        except StopIteration:
            break
        except Exception as e:  # an I/O error mid-file (or a reader bug): say so rather than lose the rest in silence
            seen += 1
            yield "quarantine", _quarantine(source, "file", f"reading stopped after {seen - 1} records: {type(e).__name__}: {str(e)[:300]}")
            break
        seen += 1
        if kind == "document":
            if spec.limit is not None and kept >= spec.limit:
                return
            kept += 1
        yield kind, row
    if seen == 0:  # a 0-byte (or blank) file: say so in the quarantine table rather than pass over it in silence
        yield "quarantine", _quarantine(source, "file", "no records in file (empty or only blank lines)")


def read_file(uri: str, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """``read_source`` of a file on any fsspec filesystem; a file that cannot be opened is one quarantine row."""
    import fsspec

    try:
        f = fsspec.open(uri, "rb").open()
    except Exception as e:
        yield "quarantine", _quarantine(uri, "file", f"cannot open file: {type(e).__name__}: {str(e)[:300]}")
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
                bad.append(_quarantine(str(r.get("source")), str(r.get("position")), reason, str(r.get("text"))))
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
    (recorded in the manifest's stats)."""
    import dataclasses

    files, repeats = plan_inputs(params.sources)
    return [(dataclasses.asdict(params.sources[s]), uri) for s, uri in files], {"repeated_inputs": repeats}


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
    import posixpath

    s = manifest.get("stats") or {}
    rows = [{**r, "file": posixpath.basename(r["file"])} for r in s.get("per_file", [])]
    return [("ingest-counts", rows, f"ingest of {manifest['dataset']}: {s.get('documents')} documents, "
             f"{s.get('quarantined')} quarantined")]
