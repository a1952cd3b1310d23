"""The curate flow on tiny_subdoc.yaml (line dedup, the fastText quality classifier, sentence-span dedup) under a
real Prefect API and a local Ray: every new funnel reason is queryable in SQL, the classifier's held-out scores
are in the versions table, and a second run is a no-op."""

import shutil

import pytest
import yaml

from storage import catalog, datasets
from tests.conftest import REPO, shared_path


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    shared_path("web", "c4_sample", "c4_sample.jsonl")
    tmp = tmp_path_factory.mktemp("subdoc")
    data = yaml.safe_load((REPO / "datasets_cfg" / "tiny_subdoc.yaml").read_text())
    for section, key in (("ingest", "sources"), ("quality_classifier", "positive"), ("quality_classifier", "negative")):
        for src in data[section][key]:
            src["path"] = str((REPO / "datasets_cfg" / src["path"]).resolve())
    data["storage_root"] = str(tmp / "store")
    path = tmp / "tiny_subdoc.yaml"
    path.write_text(yaml.safe_dump(data))
    yield path
    shutil.rmtree(tmp, ignore_errors=True)


def test_subdoc_dedup_and_quality_score_reasons_are_in_the_funnel(recipe, prefect_api, ray_local):
    from flows.curate import curate

    first = curate(str(recipe))
    root = str(recipe.parent / "store")
    n_versions = len(list(datasets.iter_manifests(root)))
    assert curate(str(recipe)) == first
    assert len(list(datasets.iter_manifests(root))) == n_versions

    con = catalog.connect(root)
    stages = {r[0] for r in con.execute("select stage from versions where dataset = 'tiny_subdoc'").fetchall()}
    assert {"line_dedup_hashes", "line_dedup_duplicates", "line_dedup", "quality_classifier", "quality_score",
            "sentence_dedup_hashes", "sentence_dedup_duplicates", "sentence_dedup"} <= stages
    funnel = dict(con.execute(
        "select coalesce(drop_reason, 'kept'), count(*) from tiny_subdoc__sentence_dedup group by 1").fetchall())
    assert sum(funnel.values()) == con.execute("select count(*) from tiny_subdoc__ingest").fetchone()[0]
    # the 30 C4 documents ingested twice: line dedup empties the second copies, the filter keeps its reason
    assert funnel.get("ld_empty_after_dedup", 0) >= 25, funnel
    assert funnel.get("dclm_quality", 0) >= 1, funnel
    # who dropped them: line dedup keeps its drops through the filter's pass-through rule, the classifier rule is
    # the filter's own (drop_stage, through every columns layer to the last stage's view)
    stages = dict(con.execute("select drop_reason, list(distinct drop_stage) from tiny_subdoc__sentence_dedup "
                              "where drop_reason in ('ld_empty_after_dedup', 'dclm_quality') group by 1").fetchall())
    assert stages == {"ld_empty_after_dedup": ["line_dedup"], "dclm_quality": ["quality_filter"]}, stages
    ld = con.execute("select sum(ld_lines_removed), max(ld_removed_char_fraction) from tiny_subdoc__line_dedup").fetchone()
    assert ld[0] >= 100 and ld[1] == 1.0
    # the classifier's held-out numbers are stored with its version
    auc, acc = con.execute(
        "select (stats->>'$.quality_classifier_heldout_auc')::double, "
        "(stats->>'$.quality_classifier_heldout_accuracy')::double from versions "
        "where dataset = 'tiny_subdoc' and stage = 'quality_classifier'").fetchone()
    assert auc >= 0.9 and acc >= 0.8
    by_domain = dict(con.execute(
        "select domain, avg(quality_score) from tiny_subdoc__quality_score group by 1").fetchall())
    assert by_domain["wikipedia"] > by_domain["web"]
    kept = con.execute("select count(*) from tiny_subdoc__kept").fetchone()[0]
    assert kept == funnel["kept"] > 0
