"""RedPajama-V2 quality signals as Arrow columns (stage `quality_signals`).

Every signal keeps its exact RPv2 name, definition, quirks and rounding (togethercomputer/RedPajama-Data, app/src,
commit 6d2cee9; restated in ../shared/specs/rpv2_signals.md) and is checked against the reference's output on
1,000 C4 documents and 20 edge cases (tests/tasks/signals/test_quality_signals.py).

* Document-level signals: nullable float64, one column each (RPv2 stores `[(0, len, score)]`; the span is implied).
* Line-level signals (`rps_lines_*`): `list<struct<start: int64, end: int64, score: double>>` with raw character
  offsets (end exclusive, trailing "\\n" included), the Dolma-style spans RPv2 emits.
* Model-based signals are null unless their artifact is configured (as RPv2 does when a model is missing); the
  artifacts can be built from your own data with `tasks.signals.quality_models`.
MinHash signatures are not computed here (see `tasks.dedup.minhash`).

Speed: the whole batch is turned into two UTF-32 code-point arrays once (raw, and normalized by C-level str
operations); numba kernels in `tasks.signals._rpv2_kernels` compute everything else in a few linear passes.
"""

from __future__ import annotations

import functools
import json
import re
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.stage import implements
from tasks.signals import _rpv2_kernels as K
from tasks.signals import _rpv2_word_kernels as W
from tasks.signals.rpv2_chars import char_table

RESOURCES = Path(__file__).resolve().parent / "resources"
# RPv2 ships LDNOOBW lists for these languages only (core/quality_signals/utils/content.py::_DEFAULT_LANGS);
# every other language gets an empty list.
LDNOOBW_LANGS = ("en", "fr", "it", "es", "de")
PRECISION = 8  # RPv2 core/constants.py
CCNET_LABEL = "__label__cc"  # RPv2 core/constants.py: the "web" label of its fastText quality classifiers

# RPv2 QUALITY_SIGNALS_SCHEMA order (core/schema/rp.py): ccnet, content, natural language, repetitions, lines,
# classifiers, importance weights; classes alphabetical within a module (inspect.getmembers).
CCNET_SIGNALS = (
    "ccnet_length", "ccnet_original_length", "ccnet_nlines", "ccnet_original_nlines",
    "ccnet_language_score", "ccnet_perplexity", "ccnet_bucket",
)
CONTENT_SIGNALS = (
    "rps_doc_curly_bracket", "rps_doc_ldnoobw_words", "rps_doc_lorem_ipsum", "rps_doc_stop_word_fraction",
    "rps_doc_ut1_blacklist",
)
NATURAL_LANGUAGE_SIGNALS = (
    "rps_doc_frac_all_caps_words", "rps_doc_frac_lines_end_with_ellipsis", "rps_doc_frac_no_alph_words",
    "rps_doc_frac_unique_words", "rps_doc_mean_word_length", "rps_doc_num_sentences",
    "rps_doc_symbol_to_word_ratio", "rps_doc_unigram_entropy", "rps_doc_word_count",
)
REPETITION_SIGNALS = (
    "rps_doc_frac_chars_dupe_10grams", "rps_doc_frac_chars_dupe_5grams", "rps_doc_frac_chars_dupe_6grams",
    "rps_doc_frac_chars_dupe_7grams", "rps_doc_frac_chars_dupe_8grams", "rps_doc_frac_chars_dupe_9grams",
    "rps_doc_frac_chars_top_2gram", "rps_doc_frac_chars_top_3gram", "rps_doc_frac_chars_top_4gram",
)
LINE_SIGNALS = (
    "rps_lines_ending_with_terminal_punctution_mark",  # sic: the real RPv2 key
    "rps_lines_javascript_counts", "rps_lines_num_words", "rps_lines_numerical_chars_fraction",
    "rps_lines_start_with_bulletpoint", "rps_lines_uppercase_letter_fraction",
)
CLASSIFIER_SIGNALS = ("rps_doc_ml_palm_score", "rps_doc_ml_wikipedia_score", "rps_doc_ml_wikiref_score")
DSIR_DATASETS = ("books", "openwebtext", "wikipedia")
IMPORTANCE_SIGNALS = tuple(
    f"rps_doc_{ds}_importance{suffix}" for ds in DSIR_DATASETS for suffix in ("", "_length_correction")
)
ALL_SIGNALS = (
    CCNET_SIGNALS + CONTENT_SIGNALS + NATURAL_LANGUAGE_SIGNALS + REPETITION_SIGNALS + LINE_SIGNALS
    + CLASSIFIER_SIGNALS + IMPORTANCE_SIGNALS
)

SPAN_TYPE = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("score", pa.float64())])
SPAN_INT_TYPE = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("score", pa.int64())])


@dataclass(frozen=True, kw_only=True, slots=True)
class QualitySignalsParams:
    """Parameters of `quality_signals`. Paths may contain `{lang}`, filled with the row's language.

    language: default language (RPv2 computes signals per ccnet language); must have a stop-word list.
    lang_column: per-row override; values whose primary subtag ("de" of "de-AT") has a stop-word list win,
        anything else (null, "ja", ...) falls back to `language`.
    text_column / url_column: input columns (the document schema's `text` and `url`).
    stopwords_path: JSON {lang: [words]} (RPv2 core/quality_signals/utils/stop_words.py, from 6/stopwords-json);
        None = the vendored copy in tasks/signals/resources/rpv2_stopwords.json.
    ldnoobw_dir: folder with `ldnoobw_{lang}.txt` (LDNOOBW, one entry per line); None = vendored copies.
    fasttext_lid_model: fastText language-id model (cc_net uses lid.176.bin) -> `ccnet_language_score`; without one,
        the language_id stage's `lang_score` (lid.176.ftz) is used when the batch has it.
    kenlm_model: KenLM model (ARPA or binary) -> `ccnet_perplexity`; sentencepiece_model optionally tokenizes
        lines first as cc_net does (without it lines are whitespace-tokenized after cc_net normalization).
    perplexity_cutoffs: (head, tail) perplexity cutoffs -> `ccnet_bucket` (cc_net: 30th / 60th percentiles of
        the language's perplexity, cc_net/data/cutoff.csv; build yours with quality_models.perplexity_cutoffs).
    palm_model / wikipedia_model / wikiref_model: fastText quality classifiers (label `__label__cc` = web) ->
        `rps_doc_ml_*_score`.
    dsir_dir: folder with `{dataset}.{lang}.{dsir_buckets}.counts.npy` and `{dataset}.{lang}.lambda.npy`
        (RPv2 artifacts/hash_dist.py naming) for the datasets books/openwebtext/wikipedia and `dsir_source`
        -> `rps_doc_*_importance*`; build them with quality_models.build_dsir_counts.
    ut1_domains: JSON {domain: category_id} (RPv2 update_resources.py) -> `rps_doc_ut1_blacklist`.
    """

    language: str = "en"
    lang_column: str | None = "lang"
    text_column: str = "text"
    url_column: str | None = "url"
    stopwords_path: str | None = None
    ldnoobw_dir: str | None = None
    fasttext_lid_model: str | None = None
    kenlm_model: str | None = None
    sentencepiece_model: str | None = None
    perplexity_cutoffs: tuple[float, float] | None = None
    palm_model: str | None = None
    wikipedia_model: str | None = None
    wikiref_model: str | None = None
    dsir_dir: str | None = None
    dsir_source: str = "ccnet"
    dsir_buckets: int = 10000  # RPv2 worker default (dsir_buckets=10000)
    ut1_domains: str | None = None

    def __post_init__(self):
        langs = _stop_words(self.stopwords_path)
        if self.language not in langs:
            raise ValueError(f"language {self.language!r} has no stop-word list; choose one of {sorted(langs)}")
        if self.dsir_buckets <= 0:
            raise ValueError("dsir_buckets must be positive")
        if self.perplexity_cutoffs is not None and not 0 <= self.perplexity_cutoffs[0] <= self.perplexity_cutoffs[1]:
            raise ValueError(f"perplexity_cutoffs must be (head, tail) with 0 <= head <= tail, got {self.perplexity_cutoffs}")


# ----------------------------------------------------------------------------------------------------------------
# static resources


@functools.cache
def _stop_words(path: str | None) -> dict[str, frozenset[str]]:
    with open(path or RESOURCES / "rpv2_stopwords.json", encoding="utf-8") as f:
        return {lang: frozenset(words) for lang, words in json.load(f).items()}


@functools.cache
def _ldnoobw(directory: str | None, lang: str) -> frozenset[str]:
    if lang not in LDNOOBW_LANGS:
        return frozenset()
    fp = Path(directory or RESOURCES) / f"ldnoobw_{lang}.txt"
    if not fp.exists():
        raise FileNotFoundError(f"LDNOOBW word list {fp} not found")
    with open(fp, encoding="utf-8") as f:
        return frozenset(ln.strip() for ln in f)  # RPv2 load_bad_words: set(ln.strip())


@functools.cache
def _ldnoobw_tokens(directory: str | None, lang: str):
    """LDNOOBW entries of a language as token lists, plus its distinct tokens as code points for lookup."""
    entries = sorted(e.split(" ") for e in _ldnoobw(directory, lang))
    tokens = sorted({t for e in entries for t in e})
    off = np.zeros(len(tokens) + 1, np.int64)
    np.cumsum([len(t) for t in tokens], out=off[1:])
    return entries, tokens, (_cps("".join(tokens)) if tokens else np.zeros(0, np.uint32)), off


def _cps(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-32-le", "surrogatepass"), np.uint32)


@functools.cache
def _stop_word_set(path: str | None, langs: tuple[str, ...]):
    """Numba string set of (language id, stop word) for the languages in `langs` (ids = positions)."""
    sw = _stop_words(path)
    words, salts = [], []
    for i, lang in enumerate(langs):
        for w in sorted(sw[lang]):
            words.append(w)
            salts.append(i)
    off = np.zeros(len(words) + 1, np.int64)
    off[1:] = np.cumsum([len(w) for w in words])
    cps = _cps("".join(words)) if words else np.zeros(0, np.uint32)
    salts = np.asarray(salts, np.int64)
    return K.build_string_set(cps, off, salts), cps, off, salts


# ----------------------------------------------------------------------------------------------------------------
# per-batch views and signals

_ASCII_PUNCT = string.punctuation.encode()
_SPACE_RE = re.compile(r"\s+")
_LOREM_RE = re.compile(r"lorem ipsum", re.IGNORECASE)
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """RPv2 `normalize()` (utilities/text/normalization.py): drop ASCII punctuation, lowercase, strip, collapse
    whitespace, NFD. Used only on the rare documents that need the normalized string itself."""
    text = text.translate(_PUNCT_TABLE).lower().strip()
    return unicodedata.normalize("NFD", _SPACE_RE.sub(" ", text))


def _round(x: np.ndarray) -> np.ndarray:
    """`round(x, 8)` exactly as Python does it. np.round(x, 8) agrees except within ~1e-7 of a decimal tie, where
    the product x*1e8 may round differently; those few values go through Python's correctly-rounded `round`."""
    r = np.round(x, PRECISION)
    frac = np.abs(np.abs(x * 1e8) % 1.0 - 0.5)
    for i in np.flatnonzero(frac < 1e-6):
        r[i] = round(float(x[i]), PRECISION)
    return r


def _doc_col(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    return pa.array(values, pa.float64(), mask=null)


def _spans(line_off, start, end, score, null_score=None, int_score=False, doc_null=None) -> pa.Array:
    typ = SPAN_INT_TYPE if int_score else SPAN_TYPE
    score_arr = pa.array(score, typ.field("score").type, mask=null_score)
    items = pa.StructArray.from_arrays([pa.array(start, pa.int64()), pa.array(end, pa.int64()), score_arr],
                                       fields=list(typ))
    offsets = pa.array(line_off.astype(np.int32), pa.int32())
    lists = pa.ListArray.from_arrays(offsets, items, type=pa.list_(typ))
    if doc_null is not None and doc_null.any():
        lists = pa.ListArray.from_arrays(offsets, items, type=pa.list_(typ), mask=pa.array(doc_null))
    return lists


class QualitySignals:
    """Loads word lists and the configured models once; `__call__(batch)` adds every RPv2 signal column.
    `quality_signals(batch, params)` keeps one instance per params per process (usable as Ray actor class too)."""

    def __init__(self, params: QualitySignalsParams):
        self.params = params
        self.table = char_table()
        self.langs = tuple(sorted(_stop_words(params.stopwords_path)))
        self.lang_index = {lang: i for i, lang in enumerate(self.langs)}
        self.sw = _stop_word_set(params.stopwords_path, self.langs)
        self.bad = {lang: _ldnoobw(params.ldnoobw_dir, lang) for lang in self.langs}
        from tasks.signals import quality_models as M

        self._models = M
        self.lid = M.load_fasttext(params.fasttext_lid_model) if params.fasttext_lid_model else None
        self.classifiers = {
            name: M.load_fasttext(path) if path else None
            for name, path in zip(CLASSIFIER_SIGNALS, (params.palm_model, params.wikipedia_model,
                                                       params.wikiref_model), strict=True)
        }

    # -- language per row
    def _doc_langs(self, batch: pa.Table, n: int) -> np.ndarray:
        default = self.lang_index[self.params.language]
        col = self.params.lang_column
        if not col or col not in batch.column_names:
            return np.full(n, default, np.int64)
        out = np.full(n, default, np.int64)
        for i, v in enumerate(batch.column(col).to_pylist()):
            if v:
                key = str(v).strip().lower().replace("_", "-").split("-")[0]
                out[i] = self.lang_index.get(key, default)
        return out

    def _ldnoobw_tables(self, norm, first_start, first_len, slots, n_distinct, used_langs):
        """Map LDNOOBW entries onto this batch's word ids: 1-word entries as flags, multi-word ones as id lists.
        An entry whose tokens are not all words of the batch can never match (RPv2 joins normalized words)."""
        bad1 = np.zeros((len(self.langs), n_distinct), np.bool_)
        multi = []
        for lang in used_langs:
            entries, tokens, cps, off = _ldnoobw_tokens(self.params.ldnoobw_dir, self.langs[lang])
            if not tokens:
                continue
            ids = dict(zip(tokens, W.lookup_words(cps, off, norm, slots, first_start, first_len).tolist(),
                           strict=True))
            for toks in entries:
                wids = [ids[t] for t in toks]
                if min(wids) < 0:
                    continue
                if len(wids) == 1:
                    bad1[lang, wids[0]] = True
                else:
                    multi.append((wids[0], lang, wids))
        multi.sort(key=lambda e: e[0])
        multi_off = np.zeros(len(multi) + 1, np.int64)
        np.cumsum([len(e[2]) for e in multi], out=multi_off[1:])
        multi_tok = np.asarray([t for e in multi for t in e[2]], np.int64)
        multi_lang = np.asarray([e[1] for e in multi], np.int64)
        multi_first = np.zeros(n_distinct if multi else 0, np.int64)
        for idx in range(len(multi) - 1, -1, -1):
            multi_first[multi[idx][0]] = idx + 1
        return bad1, multi_first, multi_off, multi_tok, multi_lang

    def __call__(self, batch: pa.Table) -> pa.Table:
        p = self.params
        if p.text_column not in batch.column_names:
            raise KeyError(f"quality_signals needs a {p.text_column!r} column; got {batch.column_names}")
        texts_raw = batch.column(p.text_column).to_pylist()
        n = len(texts_raw)
        text_null = np.array([t is None for t in texts_raw], np.bool_)
        texts = [t if t is not None else "" for t in texts_raw]
        doc_lang = self._doc_langs(batch, n)
        lengths = np.fromiter((len(t) for t in texts), np.int64, n)

        # ---- views: raw code points, and normalized code points (RPv2 normalize minus per-line strip/collapse,
        # which the kernel applies). ASCII punctuation bytes never occur inside multi-byte UTF-8 sequences, so
        # deleting them on bytes equals str.translate; lower() and NFD run on the "\n"-joined batch, and "\n"
        # breaks both Final_Sigma context and canonical reordering, so this equals per-document normalization.
        raw = _cps("".join(texts))
        raw_off = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=raw_off[1:])
        joined = "\n".join(texts).encode("utf-8", "surrogatepass").translate(None, _ASCII_PUNCT)
        norm = _cps(unicodedata.normalize("NFD", joined.decode("utf-8", "surrogatepass").lower()))

        (line_off, line_start, line_end, line_upper, line_term, line_bullet, n_newlines, n_ell_lines, n_raw_words,
         n_alpha, n_caps, n_stop, n_symbols, n_curly, n_sent) = K.raw_pass(raw, raw_off, self.table, doc_lang,
                                                                            *self.sw)
        (ln_words, ln_len, ln_numeric, ln_js, norm_len, lorem_cand, word_id, word_len, word_off, first_start,
         first_len, slots, n_distinct) = K.norm_pass(norm, self.table, n_newlines, line_off)
        ld = self._ldnoobw_tables(norm, first_start, first_len, slots, n_distinct, sorted(set(doc_lang.tolist())))
        n_unique, entropy, total_chars, top, dupe, ldnoobw = W.word_pass(word_id, word_len, word_off, n_distinct,
                                                                         doc_lang, *ld)
        n_words = np.diff(word_off)
        n_lines = np.diff(line_off)

        cols: dict[str, pa.Array] = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            # ccnet pass-through derivable from the text (cc_net: length = len(raw_content), nlines = lines kept)
            cols["ccnet_length"] = _doc_col(lengths.astype(np.float64))
            cols["ccnet_nlines"] = _doc_col((n_newlines + 1).astype(np.float64))
            # content
            cols["rps_doc_curly_bracket"] = _doc_col(np.where(lengths > 0, _round(n_curly / lengths), 0.0))
            cols["rps_doc_ldnoobw_words"] = _doc_col(ldnoobw.astype(np.float64))
            lorem = np.zeros(n)
            for i in np.flatnonzero(lorem_cand):
                content = normalize(texts[i])
                if "lorem ipsum" in content:
                    lorem[i] = round(len(_LOREM_RE.findall(content)) / len(content), PRECISION)
            cols["rps_doc_lorem_ipsum"] = _doc_col(lorem)
            cols["rps_doc_stop_word_fraction"] = _doc_col(np.where(n_words > 0, _round(n_stop / n_raw_words), 0.0))
            # natural language
            no_raw = n_raw_words == 0
            no_norm = n_words == 0
            cols["rps_doc_frac_all_caps_words"] = _doc_col(_round(n_caps / n_raw_words), no_raw)
            cols["rps_doc_frac_lines_end_with_ellipsis"] = _doc_col(_round(n_ell_lines / n_lines), n_lines == 0)
            cols["rps_doc_frac_no_alph_words"] = _doc_col(_round(1.0 - n_alpha / n_raw_words), no_raw)
            cols["rps_doc_frac_unique_words"] = _doc_col(_round(n_unique / n_words), no_norm)
            cols["rps_doc_mean_word_length"] = _doc_col(_round(total_chars / n_words), no_norm)
            cols["rps_doc_num_sentences"] = _doc_col(n_sent.astype(np.float64))
            cols["rps_doc_symbol_to_word_ratio"] = _doc_col(_round(n_symbols / n_raw_words), no_raw)
            cols["rps_doc_unigram_entropy"] = _doc_col(_round(entropy), no_norm)
            cols["rps_doc_word_count"] = _doc_col(n_words.astype(np.float64))
            # repetitions
            for k, ng in enumerate(range(5, 11)):
                cols[f"rps_doc_frac_chars_dupe_{ng}grams"] = _doc_col(_round(dupe[:, k]))
            for k, ng in enumerate(range(2, 5)):
                cols[f"rps_doc_frac_chars_top_{ng}gram"] = _doc_col(_round(top[:, k]))
            # lines
            cols["rps_lines_ending_with_terminal_punctution_mark"] = _spans(line_off, line_start, line_end, line_term)
            cols["rps_lines_javascript_counts"] = _spans(line_off, line_start, line_end, ln_js.astype(np.float64))
            cols["rps_lines_num_words"] = _spans(line_off, line_start, line_end, ln_words, int_score=True)
            numeric = np.where(ln_len > 0, _round(ln_numeric / ln_len), 0.0)
            cols["rps_lines_numerical_chars_fraction"] = _spans(line_off, line_start, line_end, numeric)
            # quirk: an empty document gives [(0, 0, None)] here while the other line signals give []
            empty = n_lines == 0
            if empty.any():
                b_off, b_start, b_end, b_score, b_null = _insert_empty_spans(line_off, line_start, line_end,
                                                                             line_bullet, empty)
                cols["rps_lines_start_with_bulletpoint"] = _spans(b_off, b_start, b_end, b_score, b_null)
            else:
                cols["rps_lines_start_with_bulletpoint"] = _spans(line_off, line_start, line_end, line_bullet)
            cols["rps_lines_uppercase_letter_fraction"] = _spans(line_off, line_start, line_end, _round(line_upper))

        self._model_signals(cols, batch, texts, doc_lang, lengths, raw, raw_off)

        out = batch
        for name in ALL_SIGNALS:
            arr = cols.get(name)
            if arr is None:
                arr = pa.nulls(n, pa.int64() if name == "rps_doc_ut1_blacklist" else pa.float64())
            elif text_null.any():  # a null text yields null signals, never a fabricated score
                arr = pc.if_else(pa.array(text_null), pa.nulls(n, arr.type), arr)
            if name in out.column_names:
                out = out.set_column(out.column_names.index(name), name, arr)
            else:
                out = out.append_column(name, arr)
        return out

    # -- model-based signals (null without an artifact, as in RPv2)
    def _model_signals(self, cols, batch, texts, doc_lang, lengths, raw, raw_off):
        p = self.params
        M = self._models
        n = len(texts)
        if self.lid is not None:
            # cc_net split_by_lang.Classifier: predict(text.replace("\n", "")), top-1 score rounded to 2 digits
            labels, probs = M.fasttext_predict(self.lid, [t.replace("\n", "") for t in texts])
            cols["ccnet_language_score"] = pa.array(
                [None if not t else round(float(pr), 2) for t, pr in zip(texts, probs, strict=True)], pa.float64())
        elif "lang_score" in batch.column_names:
            # no LID model configured: the language_id stage's lid.176 score (predicted the cc_net way) is the signal
            cols["ccnet_language_score"] = pc.round(batch.column("lang_score").cast(pa.float64()), 2).combine_chunks()
        if p.kenlm_model:
            pps = [None] * n
            for lang in set(doc_lang.tolist()):
                lm = M.load_kenlm(p.kenlm_model.format(lang=self.langs[lang]))
                sp = (M.load_sentencepiece(p.sentencepiece_model.format(lang=self.langs[lang]))
                      if p.sentencepiece_model else None)
                for i in np.flatnonzero(doc_lang == lang):
                    pps[i] = M.ccnet_perplexity(lm, texts[i], sp)
            cols["ccnet_perplexity"] = pa.array(pps, pa.float64())
            if p.perplexity_cutoffs is not None:
                head, tail = p.perplexity_cutoffs  # cc_net PerplexityBucket: head < p30 <= middle < p60 <= tail
                cols["ccnet_bucket"] = pa.array(
                    [None if pp is None else (0.0 if pp < head else 1.0 if pp < tail else 2.0) for pp in pps],
                    pa.float64())
        # fastText quality classifiers (RPv2 BaseMLSignal): text = " ".join(raw.splitlines()).strip()
        prepared = None
        for name, model in self.classifiers.items():
            if model is None:
                continue
            if prepared is None:
                prepared = [" ".join(t.splitlines()).strip() for t in texts]
            labels, probs = M.fasttext_predict(model, prepared)
            scores = [None if not t else round(float(1.0 - pr if lab == CCNET_LABEL else pr), PRECISION)
                      for t, lab, pr in zip(texts, labels, probs, strict=True)]
            cols[name] = pa.array(scores, pa.float64())
        if p.dsir_dir:
            for lang in set(doc_lang.tolist()):
                rows = np.flatnonzero(doc_lang == lang)
                lang_name = self.langs[lang]
                feats = None
                for ds in DSIR_DATASETS:
                    model = M.load_dsir(p.dsir_dir, ds, p.dsir_source, lang_name, p.dsir_buckets)
                    if model is None:
                        continue
                    if feats is None:
                        feats = M.dsir_features([texts[i] for i in rows], p.dsir_buckets)
                    plain, corrected = model.score(feats, lengths[rows])
                    for suffix, vals in (("", plain), ("_length_correction", corrected)):
                        name = f"rps_doc_{ds}_importance{suffix}"
                        cur = cols.get(name)
                        full = np.full(n, np.nan) if cur is None else cur.to_numpy(zero_copy_only=False)
                        full[rows] = vals
                        cols[name] = pa.array(full, pa.float64(), mask=np.isnan(full) | (lengths == 0))
        if p.ut1_domains and p.url_column and p.url_column in batch.column_names:
            mapping = M.load_ut1(p.ut1_domains)
            cols["rps_doc_ut1_blacklist"] = pa.array(
                [mapping.get(source_domain(u)) if u else None for u in batch.column(p.url_column).to_pylist()],
                pa.int64())


def source_domain(url: str) -> str | None:
    """cc_net `source_domain`: the URL's host (lower-case, no port), matched exactly against the UT1 list."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _insert_empty_spans(line_off, start, end, score, empty):
    """Add one (0, 0, None) span to every document without lines (RPS_Lines_Start_With_Bulletpoint quirk)."""
    counts = np.diff(line_off) + empty.astype(np.int64)
    new_off = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=new_off[1:])
    total = int(new_off[-1])
    s = np.zeros(total, np.int64)
    e = np.zeros(total, np.int64)
    sc = np.zeros(total, np.float64)
    null = np.zeros(total, np.bool_)
    keep = np.ones(total, np.bool_)
    keep[new_off[:-1][empty]] = False
    null[~keep] = True
    s[keep], e[keep], sc[keep] = start, end, score
    return new_off, s, e, sc, null


@functools.lru_cache(maxsize=8)
def _instance(params: QualitySignalsParams) -> QualitySignals:
    return QualitySignals(params)


@implements("quality_signals")
def quality_signals(batch: pa.Table, params: QualitySignalsParams) -> pa.Table:
    """Kind (a) stage: add every RPv2 quality-signal column (names in ALL_SIGNALS) to `batch`.

    Needs `params.text_column` (and optionally `lang_column`, `url_column`). Models/word lists load once per
    process and params."""
    return _instance(params)(batch)

