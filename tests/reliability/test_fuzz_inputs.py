"""Property-based fuzzing of the ingest readers (hypothesis): JSONL, Parquet, WARC, HTML and text inputs built from
hostile alphabets (lone surrogates, control bytes, NUL, deep nesting, huge numbers and records, invalid UTF-8),
compressed or not, cut at any offset, with wrong Content-Lengths. For every example:

* no exception escapes the reader;
* input records = documents + quarantine rows, where the records are counted as the generator made them (for a cut
  archive: the records an independent decompressor can recover, plus one row for the cut);
* memory stays bounded (tracemalloc peak) whatever the size or compression ratio of the input.

Seeded (``derandomize=True``): CI runs the same examples every time. ``QUARRY_FUZZ_EXAMPLES=1000`` runs more.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import zlib
from collections import Counter

import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tasks.ingest.formats.html import extract_html
from tasks.ingest.sources import IngestSource
from tasks.ingest.stage import read_source, rows_to_tables
from tests.reliability._inputs import corrupt_row_group, parquet, traced_peak, warc_gz, warc_record

EXAMPLES = int(os.environ.get("QUARRY_FUZZ_EXAMPLES", "20"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every run and machine
    database=None,  # nothing written into the checkout
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                           HealthCheck.filter_too_much],
)
MAX_DOC = 4096  # -> max_record_bytes 16 KiB: small enough that the generators cross it often
MB = 1 << 20
PEAK_BOUND = 8 * MB  # inputs decompress to up to 8 MiB per record: the readers must never hold one


HOSTILE = st.sampled_from(
    ["\x00", "\x01", "\x08", "\x1b", "\x7f", "\x85", "\ud800", "\udbff", "\udc00", "\udfff", "\ufffd", "\ufeff",
     "\u2028", "\u200b", "é", "日", "\U0001f600", '"', "\\", "\n", "\r", "\t", "a", "z", " ", "<", ">", "&", "{", "]"]
)
TEXT = st.text(st.one_of(HOSTILE, st.characters()), max_size=40)


def _utf8(s: str) -> bytes:
    """What a broken writer puts in a file for a string with lone surrogates: bytes that are not UTF-8."""
    return s.encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """Import what the readers import lazily (trafilatura alone allocates ~28 MB on first use): the memory bound is
    about what reading a record costs, not a one-time import."""
    for extractor in ("resiliparse", "trafilatura"):
        extract_html("<html><body><p>warm up</p></body></html>", extractor=extractor)
    _read(warc_gz([warc_record("http://warm/", b"<p>warm</p>")]), "warm.warc.gz")
    _read(parquet(pa.table({"text": ["warm"]}), 1), "warm.parquet")
    _read(_compress("zst", b'{"text": "warm"}\n'), "warm.jsonl.zst")


@pytest.fixture(scope="module")
def tally(pytestconfig):
    """Examples, records and quarantined rows, printed at the end (the numbers in RELIABILITY.md)."""
    counts: Counter = Counter()
    yield counts
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nfuzz ({EXAMPLES} max examples per format): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def _read(data: bytes, name: str, **spec) -> tuple[pa.Table, pa.Table, int]:
    """(documents, quarantine, traced peak bytes) of one in-memory file; any exception fails the example."""
    spec = IngestSource(path=name, max_doc_bytes=MAX_DOC, **spec)
    rows, peak = traced_peak(lambda: list(read_source(io.BytesIO(data), name, spec)))
    docs, bad = rows_to_tables(rows)
    assert len(set(docs["doc_id"].to_pylist())) == docs.num_rows  # positions are exact and distinct
    return docs, bad, peak


def _check(tally: Counter, fmt: str, docs: pa.Table, bad: pa.Table, peak: int, records: int) -> None:
    expected = records or 1  # a file without records is one row naming it
    assert docs.num_rows + bad.num_rows == expected, (fmt, docs.num_rows, bad.to_pylist()[:5])
    assert peak < PEAK_BOUND, f"{fmt}: traced peak {peak / MB:.1f} MB"
    tally[f"{fmt} examples"] += 1
    tally[f"{fmt} records"] += records
    tally[f"{fmt} quarantined"] += bad.num_rows


def _compress(codec: str, data: bytes) -> bytes:
    if codec == "gz":
        return gzip.compress(data, 1, mtime=0)
    if codec == "zst":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if codec == "xz":
        return lzma.compress(data, preset=0)
    return data


def _recoverable(codec: str, prefix: bytes) -> bytes:
    """What an independent decompressor gets out of a cut archive (the readers must not claim more or less)."""
    try:
        if codec == "gz":
            return zlib.decompressobj(31).decompress(prefix)
        if codec == "zst":
            return zstandard.ZstdDecompressor().decompressobj().decompress(prefix)
        return lzma.LZMADecompressor().decompress(prefix)
    except Exception:
        return b""


# ------------------------------------------------------------------------------------------------ JSONL


def _nested(n: int, closed: bool) -> bytes:
    return b"[" * n + (b"]" * n if closed else b"")


JSON_RECORD = st.one_of(
    # objects with hostile strings anywhere, written with escapes (\\ud800) or as raw (non-UTF-8) bytes
    st.tuples(
        st.fixed_dictionaries(
            {"text": st.one_of(TEXT, st.integers(), st.none(), st.lists(TEXT, max_size=3))},
            optional={"url": st.one_of(TEXT, st.none()), "meta": st.dictionaries(TEXT, TEXT, max_size=3),
                      "title": TEXT, "lang": TEXT},
        ),
        st.booleans(),
    ).map(lambda t: json.dumps(t[0]).encode() if t[1] else _utf8(json.dumps(t[0], ensure_ascii=False))),
    st.builds(lambda n, closed: b'{"text": "ok", "deep": ' + _nested(n, closed) + b"}",
              st.sampled_from([10, 900, 1100, 5000, 100_000]), st.booleans()),
    st.builds(lambda k, neg: b'{"text": "a number", "n": ' + (b"-" if neg else b"") + b"7" * k + b"}",
              st.sampled_from([1, 4300, 4301, 6000]), st.booleans()),
    st.sampled_from([b'{"text": "x", "f": 1e999}', b'{"text": NaN}', b'{"text": "\\u0000"}', b'{"text": "\\ud800\\udc00"}']),
    st.binary(max_size=200),
    st.builds(lambda obj, cut: json.dumps(obj).encode()[:cut], st.dictionaries(TEXT, TEXT, min_size=1, max_size=3),
              st.integers(0, 60)),
    # a record far past max_record_bytes (16 KiB): 20 KiB, or 1 or 8 MiB of one byte (a compression bomb)
    st.sampled_from([20 << 10, 1 << 20, 8 << 20]).map(lambda n: b'{"text": "' + b"x" * n + b'"}'),
)


def _as_line(record: bytes) -> bytes:
    record = record.replace(b"\n", b" ")  # one record is one line
    return record if record.strip() else b"x" + record  # a blank line is a separator, not a record


def _lines_present(data: bytes) -> int:
    return sum(1 for piece in data.split(b"\n") if piece.strip())


@pytest.mark.parametrize("codec", ["plain", "gz", "zst", "xz"])
@FUZZ
@given(
    records=st.lists(JSON_RECORD.map(_as_line), min_size=0, max_size=12),
    newline_at_end=st.booleans(),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzzed_jsonl_accounts_for_every_line(tally, codec, records, newline_at_end, cut):
    raw = b"\n".join(records) + (b"\n" if newline_at_end and records else b"")
    whole = _compress(codec, raw)
    data = whole if cut is None else whole[: int(cut * len(whole))]
    name = "fuzz.jsonl" + ("" if codec == "plain" else f".{codec}")
    docs, bad, peak = _read(data, name)
    if codec == "plain":
        present = _lines_present(data)  # a cut line is still a record (invalid JSON, or shorter valid JSON)
    elif len(data) < len(whole):
        recovered = _recoverable(codec, data)
        # the complete lines recovered, and one row for the cut (the partial line is part of it)
        present = sum(1 for piece in recovered.split(b"\n")[:-1] if piece.strip()) + 1
    else:
        present = len(records)
    _check(tally, f"jsonl.{codec}", docs, bad, peak, present)


# ------------------------------------------------------------------------------------------------ Parquet


@st.composite
def _parquet_table(draw) -> pa.Table:
    n = draw(st.integers(0, 24))
    texts = [draw(st.one_of(TEXT.map(_utf8), st.binary(max_size=40), st.none())) for _ in range(n)]
    urls = [draw(st.one_of(TEXT.map(_utf8), st.none())) for _ in range(n)]
    return pa.table({
        "text": pa.array(texts, pa.binary()).view(pa.string()),  # a string column whose bytes are not all UTF-8
        "url": pa.array(urls, pa.binary()).view(pa.string()),
        "n": pa.array([draw(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))) for _ in range(n)], pa.int64()),
        "tags": pa.array([draw(st.lists(st.text(max_size=5), max_size=3)) for _ in range(n)], pa.list_(pa.string())),
    })


@FUZZ
@given(table=_parquet_table(), group=st.integers(1, 8), damage=st.sampled_from(["none", "row_group", "cut"]),
       where=st.floats(0, 1))
def test_fuzzed_parquet_accounts_for_every_row(tally, table, group, damage, where):
    data = parquet(table, row_group_size=group)
    records = table.num_rows
    if damage == "row_group" and table.num_rows:
        data = corrupt_row_group(data, int(where * (-(-table.num_rows // group) - 1)))  # each of its rows: a row
    elif damage == "cut":
        data = data[: int(where * (len(data) - 1))]  # no footer: the file is one row
        records = 1
    docs, bad, peak = _read(data, "fuzz.parquet")
    _check(tally, "parquet", docs, bad, peak, records)
    if damage != "cut" and table.num_rows:
        positions = sorted(int(p.split(":")[1]) for p in docs["position"].to_pylist() + bad["position"].to_pylist())
        assert positions == list(range(table.num_rows))  # every row at its own exact position


# ------------------------------------------------------------------------------------------------ WARC

WARC_BODY = st.one_of(
    TEXT.map(lambda t: f"<html><body><p>{t} and some words</p></body></html>".encode("utf-8", "surrogatepass")),
    TEXT.map(_utf8),
    st.binary(max_size=300),
    st.sampled_from([10, 5000, 100_000]).map(lambda n: b"<div>" * n + b"deep" + b"</div>" * n),
    st.sampled_from([20 << 10, 4 << 20]).map(lambda n: b"<p>" + b"z" * n + b"</p>"),  # past max_record_bytes
).filter(lambda body: b"WARC/" not in body)  # a payload holding a record start can mislead a resync (documented)

WARC_RECORD = st.builds(
    lambda uri, body, rtype: warc_record("http://fuzz/" + uri.encode("utf-8", "surrogatepass").decode("latin-1"),
                                         body, rtype=rtype),
    st.text(st.one_of(HOSTILE, st.characters()), max_size=12).map(lambda u: u.replace("\r", "").replace("\n", "")),
    WARC_BODY,
    st.sampled_from(["response", "conversion"]),
)


def _frame_accepts(data: bytes, end: int) -> bool:
    """Whether a record ending at ``end`` looks well framed (its trailer, or blank lines then a record or the end):
    a wrong Content-Length landing there cannot be told from a right one, so the generator avoids it."""
    if end > len(data):
        return False  # the stream ends inside it: bytes missing
    rest = data[end:].lstrip(b"\r\n")
    return data[end : end + 4] == b"\r\n\r\n" or not rest or rest.startswith(b"WARC/")


@pytest.mark.parametrize("gz", [False, True], ids=["warc", "warc.gz"])
@FUZZ
@given(
    records=st.lists(WARC_RECORD, min_size=1, max_size=6),
    damage=st.sampled_from(["none", "cut", "length"]),
    where=st.floats(0, 1),
    delta=st.integers(-5000, 5000),
    victim=st.integers(0, 5),
)
def test_fuzzed_warc_accounts_for_every_record(tally, gz, records, damage, where, delta, victim):
    ends = []  # in the decompressed stream: (start, end of header + payload) of each record
    offset = 0
    for r in records:
        ends.append((offset, offset + len(r) - 4))  # the 4-byte trailer is not needed to read a record
        offset += len(r)
    raw = b"".join(records)
    if damage == "length":
        j = victim % len(records)
        head, _, rest = records[j].partition(b"Content-Length: ")
        length = int(rest.split(b"\r\n", 1)[0])
        new = max(0, length + delta)
        assume(new != length)
        records[j] = head + b"Content-Length: " + str(new).encode() + rest[len(str(length)):]
        raw = b"".join(records)
        start = sum(map(len, records[:j]))
        body = start + records[j].index(b"\r\n\r\n") + 4
        assume(not _frame_accepts(raw, body + new))
    data = warc_gz(records) if gz else raw
    expected = len(records)
    if damage == "cut":
        cut = int(where * len(data))
        data = data[:cut]
        members = [sum(len(warc_gz([r])) for r in records[:i]) for i in range(len(records) + 1)]
        present = _recoverable_members(data, members) if gz else data
        complete = sum(1 for s, e in ends if e <= len(present))
        started = sum(1 for s, e in ends if s < len(present))
        cut_inside = (gz and cut not in members) or started > complete
        expected = complete + (1 if cut_inside else 0)
    docs, bad, peak = _read(data, "fuzz.warc.gz" if gz else "fuzz.warc")
    _check(tally, f"warc{'.gz' if gz else ''}", docs, bad, peak, expected)


def _recoverable_members(data: bytes, members: list[int]) -> bytes:
    """The decompressed bytes an independent reader gets from the gzip members present in ``data``."""
    out = b""
    for a, b in zip(members, members[1:], strict=False):
        if a >= len(data):
            break
        out += _recoverable("gz", data[a:b])
    return out


# ------------------------------------------------------------------------------------------------ HTML and text

PAGE = st.one_of(
    TEXT.map(lambda t: f"<html><body><article><p>{t}</p></article></body></html>".encode("utf-8", "surrogatepass")),
    st.binary(max_size=400),
    st.sampled_from([10, 10_000, 100_000]).map(lambda n: b"<div>" * n + b"text" + b"</div>" * n),
    st.sampled_from([20 << 10, 8 << 20]).map(lambda n: b"<p>" + b"y" * n + b"</p>"),
    st.just(b""),
)


@FUZZ
@given(page=PAGE, fmt=st.sampled_from(["html", "htm", "txt"]), gz=st.booleans(), cut=st.one_of(st.none(), st.floats(0, 1)),
       extractor=st.sampled_from(["resiliparse", "resiliparse", "trafilatura"]))
def test_fuzzed_html_and_text_file_is_exactly_one_row(tally, page, fmt, gz, cut, extractor):
    assume(extractor == "resiliparse" or len(page) < 50_000)  # trafilatura is slow on huge pages; resiliparse takes them
    data = gzip.compress(page, 1, mtime=0) if gz else page
    if cut is not None:
        data = data[: int(cut * len(data))]
    docs, bad, peak = _read(data, f"fuzz.{fmt}" + (".gz" if gz else ""), extractor=extractor)
    _check(tally, "html" if fmt != "txt" else "text", docs, bad, peak, 1)  # a file is one record, read or not
