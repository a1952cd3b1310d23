"""Sentence-span dedup: remove every span of 3 consecutive sentences seen earlier in the corpus.

C4 (Raffel et al. 2020, §2.2) "discarded all but one of any three-sentence span occurring more than once in the
data set"; datatrove's ``SentenceDedup`` (``pipeline/dedup/sentence_dedup.py``: ``n_sentences=3``, drop a changed
document left with ``min_doc_words=50`` words or fewer) is the reference we measure against. Same three steps and
the same DuckDB step as ``line_dedup`` (units are sentence spans instead of lines):

1. ``sentence_dedup_hashes`` (map): ``(doc_id, unit_pos, unit_hash)`` for every span of ``n_sentences``
   sentences starting at sentence ``unit_pos``, hashed over the CCNet-normalized sentences.
2. ``sentence_dedup_duplicates`` (sql, spills): spans after their first occurrence in corpus order.
3. ``sentence_dedup`` (map): ``text`` without every sentence a duplicate span covers; ``sn_sentences_removed``,
   ``sn_removed_char_fraction``; a changed document left with fewer than ``min_doc_words`` words gets
   ``keep=false``, ``drop_reason='sn_too_short_after_dedup'`` (first failing rule wins).

Sentences are our own regex split (no NLTK/spaCy model to download): a sentence ends after ``.``, ``!``, ``?`` or
``…`` (with closing quotes or brackets) followed by white space, or at a line break. Each sentence keeps the white
space that follows it, so joining the kept sentences rebuilds the text exactly minus the removed ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.common.stage import implements
from tasks.dedup.line import (
    column_values,
    dup_positions,
    fold_drops,
    hash64,
    hashes_stage,
    normalize_line,
    set_columns,
)

# end of a sentence: terminal punctuation (+ closing quotes/brackets) then white space, or a run of line breaks.
# The line-break branch starts only where a run of blanks starts (or at the "\n" itself): written as
# `[ \t\f\v]*\n\s*` it was tried at every blank of a run and rescanned the rest, so one 100 KB run of spaces took 42 s
# (issue 35); the matches are the same (tests/tasks/dedup/test_adversarial_dedup.py compares the two).
_BOUNDARY = re.compile(r"""(?<=[.!?…])["'”’)\]]*[ \t\f\v]+|(?<![ \t\f\v])[ \t\f\v]*\n\s*|\n\s*""")


@dataclass(frozen=True, kw_only=True, slots=True)
class SentenceDedupParams:
    """Sentence-span dedup settings (datatrove SentenceDedupConfig's defaults).

    n_sentences: sentences per span (C4 and datatrove: 3); a document with fewer sentences has no spans.
    min_doc_words: a document changed by dedup and left with fewer words than this is dropped (datatrove: 50).
    only_kept: when `keep` exists, rejected documents neither contribute first occurrences nor get rewritten.
    """

    n_sentences: int = 3
    min_doc_words: int = 50
    only_kept: bool = True
    doc_id_column: str = "doc_id"
    text_column: str = "text"

    def __post_init__(self) -> None:
        if self.n_sentences < 1:
            raise ValueError(f"n_sentences must be >= 1, got {self.n_sentences}")
        if self.min_doc_words < 0:
            raise ValueError(f"min_doc_words must be >= 0, got {self.min_doc_words}")


def split_sentences(text: str | None) -> list[tuple[int, int]]:
    """(start, end) character offsets of each sentence; ``end`` includes the white space after it, so the pieces
    tile ``text`` from the first sentence's start to its end (leading white space is not a sentence)."""
    if not text:
        return []
    start = len(text) - len(text.lstrip())
    out = []
    for m in _BOUNDARY.finditer(text, start):
        if m.start() > start:
            out.append((start, m.end()))
            start = m.end()
    if start < len(text) and text[start:].strip():
        out.append((start, len(text)))
    elif out:  # trailing white space belongs to the last sentence
        out[-1] = (out[-1][0], len(text))
    return out


def span_hashes(text: str | None, n: int) -> list[int | None]:
    """One hash per span of ``n`` consecutive sentences (by its first sentence); None for a span whose sentences
    are all blank after normalization."""
    memo: dict[str, str] = {}  # a sentence (or span) repeated in the document is normalized (hashed) once
    norm = []
    for s, e in split_sentences(text) if text else []:
        piece = text[s:e]
        if piece not in memo:
            memo[piece] = normalize_line(piece)
        norm.append(memo[piece])
    hashes: dict[str, int] = {}
    out: list[int | None] = []
    for i in range(len(norm) - n + 1):
        span = norm[i:i + n]
        if not any(span):
            out.append(None)
            continue
        key = "\n".join(span)
        if key not in hashes:
            hashes[key] = hash64(key)
        out.append(hashes[key])
    return out


@implements("sentence_dedup_hashes")
def sentence_dedup_hashes(batch: pa.Table, params: SentenceDedupParams = SentenceDedupParams()) -> pa.Table:
    """The ``sentence_dedup_hashes`` stage (map): (doc_id, unit_pos, unit_hash) per span, in document order."""
    return hashes_stage(batch, params, "sentence_dedup_hashes", lambda t: span_hashes(t, params.n_sentences))


@implements("sentence_dedup")
def sentence_dedup(batch: pa.Table, params: SentenceDedupParams = SentenceDedupParams(), *,
                   duplicates: pa.Table) -> pa.Table:
    """The ``sentence_dedup`` stage (map): ``text`` without the sentences of duplicate spans."""
    texts = column_values(batch, params.text_column, "sentence_dedup")
    dups = dup_positions(batch, params.doc_id_column, duplicates)
    new_texts, removed, fraction, short = [], [], [], []
    for text, pos in zip(texts, dups, strict=True):
        if not pos or not text:
            new_texts.append(text)
            removed.append(0)
            fraction.append(0.0)
            short.append(False)
            continue
        sents = split_sentences(text)
        drop = {j for i in pos for j in range(i, min(i + params.n_sentences, len(sents)))}
        head = text[: sents[0][0]] if sents else ""
        new = head + "".join(text[s:e] for j, (s, e) in enumerate(sents) if j not in drop)
        new_texts.append(new)
        removed.append(len(drop))
        fraction.append((len(text) - len(new)) / len(text))
        short.append(len(new.split()) < params.min_doc_words)
    out = set_columns(batch, {
        params.text_column: pa.array(new_texts, pa.string()),
        "sn_sentences_removed": pa.array(removed, pa.int32()),
        "sn_removed_char_fraction": pa.array(fraction, pa.float64()),
    })
    return fold_drops(out, np.array(short, dtype=bool), "sn_too_short_after_dedup", stage="sentence_dedup")
