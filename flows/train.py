"""Train a small Llama on a curated dataset: tokenize -> pack -> train (Ray Train's TorchTrainer).

    quarry run train datasets_cfg/tiny.yaml
    python -m flows.train datasets_cfg/tiny.yaml

The run directory is the train stage's version folder, so a retried or restarted run resumes from its last
checkpoint with the same data order; per-step metrics become the ``{dataset}__train`` view.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow

import datasets_cfg
from flows import run, runinfo
from flows.curate import curate
from flows.run import load
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef


def train_on(ref: DatasetRef, cfg: datasets_cfg.RunConfig, profile: runtime.Profile, steps: Any = run) -> DatasetRef:
    """tokenize -> pack -> train on an already curated version (``steps``: see flows.curate.curate_stages)."""
    stage = steps.stage
    missing = [s for s in ("tokenize", "pack", "train") if getattr(cfg, s) is None]
    if missing:
        raise datasets_cfg.RecipeError(f"recipe for {cfg.dataset} has no {missing} section(s)")
    tokens = stage("tokenize", [ref], cfg.tokenize, profile)
    packed = stage("pack", [tokens], cfg.pack, profile)
    return stage("train", [packed], cfg.train, profile)


@flow(name="train", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def train(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Curate (a no-op when already done), then tokenize, pack and train; returns the model version."""
    cfg, profile = load(recipe)
    curated = datasets.ref_from_string(cfg.root, curate(recipe))
    with runtime.connected(profile):
        return str(train_on(curated, cfg, profile))


if __name__ == "__main__":
    print(train(sys.argv[1]))
