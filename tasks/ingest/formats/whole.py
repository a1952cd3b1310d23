"""Whole-file formats: a text file or an HTML page (main text extracted) is one document, at position ``file``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from tasks.ingest.compression import Oversized, chunks, first_bytes
from tasks.ingest.formats.html import extract_html
from tasks.ingest.records import decode_utf8, document, guarded, quarantine
from tasks.ingest.sources import IngestSource, Origin


def _whole(stream: IO[bytes], origin: Origin, limit: int) -> bytes | Oversized:
    """A whole file (decompressed), or Oversized as soon as it passes ``limit``: the file is one record."""
    parts, size = [], 0
    for chunk in chunks(stream, origin.uri):
        size += len(chunk)
        if size > limit:
            return Oversized(size, first_bytes(parts, chunk))
        parts.append(chunk)
    return b"".join(parts)


def _read_whole_file(stream: IO[bytes], origin: Origin, spec: IngestSource) -> bytes | tuple[str, dict]:
    limit = spec.record_limit
    try:
        data = _whole(stream, origin, limit)
    except Exception as e:
        return "quarantine", quarantine(origin, "file", f"truncated or corrupt archive: {type(e).__name__}: {e}")
    if isinstance(data, Oversized):
        return "quarantine", quarantine(origin, "file", f"record too large: over max_record_bytes={limit} (reading stopped at {data.size} bytes)", data.head)
    return data


def _text_document(data: bytes, origin: Origin, spec: IngestSource) -> tuple[str, dict]:
    text = decode_utf8(data, origin, "file", spec)
    return text if isinstance(text, tuple) else document(origin, "file", text, spec)


def _html_document(data: bytes, origin: Origin, spec: IngestSource) -> tuple[str, dict]:
    text = extract_html(data, extractor=spec.extractor, main_content=spec.main_content)
    if not text.strip():
        return "quarantine", quarantine(origin, "file", "no extractable text in HTML", data)
    return document(origin, "file", text, spec)


def read_text(stream: IO[bytes], origin: Origin, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """A whole text file is one document."""
    data = _read_whole_file(stream, origin, spec)
    yield data if isinstance(data, tuple) else guarded(origin, "file", _text_document, data, origin, spec)


def read_html(stream: IO[bytes], origin: Origin, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """A whole HTML file is one document (main text extracted)."""
    data = _read_whole_file(stream, origin, spec)
    yield data if isinstance(data, tuple) else guarded(origin, "file", _html_document, data, origin, spec)

