"""Evaluate a trained model: bits/byte on held-out text per domain + lm-evaluation-harness tasks on local files.

    quarry run evaluate datasets_cfg/tiny.yaml
    python -m flows.evaluate datasets_cfg/tiny.yaml

Results become ``{dataset}__evaluate``: model version, data version, task, metric, value, stderr, n; beside them
``{dataset}__eval_contamination``: per task, the items sharing an n-gram with the model's training documents.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace

from prefect import flow

import datasets_cfg
from flows import runinfo
from flows.run import load, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from flows.train import train
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef
from tasks.filter.decontaminate import DecontaminateParams


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
        result = stage("evaluate", [model, heldout], cfg.evaluate, profile)
        warn_truncated(result)
        if cfg.evaluate.eval_dir:  # beside the scores: how many items of each task the model saw in training
            stage("eval_contamination", [model, training_docs(model)], contamination_params(cfg), profile)
        return str(result)


def warn_truncated(ref: DatasetRef) -> None:
    """The stage's workers warn in their own logs; the run's console and Prefect log say it too: per task, how
    many examples were scored on a left-truncated prompt (column n_truncated of ``{dataset}__evaluate``)."""
    for task, n in (datasets.read_manifest(ref)["stats"].get("truncated") or {}).items():
        logging.getLogger("quarry").warning(
            f"evaluate {ref.version}: task {task}: {n} example(s) exceed the model's context and were scored on a "
            f"left-truncated prompt (n_truncated in {ref.dataset}__evaluate)")


def training_docs(model: DatasetRef) -> DatasetRef:
    """The documents a model was trained on: up its lineage (train <- pack <- tokenize) to tokenize's input."""
    ref = model
    while ref.stage in ("train", "pack", "tokenize"):
        ref = datasets.ref_from_string(ref.root, datasets.read_manifest(ref)["parents"][0])
    return ref


def contamination_params(cfg: datasets_cfg.RunConfig) -> DecontaminateParams:
    """The recipe's decontaminate n-gram settings on the evaluate section's files and tasks."""
    base = cfg.decontaminate or DecontaminateParams(eval_dir=cfg.evaluate.eval_dir)
    return replace(base, eval_dir=cfg.evaluate.eval_dir, tasks=tuple(cfg.evaluate.tasks))


if __name__ == "__main__":
    print(evaluate(sys.argv[1]))
