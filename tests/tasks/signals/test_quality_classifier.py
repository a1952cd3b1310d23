"""The DCLM-style fastText quality classifier trained from the shared clean samples (Wikipedia, StackExchange,
arXiv) vs C4, through the real executor: held-out accuracy/AUC in the manifest, then quality_score on new text."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from ray_cluster import runtime
from storage import datasets
from tasks.ingest.sources import IngestSource
from tasks.signals.quality_classifier import QualityClassifierParams, QualityScoreParams, QualityScorer, roc_auc
from tests import stages
from tests.conftest import shared_path


def _positive() -> tuple[IngestSource, ...]:
    return (
        IngestSource(path=str(shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")), domain="wikipedia",
                     text_field="eng_Latn", limit=300),
        IngestSource(path=str(shared_path("domains", "stackexchange", "cardano_posts.jsonl")), domain="stackexchange",
                     html_field="body_html", title_field="title", main_content=False, limit=150),
        IngestSource(path=str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), domain="arxiv",
                     text_field="abstract", limit=150),
    )


def _negative() -> tuple[IngestSource, ...]:
    return (IngestSource(path=str(shared_path("web", "c4_sample", "c4_sample.jsonl")), domain="web", limit=600),)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    prof = runtime.load_profile("serial")
    root = str(tmp_path_factory.mktemp("qc"))
    params = QualityClassifierParams(positive=_positive(), negative=_negative())
    pos = stages.ingest(params.positive, root=root, dataset="qc_pos", docs_per_shard=200, profile=prof)
    neg = stages.ingest(params.negative, root=root, dataset="qc_neg", docs_per_shard=200, profile=prof)
    model = stages.run("quality_classifier", [pos, neg], params, prof, dataset="qc")
    return prof, params, pos, neg, model


def test_classifier_separates_reference_text_from_web_on_the_heldout_split(trained):
    prof, params, pos, neg, model = trained
    stats = datasets.read_manifest(model)["stats"]
    # held out by doc-id hash (20 %): ~120 positives and ~120 negatives never seen in training
    assert stats["quality_classifier_heldout_positive"] >= 80 and stats["quality_classifier_heldout_negative"] >= 80
    assert stats["quality_classifier_heldout_auc"] >= 0.9, stats
    assert stats["quality_classifier_heldout_accuracy"] >= 0.8, stats
    assert model.dataset == "qc" and datasets.read_table(model).num_rows == 1
    # the same inputs give the same version (skipped, not retrained)
    assert stages.run("quality_classifier", [pos, neg], params, prof, dataset="qc") == model


def test_quality_score_ranks_wikipedia_above_c4_documents_it_never_saw(trained, tmp_path):
    prof, params, pos, neg, model = trained
    wiki = IngestSource(path=str(shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")), domain="wikipedia",
                        text_field="eng_Latn")
    c4 = IngestSource(path=str(shared_path("web", "c4_sample", "c4_sample.jsonl")), domain="web")
    docs = stages.ingest([wiki, c4], root=str(tmp_path), dataset="qs", docs_per_shard=500, profile=prof)
    scored = stages.run("quality_score", [docs, model], QualityScoreParams(), prof)
    t = datasets.read_table(scored, columns=["domain", "quality_score", "doc_id"])
    rows = t.to_pylist()
    # the documents past the training limits (wikipedia > 300, C4 > 600) were never trained on
    unseen_wiki = [r["quality_score"] for r in rows if r["domain"] == "wikipedia"][300:]
    unseen_c4 = [r["quality_score"] for r in rows if r["domain"] == "web"][600:]
    assert len(unseen_wiki) >= 300 and len(unseen_c4) >= 300
    auc = roc_auc(unseen_wiki + unseen_c4, [1] * len(unseen_wiki) + [0] * len(unseen_c4))
    assert auc >= 0.9
    assert all(0.0 <= s <= 1.0 for s in unseen_wiki + unseen_c4)


def test_empty_text_gets_no_score_and_a_bad_model_version_is_a_clear_error(trained):
    _, _, _, _, model = trained
    scorer = QualityScorer(QualityScoreParams(), model=datasets.read_table(model))
    out = scorer(pa.table({"text": ["", None, "The cat sat on the mat."]}))
    scores = out.column("quality_score").to_pylist()
    assert scores[0] is None and scores[1] is None and 0.0 <= scores[2] <= 1.0
    with pytest.raises(ValueError, match="one model row"):
        QualityScorer(QualityScoreParams(), model=pa.table({"x": [1, 2]}))


def test_auc_is_the_mann_whitney_statistic():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # sklearn's doc example
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5
    assert math.isnan(roc_auc([0.2], [1]))
