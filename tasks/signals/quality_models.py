"""Builders and loaders for the model-based RedPajama-V2 signals (kind (c) global steps + cached loaders).

Everything here is built from the user's own data, because the RPv2 artifacts (lid.176.bin, cc_net KenLM models,
wikiref.model.bin, the 500k-sample DSIR count vectors, the UT1 blacklist) cannot be downloaded at run time:

| signal                          | builder                         | loader / scorer                       |
|---------------------------------|---------------------------------|---------------------------------------|
| rps_doc_ml_{palm,wikipedia,wikiref}_score, ccnet_language_score | train_fasttext_classifier | load_fasttext, fasttext_predict |
| ccnet_perplexity, ccnet_bucket  | build_kenlm_arpa, perplexity_cutoffs | load_kenlm, ccnet_perplexity     |
| rps_doc_*_importance*           | build_dsir_counts               | load_dsir -> DsirModel.score          |
| rps_doc_ut1_blacklist           | build_ut1_index                 | load_ut1                              |

`fasttext` comes from the `fasttext-wheel` package and `kenlm` from `kenlm`; both are imported lazily so the
rule-based signals never need them.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex

CCNET_LABEL = "__label__cc"  # RPv2 core/constants.py
# RPv2 configs/rp_v2.0.conf: UT1 categories that make up rps_doc_ut1_blacklist
UT1_CATEGORIES = ("adult", "agressif", "agressive", "arjel", "chat", "dating", "ddos", "filehosting", "gambling",
                  "mixed_adult", "phishing", "porn", "violence")

# ---------------------------------------------------------------------------------------------------------------
# fastText


def quality_classifier_text(text: str) -> str:
    """RPv2 preprocess_quality_classifier: newlines (every str.splitlines break) to spaces, then strip."""
    return " ".join(text.splitlines()).strip()


def train_fasttext_classifier(
    target_texts: Iterable[str],
    web_texts: Iterable[str],
    out_path: str | Path,
    *,
    target_name: str = "wiki",
    samples_per_class: int | None = None,
    seed: int = 0,
    threads: int = 1,
    **train_kwargs,
) -> Path:
    """Train a fastText "target vs web" classifier the way RPv2 artifacts/ft_trainer.py does: one line per doc,
    `__label__{target_name}` for the target and `__label__cc` for web (as many web docs as target docs),
    shuffled, `fasttext.train_supervised` at its defaults (unigrams). `threads=1` makes training deterministic.
    Its score column reads `1 - p` when the predicted label is `__label__cc`, else `p`."""
    import fasttext

    rng = random.Random(seed)
    target = [quality_classifier_text(t) for t in itertools.islice(target_texts, samples_per_class)]
    target = [t for t in target if t]
    web = [quality_classifier_text(t) for t in itertools.islice(web_texts, len(target))]
    lines = [f"__label__{target_name} {t}" for t in target] + [f"{CCNET_LABEL} {t}" for t in web if t]
    if not target or len(lines) == len(target):
        raise ValueError("need non-empty target and web samples to train a classifier")
    rng.shuffle(lines)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    train_file = out_path.with_suffix(".train.txt")
    train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    kwargs = {"thread": threads, "seed": seed, "verbose": 0} | train_kwargs
    model = fasttext.train_supervised(input=str(train_file), **kwargs)
    model.save_model(str(out_path))
    train_file.unlink()
    return out_path


@functools.lru_cache(maxsize=16)
def load_fasttext(path: str):
    import fasttext

    if not Path(path).exists():
        raise FileNotFoundError(f"fastText model {path} not found")
    return fasttext.load_model(str(path))


def fasttext_predict(model, texts: Sequence[str]) -> tuple[list[str], list[float]]:
    """Top-1 label and probability per text. Uses fastText's list API (one C++ call; it also avoids the
    `np.array(copy=False)` that breaks single-string predict under numpy 2)."""
    if not texts:
        return [], []
    clean = [t.replace("\n", " ") for t in texts]
    labels, probs = model.f.multilinePredict([t + "\n" for t in clean], 1, 0.0, "replace")
    return [lab[0] if lab else "" for lab in labels], [float(p[0]) if len(p) else 0.0 for p in probs]


# ---------------------------------------------------------------------------------------------------------------
# KenLM perplexity (cc_net/perplexity.py)

# cc_net/text_normalizer.py UNICODE_PUNCT
_CCNET_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"', "」": '"', "「": '"',
    "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!", "（": "(", "）": ")", "；": ";",
    "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'", "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[",
    "】": "]", "％": "%", "►": "-",
}
_CCNET_PUNCT_TABLE = str.maketrans(_CCNET_PUNCT)
_NON_PRINTING = str.maketrans("", "", "".join(map(chr, list(range(0, 32)) + list(range(127, 160)))))
_DIGIT_RE = re.compile(r"\d")


def ccnet_normalize(line: str) -> str:
    """cc_net text_normalizer.normalize(accent=True, case=True, numbers=True, punct=1)."""
    line = line.strip()
    if not line:
        return line
    line = unicodedata.normalize("NFD", line.lower())
    line = "".join(c for c in line if unicodedata.category(c) != "Mn")
    line = _DIGIT_RE.sub("0", line)
    return line.translate(_CCNET_PUNCT_TABLE).translate(_NON_PRINTING)


def _lm_tokens(line: str) -> list[str]:
    return ccnet_normalize(line).split()


def build_kenlm_arpa(texts: Iterable[str], out_path: str | Path, *, order: int = 3, discount: float = 0.75) -> Path:
    """Write a backoff n-gram LM in ARPA format (loadable by `kenlm.Model`) from your own text, e.g. the clean
    Wikipedia sample, as cc_net trains its per-language 5-gram KenLM on Wikipedia. One sentence per non-empty
    line, cc_net-normalized and whitespace-tokenized. Estimation: absolute discounting (Ney et al. 1994) with
    backoff weights that make every conditional distribution sum to one; unigrams add-one smoothed with <unk>.
    (KenLM's own `lmplz` would give modified Kneser-Ney; it is a C++ binary the pip package does not ship.)"""
    if order < 1:
        raise ValueError("order must be >= 1")
    counts: list[Counter] = [Counter() for _ in range(order + 1)]
    for text in texts:
        for line in text.split("\n"):
            toks = _lm_tokens(line)
            if not toks:
                continue
            sent = ["<s>", *toks, "</s>"]
            for k in range(1, order + 1):
                for i in range(len(sent) - k + 1):
                    gram = tuple(sent[i:i + k])
                    if k == 1 and gram == ("<s>",):
                        continue
                    counts[k][gram] += 1
    if not counts[1]:
        raise ValueError("no text to train a language model on")
    vocab = sorted(w for (w,) in counts[1])
    total = sum(counts[1].values())
    logp: list[dict] = [{} for _ in range(order + 1)]
    bow: list[dict] = [{} for _ in range(order + 1)]
    denom = total + len(vocab) + 1
    for w in vocab:
        logp[1][(w,)] = math.log10((counts[1][(w,)] + 1) / denom)
    logp[1][("<unk>",)] = math.log10(1 / denom)
    logp[1][("<s>",)] = -99.0
    for k in range(2, order + 1):
        ctx_total: Counter = Counter()
        ctx_types: Counter = Counter()
        for gram, c in counts[k].items():
            ctx_total[gram[:-1]] += c
            ctx_types[gram[:-1]] += 1
        for gram, c in counts[k].items():
            logp[k][gram] = math.log10((c - discount) / ctx_total[gram[:-1]])
        # backoff weight of each context: leftover mass / lower-order mass of the unseen continuations
        seen_lower: dict = defaultdict(float)
        for gram in counts[k]:
            seen_lower[gram[:-1]] += 10 ** logp[k - 1][gram[1:]]
        for ctx, tot in ctx_total.items():
            left = discount * ctx_types[ctx] / tot
            rest = max(1.0 - seen_lower[ctx], 1e-12)
            bow[k - 1][ctx] = math.log10(max(left, 1e-12) / rest)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n\\data\\\n")
        for k in range(1, order + 1):
            f.write(f"ngram {k}={len(logp[k])}\n")
        for k in range(1, order + 1):
            f.write(f"\n\\{k}-grams:\n")
            for gram, lp in logp[k].items():
                b = bow[k].get(gram)
                f.write(f"{lp:.6f}\t{' '.join(gram)}" + (f"\t{b:.6f}\n" if b is not None and k < order else "\n"))
        f.write("\n\\end\\\n")
    return out_path


@functools.lru_cache(maxsize=8)
def load_kenlm(path: str):
    import kenlm

    if not Path(path).exists():
        raise FileNotFoundError(f"KenLM model {path} not found")
    return kenlm.Model(str(path))


@functools.lru_cache(maxsize=8)
def load_sentencepiece(path: str):
    import sentencepiece  # optional; cc_net tokenizes with a per-language SentencePiece model

    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def ccnet_perplexity(lm, text: str, sp=None) -> float | None:
    """cc_net DocLM: per "\\n"-line, normalize (+ SentencePiece if given), `lm.score` (log10, with <s> </s>),
    length = tokens + 1; pp = 10 ** (-sum log / sum length), rounded to 1 decimal. None for an empty doc."""
    if not text:
        return None
    log_score, length = 0.0, 0
    for line in text.split("\n"):
        line = ccnet_normalize(line)
        if sp is not None:
            line = " ".join(sp.encode(line, out_type=str))
        log_score += lm.score(line)
        length += len(line.split()) + 1
    return round(10.0 ** (-log_score / length), 1)


def perplexity_cutoffs(perplexities: Sequence[float], head: float = 30, tail: float = 60) -> tuple[float, float]:
    """cc_net cutoff.csv: the language's 30th and 60th perplexity percentiles (head / middle / tail buckets)."""
    vals = np.asarray([p for p in perplexities if p is not None], np.float64)
    if vals.size == 0:
        raise ValueError("no perplexities")
    return float(np.percentile(vals, head)), float(np.percentile(vals, tail))


# ---------------------------------------------------------------------------------------------------------------
# DSIR importance weights (RPv2 importance_weights.py, artifacts/hash_dist.py)

# nltk WordPunctTokenizer: this pattern compiled by the `regex` engine with nltk's default flags (nltk/redos.py)
_WORDPUNCT = regex.compile(r"\w+|[^\w\s]+", re.UNICODE | re.MULTILINE | re.DOTALL)


def _bucket(token: str, buckets: int) -> int:
    import xxhash

    return xxhash.xxh3_64_intdigest(token.encode("utf-8", "surrogatepass")) % buckets


def dsir_features(texts: Sequence[str], buckets: int) -> list[np.ndarray]:
    """Per doc, the hashed-feature bucket of every raw WordPunct unigram and every raw bigram (RPv2
    dsir.hash_feature counts exactly these). RPv2 hashes with Python's salted `hash()` (reproducible only under
    PYTHONHASHSEED=42); we use xxh3, stable across processes, so counts built by `build_dsir_counts` match."""
    out = []
    for text in texts:
        toks = _WORDPUNCT.findall(text)
        grams = toks + [f"{a}\x00{b}" for a, b in zip(toks, toks[1:], strict=False)]
        out.append(np.fromiter((_bucket(g, buckets) for g in grams), np.int64, len(grams)))
    return out


def build_dsir_counts(texts: Iterable[str], out_dir: str | Path, *, dataset: str, lang: str = "en",
                      buckets: int = 10000) -> tuple[Path, Path]:
    """RPv2 HashDist: sum the hashed {1,2}-gram count vectors over a sample and the Poisson lambda (mean number of
    raw words per doc). Writes `{dataset}.{lang}.{buckets}.counts.npy` and `{dataset}.{lang}.lambda.npy`.
    Build one for each target (`wikipedia`, `books`, `openwebtext`) and one for the source (`ccnet`, raw web)."""
    counts = np.zeros(buckets, np.int64)
    n_words = 0
    n_docs = 0
    for text in texts:
        (idx,) = dsir_features([text], buckets)
        np.add.at(counts, idx, 1)
        n_words += len(_WORDPUNCT.findall(text))
        n_docs += 1
    if n_docs == 0:
        raise ValueError("no documents")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp_counts = out_dir / f"{dataset}.{lang}.{buckets}.counts.npy"
    fp_lambda = out_dir / f"{dataset}.{lang}.lambda.npy"
    np.save(fp_counts, counts)
    np.save(fp_lambda, np.asarray(n_words / n_docs))
    return fp_counts, fp_lambda


@dataclass(frozen=True)
class DsirModel:
    log_diff: np.ndarray  # log(p_target + 1e-8) - log(p_source + 1e-8)
    target_lambda: float
    source_lambda: float

    def score(self, features: Sequence[np.ndarray], doc_chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(importance, importance_length_correction) per doc, rounded to 8 digits; NaN for an empty doc.
        Length correction as RPv2: + log(Pois(len; λ_t)+1e-8) - log(Pois(len; λ_s)+1e-8), with len the number of
        *characters* while λ is a mean *word* count (RPv2's own mismatch, kept for comparability)."""
        from scipy import stats

        plain = np.array([float(self.log_diff[f].sum()) for f in features])
        lens = np.asarray(doc_chars, np.int64)
        corr = (np.log(stats.poisson.pmf(lens, self.target_lambda) + 1e-8)
                - np.log(stats.poisson.pmf(lens, self.source_lambda) + 1e-8))
        empty = lens == 0
        a = np.round(plain, 8)
        b = np.round(plain + corr, 8)
        a[empty] = np.nan
        b[empty] = np.nan
        return a, b


@functools.lru_cache(maxsize=32)
def load_dsir(directory: str, dataset: str, source: str, lang: str, buckets: int) -> DsirModel | None:
    """The target/source pair for one dataset, or None when its files are absent (RPv2: signal is null)."""
    d = Path(directory)
    files = [d / f"{dataset}.{lang}.{buckets}.counts.npy", d / f"{source}.{lang}.{buckets}.counts.npy",
             d / f"{dataset}.{lang}.lambda.npy", d / f"{source}.{lang}.lambda.npy"]
    if not all(f.exists() for f in files):
        return None
    tc, sc = np.load(files[0]), np.load(files[1])
    if tc.shape != (buckets,) or sc.shape != (buckets,):
        raise ValueError(f"DSIR count vectors in {d} do not have {buckets} buckets")
    log_diff = np.log(tc / tc.sum() + 1e-8) - np.log(sc / sc.sum() + 1e-8)
    return DsirModel(log_diff, float(np.load(files[2])), float(np.load(files[3])))


# ---------------------------------------------------------------------------------------------------------------
# UT1 blacklist (RPv2 artifacts/update_resources.py)


def ut1_category_index(categories: Sequence[str] = UT1_CATEGORIES) -> dict[tuple[str, ...], int]:
    """Id of every sorted combination of categories, by combination size then lexicographic order."""
    cats = sorted(categories)
    combos = itertools.chain.from_iterable(itertools.combinations(cats, r) for r in range(1, len(cats) + 1))
    return {tuple(c): i for i, c in enumerate(combos)}


def build_ut1_index(blacklists_dir: str | Path, out_path: str | Path,
                    categories: Sequence[str] = UT1_CATEGORIES) -> Path:
    """From an unpacked UT1 blacklist (`<dir>/<category>/domains`, one domain per line) write the JSON
    {domain: category_id} that `QualitySignalsParams.ut1_domains` reads."""
    index = ut1_category_index(categories)
    by_domain: dict[str, set[str]] = defaultdict(set)
    for cat_dir in sorted(Path(blacklists_dir).iterdir()):
        if cat_dir.is_dir() and cat_dir.name in categories and (cat_dir / "domains").exists():
            for dom in (cat_dir / "domains").read_text(encoding="utf-8", errors="replace").splitlines():
                if dom.strip():
                    by_domain[dom.strip()].add(cat_dir.name)
    mapping = {dom: index[tuple(sorted(cats))] for dom, cats in by_domain.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(mapping, sort_keys=True), encoding="utf-8")
    return out_path


@functools.lru_cache(maxsize=4)
def load_ut1(path: str) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        return {str(k): int(v) for k, v in json.load(f).items()}
