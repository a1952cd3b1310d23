"""Bounded byte streams: compression sniffed and undone in chunks of at most ``CHUNK`` bytes, and lines cut from them.

Memory per record stays bounded whatever the compression ratio: a 2 MB gzip of one 2 GB line is counted through as
an ``Oversized`` line, never joined. Concatenated gzip/xz/bz2 members and zstd frames are read on, and a stream cut
inside a member or frame raises ``TruncatedArchive`` after everything before the cut.
"""

from __future__ import annotations

import io
import lzma
import zlib
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

from tasks.ingest.records import EXCERPT


class TruncatedArchive(EOFError):
    """A compressed stream ended before its end-of-stream marker."""


READ = 1 << 16  # compressed (or plain) bytes read per call
CHUNK = 1 << 18  # decompressed bytes per step at most (max_length of zlib, lzma, bz2)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAGIC = ((b"\x1f\x8b", "gz"), (ZSTD_MAGIC, "zst"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bz2"))


def codec_of(name: str) -> str | None:
    """The compression a file name says (.gz, .zst/.zstd, .xz, .bz2), or None."""
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


def new_decompressor(codec: str) -> Any:
    """A decompressor object for one member (gzip/xz/bz2) or a zstd stream."""
    if codec == "gz":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member; the caller starts the next
    if codec == "zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    if codec == "xz":
        return lzma.LZMADecompressor()
    import bz2

    return bz2.BZ2Decompressor()


class ZstdFrames:
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
                if head == ZSTD_MAGIC:
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


def decompress(stream: IO[bytes], codec: str, on_member: Any = None) -> Iterator[bytes]:
    """Decompressed chunks of at most CHUNK bytes whatever the compression ratio (a 2 MB gzip of one 2 GB line never
    becomes one 2 GB string). Concatenated members/frames (gzip -c a b, pigz, zstd frames) are read on, and
    ``on_member(compressed offset, decompressed offset)`` is told where each gzip/xz/bz2 member begins. A stream that
    ends inside a member yields everything before the cut, then raises TruncatedArchive."""
    if codec == "zst":  # zstandard's decompressobj has no output bound: its stream_reader has
        import zstandard

        frames = ZstdFrames(stream)
        reader = zstandard.ZstdDecompressor().stream_reader(frames, read_size=READ, read_across_frames=True)
        while chunk := reader.read(CHUNK):
            yield chunk
        if not frames.complete:
            raise TruncatedArchive("zstd stream ended inside a frame")
        return
    d = None
    read = produced = 0
    while data := stream.read(READ):
        read += len(data)
        while data:
            if d is None:
                d = new_decompressor(codec)
                if on_member is not None:
                    on_member(read - len(data), produced)
            if codec == "gz":
                out = d.decompress(data, CHUNK)
                data = d.unused_data if d.eof else d.unconsumed_tail
            else:  # xz, bz2 keep unconsumed input themselves: drain what is ready before feeding more
                out = d.decompress(data, CHUNK)
                while not d.eof and not d.needs_input:
                    if out:
                        produced += len(out)
                        yield out
                    out = d.decompress(b"", CHUNK)
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


def chunks(stream: IO[bytes], name: str) -> Iterator[bytes]:
    """The file's bytes in bounded chunks, decompressed by the name's suffix (.gz, .zst, .xz, .bz2)."""
    codec = codec_of(name)
    if codec is not None:
        yield from decompress(stream, codec)
        return
    while chunk := stream.read(CHUNK):
        yield chunk


class Oversized(NamedTuple):
    """A record longer than the limit: its size and first bytes, never its whole body."""

    size: int
    head: bytes


def first_bytes(parts: list[bytes], last: bytes = b"") -> bytes:
    """The first EXCERPT bytes of ``parts`` + ``last`` (a quarantine row's excerpt), without joining them all."""
    out = b""
    for p in (*parts, last):
        out += p[: EXCERPT - len(out)]
        if len(out) >= EXCERPT:
            break
    return out


def lines(chunks: Iterator[bytes], limit: int) -> Iterator[bytes | Oversized]:
    """Lines without their newline; a line longer than ``limit`` is counted through, not joined (an Oversized)."""
    parts: list[bytes] = []  # the current line's pieces while it is within the limit
    size = 0
    head: bytes | None = None  # set once the current line passed the limit
    for chunk in chunks:
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            if head is None and size + len(piece) <= limit:
                yield b"".join((*parts, piece)) if parts else piece
            else:
                yield Oversized(size + len(piece), head if head is not None else first_bytes(parts, piece))
            parts, size, head = [], 0, None
        if rest:
            size += len(rest)
            if head is None and size <= limit:
                parts.append(rest)
            elif head is None:
                head, parts = first_bytes(parts, rest), []
    if size:
        yield b"".join(parts) if head is None else Oversized(size, head)


class Prefixed:
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


def sniff(head: bytes) -> tuple[str | None, bytes]:
    """(codec, first decompressed bytes) of a file's first bytes."""
    codec = next((c for magic, c in MAGIC if head.startswith(magic)), None)
    if codec is None:
        return None, head[:64]
    if codec == "zst":
        import zstandard

        return codec, zstandard.ZstdDecompressor().stream_reader(io.BytesIO(head)).read(64)
    return codec, new_decompressor(codec).decompress(head, 64)

