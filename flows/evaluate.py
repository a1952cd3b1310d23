"""Evaluate a trained model: bits/byte on held-out text per domain + lm-evaluation-harness tasks on local files.

    quarry run evaluate datasets_cfg/tiny.yaml
    python -m flows.evaluate datasets_cfg/tiny.yaml

Results become ``{dataset}__eval_results`` (and the cross-dataset view ``eval_results``): model version, data
version, task, metric, value, stderr, n.
"""

from __future__ import annotations

import sys

import pyarrow as pa
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import datasets_cfg
import tasks.evaluate as eval_mod
from flows import runinfo
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from flows.stage import _logger, _publish_table
from flows.train import model_dir, train
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef


def _eval_work(model: dict, heldout: dict | None, params: eval_mod.EvaluateParams, dst: dict) -> int:
    model_ref = DatasetRef(**model)
    parts = []
    if heldout is not None:
        docs = datasets.read_table(DatasetRef(**heldout))
        parts.append(eval_mod.heldout_bpb(model_dir(model_ref), docs, params))
    if params.eval_dir and params.tasks:
        parts.append(eval_mod.harness_eval(model_dir(model_ref), params))
    table = pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})
    manifest = datasets.read_manifest(model_ref)
    data_version = next(iter(manifest["parents"]), None)
    n = table.num_rows
    table = table.append_column("model_version", pa.array([str(model_ref)] * n, pa.string()))
    table = table.append_column("data_version", pa.array([data_version] * n, pa.string()))
    table = table.append_column("dataset", pa.array([model_ref.dataset] * n, pa.string()))
    datasets.write_shards(DatasetRef(**dst), table)
    return n


@task(retries=1, cache_policy=NO_CACHE, task_run_name="evaluate")
def evaluate_model(model: DatasetRef, heldout: DatasetRef | None, params: eval_mod.EvaluateParams, profile: runtime.Profile) -> DatasetRef:
    parents = [model, heldout] if heldout is not None else [model]
    dst = datasets.derive(parents, "eval_results", eval_mod, params)
    if datasets.is_committed(dst):
        return dst
    as_dict = lambda r: {"root": r.root, "dataset": r.dataset, "stage": r.stage, "version": r.version}  # noqa: E731
    runtime.run_remote(
        _eval_work, as_dict(model), as_dict(heldout) if heldout else None, params, as_dict(dst),
        resources=profile.resources("evaluate"), profile=profile,
    )
    datasets.commit(dst, parents=parents, params=params, code=datasets.code_hash(eval_mod))
    rows = datasets.read_table(dst).select(["task", "metric", "value", "stderr", "n"]).to_pylist()
    _publish_table("eval-results", rows, f"evaluation of {model}")
    for r in rows:
        _logger().info(f"eval {r['task']:28s} {r['metric']:14s} {r['value']:.4f}")
    return dst


def latest_heldout(cfg: datasets_cfg.RunConfig) -> DatasetRef | None:
    return datasets.latest(cfg.root, cfg.dataset, "heldout") if cfg.heldout else None


@flow(name="evaluate", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def evaluate(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Train (a no-op when already done) and evaluate the recipe's model; returns the eval_results version."""
    cfg = datasets_cfg.load(recipe)
    if cfg.evaluate is None:
        raise datasets_cfg.RecipeError(f"recipe {recipe} has no `evaluate` section")
    profile = runtime.load_profile(cfg.cluster)
    model = datasets.ref_from_string(cfg.root, train(recipe))
    with runtime.connected(profile):
        return str(evaluate_model(model, latest_heldout(cfg), cfg.evaluate, profile))


if __name__ == "__main__":
    print(evaluate(sys.argv[1]))
