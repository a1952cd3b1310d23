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
    data["evaluate"]["eval_dir"] = str((REPO / "datasets_cfg" / data["evaluate"]["eval_dir"]).resolve())  # decontaminate
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
    assert {"ingest", "heldout", "train_split", "quality_signals", "minhash_signatures", "quality_filter", "exact_dedup",
            "minhash_dedup", "kept", "embed", "hkmeans", "semdedup", "balance", "curated"} <= stages
    funnel = dict(con.execute("select coalesce(drop_reason, 'kept'), count(*) from tiny__minhash_dedup group by 1").fetchall())
    ingested = con.execute("select count(*) from tiny__train_split").fetchone()[0]
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
    # language_id, pii and decontaminate ran in CURATION order; their columns reach the funnel's last stage
    assert {"language_id", "pii", "decontaminate"} <= stages
    lang = dict(con.execute("select lang, count(*) from tiny__minhash_dedup group by 1").fetchall())
    assert lang.get("en", 0) > 0.8 * ingested
    assert con.execute("select count(*) from tiny__quality_signals where lang_score is not null and "
                       "ccnet_language_score <> round(lang_score, 2)").fetchone()[0] == 0
    redacted, matched = con.execute("select sum(pii_total), count(*) filter (where dc_ngrams > 0) "
                                    "from tiny__minhash_dedup").fetchone()
    assert redacted > 0  # the code and web samples hold public IPs and e-mail addresses
    assert matched == sum(n for r, n in funnel.items() if r.startswith("decontam_"))  # threshold 1: every match drops
    # signals are the RPv2 names, queryable per domain
    by_domain = dict(con.execute("select domain, avg(rps_doc_word_count) from tiny__quality_signals group by 1").fetchall())
    assert set(by_domain) == {"web", "wikipedia", "code", "stackexchange", "arxiv"}
    # embeddings are unit vectors; every kept doc has cluster labels at both levels; the sample meets its target
    norms = con.execute("select min(list_dot_product(embedding::float[], embedding::float[])), "
                        "max(list_dot_product(embedding::float[], embedding::float[])) from tiny__embed").fetchone()
    assert 0.999 < norms[0] <= norms[1] < 1.001
    assert con.execute("select count(*), count(distinct km_l1), count(distinct km_l2) from tiny__hkmeans").fetchone() == (kept, 12, 4)
    assert con.execute("select count(*) from tiny__curated").fetchone()[0] == 100
    stats = con.execute("select level, kl_uniform_before, kl_uniform_after from tiny__balance_level_stats order by level").fetchall()
    assert [s[0] for s in stats] == [1, 2] and stats[1][2] <= stats[1][1]  # the top level gets more uniform
    held = con.execute("select count(*) from tiny__heldout h join tiny__curated c using (doc_id)").fetchone()[0]
    assert held == 0  # held-out documents never reach the curated data
    lineage = catalog.lineage(con, first)["stage"].to_pylist()
    assert lineage[0] == "curated" and "ingest" in lineage and "balance" in lineage
