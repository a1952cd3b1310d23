"""A model-based quality classifier trained on the user's own data, and the ``quality_score`` column it gives.

DCLM (Li et al. 2024, "DataComp-LM", §4.4) found its best filter to be a fastText bigram classifier trained on
high-quality reference text (OpenHermes-2.5 + ELI5 answers) as positives against random web text (RefinedWeb) as
negatives, keeping the top-scoring ~10 % of documents. FineWeb-Edu (Penedo et al. 2024) trains a linear head on
embeddings with labels from a teacher LLM instead. We follow DCLM: **fastText** (``fasttext-wheel``), bigrams,
positives and negatives named by the recipe (the shared Wikipedia, StackExchange and arXiv samples vs C4 here),
each ingested by the ordinary ``ingest`` stage so they are versions with lineage like any other data.

* ``quality_classifier`` (global): splits each class by a seeded doc_id hash into train and held-out parts,
  balances the classes (as many negatives as positives, DCLM's 1:1 setup), trains, and scores the held-out part:
  accuracy and ROC AUC go into the manifest's ``stats`` (``quality_classifier_heldout_*``) and the version's only
  row holds the model bytes, so the scoring stage reads it as an ordinary side table on any storage root.
* ``quality_score`` (actor: the model is loaded once per actor): adds ``quality_score`` = P(positive) in [0, 1];
  a quality_filter rule such as ``quality_score >= 0.2`` filters with it (the recipe picks the threshold: DCLM
  keeps a top fraction, which a threshold from ``select quantile_cont(quality_score, 0.9) ...`` reproduces).
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import annotated_types
import numpy as np
import pyarrow as pa

from tasks.common.stage import implements
from tasks.ingest.sources import IngestSource
from tasks.signals.quality_models import fasttext_predict, quality_classifier_text

POSITIVE, NEGATIVE = "__label__hq", "__label__web"
MODEL_SCHEMA = pa.schema([("model", pa.large_binary()), ("positive_label", pa.string()), ("format", pa.string())])


@dataclass(frozen=True, kw_only=True, slots=True)
class QualityClassifierParams:
    """The ``quality_classifier`` recipe section.

    positive / negative: ingest sources of high-quality reference text and of ordinary web text (paths relative to
        the recipe, as in ``ingest.sources``).
    samples_per_class: at most this many training documents per class (after the held-out split).
    heldout_fraction: share of each class held out for accuracy/AUC, by a seeded hash of doc_id.
    dim, epoch, lr, word_ngrams, min_count, bucket: fastText's settings. DCLM's classifier uses bigrams
        (word_ngrams=2); ``bucket`` is far below fastText's 2M default so the model stays a few MB (one Parquet row).
        epoch=25, lr=0.5: the fastText text-classification tutorial's settings for small training sets (its 0.1 x 5
        default underfits a few hundred documents per class: held-out AUC 0.82 vs 0.95 on the shared samples).
    """

    positive: Annotated[tuple[IngestSource, ...], annotated_types.MinLen(1)]
    negative: Annotated[tuple[IngestSource, ...], annotated_types.MinLen(1)]
    samples_per_class: int = 20_000
    heldout_fraction: float = 0.2
    seed: int = 0
    dim: int = 32
    epoch: int = 25
    lr: float = 0.5
    word_ngrams: int = 2
    min_count: int = 1
    bucket: int = 100_000
    docs_per_shard: int = 50_000  # ingest of the two sets
    text_column: str = "text"

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise ValueError("quality_classifier needs at least one positive and one negative source")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        for name in ("samples_per_class", "dim", "epoch", "word_ngrams", "min_count", "bucket", "docs_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True, kw_only=True, slots=True)
class QualityScoreParams:
    """The ``quality_score`` recipe section: applies the ``quality_classifier`` model of the same recipe."""

    text_column: str = "text"
    batch_size: int = 256  # texts per fastText call

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def in_heldout(doc_id: str, fraction: float, seed: int) -> bool:
    """A stable, seeded hash split: the same document is held out whatever the shard layout."""
    h = hashlib.sha1(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC as the Mann-Whitney U statistic (ties count one half); NaN without both classes."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _split(table: pa.Table, params: QualityClassifierParams, role: str) -> tuple[list[str], list[str]]:
    if params.text_column not in table.column_names or "doc_id" not in table.column_names:
        raise ValueError(f"quality_classifier: the {role} set needs doc_id and {params.text_column!r} columns, "
                         f"has {table.column_names}")
    train, held = [], []
    for doc_id, text in zip(table.column("doc_id").to_pylist(), table.column(params.text_column).to_pylist(),
                            strict=True):
        t = quality_classifier_text(text or "")
        if t:
            (held if in_heldout(str(doc_id), params.heldout_fraction, params.seed) else train).append(t)
    return train, held


def positive_probability(model: Any, texts: Sequence[str | None]) -> list[float | None]:
    """P(positive) per text; None for an empty text (fastText has no words to judge)."""
    clean = [quality_classifier_text(t or "") for t in texts]
    labels, probs = fasttext_predict(model, clean)
    # fastText's softmax can return 1.00001 (its probabilities are exp(log p + 1e-5)): clip into [0, 1]
    return [None if not t else min(1.0, max(0.0, p if lab == POSITIVE else 1.0 - p))
            for t, lab, p in zip(clean, labels, probs, strict=True)]


def train_classifier(positive: list[str], negative: list[str], params: QualityClassifierParams,
                     workdir: Path) -> Path:
    """fastText supervised on balanced, shuffled classes; one thread so the same data gives the same model."""
    import fasttext

    rng = random.Random(params.seed)
    n = min(len(positive), len(negative), params.samples_per_class)
    if n == 0:
        raise ValueError(f"quality_classifier: no training documents ({len(positive)} positive, "
                         f"{len(negative)} negative after the held-out split)")
    lines = [f"{POSITIVE} {t}" for t in rng.sample(positive, n)] + [f"{NEGATIVE} {t}" for t in rng.sample(negative, n)]
    rng.shuffle(lines)
    train_file = workdir / "train.txt"
    train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(
        input=str(train_file), dim=params.dim, epoch=params.epoch, lr=params.lr, wordNgrams=params.word_ngrams,
        minCount=params.min_count, bucket=params.bucket, thread=1, seed=params.seed, verbose=0)
    path = workdir / "quality_classifier.bin"
    model.save_model(str(path))
    train_file.unlink()
    return path


@implements("quality_classifier")
def quality_classifier_stage(tables: dict[str, pa.Table], params: QualityClassifierParams, ctx: Any):
    """The ``quality_classifier`` stage (global): (model table, stats with held-out accuracy and AUC)."""
    import fasttext

    pos_train, pos_held = _split(tables["positive"], params, "positive")
    neg_train, neg_held = _split(tables["negative"], params, "negative")
    ctx.local_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.local_dir, prefix=".qc-") as tmp:
        path = train_classifier(pos_train, neg_train, params, Path(tmp))
        model = fasttext.load_model(str(path))
        blob = path.read_bytes()
    held = pos_held + neg_held
    labels = [1] * len(pos_held) + [0] * len(neg_held)
    scores = positive_probability(model, held)
    accuracy = float(np.mean([(s >= 0.5) == bool(y) for s, y in zip(scores, labels, strict=True)])) if held else None
    auc = roc_auc(scores, labels) if held else None
    n = min(len(pos_train), len(neg_train), params.samples_per_class)
    stats = {
        "quality_classifier_train_per_class": n,
        "quality_classifier_heldout_positive": len(pos_held),
        "quality_classifier_heldout_negative": len(neg_held),
        "quality_classifier_heldout_accuracy": None if accuracy is None else round(accuracy, 4),
        "quality_classifier_heldout_auc": None if auc is None or np.isnan(auc) else round(auc, 4),
        "quality_classifier_model_bytes": len(blob),
    }
    table = pa.table([pa.array([blob], pa.large_binary()), pa.array([POSITIVE]), pa.array(["fasttext"])],
                     schema=MODEL_SCHEMA)
    return table, stats


@implements("quality_score")
class QualityScorer:
    """The ``quality_score`` stage (actor): the model is loaded once per actor from its one-row version."""

    def __init__(self, params: QualityScoreParams, *, model: pa.Table):
        import fasttext

        if model.num_rows != 1 or "model" not in model.column_names:
            raise ValueError(f"quality_score: the quality_classifier version must hold one model row, got "
                             f"{model.num_rows} rows with columns {model.column_names}")
        self.params = params
        fd, path = tempfile.mkstemp(suffix=".bin", prefix="quarry-qc-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model.column("model")[0].as_py())
            self.model = fasttext.load_model(path)
        finally:
            os.unlink(path)

    def __call__(self, batch: pa.Table) -> pa.Table:
        col = self.params.text_column
        if col not in batch.column_names:
            raise ValueError(f"quality_score needs a {col!r} column; the batch has {batch.column_names}")
        texts = batch.column(col).to_pylist()
        scores: list[float | None] = []
        for i in range(0, len(texts), self.params.batch_size):
            scores.extend(positive_probability(self.model, texts[i:i + self.params.batch_size]))
        values = pa.array(scores, pa.float32())
        if "quality_score" in batch.column_names:
            return batch.set_column(batch.schema.get_field_index("quality_score"), "quality_score", values)
        return batch.append_column("quality_score", values)
