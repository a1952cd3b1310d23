"""Curate a dataset: ingest -> RPv2 signals -> MinHash -> SQL filter -> exact + fuzzy dedup -> kept documents
-> embed -> hierarchical k-means -> (SemDeDup) -> balanced sample.

    quarry run curate datasets_cfg/tiny.yaml
    python -m flows.curate datasets_cfg/tiny.yaml

Every line is a stage; a recipe section that is absent skips its stage. Re-running is a no-op; a killed run resumes.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from prefect import flow

import datasets_cfg
from flows import runinfo
from flows.run import load, section, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime
from storage.datasets import DatasetRef
from tasks import registry
from tasks.select import KeptParams, SelectedParams


def curate_stages(cfg: datasets_cfg.RunConfig, profile: runtime.Profile) -> tuple[DatasetRef, DatasetRef | None]:
    """The stages of a validated recipe, in order; returns (curated version, held-out version or None)."""
    docs = stage("ingest", [], cfg.ingest, profile, root=cfg.root, dataset=cfg.dataset)
    heldout = None
    if cfg.heldout:  # evaluation text leaves before curation, so no stage (or model) ever sees it
        heldout = stage("heldout", [docs], replace(cfg.heldout, side="heldout"), profile)
        docs = stage("train_split", [docs], replace(cfg.heldout, side="train"), profile)
    for name in registry.CURATION:
        if getattr(cfg, name) is not None:
            docs = section(name, docs, getattr(cfg, name), profile)
    docs = stage("kept", [docs], KeptParams(), profile)
    if cfg.embed and cfg.hkmeans:  # embedding-space curation (Vo et al. 2024)
        emb = stage("embed", [docs], cfg.embed, profile)
        hk = stage("hkmeans", [emb], cfg.hkmeans, profile)
        sd = stage("semdedup", [emb, hk], cfg.semdedup, profile) if cfg.semdedup else None
        if cfg.balance:
            bal = stage("balance", [hk, docs, sd], cfg.balance, profile)
            docs = stage("curated", [docs, bal], SelectedParams(copies_column="bal_copies"), profile)
    return docs, heldout


@flow(name="curate", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def curate(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Run the recipe's curation stages; returns the final dataset version (dataset/stage/version)."""
    cfg, profile = load(recipe)
    with runtime.connected(profile):
        return str(curate_stages(cfg, profile)[0])


if __name__ == "__main__":
    print(curate(sys.argv[1]))
