"""datatrove's Gopher, C4 and FineWeb heuristics as signal columns (`dt_*`), computed by datatrove's own filters.

This is the second signal family next to RPv2 (spec rpv2_signals.md §4): it does not reimplement any heuristic. Each
document becomes a datatrove `Document` and goes through the filter classes FineWeb used (Penedo et al. 2024,
datatrove `examples/fineweb.py`), each with datatrove's defaults:

| column | datatrove class |
|---|---|
| `dt_gopher_repetition_reason` | `GopherRepetitionFilter()` (Rae et al. 2021, Table A1 repetition rules) |
| `dt_gopher_quality_reason` | `GopherQualityFilter()` (Rae et al. 2021, Table A1 quality rules) |
| `dt_c4_quality_reason` | `C4QualityFilter(filter_no_terminal_punct=False)` as FineWeb configures it (Raffel et al. 2020) |
| `dt_fineweb_quality_reason` | `FineWebQualityFilter()` (Penedo et al. 2024, sec. 3.3 custom filters) |

A reason column holds the filter's own drop reason (e.g. `gopher_short_doc`, `top_2_gram`, `line_punct_ratio`) and
is NULL when the filter keeps the doc. datatrove's filters stop at their first failing rule, so the reason is the
first failing rule in datatrove's order. As in FineWeb's pipeline, FineWebQualityFilter sees the text *after*
C4QualityFilter's line removal (when C4 keeps the doc). `dt_c4_text_length` is the length of that rewritten text.
Every filter sees every document (a signal, not a pipeline), so a user may drop any of them in SQL:
the `fineweb` rule set in tasks/filter/rules/fineweb.yaml.

    out = datatrove_signals(batch, DatatroveSignalsParams())
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pyarrow as pa

from tasks.common.stage import implements

REASON_COLUMNS = (
    "dt_gopher_repetition_reason",
    "dt_gopher_quality_reason",
    "dt_c4_quality_reason",
    "dt_fineweb_quality_reason",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class DatatroveSignalsParams:
    """default_language: datatrove word-tokenizer language for docs whose `lang` is null or has no tokenizer."""

    default_language: str = "en"  # datatrove's filters default to Languages.english
    text_column: str = "text"
    lang_column: str = "lang"


@lru_cache(maxsize=16)
def _filters(language: str) -> tuple:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return (
        GopherRepetitionFilter(language=language),
        GopherQualityFilter(language=language),
        C4QualityFilter(filter_no_terminal_punct=False, language=language),  # FineWeb's setting
        FineWebQualityFilter(language=language),
    )


@lru_cache(maxsize=1)
def _known_languages() -> frozenset[str]:
    from datatrove.utils.word_tokenizers import load_tokenizer_assignments

    return frozenset(load_tokenizer_assignments())


def _reason(filt, doc) -> str | None:
    """Run one datatrove filter; None if kept, its reason if dropped (a crash becomes a reason, not a lost row)."""
    from datatrove.pipeline.filters.base_filter import get_filter_result

    try:
        kept, reason = get_filter_result(filt.filter(doc))
    except Exception as e:  # noqa: BLE001 - a datatrove edge-case crash must not drop the batch
        return f"dt_error_{type(e).__name__}"
    if kept:
        return None
    return reason or "dropped"


@implements("datatrove_signals")
def datatrove_signals(batch: pa.Table, params: DatatroveSignalsParams = DatatroveSignalsParams()) -> pa.Table:
    """Add the four `dt_*_reason` columns and `dt_c4_text_length` (kind a: pure per batch)."""
    from datatrove.data import Document

    if params.text_column not in batch.column_names:
        raise ValueError(f"datatrove_signals needs a {params.text_column!r} column")
    texts = batch.column(params.text_column).to_pylist()
    langs = (
        batch.column(params.lang_column).to_pylist()
        if params.lang_column in batch.column_names
        else [None] * batch.num_rows
    )
    known = _known_languages()
    cols: dict[str, list] = {c: [] for c in (*REASON_COLUMNS, "dt_c4_text_length")}
    for i, (text, lang) in enumerate(zip(texts, langs, strict=True)):
        if text is None:
            for c in REASON_COLUMNS:
                cols[c].append("dt_null_text")
            cols["dt_c4_text_length"].append(None)
            continue
        language = lang if lang in known else params.default_language
        rep, qual, c4, fw = _filters(language)
        cols["dt_gopher_repetition_reason"].append(_reason(rep, Document(text=text, id=str(i))))
        cols["dt_gopher_quality_reason"].append(_reason(qual, Document(text=text, id=str(i))))
        c4_doc = Document(text=text, id=str(i))  # C4QualityFilter rewrites doc.text when it keeps the doc
        c4_reason = _reason(c4, c4_doc)
        cols["dt_c4_quality_reason"].append(c4_reason)
        cols["dt_c4_text_length"].append(len(c4_doc.text) if c4_reason is None else None)
        fw_text = c4_doc.text if c4_reason is None else text
        cols["dt_fineweb_quality_reason"].append(_reason(fw, Document(text=fw_text, id=str(i))))
    out = batch.drop_columns([c for c in cols if c in batch.column_names])
    for c in REASON_COLUMNS:
        out = out.append_column(c, pa.array(cols[c], pa.string()))
    return out.append_column("dt_c4_text_length", pa.array(cols["dt_c4_text_length"], pa.int64()))
