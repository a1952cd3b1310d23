"""WARC / WET / ARC: response records (HTML -> main text), WET conversion records (text as is), resource records.

Positions are record offsets in the (compressed) file, which is what a WARC index (CDX) would point to. WARC files
(plain, or gzip/zstd/xz/bz2 per record or whole) are cut into records by ``warc_frames``, every Content-Length
checked against where the next record begins; each exact frame is then parsed as one record by FastWARC (WARC and
HTTP headers: ~2x warcio's parse on the shared samples), its body dechunked and decoded by warcio's readers, so a
record reads exactly as it did with warcio (its lenient fall-backs included, which FastWARC's own decoding lacks: a
body that is not chunked or not compressed as its headers say, raw deflate, trailing bytes after a gzip stream).

ARC files, and files that do not start like a WARC, go through warcio's own iterator: FastWARC reads no ARC, and that
path must account for whatever the file holds (truncated records, missing bytes) with warcio's offsets.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO, Any

from tasks.ingest.compression import CHUNK, READ, Prefixed, decompress, sniff
from tasks.ingest.formats.html import extract_html
from tasks.ingest.formats.warc_frames import WARC_START, WarcPositions, Window, warc_frames
from tasks.ingest.records import decode_utf8, document, guarded, quarantine
from tasks.ingest.sources import IngestSource, Origin

_WANTED = ("response", "conversion", "resource")


def _read_upto(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes (warcio's readers return one buffer per read, not ``n`` bytes)."""
    parts, size = [], 0
    while size < n and (chunk := stream.read(min(CHUNK, n - size))):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _document_of(rtype: str | None, get: Any, http: Any, payload: bytes, missing: int, length: Any,
                 origin: Origin, position: str, spec: IngestSource, cap: int) -> tuple[str, dict] | None:
    """The document (or quarantine row) of one record, whichever library parsed it; None for records that hold no
    document. ``get`` reads a WARC header; ``http`` is (content type, status) of an HTTP response, else None;
    ``payload`` is the decoded payload (at most ``cap + 1`` bytes); ``missing`` the bytes short of Content-Length."""
    if len(payload) > cap:
        return "quarantine", quarantine(origin, position, f"record too large: WARC {rtype} payload over max_record_bytes={cap} once decoded", payload)
    if missing > 0:
        # fewer bytes than Content-Length: a truncated file or a wrong length; the text would be partial
        return "quarantine", quarantine(origin, position, f"truncated WARC {rtype or 'untyped'} record: {missing} bytes missing of Content-Length {length}", payload)
    if rtype is None:
        return "quarantine", quarantine(origin, position, "record without WARC-Type", payload)
    if rtype not in _WANTED:
        return None  # request, metadata, warcinfo, revisit: no document text
    url = get("WARC-Target-URI")
    if url and url.startswith("metadata:"):
        return None  # crawler logs stored as resource records (wget's warc log), not web documents
    ctype, status = http if http is not None else ((get("Content-Type") or "").lower(), None)
    if http is not None and not (status or "").startswith("2"):
        return None  # redirects and errors (and unreadable status lines) carry no page text; not a document to lose
    meta = {"http_status": status} if status else None
    extra = {
        "url": url,
        "warc_record_id": get("WARC-Record-ID"),
        "warc_date": get("WARC-Date"),
        "warc_type": rtype,
        "warc_content_type": ctype or None,
        "meta": meta,
    }
    if rtype == "conversion" or ctype.startswith("text/plain"):
        text = decode_utf8(payload, origin, position, spec)
        if isinstance(text, tuple):
            return text
    elif "html" in ctype or (not ctype and payload.lstrip()[:1] == b"<"):
        text = extract_html(payload, extractor=spec.extractor, main_content=spec.main_content)
        if not text.strip():
            return "quarantine", quarantine(origin, position, "no extractable text in HTML", payload)
    else:
        return None  # images, PDFs, scripts: not text documents
    return document(origin, position, text, spec, **extra)


def _warcio_document(record: Any, origin: Origin, position: str, spec: IngestSource, cap: int) -> tuple[str, dict] | None:
    """The document of one record of warcio's iterator (ARC files, and files that do not start like a WARC)."""
    rtype = record.rec_type
    try:
        if rtype in _WANTED:
            payload = _read_upto(record.content_stream(), cap + 1)  # dechunked and decoded: bounded again
        else:
            payload = b""
            while record.raw_stream.read(READ):  # read to the end to see whether it is complete; never held
                pass
    except Exception as e:  # chunked/compressed payload errors
        return "quarantine", quarantine(origin, position, f"unreadable payload: {type(e).__name__}: {e}")
    missing = getattr(record.raw_stream, "limit", 0) or 0
    http = None
    if rtype == "response" and record.http_headers is not None:
        http = ((record.http_headers.get_header("Content-Type") or "").lower(), record.http_headers.get_statuscode())
    get = record.rec_headers.get_header
    return _document_of(rtype, get, http, payload, missing, record.length, origin, position, spec, cap)


def _header(headers: Any, name: str) -> str | None:
    """A header's value decoded as warcio decodes it: UTF-8, else ISO-8859-1 (FastWARC would replace the bytes)."""
    raw = headers.get_bytes(name.encode())
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("iso-8859-1")


def _http_payload(frame: bytes, cap: int) -> tuple[tuple[str, str | None], bytes]:
    """((content type, status), payload) of an HTTP response frame: FastWARC reads the HTTP headers (LF-only lines
    too: quirks mode), and the body is dechunked and decoded by warcio's readers, exactly as warcio's
    ``content_stream`` does (its fall-backs included: a body that is not chunked or not compressed as its headers
    say is read as it is; ClueWeb09 stores decoded bodies under ``Content-Encoding: gzip``)."""
    from fastwarc.warc import WarcRecord
    from warcio.bufferedreaders import BufferedReader, ChunkedDataReader

    record = WarcRecord.from_bytes(frame)
    record.is_http = True
    record.parse_http(auto_decode="none", quirks_mode=True, strict_mode=False)
    http = record.http_headers
    status = http.status_code  # None: no status line FastWARC can read (warcio's would not be 2xx)
    head = ((_header(http, "Content-Type") or "").lower(), None if status is None else str(status))
    encoding = (_header(http, "Content-Encoding") or "").lower() or None
    if encoding not in BufferedReader.get_supported_decompressors():
        encoding = None
    chunked = _header(http, "Transfer-Encoding") == "chunked"
    if not chunked and not encoding:
        return head, record.reader.read()  # the frame is bounded already (Content-Length <= max_record_bytes)
    body = io.BytesIO(record.reader.read())
    reader = ChunkedDataReader(body, decomp_type=encoding) if chunked else BufferedReader(body, decomp_type=encoding)
    return head, _read_upto(reader, cap + 1)  # decoded: bounded again


def _framed_record(header: bytes, payload: bytes, origin: Origin, position: str, spec: IngestSource, cap: int) -> tuple[str, dict] | None:
    """``_framed_document``; a panic inside FastWARC (Rust: pyo3 raises it as a BaseException, which no
    ``except Exception`` catches) becomes an ordinary error, so it is one record's quarantine row, not a dead worker."""
    try:
        return _framed_document(header, payload, origin, position, spec, cap)
    except Exception:
        raise
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        raise RuntimeError(f"FastWARC panicked: {str(e)[:200]}") from None


def _framed_document(header: bytes, payload: bytes, origin: Origin, position: str, spec: IngestSource, cap: int) -> tuple[str, dict] | None:
    """The document of one exact WARC frame, parsed by FastWARC (WARC and HTTP headers) and read as warcio reads it:
    HTTP headers only in a non-empty response record of an http(s) URI, a Wget-style ``<uri>`` unwrapped, spaces in
    the URI escaped, header bytes decoded as UTF-8 else ISO-8859-1, the body decoded by warcio's readers."""
    from fastwarc.warc import WarcRecord

    frame = header + payload
    headers = WarcRecord.from_bytes(frame).headers
    rtype = _header(headers, "WARC-Type")
    url = _header(headers, "WARC-Target-URI")
    if url is not None and url.startswith("<") and url.endswith(">"):
        url = url[1:-1]  # Wget 1.19 wrote <uri>
    if url is not None and " " in url:
        url = url.replace(" ", "%20")

    def get(name: str) -> str | None:
        return url if name == "WARC-Target-URI" else _header(headers, name)

    if url is None and payload and rtype in ("response", "request", "revisit"):
        return "quarantine", quarantine(origin, position, f"WARC {rtype} record without WARC-Target-URI", payload)
    http = None
    try:
        if rtype == "response" and payload and url.startswith(("http:", "https:")):
            http, block = _http_payload(frame, cap)
        elif rtype in _WANTED:
            block = payload[: cap + 1]
        else:
            block = b""
    except Exception as e:  # chunked/compressed payload errors
        return "quarantine", quarantine(origin, position, f"unreadable payload: {type(e).__name__}: {e}")
    return _document_of(rtype, get, http, block, 0, len(payload), origin, position, spec, cap)


def read_warc(stream: IO[bytes], origin: Origin, spec: IngestSource) -> Iterator[tuple[str, dict]]:
    """WARC response records (HTML → main text), WET conversion records (text as is), resource records; ARC too.

    Positions are record offsets in the (compressed) file, which is what a WARC index (CDX) would point to. WARC
    files (plain, or gzip/zstd/xz/bz2 per record or whole) are cut into records here, with every Content-Length
    checked against where the next record begins; ARC files go through warcio's own iterator.
    """
    cap = spec.record_limit
    head = stream.read(READ)
    stream = Prefixed(head, stream)
    try:
        codec, first = sniff(head)
    except Exception:  # a corrupt first member: the iterator below reports it
        codec, first = None, b""
    first = first.lstrip(b"\r\n")
    if first.startswith(WARC_START) or (first and WARC_START.startswith(first)):
        yield from _read_warc_framed(stream, origin, spec, codec, cap)
    else:
        yield from _read_warc_iterated(stream, origin, spec, cap)


def _read_warc_framed(stream: IO[bytes], origin: Origin, spec: IngestSource, codec: str | None, cap: int) -> Iterator[tuple[str, dict]]:
    positions = WarcPositions(compressed=codec is not None)
    if codec is None:
        chunks: Iterator[bytes] = iter(lambda: stream.read(CHUNK), b"")
    else:
        chunks = decompress(stream, codec, positions.member)
    win = Window(chunks)
    held = None  # the record a cut archive ended inside: it and the cut are one row
    for kind, start, a, b, cut in warc_frames(win, cap):
        position = positions(start)
        if kind == "bad":
            if cut and win.error is not None:
                held = quarantine(origin, position, a, b)
            else:
                yield "quarantine", quarantine(origin, position, a, b)
            continue
        row = guarded(origin, position, _framed_record, a, b, origin, position, spec, cap)
        if row is not None:
            yield row
    if win.error is not None:  # the archive is cut or corrupt: what came before the cut is kept, the rest is one row
        reason = f"truncated or corrupt archive: {type(win.error).__name__}: {str(win.error)[:200]}"
        if held is None:
            held = quarantine(origin, positions(win.mark), reason)
        else:
            held["reason"] = f"{reason}; {held['reason']}"
    if held is not None:
        yield "quarantine", held


def _read_warc_iterated(stream: IO[bytes], origin: Origin, spec: IngestSource, cap: int) -> Iterator[tuple[str, dict]]:
    from warcio.archiveiterator import ArchiveIterator

    it = ArchiveIterator(stream, arc2warc=True)
    index = 0
    while True:
        try:
            record = next(it)
        except StopIteration:
            return
        except Exception as e:  # ArchiveLoadFailed, EOFError, zlib.error, ValueError: the rest cannot be framed
            yield "quarantine", quarantine(origin, f"record:{index}", f"broken WARC record after record {index}: {type(e).__name__}: {str(e)[:300]}")
            return
        index += 1
        # it.get_record_offset() would consume the payload; the offset the iterator already tracks is the same value
        position = f"offset:{it.offset}"
        row = guarded(origin, position, _warcio_document, record, origin, position, spec, cap)
        if row is not None:
            yield row
