"""Compare data recipes: a matrix of data variants x model sizes x seeds, each curated, tokenized to the same token
budget, trained and evaluated; the comparison table is ``{experiment}__experiment``.

    quarry run experiment datasets_cfg/tiny_experiment.yaml
    quarry sql "select variant, task, metric, avg(value) from tiny_matrix__experiment group by all order by all"

Each cell is its own Prefect subflow run; a finished cell is a no-op on re-run (all its versions are committed).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pyarrow as pa
from prefect import flow

import datasets_cfg
import tasks.tokenize as tok_mod
import tasks.train as train_mod
from flows import runinfo
from flows.curate import curate_stages
from flows.evaluate import evaluate_model
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from flows.stage import _logger, _publish_table, run_stage
from flows.train import fit, pack
from ray_cluster import runtime
from storage import datasets


@flow(name="experiment-cell", flow_run_name="{variant}-{model_size}-seed{seed}", log_prints=True)
@runinfo.tracked_flow
def experiment_cell(recipe: str, variant: str, model_size: str, seed: int) -> str:
    """curate (variant) -> tokenize (equal token budget) -> pack -> train (size, seed) -> evaluate."""
    cfg = datasets_cfg.load(recipe)
    exp = cfg.experiment
    vcfg = cfg.variant(exp.variants[variant].skip)
    if vcfg.tokenize is None or vcfg.train is None or vcfg.evaluate is None:
        raise datasets_cfg.RecipeError(f"{recipe}: an experiment needs tokenize, train and evaluate sections")
    profile = runtime.load_profile(vcfg.cluster)
    with runtime.connected(profile):
        curated, heldout = curate_stages(vcfg, profile)
        tok = replace(vcfg.tokenize, target_tokens=exp.target_tokens, seed=seed)
        tokens = run_stage(curated, "tokenize", tok_mod.tokenize_docs, replace(tok, target_tokens=None, seed=0), profile)
        packed = pack(tokens, tok, profile)
        params = replace(vcfg.train, **train_mod.MODEL_PRESETS[model_size], seed=seed)
        model = fit(packed, params, profile)
        return str(evaluate_model(model, heldout, vcfg.evaluate, profile))


@flow(name="experiment", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def experiment(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Run every cell, then write the comparison table; returns its version."""
    cfg = datasets_cfg.load(recipe)
    exp = cfg.experiment
    if exp is None:
        raise datasets_cfg.RecipeError(f"recipe {recipe} has no `experiment` section")
    unknown = [s for s in exp.model_sizes if s not in train_mod.MODEL_PRESETS]
    if unknown:
        raise datasets_cfg.RecipeError(f"{recipe}: unknown model sizes {unknown}; known: {sorted(train_mod.MODEL_PRESETS)}")
    cells, parts = [], []
    for variant in exp.variants:
        for size in exp.model_sizes:
            for seed in exp.seeds:
                ref = datasets.ref_from_string(cfg.root, experiment_cell(recipe, variant, size, seed))
                cells.append(ref)
                t = datasets.read_table(ref)
                n = t.num_rows
                t = t.append_column("variant", pa.array([variant] * n)).append_column("model_size", pa.array([size] * n))
                parts.append(t.append_column("seed", pa.array([seed] * n, pa.int64())))
    module = sys.modules[__name__]
    dst = datasets.derive(cells, "experiment", module, exp, dataset=exp.name, root=cfg.root)
    table = pa.concat_tables(parts, promote_options="permissive")
    datasets.write_table(dst, table, parents=cells, params=exp, code=datasets.code_hash(module))
    summary = (
        pa.TableGroupBy(table, ["variant", "model_size", "task", "metric"])
        .aggregate([("value", "mean"), ("value", "count")])
        .sort_by([("task", "ascending"), ("metric", "ascending"), ("variant", "ascending")])
    )
    rows = summary.to_pylist()
    _publish_table("experiment-comparison", rows, f"experiment {exp.name}: mean over seeds")
    for r in rows:
        _logger().info(f"{r['task']:24s} {r['metric']:14s} {r['variant']:12s} {r['model_size']:8s} {r['value_mean']:.4f}")
    return str(dst)


if __name__ == "__main__":
    print(experiment(sys.argv[1]))
