"""Model-based RPv2 signals: each code path runs on an artifact built in tmp_path from the shared samples."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tasks.signals import quality_models as qm
from tasks.signals.quality_signals import IMPORTANCE_SIGNALS, QualitySignalsParams, quality_signals

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
WIKI = DATA / "clean" / "wikipedia_1k" / "wikipedia.jsonl"
C4 = DATA / "web" / "c4_sample" / "c4_sample.jsonl"
needs_data = pytest.mark.skipif(not (WIKI.exists() and C4.exists()), reason=f"shared samples absent under {DATA}")


def _texts(path, field):
    return [json.loads(line)[field] for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def samples():
    if not (WIKI.exists() and C4.exists()):
        pytest.skip(f"shared samples absent under {DATA}")
    wiki, web = _texts(WIKI, "eng_Latn"), _texts(C4, "text")
    # train on the first 400 of each, evaluate on the last 100
    return {"wiki_train": wiki[:400], "web_train": web[:400], "wiki_test": wiki[-100:], "web_test": web[-100:]}


def _batch(wiki, web, urls=None):
    texts = list(wiki) + list(web)
    cols = {"text": texts}
    if urls is not None:
        cols["url"] = urls
    return pa.table(cols)


@needs_data
def test_fasttext_wiki_vs_web_classifier_scores_wikipedia_higher(samples, tmp_path):
    pytest.importorskip("fasttext", reason="pip install fasttext-wheel")
    model = qm.train_fasttext_classifier(samples["wiki_train"], samples["web_train"], tmp_path / "wiki.bin",
                                         target_name="wiki", epoch=25, lr=0.5)  # 400/class, not RPv2's 75k
    params = QualitySignalsParams(wikipedia_model=str(model), fasttext_lid_model=str(model))
    out = quality_signals(_batch(samples["wiki_test"], samples["web_test"] + [""]), params)
    scores = out.column("rps_doc_ml_wikipedia_score").to_pylist()
    assert scores[-1] is None  # empty doc -> None, as RPv2's BaseMLSignal
    wiki, web = np.array(scores[:100]), np.array(scores[100:200])
    # fastText returns exp(log(p + 1e-5)), so p can exceed 1 by 1e-5; RPv2 does not clip and neither do we
    both = np.concatenate([wiki, web])
    assert ((-1e-4 <= both) & (both <= 1 + 1e-4)).all()
    assert wiki.mean() > web.mean() + 0.3  # a held-out separation, not a fitted one
    # score = p if the label is the target, 1 - p if it is __label__cc (RPv2 classifiers.py)
    ft = qm.load_fasttext(str(model))
    text = samples["web_test"][0]
    labels, probs = qm.fasttext_predict(ft, [qm.quality_classifier_text(text)])
    want = probs[0] if labels[0] != qm.CCNET_LABEL else 1 - probs[0]
    assert scores[100] == round(want, 8)
    # ccnet_language_score: top-1 probability of text.replace("\n", ""), 2 decimals (cc_net split_by_lang)
    lid = out.column("ccnet_language_score").to_pylist()
    assert lid[100] == round(qm.fasttext_predict(ft, [text.replace("\n", "")])[1][0], 2)
    assert out.column("rps_doc_ml_palm_score").null_count == out.num_rows  # not configured -> null


@needs_data
def test_kenlm_perplexity_and_bucket_from_an_arpa_built_on_wikipedia(samples, tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="pip install kenlm (builds from source)")
    arpa = qm.build_kenlm_arpa(samples["wiki_train"][:200], tmp_path / "en.arpa", order=3)
    lm = kenlm.Model(str(arpa))
    assert lm.order == 3
    # the backoff model is a proper distribution: next-word probabilities after a seen context sum to one
    vocab = [line.split("\t")[1] for line in arpa.read_text().split("\\1-grams:\n")[1].split("\n\n")[0].splitlines()]
    state, nxt = kenlm.State(), kenlm.State()
    lm.BeginSentenceWrite(state)
    mid = kenlm.State()
    lm.BaseScore(state, "the", mid)
    total = sum(10 ** lm.BaseScore(mid, w, nxt) for w in vocab if w != "<s>")
    assert math.isclose(total, 1.0, abs_tol=1e-3)

    wiki_pp = [qm.ccnet_perplexity(lm, t) for t in samples["wiki_test"]]
    cutoffs = qm.perplexity_cutoffs(wiki_pp)
    params = QualitySignalsParams(kenlm_model=str(tmp_path / "{lang}.arpa"), perplexity_cutoffs=cutoffs)
    out = quality_signals(_batch(samples["wiki_test"], samples["web_test"] + [""]), params)
    pp = out.column("ccnet_perplexity").to_pylist()
    assert pp[:100] == wiki_pp and pp[-1] is None
    assert np.median(pp[:100]) < np.median(pp[100:200])  # in-domain text is less perplexing
    buckets = out.column("ccnet_bucket").to_pylist()
    assert buckets[-1] is None
    for p, b in zip(pp[:200], buckets[:200], strict=True):
        assert b == (0.0 if p < cutoffs[0] else 1.0 if p < cutoffs[1] else 2.0)
    assert {0.0, 1.0, 2.0} <= set(buckets[:100])


@needs_data
def test_dsir_importance_from_count_vectors_built_on_wiki_and_web(samples, tmp_path):
    qm.build_dsir_counts(samples["wiki_train"], tmp_path, dataset="wikipedia", lang="en", buckets=1000)
    qm.build_dsir_counts(samples["web_train"], tmp_path, dataset="ccnet", lang="en", buckets=1000)
    params = QualitySignalsParams(dsir_dir=str(tmp_path), dsir_buckets=1000)
    out = quality_signals(_batch(samples["wiki_test"], samples["web_test"] + [""]), params)
    imp = out.column("rps_doc_wikipedia_importance").to_pylist()
    corr = out.column("rps_doc_wikipedia_importance_length_correction").to_pylist()
    assert imp[-1] is None and corr[-1] is None
    assert np.mean(imp[:100]) > np.mean(imp[100:200])
    # definition: hashed {1,2}-gram features . (log p_target - log p_source)
    model = qm.load_dsir(str(tmp_path), "wikipedia", "ccnet", "en", 1000)
    (feats,) = qm.dsir_features([samples["web_test"][0]], 1000)
    assert imp[100] == pytest.approx(float(model.log_diff[feats].sum()), abs=1e-7)
    assert corr[100] != imp[100]
    # no books / openwebtext artifacts -> null, as RPv2
    for name in IMPORTANCE_SIGNALS:
        if "wikipedia" not in name:
            assert out.column(name).null_count == out.num_rows, name


def test_ut1_blacklist_ids_from_a_domain_list(tmp_path):
    root = tmp_path / "blacklists"
    for cat, doms in {"adult": ["bad.example", "both.example"], "gambling": ["both.example", "bet.example"],
                      "news": ["ignored.example"]}.items():
        (root / cat).mkdir(parents=True)
        (root / cat / "domains").write_text("\n".join(doms) + "\n")
    path = qm.build_ut1_index(root, tmp_path / "ut1.json")
    index = qm.ut1_category_index()
    assert json.loads(path.read_text()) == {"bad.example": index[("adult",)], "bet.example": index[("gambling",)],
                                            "both.example": index[("adult", "gambling")]}
    urls = ["https://bad.example/x", "http://BOTH.example:8080/", "https://www.bad.example/", None,
            "https://ignored.example/"]
    out = quality_signals(pa.table({"text": ["t"] * 5, "url": urls}), QualitySignalsParams(ut1_domains=str(path)))
    # exact domain match, no subdomain walk (RPv2 content.py RPS_Doc_UT1_Blacklist)
    assert out.column("rps_doc_ut1_blacklist").to_pylist() == [index[("adult",)], index[("adult", "gambling")],
                                                                None, None, None]


def test_missing_model_file_is_a_clear_error(tmp_path):
    pytest.importorskip("fasttext")
    with pytest.raises(FileNotFoundError, match="fastText model"):
        quality_signals(pa.table({"text": ["x"]}), QualitySignalsParams(palm_model=str(tmp_path / "none.bin")))
