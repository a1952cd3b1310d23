"""Ingest a recipe's sources into a versioned documents dataset (+ a quarantine table with reasons).

    quarry run ingest datasets_cfg/tiny.yaml
    python -m flows.ingest datasets_cfg/tiny.yaml
"""

from __future__ import annotations

import sys

from prefect import flow

from flows import runinfo
from flows.run import load, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
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
    cfg, profile = load(recipe)
    with runtime.connected(profile):
        return str(stage("ingest", [], cfg.ingest, profile, root=cfg.root, dataset=cfg.dataset,
                         fail_from_shard=fail_from_shard))


if __name__ == "__main__":
    print(ingest(sys.argv[1]))
