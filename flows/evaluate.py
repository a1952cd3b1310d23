"""Evaluate a trained model: bits/byte on held-out text per domain + lm-evaluation-harness tasks on local files.

    quarry run evaluate datasets_cfg/tiny.yaml
    python -m flows.evaluate datasets_cfg/tiny.yaml

Results become ``{dataset}__evaluate``: model version, data version, task, metric, value, stderr, n.
"""

from __future__ import annotations

import sys

from prefect import flow

import datasets_cfg
from flows import runinfo
from flows.run import load, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from flows.train import train
from ray_cluster import runtime
from storage import datasets


@flow(name="evaluate", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def evaluate(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Train (a no-op when already done) and evaluate the recipe's model; returns the evaluate version."""
    cfg, profile = load(recipe)
    if cfg.evaluate is None:
        raise datasets_cfg.RecipeError(f"recipe {recipe} has no `evaluate` section")
    model = datasets.ref_from_string(cfg.root, train(recipe))
    heldout = datasets.latest(cfg.root, cfg.dataset, "heldout") if cfg.heldout else None
    with runtime.connected(profile):
        return str(stage("evaluate", [model, heldout], cfg.evaluate, profile))


if __name__ == "__main__":
    print(evaluate(sys.argv[1]))
