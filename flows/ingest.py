"""Ingest a recipe's sources into a versioned documents dataset (+ a quarantine table with reasons).

    quarry run ingest datasets_cfg/tiny.yaml
    python -m flows.ingest datasets_cfg/tiny.yaml
"""

from __future__ import annotations

import sys

from prefect import flow

import datasets_cfg
from flows import runinfo
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from flows.stage import ingest_task
from ray_cluster import runtime


@flow(name="ingest", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def ingest(
    recipe: Recipe = DEFAULT_RECIPE,
    profile: ProfileName = None,
    storage_root: StorageRoot = None,
    fail_from_shard: int | None = None,
) -> str:
    """Read every source of the recipe into ``{dataset}/ingest/{version}``; a no-op when already committed."""
    cfg = datasets_cfg.load(recipe)
    profile = runtime.load_profile(cfg.cluster)
    with runtime.connected(profile):
        ref = ingest_task(
            cfg.ingest.sources, cfg.root, cfg.dataset, cfg.ingest.docs_per_shard, profile, fail_from_shard=fail_from_shard
        )
    return str(ref)


if __name__ == "__main__":
    print(ingest(sys.argv[1]))
