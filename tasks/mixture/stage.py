"""The mixture search's stages: ``mixture_fit`` (proxy results -> regression -> optimum), ``mixture_select`` (the
optimum as a curated selection with per-component copies and a Megatron blend) and ``mixture_validate`` (the
optimum against natural, uniform and the hkmeans-balanced sample, with tasks/evaluate/compare.py's statistics).

Tables (dataset = the section's ``name``):
* ``mixture``: one row per proxy: arm, seed, objective observed, and each model's held-out (cross-validated)
  prediction; the weights per component are ``mixture_weights`` rows with the same ``run``.
* ``mixture_weights``: run, arm, component, weight, natural_weight (``natural`` is an SQL keyword), cap (the proxies, the optimum,
  natural and uniform).
* ``mixture_fit``: per model: held-out Spearman rho, the shuffled-target rho beside it, whether it chose the optimum.
* ``mixture_validate``: compare.compare's rows, arm as ``variant``, natural the baseline.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from tasks.common.stage import implements
from tasks.evaluate import compare
from tasks.mixture import fit as fitmod
from tasks.mixture import sampler
from tasks.mixture.config import FitPlan, SelectPlan, ValidatePlan, objective
from tasks.mixture.label import COLUMN

RUN_SCHEMA = pa.schema([("run", pa.int64()), ("arm", pa.string()), ("seed", pa.int64()), ("observed", pa.float64()),
                        ("pred_lightgbm", pa.float64()), ("pred_linear", pa.float64()), ("weights", pa.string())])
WEIGHT_SCHEMA = pa.schema([("run", pa.int64()), ("arm", pa.string()), ("component", pa.string()),
                           ("weight", pa.float64()), ("natural_weight", pa.float64()), ("cap", pa.float64())])
FIT_SCHEMA = pa.schema([("model", pa.string()), ("n_runs", pa.int64()), ("folds", pa.int64()),
                        ("heldout_spearman", pa.float64()), ("shuffled_spearman", pa.float64()),
                        ("chosen", pa.bool_()), ("optimum_predicted", pa.float64())])


def _values(t: pa.Table) -> dict[tuple[str, str], float]:
    return {(r["task"], r["metric"]): r["value"] for r in t.select(["task", "metric", "value"]).to_pylist()
            if r["value"] is not None}


@implements("mixture_fit")
def mixture_fit_stage(tables: dict, params: FitPlan, ctx) -> tuple[dict[str, pa.Table], dict]:
    cfg, runs = params.config, params.runs
    parts = list(tables.values())
    if len(parts) != len(runs):
        raise ValueError(f"mixture_fit: {len(runs)} proxy runs need as many evaluate inputs, got {len(parts)}")
    tokens = dict(params.tokens)
    comps = sorted(tokens)
    x = np.array([[dict(r.weights)[c] for c in comps] for r in runs])
    y = np.array([objective(_values(t), cfg.targets) for t in parts])
    fits = fitmod.fit(x, y, folds=cfg.folds, seed=cfg.seed)
    chosen = fitmod.choose(fits, cfg.optimum_model)
    sim = sampler.sample(tokens, cfg.simulations, concentration=cfg.concentration, target_tokens=cfg.target_tokens,
                         max_epochs=cfg.max_epochs, seed=cfg.seed + 1)
    best, best_pred = fitmod.optimum(fits[chosen]["model"], sim, cfg.top_k)
    nat, cap = sampler.natural(tokens), sampler.caps(tokens, cfg.target_tokens, cfg.max_epochs)
    uniform = sampler.project({c: 1.0 for c in comps}, cap)
    run_rows = [{"run": i, "arm": r.arm, "seed": r.seed, "observed": float(y[i]),
                 "pred_lightgbm": float(fits["lightgbm"]["heldout_pred"][i]),
                 "pred_linear": float(fits["linear"]["heldout_pred"][i]),
                 "weights": json.dumps(dict(r.weights), sort_keys=True)} for i, r in enumerate(runs)]  # fmt: skip
    mixes = [(i, r.arm, dict(r.weights)) for i, r in enumerate(runs)]
    mixes += [(-1, "optimum", dict(zip(comps, best.tolist(), strict=True))), (-2, "natural", nat), (-3, "uniform", uniform)]
    weight_rows = [{"run": i, "arm": arm, "component": c, "weight": float(w[c]), "natural_weight": nat[c], "cap": cap[c]}
                   for i, arm, w in mixes for c in comps]  # fmt: skip
    fit_rows = []
    for kind in fitmod.MODELS:
        pred = float(fits[kind]["model"].predict(best[None, :])[0])
        fit_rows.append({"model": kind, "n_runs": len(y), "folds": max(2, min(cfg.folds, len(y))),
                         "heldout_spearman": fits[kind]["heldout_rho"],
                         "shuffled_spearman": fitmod.shuffled_rho(x, y, folds=cfg.folds, seed=cfg.seed, kind=kind),
                         "chosen": kind == chosen, "optimum_predicted": pred})  # fmt: skip
    optimum = {c: round(float(w), 6) for c, w in zip(comps, best, strict=True)}
    stats = {"components": comps, "tokens": tokens, "natural": nat, "uniform": uniform, "caps": cap,
             "optimum": optimum, "optimum_predicted": best_pred, "optimum_model": chosen,
             "heldout_spearman": {r["model"]: r["heldout_spearman"] for r in fit_rows},
             "shuffled_spearman": {r["model"]: r["shuffled_spearman"] for r in fit_rows},
             "targets": [{"task": t.task, "metric": t.metric, "weight": t.weight} for t in cfg.targets]}  # fmt: skip
    out = {"mixture_fit": pa.Table.from_pylist(run_rows, schema=RUN_SCHEMA),
           "mixture_weights": pa.Table.from_pylist(weight_rows, schema=WEIGHT_SCHEMA),
           "mixture_fit_models": pa.Table.from_pylist(fit_rows, schema=FIT_SCHEMA)}  # fmt: skip
    return out, stats


def copies(group: np.ndarray, lengths: np.ndarray, weights: dict[str, float], budget: int,
           rng: np.random.Generator) -> np.ndarray:
    """Per document, how many times the optimum takes it: component c's share w_c * budget is floor(f) full passes
    over its documents plus a seeded random subset up to the rest (the pack stage's _sample_docs rule, as counts)."""
    out = np.zeros(len(group), dtype=np.int64)
    for c, w in weights.items():
        members = np.flatnonzero(group == c)
        size = int(lengths[members].sum())
        target = budget * w
        if size == 0 or target <= 0:
            continue
        passes = int(target // size)
        out[members] += passes
        rest = target - passes * size
        if rest > 0:
            perm = rng.permutation(members)
            out[perm[: int(np.searchsorted(np.cumsum(lengths[perm]), rest)) + 1]] += 1
    return out


def blend(weights: dict[str, float], prefix: str, dataset: str) -> str:
    """Megatron-LM's --data-path blend: ``w1 prefix1 w2 prefix2 ...`` (weights need not sum to 1; Megatron
    normalises them), one prefix per component."""
    return " ".join(f"{w:.6g} {prefix.format(dataset=dataset, component=c)}" for c, w in sorted(weights.items()) if w > 0)


@implements("mixture_select")
def mixture_select_stage(tables: dict, params: SelectPlan, ctx) -> tuple[pa.Table, dict]:
    """doc_id -> copies for the optimum (the ``curated`` stage then repeats each document that many times)."""
    t = tables["tokens"]
    by = COLUMN
    group = np.asarray([str(v) for v in t.column(by).to_pylist()], dtype=object)
    lengths = np.asarray(t.column("tok_count").to_numpy(zero_copy_only=False), dtype=np.int64)
    if "tok_drop_reason" in t.column_names:
        lengths = np.where(t.column("tok_drop_reason").is_valid().to_numpy(zero_copy_only=False), 0, lengths)
    w = dict(params.weights)
    n = copies(group, lengths, w, params.target_tokens, np.random.default_rng(params.config.seed))
    keep = n > 0
    table = pa.table({"doc_id": t.column("doc_id").filter(pa.array(keep)), "copies": pa.array(n[keep], pa.int64()),
                      "component": pa.array(group[keep].tolist(), pa.string())})  # fmt: skip
    per = {c: {"weight": w[c], "docs": int(((group == c) & keep).sum()), "tokens_in": int(lengths[group == c].sum()),
               "tokens_out": int((n * lengths)[group == c].sum()),
               "mean_copies": float(n[group == c].mean()) if (group == c).any() else 0.0} for c in sorted(w)}  # fmt: skip
    return table, {"blend": blend(w, params.config.blend_prefix, params.dataset), "components": per,
                   "tokens_out": int((n * lengths).sum())}


@implements("mixture_validate")
def mixture_validate_stage(tables: dict, params: ValidatePlan, ctx) -> tuple[pa.Table, dict]:
    runs, cfg = params.runs, params.config
    parts = list(tables.values())
    if len(parts) != 2 * len(runs):
        raise ValueError(f"mixture_validate: {len(runs)} runs need {2 * len(runs)} inputs (evaluate, then "
                         f"evaluate_examples of each), got {len(parts)}")  # fmt: skip
    labelled = []
    for t, r in zip(parts[len(runs):], runs, strict=True):
        for part in (t, compare.macro_rows(t)):
            n = part.num_rows
            for name, value, typ in (("variant", r.arm, pa.string()), ("model_size", params.model_size, pa.string()),
                                     ("tokens_per_param", None, pa.float64()), ("seed", r.seed, pa.int64())):
                part = part.append_column(name, pa.array([value] * n, typ))
            labelled.append(part)
    table = compare.compare(pa.concat_tables(labelled, promote_options="permissive"), "natural",
                            iters=cfg.bootstrap_iters, alpha=cfg.alpha, seed=cfg.seed)  # fmt: skip
    targets = {(t.task, t.metric) for t in cfg.targets}
    verdicts = [{k: r[k] for k in ("variant", "task", "metric", "mean", "delta", "p_adjusted", "verdict")}
                for r in table.to_pylist() if (r["task"], r["metric"]) in targets]  # fmt: skip
    return table, {"verdicts": verdicts, "arms": sorted({r.arm for r in runs}),
                   "seeds": sorted({r.seed for r in runs})}


def fit_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    s = manifest.get("stats") or {}
    rows = [{"component": c, "natural": s["natural"][c], "uniform": s["uniform"][c], "optimum": s["optimum"][c],
             "cap": s["caps"][c]} for c in s.get("components", [])]  # fmt: skip
    fits = [{"model": m, "heldout_spearman": r, "shuffled_spearman": s["shuffled_spearman"][m],
             "chosen": m == s["optimum_model"]} for m, r in (s.get("heldout_spearman") or {}).items()]  # fmt: skip
    return [("mixture-optimum", rows, f"mixture {manifest['dataset']}: optimum vs natural and uniform weights"),
            ("mixture-fit", fits, f"mixture {manifest['dataset']}: held-out Spearman rho per regression")]


def validate_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    rows = (manifest.get("stats") or {}).get("verdicts") or []
    return [("mixture-validation", rows, f"mixture {manifest['dataset']}: each arm vs the natural mixture")]
