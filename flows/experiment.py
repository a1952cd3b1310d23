"""Compare data recipes: a matrix of data variants x model sizes x seeds, each curated, tokenized to the same token
budget, trained and evaluated, plus an optional scaling sweep (sizes x tokens per parameter) for the Gadre et al.
2024 fits; the comparison table is ``{experiment}__experiment`` (tasks/evaluate/experiment.py).

    quarry run experiment datasets_cfg/tiny_experiment.yaml
    quarry sql "select variant, task, metric, mean, ci_low, ci_high, delta, p_value, verdict from tiny_matrix__experiment"

Each cell is its own Prefect subflow run; a finished cell is a no-op on re-run (all its versions are committed).
"""

from __future__ import annotations

import sys
from dataclasses import replace

from prefect import flow, get_run_logger

import datasets_cfg
from datasets_cfg import sections
from flows import runinfo
from flows.curate import curate_stages
from flows.run import load, profile_for, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime
from storage import datasets
from tasks.evaluate import experiment as experiment_mod
from tasks.train.config import MODEL_PRESETS


def _plan(cfg) -> list[experiment_mod.Cell]:
    """The cells, with each one's steps: a step trains micro_batch x grad_accum x seq_len tokens (one worker)."""
    tokens_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * cfg.pack.seq_len
    return experiment_mod.plan(cfg.experiment, tokens_per_step, cfg.train.max_steps)


@flow(name="experiment-cell", flow_run_name="{variant}-{model_size}-seed{seed}-m{tokens_per_param}", log_prints=True)
@runinfo.tracked_flow
def experiment_cell(recipe: str, variant: str, model_size: str, seed: int,
                    tokens_per_param: float | None = None) -> str:
    """curate (variant) -> tokenize -> pack (equal token budget) -> train (size, seed) -> evaluate."""
    cfg = datasets_cfg.load(recipe)
    exp = cfg.experiment
    vcfg = cfg.variant(exp.variants[variant].skip)
    missing = [s for s in ("tokenize", "pack", "train", "evaluate") if getattr(vcfg, s) is None]
    if missing:
        raise datasets_cfg.RecipeError(f"{recipe}: an experiment needs {missing} section(s)")
    cell = next(c for c in _plan(cfg) if (c.variant, c.model_size, c.seed, c.tokens_per_param) ==
                (variant, model_size, seed, tokens_per_param))  # fmt: skip
    train = replace(vcfg.train, **MODEL_PRESETS[model_size], seed=seed)
    target = exp.target_tokens
    if tokens_per_param is not None:  # a scaling cell: M x N tokens; warmup at most a quarter of the run
        target = cell.tokens
        train = replace(train, max_steps=cell.max_steps, warmup_steps=min(train.warmup_steps, cell.max_steps // 4),
                        checkpoint_every=min(train.checkpoint_every, cell.max_steps))  # fmt: skip
    profile = profile_for(vcfg.cluster)
    with runtime.connected(profile):
        curated, heldout = curate_stages(vcfg, profile)
        tokens = stage("tokenize", [curated], vcfg.tokenize, profile)
        packed = stage("pack", [tokens], replace(vcfg.pack, target_tokens=target, seed=seed), profile)
        model = stage("train", [packed], train, profile)
        return str(stage("evaluate", [model, heldout], vcfg.evaluate, profile))


@flow(name="experiment", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def experiment(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Run every cell, then write the comparison table (and the scaling fits); returns its version."""
    cfg, profile = load(recipe)
    sections.check_sections(cfg, recipe)  # a section that would do nothing: refused, or warned about
    exp = cfg.experiment
    if exp is None:
        raise datasets_cfg.RecipeError(f"recipe {recipe} has no `experiment` section")
    cells = _plan(cfg)
    evals = [datasets.ref_from_string(cfg.root, experiment_cell(recipe, c.variant, c.model_size, c.seed,
                                                                c.tokens_per_param)) for c in cells]  # fmt: skip
    examples = [r.sibling("evaluate_examples") for r in evals]
    plan = experiment_mod.ExperimentPlan(exp, tuple(cells))
    with runtime.connected(profile):
        ref = stage("experiment", [*evals, *examples], plan, profile, dataset=exp.name)
    stats = datasets.read_manifest(ref)["stats"]
    log = get_run_logger()
    for r in stats.get("comparison", []):
        ci = "" if r["ci_low"] is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        log.info(f"{r['task']:18s} {r['metric']:14s} {r['variant']:14s} {r['model_size']:6s} {r['mean']:.4f} "
                 f"{ci:18s} {r['verdict']}")  # fmt: skip
    for variant, s in (stats.get("scaling") or {}).items():
        log.info(f"scaling fit {variant}: {s['status']} {s.get('heldout_relative_error') or s.get('reason')}")
    return str(ref)


if __name__ == "__main__":
    print(experiment(sys.argv[1]))
