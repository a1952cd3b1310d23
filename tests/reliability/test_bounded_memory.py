"""Bounded memory per record whatever the compression ratio (issue 14): a record past max_record_bytes is counted
through and quarantined, never held, and the next record is read. Memory is Python's traced peak while reading.

    QUARRY_BOMB_MB=2048 pytest tests/reliability/test_bounded_memory.py   # the issue's 2 GB line (minutes)
"""

from __future__ import annotations

import gzip
import lzma
import os
import zlib

import pytest
import zstandard

from tests.reliability._inputs import html_page, jsonl, read, traced_peak, warc_gz, warc_record

GOOD = [{"text": f"good document {i} with enough words to be a real document", "url": f"http://ok/{i}"} for i in range(2)]


def _warc_docs(n: int) -> list[bytes]:
    return [warc_record(f"http://ok/{i}", html_page(f"Paragraph number {i} of a real page. " * 10)) for i in range(n)]


MB = 1 << 20
# the example is a 2 MB gzip holding one 2 GB line (RELIABILITY.md has that run); CI makes a smaller one
BOMB = int(os.environ.get("QUARRY_BOMB_MB", "16")) * MB
LIMIT = dict(max_doc_bytes=256 * 1024)  # -> max_record_bytes 1 MiB
PEAK_BOUND = 16 * MB  # whatever the record's size: the record limit plus a few decompressed chunks


@pytest.fixture(autouse=True, scope="module")
def _readers_imported():
    """Read one small file per format first: the readers import their codecs lazily, and a first import inside the
    traced region (~10 MB of module objects) would count as the read's memory when a test runs alone."""
    raw = jsonl([GOOD[0]])
    for name, data in (("w.jsonl", raw), ("w.jsonl.gz", gzip.compress(raw)),
                       ("w.jsonl.zst", zstandard.ZstdCompressor().compress(raw)), ("w.jsonl.xz", lzma.compress(raw)),
                       ("w.html", html_page("warm")), ("w.warc", _warc_docs(1)[0])):
        read(data, name, **LIMIT)


def _bomb_jsonl(codec: str) -> bytes:
    """GOOD[0], one line of BOMB bytes, GOOD[1]: compressed as one gzip member / zstd frame, or (xz, slow to make)
    as concatenated streams, one small stream of 4 MB of x repeated."""
    head, tail, block = jsonl([GOOD[0]]) + b'{"text": "', b'"}\n' + jsonl([GOOD[1]]), b"x" * (4 * MB)
    if codec == "xz":
        return b"".join([lzma.compress(head, preset=0), lzma.compress(block, preset=0) * (BOMB // len(block)),
                         lzma.compress(tail, preset=0)])
    data = head + block * (BOMB // len(block)) + tail
    if codec == "gz":
        return zlib.compress(data, 1, wbits=31)
    if codec == "zst":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


@pytest.mark.parametrize("codec", ["gz", "zst", "xz", "plain"])
def test_one_huge_jsonl_line_is_quarantined_in_bounded_memory_and_reading_goes_on(codec):
    data = _bomb_jsonl(codec)
    name = "bomb.jsonl" + ("" if codec == "plain" else f".{codec}")
    (docs, bad), peak = traced_peak(lambda: read(data, name, **LIMIT))
    assert docs["position"].to_pylist() == ["line:1", "line:3"]
    assert bad["position"].to_pylist() == ["line:2"] and "record too large" in bad["reason"][0].as_py()
    assert f"{BOMB // (4 * MB) * 4 * MB + 12} bytes" in bad["reason"][0].as_py()  # counted to its end, never held
    assert peak < PEAK_BOUND, f"{codec}: peak {peak / MB:.1f} MB for a {BOMB / MB:.0f} MB line"


@pytest.mark.parametrize("name", ["huge.txt", "huge.txt.gz", "huge.html", "huge.html.gz"])
def test_huge_text_or_html_file_is_one_row_in_bounded_memory(name):
    body = b"<html><body><p>" + b"y" * BOMB + b"</p></body></html>"
    data = gzip.compress(body, 1) if name.endswith(".gz") else body
    (docs, bad), peak = traced_peak(lambda: read(data, name, **LIMIT))
    assert docs.num_rows == 0 and bad["position"].to_pylist() == ["file"] and "record too large" in bad["reason"][0].as_py()
    assert peak < PEAK_BOUND


@pytest.mark.parametrize("name", ["huge.warc", "huge.warc.gz"])
def test_huge_warc_payload_is_one_row_in_bounded_memory_and_the_next_record_is_read(name):
    records = [_warc_docs(1)[0], warc_record("http://huge/", html_page("z" * BOMB)), _warc_docs(2)[1]]
    data = warc_gz(records) if name.endswith(".gz") else b"".join(records)
    (docs, bad), peak = traced_peak(lambda: read(data, name, **LIMIT))
    assert docs["url"].to_pylist() == ["http://ok/0", "http://ok/1"]
    assert bad.num_rows == 1 and "record too large" in bad["reason"][0].as_py()
    assert peak < PEAK_BOUND
