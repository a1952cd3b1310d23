"""JSONL (plain or compressed): one document per JSON line at ``line:N``.

Bad, oversized and non-UTF-8 lines and a truncated archive become quarantine rows; ``record_to_doc`` (a decoded
JSON object to a document) is shared with the Parquet reader, whose rows are read the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO

from tasks.ingest.compression import Oversized, chunks, lines
from tasks.ingest.formats.html import extract_html
from tasks.ingest.records import EXCERPT, decode_utf8, document, guarded, quarantine
from tasks.ingest.sources import IngestSource, Origin


def record_to_doc(rec: dict, origin: Origin, position: str, spec: IngestSource) -> tuple[str, dict]:
    """A decoded record (a JSON object, a Parquet row) as a document: its text (or HTML) field, URL, language, and
    every other field in ``meta``."""
    if not isinstance(rec, dict):
        return "quarantine", quarantine(origin, position, f"record is a JSON {type(rec).__name__}, not an object", json.dumps(rec)[:EXCERPT])
    if spec.html_field:
        html = rec.get(spec.html_field)
        if not isinstance(html, str):
            return "quarantine", quarantine(origin, position, f"field {spec.html_field!r} missing or not a string", json.dumps(rec, default=str))
        text = extract_html(html, extractor=spec.extractor, main_content=spec.main_content)
        if not text.strip():
            return "quarantine", quarantine(origin, position, "no extractable text in HTML", html)
        used = {spec.html_field}
    else:
        text = rec.get(spec.text_field)
        if text is None:
            return "quarantine", quarantine(origin, position, f"field {spec.text_field!r} missing", json.dumps(rec, default=str))
        if not isinstance(text, str):
            return "quarantine", quarantine(origin, position, f"field {spec.text_field!r} is {type(text).__name__}, not a string", json.dumps(rec, default=str))
        used = {spec.text_field}
    if spec.title_field and isinstance(rec.get(spec.title_field), str) and rec[spec.title_field].strip():
        text = rec[spec.title_field].strip() + "\n" + text
        used.add(spec.title_field)
    url = rec.get(spec.url_field) if spec.url_field else None
    if url is None and isinstance(rec.get("id"), str) and rec["id"].startswith(("http://", "https://")):
        url = rec["id"]
    lang = rec.get(spec.lang_field) if spec.lang_field else None
    meta = {k: v for k, v in rec.items() if k not in used and k != spec.url_field}
    return document(origin, position, text, spec, url=str(url) if url is not None else None, lang=lang if isinstance(lang, str) else None, meta=meta or None)


def _json_record(line: bytes, origin: Origin, position: str, spec: IngestSource) -> tuple[str, dict]:
    text = decode_utf8(line, origin, position, spec, " of the line")
    if isinstance(text, tuple):
        return text
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return "quarantine", quarantine(origin, position, f"invalid JSON: {e.msg} at column {e.colno}", line)
    except RecursionError:
        return "quarantine", quarantine(origin, position, "invalid JSON: nested deeper than Python's recursion limit", line)
    except ValueError as e:  # an integer longer than sys.get_int_max_str_digits() (4300 by default)
        return "quarantine", quarantine(origin, position, f"invalid JSON: {str(e)[:200]}", line)
    return record_to_doc(rec, origin, position, spec)


def read_jsonl(stream: IO[bytes], origin: Origin, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """One document per JSON line; bad, oversized and non-UTF-8 lines and a truncated archive become quarantine rows."""
    limit = spec.record_limit
    lineno = 0
    records = lines(chunks(stream, origin.uri), limit)
    while True:
        try:
            line = next(records)
        except StopIteration:
            return
        except Exception as e:  # TruncatedArchive, zlib.error, lzma.LZMAError, zstandard.ZstdError
            yield "quarantine", quarantine(origin, f"line:{lineno + 1}", f"truncated or corrupt archive after line {lineno}: {type(e).__name__}: {e}")
            return
        lineno += 1
        position = f"line:{lineno}"
        if isinstance(line, Oversized):
            yield "quarantine", quarantine(origin, position, f"record too large: {line.size} bytes > max_record_bytes={limit}", line.head)
            continue
        if not line.strip():
            continue  # blank separator lines are not records
        yield guarded(origin, position, _json_record, line, origin, position, spec)

