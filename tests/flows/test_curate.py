"""The curate flow end to end on tiny.yaml under a real Prefect API and a local Ray: idempotent, funnel in SQL."""

import shutil

import pytest
import yaml

from storage import catalog, datasets
from tests.conftest import REPO, shared_path


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    shared_path("web", "c4_sample", "c4_sample.jsonl")
    tmp = tmp_path_factory.mktemp("curate")
    data = yaml.safe_load((REPO / "datasets_cfg" / "tiny.yaml").read_text())
    for src in data["ingest"]["sources"]:
        src["path"] = str((REPO / "datasets_cfg" / src["path"]).resolve())
    data["storage_root"] = str(tmp / "store")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    yield path
    shutil.rmtree(tmp, ignore_errors=True)


def test_curate_runs_twice_to_the_same_version_and_explains_its_funnel(tiny_recipe, prefect_api, ray_local):
    from flows.curate import curate

    first = curate(str(tiny_recipe))
    root = str(tiny_recipe.parent / "store")
    n_versions = len(list(datasets.iter_manifests(root)))
    assert curate(str(tiny_recipe)) == first  # a no-op: same version, nothing new committed
    assert len(list(datasets.iter_manifests(root))) == n_versions

    con = catalog.connect(root)
    stages = {r[0] for r in con.execute("select stage from versions where dataset = 'tiny'").fetchall()}
    assert {"ingest", "quality_signals", "minhash_signatures", "quality_filter", "exact_dedup", "minhash_dedup", "kept"} <= stages
    funnel = dict(con.execute("select coalesce(drop_reason, 'kept'), count(*) from tiny__minhash_dedup group by 1").fetchall())
    ingested = con.execute("select count(*) from tiny__ingest").fetchone()[0]
    assert sum(funnel.values()) == ingested  # no document disappears from the funnel
    # the recipe ingests 30 C4 documents twice (c4_sample and gold/c4_docs): the copies are exact URL duplicates
    assert funnel.get("ed_url_duplicate", 0) >= 1
    pairs = con.execute(
        "select d.url = w.url, d.source <> w.source from tiny__exact_dedup d "
        "join tiny__exact_dedup w on w.doc_id = d.ed_duplicate_of where d.drop_reason = 'ed_url_duplicate'"
    ).fetchall()
    assert len(pairs) == funnel["ed_url_duplicate"] and all(same_url and cross for same_url, cross in pairs)
    kept = con.execute("select count(*) from tiny__kept").fetchone()[0]
    assert kept == funnel["kept"]
    # signals are the RPv2 names, queryable per domain
    by_domain = dict(con.execute("select domain, avg(rps_doc_word_count) from tiny__quality_signals group by 1").fetchall())
    assert set(by_domain) == {"web", "wikipedia", "code", "stackexchange", "arxiv"}
    lineage = catalog.lineage(con, first)["stage"].to_pylist()
    assert lineage[0] == "kept" and "ingest" in lineage
