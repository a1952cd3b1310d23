"""The CPU-only Dask path: the same pure stage functions over the same Parquet shards, on a real LocalCluster.

A profile with `engine: dask` and a `dask_address` runs ingest and per-batch stages on that cluster (dask-jobqueue on
Slurm in production); the output must be the documents a Ray run produces, shard for shard.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from ray_cluster import runtime
from storage import catalog, datasets
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.conftest import shared_path

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install -e .[dask])")


def _sources() -> list[IngestSource]:
    return [
        IngestSource(path=str(shared_path("web", "c4_sample", "c4_sample.jsonl")), domain="web", limit=40),
        IngestSource(path=str(shared_path("web", "dolma_samples", "sample-0000.warc.gz")), domain="web"),
        IngestSource(
            path=str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")),
            domain="arxiv",
            text_field="abstract",
            limit=25,
        ),
    ]


def _char_count(batch: pa.Table, params: dict) -> pa.Table:
    return batch.append_column("qs_chars", pc.utf8_length(batch["text"]))


@pytest.fixture(scope="module")
def dask_cluster():
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _rows(root: str, view: str, cols: str) -> list[tuple]:
    con = catalog.connect(root)
    return con.execute(f"select {cols} from {view} order by doc_id").fetchall()


def test_dask_ingest_and_map_stage_match_the_ray_run_shard_for_shard(tmp_path, dask_cluster, ray_local):
    dask = runtime.Profile(name="dask", engine="dask", dask_address=dask_cluster)
    ray = runtime.Profile(name="ray", engine="ray")
    refs = {}
    for name, profile in (("dask", dask), ("ray", ray)):
        root = str(tmp_path / name)
        with runtime.connected(profile):
            docs = stages.ingest(_sources(), root=root, dataset="cpu", docs_per_shard=15, profile=profile)
            refs[name] = stages.adhoc(docs, "char_count", _char_count, {}, profile)
    # same inputs and code: the same content-addressed version, whichever engine computed it
    assert refs["dask"].version == refs["ray"].version
    d_root, r_root = str(tmp_path / "dask"), str(tmp_path / "ray")
    assert _rows(d_root, "cpu__ingest", "doc_id, domain") == _rows(r_root, "cpu__ingest", "doc_id, domain")
    got = _rows(d_root, "cpu__char_count", "doc_id, qs_chars")
    assert got == _rows(r_root, "cpu__char_count", "doc_id, qs_chars")
    assert len(got) == 40 + 22 + 25 and all(chars > 0 for _, chars in got)
    shards = [m["files"] for m in datasets.iter_manifests(d_root) if m["stage"] == "char_count"][0]
    assert shards == [m["files"] for m in datasets.iter_manifests(r_root) if m["stage"] == "char_count"][0]


def test_ingest_flow_runs_on_the_dask_profile(tmp_path, prefect_api, dask_cluster, monkeypatch):
    from flows.ingest import ingest

    profile = tmp_path / "dask.yaml"
    profile.write_text(yaml.safe_dump({"engine": "dask", "dask_address": dask_cluster}))
    recipe = tmp_path / "daskflow.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "dataset": "daskflow",
                "storage_root": str(tmp_path / "store"),
                "cluster": str(profile),  # a profile by path: the recipe names where it runs
                "ingest": {"docs_per_shard": 15, "sources": [{"path": s.path, "domain": s.domain, "limit": s.limit,
                                                               "text_field": s.text_field} for s in _sources()]},
            }
        )
    )  # fmt: skip
    monkeypatch.delenv("QUARRY_PROFILE", raising=False)
    ref = datasets.ref_from_string(str(tmp_path / "store"), ingest(str(recipe)))
    manifest = datasets.read_manifest(ref)
    assert manifest["num_rows"] == 40 + 22 + 25
    assert manifest["stats"]["domains"] == {"web": 62, "arxiv": 25}
