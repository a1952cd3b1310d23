"""Compare data recipes: a matrix of data variants x model sizes x seeds, each curated, tokenized to the same token
budget, trained and evaluated; the comparison table is ``{experiment}__experiment``.

    quarry run experiment datasets_cfg/tiny_experiment.yaml
    quarry sql "select variant, task, metric, avg(value) from tiny_matrix__experiment group by all order by all"

Each cell is its own Prefect subflow run; a finished cell is a no-op on re-run (all its versions are committed).
"""

from __future__ import annotations

import sys
from dataclasses import replace

from prefect import flow, get_run_logger

import datasets_cfg
from flows import runinfo
from flows.curate import curate_stages
from flows.run import load, profile_for, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime
from storage import datasets
from tasks import experiment as experiment_mod
from tasks.train import MODEL_PRESETS


@flow(name="experiment-cell", flow_run_name="{variant}-{model_size}-seed{seed}", log_prints=True)
@runinfo.tracked_flow
def experiment_cell(recipe: str, variant: str, model_size: str, seed: int) -> str:
    """curate (variant) -> tokenize -> pack (equal token budget) -> train (size, seed) -> evaluate."""
    cfg = datasets_cfg.load(recipe)
    exp = cfg.experiment
    vcfg = cfg.variant(exp.variants[variant].skip)
    missing = [s for s in ("tokenize", "pack", "train", "evaluate") if getattr(vcfg, s) is None]
    if missing:
        raise datasets_cfg.RecipeError(f"{recipe}: an experiment needs {missing} section(s)")
    profile = profile_for(vcfg.cluster)
    with runtime.connected(profile):
        curated, heldout = curate_stages(vcfg, profile)
        tokens = stage("tokenize", [curated], vcfg.tokenize, profile)
        packed = stage("pack", [tokens], replace(vcfg.pack, target_tokens=exp.target_tokens, seed=seed), profile)
        model = stage("train", [packed], replace(vcfg.train, **MODEL_PRESETS[model_size], seed=seed), profile)
        return str(stage("evaluate", [model, heldout], vcfg.evaluate, profile))


@flow(name="experiment", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def experiment(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Run every cell, then write the comparison table; returns its version."""
    cfg, profile = load(recipe)
    exp = cfg.experiment
    if exp is None:
        raise datasets_cfg.RecipeError(f"recipe {recipe} has no `experiment` section")
    unknown = [s for s in exp.model_sizes if s not in MODEL_PRESETS]
    if unknown:
        raise datasets_cfg.RecipeError(f"{recipe}: unknown model sizes {unknown}; known: {sorted(MODEL_PRESETS)}")
    cells = [datasets.ref_from_string(cfg.root, experiment_cell(recipe, v, size, seed))
             for v, size, seed in experiment_mod.cells(exp)]
    with runtime.connected(profile):
        ref = stage("experiment", cells, exp, profile, dataset=exp.name)
    for r in datasets.read_manifest(ref)["stats"].get("comparison", []):
        get_run_logger().info(
            f"{r['task']:24s} {r['metric']:14s} {r['variant']:12s} {r['model_size']:8s} {r['value_mean']:.4f}")
    return str(ref)


if __name__ == "__main__":
    print(experiment(sys.argv[1]))
