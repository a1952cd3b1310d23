"""What should I train on? A RegMix-style mixture search (Liu et al. 2024, arXiv 2407.01492) over the recipe's
domains (or a k-means level's clusters): N Dirichlet mixtures around the natural one, within availability; one
seeded proxy model each (the pack -> train -> evaluate stages); a regression from weights to the recipe's targets
(LightGBM and a linear baseline, held-out Spearman rho); the optimum of a large simulated sample, committed as a
curated selection with a Megatron blend; and a validation of it against the natural, uniform and hkmeans-balanced
mixtures with >= 3 seeds (tasks/evaluate/compare.py).

    quarry run mixture datasets_cfg/tiny_mixture.yaml
    quarry sql "select * from tiny_mix__mixture_weights where arm in ('optimum', 'natural')"

Every proxy is committed stages, so a re-run (or a resumed one) trains only what is missing.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from prefect import flow, get_run_logger

import datasets_cfg
from flows import runinfo
from flows.curate import curate_stages
from flows.run import load, publish_table, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef
from tasks.mixture import sampler
from tasks.mixture.config import FitPlan, Run, SelectPlan, ValidatePlan
from tasks.mixture.label import COLUMN, LabelParams
from tasks.select.selection import SelectedParams
from tasks.train.config import MODEL_PRESETS

_EMBEDDING = ("embed", "hkmeans", "semdedup", "balance")


def component_tokens(tokens: DatasetRef, by: str) -> dict[str, int]:
    """Tokens per component in the tokenized pool (documents the tokenizer skipped count nothing)."""
    t = datasets.read_table(tokens)
    if by not in t.column_names:
        raise datasets_cfg.RecipeError(f"mixture.components: column {by!r} is not in the tokenized pool "
                                       f"({tokens}); the pack stage groups by it")
    out: dict[str, int] = {}
    skipped = t.column("tok_drop_reason").is_valid().to_pylist() if "tok_drop_reason" in t.column_names else None
    for i, (g, n) in enumerate(zip(t.column(by).to_pylist(), t.column("tok_count").to_pylist(), strict=True)):
        out[str(g)] = out.get(str(g), 0) + (0 if skipped and skipped[i] else int(n))
    return {g: n for g, n in out.items() if n > 0}


def proxy(cfg, tokens: DatasetRef, heldout: DatasetRef | None, run: Run, size: str, target_tokens: int,
          max_steps: int | None, profile, steps: Any = None) -> DatasetRef:
    """pack (this mixture, this budget, this seed) -> train (size, seed) -> evaluate; a natural-arm run on
    another pool (the balanced sample) passes weights=() and packs that pool's own mixture."""
    pack = replace(cfg.pack, mixture_by=COLUMN, target_tokens=target_tokens, seed=run.seed,
                   mixture_weights=dict(run.weights) or None, upsample_fraction=0.0, upsample_weights=None)  # fmt: skip
    train = replace(cfg.train, **MODEL_PRESETS[size], seed=run.seed)
    if max_steps is not None:
        train = replace(train, max_steps=max_steps, warmup_steps=min(train.warmup_steps, max_steps // 4),
                        checkpoint_every=min(train.checkpoint_every, max_steps))  # fmt: skip
    run_stage = stage if steps is None else steps.stage  # steps: e.g. plain functions (benchmarks/mixture.py)
    packed = run_stage("pack", [tokens], pack, profile)
    model = run_stage("train", [packed], train, profile)
    return run_stage("evaluate", [model, heldout], cfg.evaluate, profile)


@flow(name="mixture", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def mixture(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
    """Search, fit, select and validate; returns the mixture_fit version."""
    cfg, profile = load(recipe)
    mix = cfg.mixture
    if mix is None:
        raise datasets_cfg.RecipeError(f"recipe {recipe} has no `mixture` section")
    missing = [s for s in ("tokenize", "pack", "train", "evaluate") if getattr(cfg, s) is None]
    if missing:
        raise datasets_cfg.RecipeError(f"{recipe}: a mixture search needs {missing} section(s)")
    log = get_run_logger()
    # the pool every mixture draws from: the kept documents, before any balanced sample (that is one of the arms)
    pool_cfg = cfg.variant([s for s in _EMBEDDING if getattr(cfg, s)])
    with runtime.connected(profile):
        pool, heldout = curate_stages(pool_cfg, profile)
        clusters = None
        if mix.components != "domain":  # a level of the pool's committed hkmeans (the same versions curate makes)
            if not (cfg.embed and cfg.hkmeans):
                raise datasets_cfg.RecipeError(f"{recipe}: mixture.components {mix.components!r} needs the embed "
                                               "and hkmeans sections")
            clusters = stage("hkmeans", [stage("embed", [pool], cfg.embed, profile)], cfg.hkmeans, profile)
        labelled = stage("mixture_label", [pool, clusters], LabelParams(by=mix.components), profile)
        tokens = stage("tokenize", [labelled], cfg.tokenize, profile)
        avail = component_tokens(tokens, COLUMN)
        try:
            draws = sampler.sample(avail, mix.n_mixtures, concentration=mix.concentration,
                                   target_tokens=mix.target_tokens, max_epochs=mix.max_epochs, seed=mix.seed)
        except ValueError as e:
            raise datasets_cfg.RecipeError(f"{recipe}: {e}") from None
        comps = sorted(avail)
        runs = tuple(Run("search", mix.seed + i, tuple((c, round(float(w), 6)) for c, w in zip(comps, d, strict=True)))
                     for i, d in enumerate(draws))  # fmt: skip
        evals = [proxy(cfg, tokens, heldout, r, mix.model_size, mix.target_tokens, mix.max_steps, profile)
                 for r in runs]  # fmt: skip
        fit = stage("mixture_fit", evals, FitPlan(mix, tuple(sorted(avail.items())), runs), profile, dataset=mix.name)
        stats = datasets.read_manifest(fit)["stats"]
        log.info(f"mixture {mix.name}: held-out Spearman rho {stats['heldout_spearman']} (shuffled targets: "
                 f"{stats['shuffled_spearman']}); optimum ({stats['optimum_model']}) {stats['optimum']} vs natural "
                 f"{ {c: round(w, 4) for c, w in stats['natural'].items()} }")
        opt = tuple(sorted(stats["optimum"].items()))
        sel = stage("mixture_select", [tokens], SelectPlan(mix, cfg.dataset, opt, mix.target_tokens), profile,
                    dataset=mix.name)  # fmt: skip
        chosen = stage("curated", [labelled, sel], SelectedParams(copies_column="copies"), profile)
        blend = datasets.read_manifest(sel)["stats"]["blend"]
        log.info(f"mixture {mix.name}: optimum committed as {chosen}; Megatron blend: {blend}")
        publish_table("mixture-blend", [{"curated": str(chosen), "blend": blend}], "the optimum's selection and blend")
        if mix.validate:
            validate(cfg, mix, tokens, heldout, stats, profile, clusters)
        return str(fit)


def validate(cfg, mix, tokens: DatasetRef, heldout: DatasetRef | None, stats: dict, profile,
             clusters: DatasetRef | None = None) -> DatasetRef:
    """Every arm x validation seed at the validation scale, compared with the natural mixture."""
    size = mix.validation_model_size or mix.model_size
    budget = mix.validation_tokens or mix.target_tokens
    steps = mix.validation_max_steps or mix.max_steps
    weights = {"optimum": stats["optimum"], "natural": stats["natural"], "uniform": stats["uniform"]}
    balanced = None
    if "balanced" in mix.arms and cfg.balance is not None:  # quarry's own hkmeans-balanced sample, as a pool
        sample = stage("mixture_label", [curate_stages(cfg, profile)[0], clusters], LabelParams(by=mix.components), profile)
        balanced = stage("tokenize", [sample], cfg.tokenize, profile)
    runs, evals = [], []
    for arm in mix.arms:
        if arm == "balanced" and balanced is None:
            get_run_logger().warning(f"mixture {mix.name}: no `balance` section, so no balanced arm")
            continue
        for seed in mix.validation_seeds:
            r = Run(arm, seed, () if arm == "balanced" else tuple(sorted((c, round(w, 6)) for c, w in weights[arm].items())))
            evals.append(proxy(cfg, balanced if arm == "balanced" else tokens, heldout, r, size, budget, steps, profile))
            runs.append(r)
    examples = [e.sibling("evaluate_examples") for e in evals]
    ref = stage("mixture_validate", [*evals, *examples],
                ValidatePlan(mix, tuple(runs), tuple(sorted(stats["natural"].items())), size), profile,
                dataset=mix.name)  # fmt: skip
    for v in datasets.read_manifest(ref)["stats"]["verdicts"]:
        get_run_logger().info(f"mixture {mix.name}: {v['variant']:9s} {v['task']} {v['metric']} mean {v['mean']:.4f} "
                              f"delta {v['delta'] if v['delta'] is None else round(v['delta'], 4)} -> {v['verdict']}")
    return ref


if __name__ == "__main__":
    print(mixture(sys.argv[1]))
