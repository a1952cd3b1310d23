"""RPv2 quality signals: 100 % parity with the reference implementation's gold output, plus behaviour on bad input."""

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tasks.signals import quality_signals as qs
from tasks.signals.quality_signals import (
    ALL_SIGNALS,
    CLASSIFIER_SIGNALS,
    IMPORTANCE_SIGNALS,
    LINE_SIGNALS,
    QualitySignalsParams,
    quality_signals,
)
from tasks.signals.rpv2_chars import char_table

GOLD = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "gold"
needs_gold = pytest.mark.skipif(not (GOLD / "c4_rpv2_signals.jsonl").exists(), reason=f"gold data absent at {GOLD}")


def _load(name):
    docs = [json.loads(line) for line in open(GOLD / f"{name}_docs.jsonl", encoding="utf-8")]
    gold = [json.loads(line) for line in open(GOLD / f"{name}_rpv2_signals.jsonl", encoding="utf-8")]
    return docs, gold


def _mismatches(docs, gold, out):
    bad = []
    rows = out.to_pylist()
    for doc, ref, row in zip(docs, gold, rows, strict=True):
        assert doc["id"] == ref["id"]
        for key, want in ref.items():
            if key == "id" or key.startswith("minhash_"):  # MinHash belongs to tasks/dedup/minhash.py
                continue
            got = row[key]
            if key in LINE_SIGNALS:
                got = [[s["start"], s["end"], s["score"]] for s in got]
                ok = got == want
            elif want is None or got is None:
                ok = want is None and got is None
            else:
                ok = abs(got - want) <= 1e-6
            if not ok:
                bad.append((doc["id"], key, want, got))
    return bad


@needs_gold
@pytest.mark.parametrize("name,n_docs", [("edge", 20), ("c4", 1000)])
def test_every_rule_based_signal_matches_rpv2_gold(name, n_docs):
    docs, gold = _load(name)
    assert len(docs) == n_docs
    out = quality_signals(pa.table({"text": [d["text"] for d in docs]}), QualitySignalsParams())
    compared = {k for g in gold for k in g if k != "id" and not k.startswith("minhash_")}
    assert len(compared) == 28  # 22 document-level + 6 line-level signals in the gold files
    bad = _mismatches(docs, gold, out)
    assert bad == [], f"{len(bad)} mismatches, first: {bad[:5]}"


@needs_gold
def test_signals_do_not_depend_on_how_documents_are_batched():
    docs, gold = _load("c4")
    docs, gold = docs[:300], gold[:300]
    params = QualitySignalsParams()
    parts = [quality_signals(pa.table({"text": [d["text"] for d in docs[i:i + 37]]}), params)
             for i in range(0, len(docs), 37)]
    assert _mismatches(docs, gold, pa.concat_tables(parts)) == []


def test_output_schema_names_and_types():
    batch = pa.table({"doc_id": ["a", "b"], "text": ["Hello World.\nSecond line", ""]})
    out = quality_signals(batch, QualitySignalsParams())
    assert out.column_names == ["doc_id", "text", *ALL_SIGNALS]
    assert len(ALL_SIGNALS) == 45  # RPv2 core/schema/rp.py QUALITY_SIGNALS_SCHEMA
    for name in ALL_SIGNALS:
        typ = out.schema.field(name).type
        if name in LINE_SIGNALS:
            assert pa.types.is_list(typ) and typ.value_type.names == ["start", "end", "score"]
        elif name == "rps_doc_ut1_blacklist":
            assert typ == pa.int64()
        else:
            assert typ == pa.float64(), name
    row = out.to_pylist()[0]
    assert row["rps_lines_num_words"] == [{"start": 0, "end": 13, "score": 2}, {"start": 13, "end": 24, "score": 2}]
    assert row["ccnet_length"] == 24.0 and row["ccnet_nlines"] == 2.0


def test_empty_doc_gives_null_ratios_and_the_bulletpoint_quirk():
    out = quality_signals(pa.table({"text": ["", "x"]}), QualitySignalsParams()).to_pylist()
    empty = out[0]
    for name in ("rps_doc_frac_all_caps_words", "rps_doc_mean_word_length", "rps_doc_unigram_entropy",
                 "rps_doc_frac_lines_end_with_ellipsis", "rps_doc_symbol_to_word_ratio"):
        assert empty[name] is None, name
    assert empty["rps_doc_word_count"] == 0.0 and empty["rps_doc_stop_word_fraction"] == 0.0
    assert empty["rps_lines_start_with_bulletpoint"] == [{"start": 0, "end": 0, "score": None}]
    assert empty["rps_lines_num_words"] == []
    assert out[1]["rps_lines_start_with_bulletpoint"] == [{"start": 0, "end": 1, "score": 0.0}]


def test_null_text_gives_null_signals_not_a_dropped_row():
    out = quality_signals(pa.table({"text": pa.array(["Some words here.", None], pa.string())}),
                          QualitySignalsParams())
    assert out.num_rows == 2
    rows = out.to_pylist()
    assert rows[0]["rps_doc_word_count"] == 3.0
    assert all(rows[1][name] is None for name in ALL_SIGNALS)


def test_missing_text_column_is_a_clear_error():
    with pytest.raises(KeyError, match="text"):
        quality_signals(pa.table({"body": ["x"]}), QualitySignalsParams())


def test_unknown_default_language_is_rejected():
    with pytest.raises(ValueError, match="stop-word"):
        QualitySignalsParams(language="xx")


def test_lang_column_switches_stop_words_and_ldnoobw_per_row():
    nltk = pytest.importorskip("nltk.tokenize")
    text = "Le chat est sur la table et nous allons au marché avec les enfants."
    batch = pa.table({"text": [text, text, text], "lang": ["fr", "en", "ja"]})
    out = quality_signals(batch, QualitySignalsParams()).column("rps_doc_stop_word_fraction").to_pylist()
    stop = json.loads((qs.RESOURCES / "rpv2_stopwords.json").read_text())
    toks = nltk.WordPunctTokenizer().tokenize(text)
    for got, lang in zip(out, ["fr", "en", "en"], strict=True):  # "ja" has no list: falls back to the default "en"
        assert got == round(sum(t in set(stop[lang]) for t in toks) / len(toks), 8)
    assert out[0] > out[1]
    bad = quality_signals(pa.table({"text": ["du bist ein arschloch"] * 2, "lang": ["de", "en"]}),
                          QualitySignalsParams()).column("rps_doc_ldnoobw_words").to_pylist()
    assert bad == [1.0, 0.0]


def test_ldnoobw_counts_multiword_entries_and_overlaps():
    out = quality_signals(pa.table({"text": ["A blow job, and 2 girls 1 cup; bastard BASTARD."]}),
                          QualitySignalsParams()).column("rps_doc_ldnoobw_words").to_pylist()
    # "blow job" (2 words), "2 girls 1 cup" (4 words), "bastard" twice after lowercasing; "blow" alone is not listed
    assert out == [4.0]


def test_lorem_ipsum_counts_case_insensitively_on_normalized_text():
    text = "Lorem ipsum dolor. LOREM IPSUM!\nlorem\nipsum, lorem-ipsum"
    got = quality_signals(pa.table({"text": [text]}), QualitySignalsParams()).column("rps_doc_lorem_ipsum")[0]
    content = qs.normalize(text)
    assert content == "lorem ipsum dolor lorem ipsum lorem ipsum loremipsum"
    assert got.as_py() == round(3 / len(content), 8)


def test_character_classes_equal_python_re_and_str():
    table = char_table()
    sample = [chr(i) for i in random.Random(0).sample(range(0x110000), 20000)] + list("a_1²\u030a \t\x1c\u00a0é")
    for c in sample:
        f = int(table[ord(c)])
        assert bool(f & 1) == bool(re.match(r"\w", c)), hex(ord(c))
        assert bool(f & 2) == c.isspace(), hex(ord(c))
        assert bool(f & 4) == c.isupper() and bool(f & 16) == c.isnumeric(), hex(ord(c))


def test_rounding_equals_pythons_round_including_ties():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random(5000), np.array([0.123456785, 0.5, 1 / 3, 2.675e-8, 0.000000125])])
    x = np.concatenate([x, np.round(rng.random(2000), 9)])  # many exact-looking 9-digit ties
    assert [float(v) for v in qs._round(x)] == [round(float(v), 8) for v in x]


def test_model_signals_are_null_without_artifacts():
    out = quality_signals(pa.table({"text": ["Some text.", "More."], "url": ["http://a.com/x", None]}),
                          QualitySignalsParams())
    for name in ("ccnet_perplexity", "ccnet_bucket", "ccnet_language_score", "rps_doc_ut1_blacklist",
                 *CLASSIFIER_SIGNALS, *IMPORTANCE_SIGNALS):
        assert out.column(name).null_count == 2, name


def test_empty_batch():
    out = quality_signals(pa.table({"text": pa.array([], pa.string())}), QualitySignalsParams())
    assert out.num_rows == 0 and set(ALL_SIGNALS) <= set(out.column_names)


def test_astral_chars_and_final_sigma_follow_the_reference_normalization():
    text = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ok. ΑΣ-Β ΟΔΟΣ. İstanbul"
    row = quality_signals(pa.table({"text": [text]}), QualitySignalsParams()).to_pylist()[0]
    words = qs.normalize(text).split()
    assert row["rps_doc_word_count"] == len(words)
    assert math.isclose(row["rps_doc_mean_word_length"], round(sum(map(len, words)) / len(words), 8))
