"""Curate a dataset: ingest -> RPv2 signals -> MinHash -> SQL filter -> exact + fuzzy dedup -> kept documents
-> embed -> hierarchical k-means -> balanced sample -> (TPT augment).

    quarry run curate datasets_cfg/tiny.yaml
    python -m flows.curate datasets_cfg/tiny.yaml

Every line is a stage; a recipe section that is absent skips its stage. Re-running is a no-op; a killed run resumes.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import datasets_cfg
import tasks.datatrove_signals as dt_mod
import tasks.minhash_dedup as minhash_mod
import tasks.quality_signals as qs_mod
import tasks.select as select_mod
from flows import runinfo, steps
from flows.cluster import embedding_curation
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from flows.stage import ingest_task, publish_funnel, run_stage
from ray_cluster import runtime
from storage.datasets import DatasetRef


@task(retries=1, cache_policy=NO_CACHE, task_run_name="{stage}")
def composite(stage: str, fn, src: DatasetRef, params, profile: runtime.Profile) -> DatasetRef:
    """A multi-step stage (dedup: hash -> group -> mark) as one Prefect task."""
    return fn(src, params, profile)


def curate_stages(cfg: datasets_cfg.RunConfig, profile: runtime.Profile) -> tuple[DatasetRef, DatasetRef | None]:
    """The stages of a validated recipe, in order; returns (curated version, held-out version or None)."""
    ref = ingest_task(cfg.ingest.sources, cfg.root, cfg.dataset, cfg.ingest.docs_per_shard, profile)
    heldout = None
    if cfg.heldout:  # evaluation text leaves before curation, so no stage (or model) ever sees it
        heldout = run_stage(ref, "heldout", select_mod.split_by_doc_id, replace(cfg.heldout, side="heldout"), profile)
        ref = run_stage(ref, "train_split", select_mod.split_by_doc_id, replace(cfg.heldout, side="train"), profile)
    if cfg.quality_signals:
        ref = run_stage(ref, "quality_signals", qs_mod.quality_signals, cfg.quality_signals, profile)
    if cfg.minhash_signatures:
        ref = run_stage(ref, "minhash_signatures", minhash_mod.minhash_signatures, cfg.minhash_signatures, profile)
    if cfg.datatrove_signals:
        ref = run_stage(ref, "datatrove_signals", dt_mod.datatrove_signals, cfg.datatrove_signals, profile)
    if cfg.quality_filter:
        ref = composite("quality_filter", steps.quality_filter, ref, cfg.quality_filter, profile)
    if cfg.exact_dedup:
        ref = composite("exact_dedup", steps.exact_dedup, ref, cfg.exact_dedup, profile)
    if cfg.minhash_dedup:
        ref = composite("minhash_dedup", steps.minhash_dedup, ref, cfg.minhash_dedup, profile)
    publish_funnel(ref)
    ref = run_stage(ref, "kept", select_mod.kept_documents, select_mod.KeptParams(), profile)
    if cfg.embed and cfg.hkmeans:
        ref = embedding_curation(ref, cfg, profile)
    return ref, heldout


@flow(name="curate", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def curate(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Run the recipe's curation stages; returns the final dataset version (dataset/stage/version)."""
    cfg = datasets_cfg.load(recipe)
    profile = runtime.load_profile(cfg.cluster)
    with runtime.connected(profile):
        return str(curate_stages(cfg, profile)[0])


if __name__ == "__main__":
    print(curate(sys.argv[1]))
