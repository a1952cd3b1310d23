"""The rows every reader yields: documents and quarantine rows, their fixed schemas, and ``doc_id``.

A reader never builds a row itself: ``document`` turns decoded text into a document row, or into a quarantine row
when the text is unusable (empty, NUL bytes, gigantic, lone surrogates), and ``quarantine`` names a record that could
not be read, at its exact position. Both carry the file's ``Origin`` (``tasks.ingest.sources``): the URI it was read
from (``source``) and its place in its source (``source_path``), which with the position makes the ``doc_id``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pyarrow as pa

from tasks.ingest.sources import IngestSource, Origin

DOCUMENT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("url", pa.string()),
        ("source", pa.string()),
        ("source_path", pa.string()),
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
        ("source_path", pa.string()),
        ("position", pa.string()),
        ("reason", pa.string()),
        ("doc_id", pa.string()),
        ("raw_excerpt", pa.string()),
    ]
)

EXCERPT = 500  # bytes of a bad record kept in its quarantine row
_SURROGATE = re.compile("[\ud800-\udfff]")
_INPUT_COLUMNS = ("url", "lang", "meta", "warc_record_id", "warc_date", "warc_type", "warc_content_type")


def doc_id(source_path: str, position: str) -> str:
    """``sha1(source_path + "#" + position)[:20]``: the same record of the same file at the same place inside a
    source of the same name gives the same id on any machine, mount point or filesystem.

    ``source_path`` is ``Origin.key``: the source's name, then ``/`` and the file's path inside the source (the name
    alone for a single-file source); ``position`` is the record's place in the file (``line:N``, ``row:N``,
    ``offset:N``, ``file``). Where the source is mounted, spelled or stored never enters it.
    """
    # surrogatepass: a file name that is not UTF-8 (os.fsdecode gives surrogates) still hashes; others hash as before
    return hashlib.sha1(f"{source_path}#{position}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


def storable(s: str) -> bool:
    """Arrow stores UTF-8; a lone surrogate (a JSON escape such as "\\ud800", or an undecodable file name) is not."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def scrub(s: str) -> str:
    """``s`` with each lone surrogate written out as ``\\udXXX`` (for reasons and excerpts, never for documents)."""
    return s if storable(s) else s.encode("utf-8", "backslashreplace").decode("utf-8")


def quarantine(origin: Origin, position: str, reason: str, raw: bytes | str | None = None) -> dict:
    """The quarantine row of a record (or a whole file, at ``file``) that could not be read, and why."""
    if isinstance(raw, bytes):
        raw = raw[:EXCERPT].decode("utf-8", errors="replace")
    elif isinstance(raw, str):
        raw = scrub(raw[:EXCERPT])
    return {
        "stage": "ingest",
        "source": scrub(origin.uri),
        "source_path": scrub(origin.key),
        "position": position,
        "reason": scrub(reason),
        "doc_id": doc_id(origin.key, position),
        "raw_excerpt": raw,
    }


def _surrogate_field(value: Any, path: str) -> str | None:
    """The dotted path of the first string (key or value) in ``value`` holding a lone surrogate."""
    if isinstance(value, str):
        return None if storable(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and not storable(k):
                return scrub(sub)
            if (found := _surrogate_field(v, sub)) is not None:
                return found
    elif isinstance(value, list):
        for n, v in enumerate(value):
            if (found := _surrogate_field(v, f"{path}[{n}]")) is not None:
                return found
    return None


def decode_utf8(data: bytes, origin: Origin, position: str, spec: IngestSource, where: str = "") -> str | tuple[str, dict]:
    """The text of ``data``; bytes that are not UTF-8 make a quarantine row naming the byte (``where`` says in what),
    unless the source asks for ``encoding_errors: replace`` (U+FFFD, the record kept)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if spec.encoding_errors != "replace":
            return "quarantine", quarantine(origin, position, f"non-UTF-8 bytes at byte {e.start}{where}", data)
        return data.decode("utf-8", errors="replace")


def document(origin: Origin, position: str, text: str, spec: IngestSource, **extra: Any) -> tuple[str, dict]:
    """A document row, or a quarantine row when the text is unusable (empty, NUL bytes, gigantic, lone surrogates)."""
    try:
        raw_bytes = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # a JSON escape like "\ud800": valid JSON, not a character
        if spec.encoding_errors != "replace":
            reason = f"lone surrogate \\u{ord(text[e.start]):04x} at character {e.start} of the text"
            return "quarantine", quarantine(origin, position, reason, text)
        text = _SURROGATE.sub("\ufffd", text)
        raw_bytes = len(text.encode("utf-8"))
    if raw_bytes > spec.max_doc_bytes:
        reason = f"document too large: {raw_bytes} bytes > max_doc_bytes={spec.max_doc_bytes}"
        return "quarantine", quarantine(origin, position, reason, text)
    if "\x00" in text:
        return "quarantine", quarantine(origin, position, "NUL byte in text", text)
    if not text.strip():
        return "quarantine", quarantine(origin, position, "empty text", text)
    meta = extra.pop("meta", None)
    row = {
        "doc_id": doc_id(origin.key, position),
        "text": text,
        "url": extra.pop("url", None),
        "source": origin.uri,
        "source_path": origin.key,
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
        if value is None or value.isascii() or storable(value):
            continue
        if spec.encoding_errors == "replace":
            row[column] = _SURROGATE.sub("\ufffd", value)
            continue
        where = _surrogate_field(meta, "") if column == "meta" else column
        return "quarantine", quarantine(origin, position, f"lone surrogate in field {where!r}", text)
    return "document", row


def guarded(origin: Origin, position: str, convert: Any, *args: Any) -> tuple[str, dict] | None:
    """``convert(*args)``, or a quarantine row naming the error: one hostile record never ends the file's reading."""
    try:
        return convert(*args)
    except RecursionError:
        return "quarantine", quarantine(origin, position, "record nested too deeply to decode (Python's recursion limit)")
    except Exception as e:
        return "quarantine", quarantine(origin, position, f"undecodable record: {type(e).__name__}: {str(e)[:300]}")
