"""WARC framing: a (decompressed) WARC stream cut into records by Content-Length, every length checked against where
the next record begins, and each record's ``offset:N`` position.

A broken record (a wrong Content-Length, a garbled or truncated header, bytes between records) is one "bad" frame,
and reading resumes at the next line that starts a record; a payload over the record limit is skipped, never held.
``tasks.ingest.formats.warc`` turns the frames into documents.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from typing import Any

from tasks.ingest.records import EXCERPT

WARC_START = b"WARC/"
_NEXT_RECORD = b"\nWARC/"  # where reading resumes after a broken record: the next line that starts a record
_WARC_HEADER_MAX = 1 << 16  # a WARC header block is a few hundred bytes; this many without its blank line is no header
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_NOT_BLANK = re.compile(rb"[^\r\n]")


class Window:
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
        self.fill(pos + len(WARC_START))
        tail = bytes(self.buf[pos - self.base : pos - self.base + len(WARC_START)])
        return tail == WARC_START or (self.eof and WARC_START.startswith(tail))


def warc_fields(header: bytes) -> tuple[str, int | str]:
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


def warc_frames(win: Window, cap: int) -> Iterator[tuple[str, int, Any, Any, bool]]:
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
            excerpt = win.get(start, start + EXCERPT)
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
            excerpt = win.get(start, start + EXCERPT)
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
        rtype, length = warc_fields(header)
        if isinstance(length, str):
            nxt = win.find(_NEXT_RECORD, body - 1)
            yield "bad", start, length, header, False
            if nxt is None:
                return
            pos = nxt + 1
            continue
        if length > cap:
            excerpt = win.get(body, body + EXCERPT)
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
            excerpt = win.get(body, body + EXCERPT)
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
            excerpt = win.get(body + length, body + length + EXCERPT)
            nxt = win.find(_NEXT_RECORD, body - 1)
            reason = f"wrong Content-Length {length} of a WARC {rtype} record: the bytes after it are not the next record"
            yield "bad", start, reason, excerpt, False
            if nxt is None:
                return
            pos = nxt + 1
            continue
        yield "record", start, header, win.get(body, body + length), False
        pos = after


class WarcPositions:
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

