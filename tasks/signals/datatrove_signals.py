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
    """default_language: datatrove word-tokenizer language for docs whose `lang` is null or has no tokenizer.

    doc_timeout_s: wall-time budget of one document through the four filters. datatrove's filters are pure Python
        over spaCy, quadratic on some shapes (8 KB of ``:`` took 5 s, 32 KB 85 s); they then run in a child process
        (tasks/common/budget.py) and a document past the budget gets ``dt_budget_timeout`` in every reason column
        (the row stays; a rule that drops on a non-null reason drops it). 10 s is ~1000x a normal web page's time
        (benchmarks/signals.py). None: run in this process, unbounded (trusted input only).
    max_doc_chars: a longer document is not run at all: ``dt_budget_too_large``. 1M characters is ~10x the longest
        page FineWeb keeps in practice (Penedo et al. 2024 keep pages of a few KB to ~100 KB).
    """

    default_language: str = "en"  # datatrove's filters default to Languages.english
    text_column: str = "text"
    lang_column: str = "lang"
    doc_timeout_s: float | None = 10.0
    max_doc_chars: int | None = 1_000_000

    def __post_init__(self) -> None:
        if self.doc_timeout_s is not None and not self.doc_timeout_s > 0:
            raise ValueError(f"doc_timeout_s must be > 0 or None, got {self.doc_timeout_s!r}")
        if self.max_doc_chars is not None and self.max_doc_chars < 1:
            raise ValueError(f"max_doc_chars must be >= 1 or None, got {self.max_doc_chars!r}")


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


def _doc_signals(item: tuple[str, str]) -> tuple:
    """The four reasons and the C4-rewritten length of one (text, language): the per-document kernel, run here or
    in the budget child."""
    from datatrove.data import Document

    text, language = item
    rep, qual, c4, fw = _filters(language)
    c4_doc = Document(text=text, id="0")  # C4QualityFilter rewrites doc.text when it keeps the doc
    c4_reason = _reason(c4, c4_doc)
    fw_text = c4_doc.text if c4_reason is None else text
    return (
        _reason(rep, Document(text=text, id="0")),
        _reason(qual, Document(text=text, id="0")),
        c4_reason,
        _reason(fw, Document(text=fw_text, id="0")),
        len(c4_doc.text) if c4_reason is None else None,
    )


def _warm() -> None:
    """Load the English filters and spaCy's tokenizer before any document's deadline starts."""
    _doc_signals(("Warm up. The tokenizer loads here.", "en"))


_WORKER = None  # one budget child per worker process, kept for the next batch


def _budgeted(items: list[tuple[str, str]], timeout_s: float) -> list[tuple]:
    global _WORKER
    from tasks.common.budget import TIMEOUT, DeadlineWorker

    if _WORKER is None:
        _WORKER = DeadlineWorker(f"{__name__}:_doc_signals", warm=f"{__name__}:_warm")
    out = []
    for ok, value in _WORKER.map(items, timeout_s):
        if ok:
            out.append(value)
        else:
            reason = "dt_budget_timeout" if value == TIMEOUT else "dt_error_child"
            out.append((reason,) * len(REASON_COLUMNS) + (None,))
    return out


@implements("datatrove_signals")
def datatrove_signals(batch: pa.Table, params: DatatroveSignalsParams = DatatroveSignalsParams()) -> pa.Table:
    """Add the four `dt_*_reason` columns and `dt_c4_text_length` (kind a: pure per batch). Every row stays: a null
    text, an over-long one or one past its time budget gets a `dt_null_text` / `dt_budget_*` reason."""
    if params.text_column not in batch.column_names:
        raise ValueError(f"datatrove_signals needs a {params.text_column!r} column")
    texts = batch.column(params.text_column).to_pylist()
    langs = (
        batch.column(params.lang_column).to_pylist()
        if params.lang_column in batch.column_names
        else [None] * batch.num_rows
    )
    known = _known_languages()
    rows: list[tuple | None] = [None] * batch.num_rows
    todo: list[int] = []
    for i, text in enumerate(texts):
        if text is None:
            rows[i] = ("dt_null_text",) * len(REASON_COLUMNS) + (None,)
        elif params.max_doc_chars is not None and len(text) > params.max_doc_chars:
            rows[i] = ("dt_budget_too_large",) * len(REASON_COLUMNS) + (None,)
        else:
            todo.append(i)
    items = [(texts[i], langs[i] if langs[i] in known else params.default_language) for i in todo]
    if params.doc_timeout_s is None:
        results = [_doc_signals(it) for it in items]
    else:
        results = _budgeted(items, params.doc_timeout_s) if items else []
    for i, r in zip(todo, results, strict=True):
        rows[i] = r
    names = (*REASON_COLUMNS, "dt_c4_text_length")
    out = batch.drop_columns([c for c in names if c in batch.column_names])
    for k, c in enumerate(REASON_COLUMNS):
        out = out.append_column(c, pa.array([r[k] for r in rows], pa.string()))
    return out.append_column("dt_c4_text_length", pa.array([r[-1] for r in rows], pa.int64()))
