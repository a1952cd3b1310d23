"""Line (paragraph) dedup across the corpus, as CCNet does before RedPajama-V2 computes its signals.

CCNet (Wenzek et al. 2020, "CCNet: Extracting High Quality Monolingual Datasets from Web Crawl Data", §3.3) splits
every document on "\\n", normalizes each line (lower case, accents stripped, digits -> 0, punctuation removed),
hashes it with the first 64 bits of SHA-1 and removes every line whose hash was seen before: navigation menus,
cookie notices and "Powered by ..." footers repeated across pages disappear while the page's own text stays.
RPv2 (Together 2023) computes its quality signals on that CCNet output. Three steps, as ``exact_dedup``:

1. ``line_dedup_hashes`` (map): one row per non-blank line: ``doc_id``, ``unit_pos`` (line index), ``unit_hash``.
2. ``line_dedup_duplicates`` (sql, DuckDB, spills): the first occurrence of every hash in corpus order (shard
   file, then row: the order the hashes were written, i.e. the documents' order) survives; every later one is a
   duplicate. Output: one row per document with duplicates, ``(doc_id, dup_pos: list<int32>)``.
3. ``line_dedup`` (map, the duplicates as a side table): rewrites ``text`` without those lines; adds
   ``ld_lines_removed`` and ``ld_removed_char_fraction``. Same rows, same order; a document left blank gets
   ``keep=false``, ``drop_reason='ld_empty_after_dedup'`` unless an earlier rule rejected it (first failing rule
   wins).

Blank lines (empty after normalization) are never duplicates: they are paragraph breaks, not content. The same
``doc_id`` read twice is one document again: its copy's lines are not duplicates of itself (``exact_dedup`` flags
the repeat). ``sentence_dedup`` reuses steps 2 and 3 with 3-sentence spans.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from tasks.common.stage import implements
from tasks.common.verdict import fold_verdict

HASHES_SCHEMA = pa.schema([("doc_id", pa.string()), ("unit_pos", pa.int32()), ("unit_hash", pa.int64())])
DUPLICATES_SCHEMA = pa.schema([("doc_id", pa.string()), ("dup_pos", pa.list_(pa.int32()))])
_DIGITS = re.compile(r"\d")
# CCNet text_normalizer.PUNCT_OR_NON_PRINTING_CHARS_RE: Unicode punctuation and non-printing characters
_PUNCT_OR_CONTROL = regex.compile(r"[\p{P}\p{Cc}]")
# the same two substitutions for ASCII (no accents there): digits -> 0, punctuation and controls removed
_ASCII_TABLE = {c: ("0" if chr(c).isdigit() else None) for c in range(128)
                if chr(c).isdigit() or _PUNCT_OR_CONTROL.match(chr(c))}


@dataclass(frozen=True, kw_only=True, slots=True)
class LineDedupParams:
    """Line dedup settings.

    only_kept: when `keep` exists (a filter ran before), rejected documents neither contribute first occurrences
        nor get rewritten.
    min_line_chars: lines shorter than this after normalization are never duplicates (0: every non-blank line, as
        CCNet); raise it to spare short list items such as "Yes" or "1.".
    """

    only_kept: bool = True
    min_line_chars: int = 0
    doc_id_column: str = "doc_id"
    text_column: str = "text"

    def __post_init__(self) -> None:
        if self.min_line_chars < 0:
            raise ValueError(f"min_line_chars must be >= 0, got {self.min_line_chars}")
        if not self.text_column or not self.doc_id_column:
            raise ValueError("text_column and doc_id_column must not be empty")


def normalize_line(line: str) -> str:
    """CCNet's normalize_for_dedup: strip, lower case, NFD without combining accents, digits -> 0, punctuation and
    control characters removed, whitespace collapsed."""
    line = line.strip().lower()
    if not line:
        return ""
    if line.isascii():  # one C-level translate, the same map as below (a 10 MB ASCII line: 27 s -> < 1 s)
        return " ".join(line.translate(_ASCII_TABLE).split())
    line = "".join(c for c in unicodedata.normalize("NFD", line) if unicodedata.category(c) != "Mn")
    line = _PUNCT_OR_CONTROL.sub("", _DIGITS.sub("0", line))
    return " ".join(line.split())


def hash64(s: str) -> int:
    """First 64 bits of SHA-1 (CCNet's paragraph hash), as a signed int64 for DuckDB and Parquet."""
    return int.from_bytes(hashlib.sha1(s.encode("utf-8", "surrogatepass")).digest()[:8], "little", signed=True)


def column_values(batch: pa.Table, name: str, stage: str) -> list:
    if name not in batch.column_names:
        raise ValueError(f"{stage} needs a {name!r} column; the batch has {batch.column_names}")
    return batch.column(name).to_pylist()


def judged(batch: pa.Table, only_kept: bool) -> np.ndarray:
    """Rows that take part in dedup: every row, or only the kept ones when a filter ran before."""
    if only_kept and "keep" in batch.column_names:
        return pc.fill_null(batch.column("keep"), False).to_numpy(zero_copy_only=False).astype(bool)
    return np.ones(batch.num_rows, dtype=bool)


def unit_hashes(units: Sequence[list[int | None]], doc_ids: Sequence) -> pa.Table:
    """Explode per-document unit hashes (None: not a candidate) into (doc_id, unit_pos, unit_hash) rows."""
    ids, pos, hashes = [], [], []
    for doc_id, hs in zip(doc_ids, units, strict=True):
        for i, h in enumerate(hs):
            if h is not None:
                ids.append(doc_id)
                pos.append(i)
                hashes.append(h)
    return pa.table([pa.array(ids, pa.string()), pa.array(pos, pa.int32()), pa.array(hashes, pa.int64())],
                    schema=HASHES_SCHEMA)


_UNSEEN = object()


def line_hashes(text: str | None, min_line_chars: int = 0) -> list[int | None]:
    """One hash per "\\n"-separated line; None for lines that are blank (or too short) after normalization."""
    out: list[int | None] = []
    seen: dict[str, int | None] = {}  # a line repeated in the document is normalized and hashed once
    for line in (text or "").split("\n"):
        h = seen.get(line, _UNSEEN)
        if h is _UNSEEN:
            n = normalize_line(line)
            h = seen[line] = hash64(n) if n and len(n) >= max(1, min_line_chars) else None
        out.append(h)
    return out


def hashes_stage(batch: pa.Table, params: Any, stage: str, per_text: Callable[[str | None], list]) -> pa.Table:
    """A ``*_hashes`` stage (map): (doc_id, unit_pos, unit_hash) of ``per_text(text)``'s units, in document order,
    for the rows still judged (``only_kept``) that have a doc_id."""
    texts = column_values(batch, params.text_column, stage)
    ids = [str(d) if d is not None else None for d in column_values(batch, params.doc_id_column, stage)]
    use = judged(batch, params.only_kept)
    units = [per_text(t) if u and d is not None else [] for t, d, u in zip(texts, ids, use, strict=True)]
    return unit_hashes(units, ids)


@implements("line_dedup_hashes")
def line_dedup_hashes(batch: pa.Table, params: LineDedupParams = LineDedupParams()) -> pa.Table:
    """The ``line_dedup_hashes`` stage (map): (doc_id, unit_pos, unit_hash) per candidate line, in document order."""
    return hashes_stage(batch, params, "line_dedup_hashes", lambda t: line_hashes(t, params.min_line_chars))


def duplicates_sql(hashes: str) -> str:
    """DuckDB SELECT over ``hashes`` (a relation with the corpus order ``__shard``, ``__row``: the shard's name
    and the row's position in it): every unit after its hash's first occurrence in corpus order, per document. A row that is the first occurrence's
    own (doc_id, unit_pos) again is the same document read twice, not a duplicate."""
    return (
        "WITH r AS (SELECT doc_id, unit_pos, "
        "first_value(doc_id) OVER w AS _doc, first_value(unit_pos) OVER w AS _pos, row_number() OVER w AS _rn "
        f"FROM {hashes} WINDOW w AS (PARTITION BY unit_hash ORDER BY __shard, __row)) "
        "SELECT doc_id, list(DISTINCT unit_pos ORDER BY unit_pos)::INTEGER[] AS dup_pos FROM r "
        "WHERE _rn > 1 AND NOT (doc_id = _doc AND unit_pos = _pos) GROUP BY doc_id"
    )


@implements("line_dedup_duplicates", "sentence_dedup_duplicates")
def line_dedup_duplicates_duckdb(con: Any, exprs: dict[str, str], params: Any, columns: dict[str, list[str]]) -> str:
    """The ``line_dedup_duplicates`` (and ``sentence_dedup_duplicates``) stage, kind ``sql``."""
    # the executor hands every role also in corpus order (shard name, row position in it)
    con.execute(f"CREATE TABLE dup_units AS {duplicates_sql(exprs['hashes_in_order'])}")
    return "dup_units"


def dup_positions(batch: pa.Table, doc_id_column: str, duplicates: pa.Table) -> list[list[int] | None]:
    """Per row of ``batch``: the duplicate unit positions of its document (None: none). A repeated doc_id (the
    same document read twice) gets its positions on the first row only."""
    ids = batch.column(doc_id_column).combine_chunks().cast(pa.string())
    if duplicates.num_rows == 0 or len(ids) == 0:
        return [None] * len(ids)
    idx = pc.index_in(ids, value_set=duplicates.column("doc_id").combine_chunks().cast(pa.string()))
    found = pc.is_valid(idx).to_numpy(zero_copy_only=False)
    pos = duplicates.column("dup_pos").combine_chunks().take(pc.fill_null(idx, 0)).to_pylist()
    seen: set[str] = set()
    out: list[list[int] | None] = []
    for doc_id, f, p in zip(ids.to_pylist(), found, pos, strict=True):
        out.append(p if f and doc_id not in seen else None)
        seen.add(doc_id)
    return out


def fold_drops(batch: pa.Table, emptied: np.ndarray, reason: str, *, stage: str) -> pa.Table:
    """keep=false, drop_reason=reason and drop_stage=stage for newly emptied documents still kept (first failing
    rule wins)."""
    return fold_verdict(batch, [reason if e else None for e in emptied.tolist()], stage=stage)


def set_columns(batch: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    for name, values in columns.items():
        if name in batch.column_names:
            batch = batch.set_column(batch.schema.get_field_index(name), name, values)
        else:
            batch = batch.append_column(name, values)
    return batch


@implements("line_dedup")
def line_dedup(batch: pa.Table, params: LineDedupParams = LineDedupParams(), *, duplicates: pa.Table) -> pa.Table:
    """The ``line_dedup`` stage (map): ``text`` without its duplicate lines, ``ld_lines_removed``,
    ``ld_removed_char_fraction`` (characters removed / characters before; 0 for an empty document)."""
    texts = column_values(batch, params.text_column, "line_dedup")
    dups = dup_positions(batch, params.doc_id_column, duplicates)
    new_texts, removed, fraction, emptied = [], [], [], []
    for text, pos in zip(texts, dups, strict=True):
        if not pos or text is None:
            new_texts.append(text)
            removed.append(0)
            fraction.append(0.0)
            emptied.append(False)
            continue
        drop = set(pos)
        lines = text.split("\n")
        new = "\n".join(line for i, line in enumerate(lines) if i not in drop)
        new_texts.append(new)
        removed.append(sum(1 for i in drop if i < len(lines)))
        fraction.append((len(text) - len(new)) / len(text) if text else 0.0)
        emptied.append(not new.strip())
    out = set_columns(batch, {
        params.text_column: pa.array(new_texts, pa.string()),
        "ld_lines_removed": pa.array(removed, pa.int32()),
        "ld_removed_char_fraction": pa.array(fraction, pa.float64()),
    })
    return fold_drops(out, np.array(emptied, dtype=bool), "ld_empty_after_dedup", stage="line_dedup")
