"""The ``experiment`` stage: every cell (data variant x model size x seed, plus an optional scaling sweep of sizes x
tokens per parameter) of an experiment matrix, compared with uncertainty and, where the sweep allows, fitted with
the scaling laws of Gadre et al. 2024.

Outputs (one version, three tables):

* ``experiment`` (``{experiment}__experiment``): per variant, size, task and metric of the main matrix, the mean
  over seeds with its bootstrap interval and, against the baseline variant, the paired difference, its interval,
  p-value and verdict (tasks/evaluate/compare.py). Metrics without per-example scores (perplexity) get the seed mean only.
* ``experiment_cells``: every cell's evaluation rows labelled with variant, size, tokens per parameter and seed.
* ``experiment_scaling``: per variant with enough runs, each run's observed and fitted/predicted loss and
  downstream error (role fit / heldout), residuals and relative errors; the fitted parameters are in
  ``experiment_scaling_fit`` and the manifest's ``stats.scaling``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tasks.common.stage import implements
from tasks.evaluate import compare, scaling
from tasks.train.config import MODEL_PRESETS


@dataclass(frozen=True)
class Cell:
    variant: str
    model_size: str
    tokens_per_param: float | None  # None: a main-matrix cell at the experiment's target_tokens
    seed: int
    n_params: int  # non-embedding parameters (tasks/evaluate/scaling.py)
    tokens: int  # tokens trained on: steps x tokens per step
    max_steps: int


@dataclass(frozen=True)
class ExperimentPlan:
    """The stage's params: the recipe's experiment section and the cells the flow ran, in input order."""

    config: Any  # datasets_cfg.ExperimentConfig
    cells: tuple[Cell, ...]


def plan(exp: Any, tokens_per_step: int, main_steps: int) -> list[Cell]:
    """Every cell of the matrix. Main cells train `main_steps` steps on the target_tokens budget; a scaling cell of
    size N and multiplier M trains ceil(M * N / tokens_per_step) steps, i.e. (about) M * N tokens seen once."""
    out = []
    for v in exp.variants:
        for size in exp.model_sizes:
            for seed in exp.seeds:
                n = scaling.non_embedding_params(**MODEL_PRESETS[size])
                out.append(Cell(v, size, None, seed, n, main_steps * tokens_per_step, main_steps))
    if exp.scaling is not None:
        sw = exp.scaling
        seed = sw.seed if sw.seed is not None else exp.seeds[0]
        for v in sw.variants or list(exp.variants):
            for size in sw.model_sizes:
                n = scaling.non_embedding_params(**MODEL_PRESETS[size])
                for m in sw.tokens_per_param:
                    steps = max(1, math.ceil(m * n / tokens_per_step))
                    out.append(Cell(v, size, float(m), seed, n, steps * tokens_per_step, steps))
    return out


def _label(t: pa.Table, cell: Cell) -> pa.Table:
    n = t.num_rows
    for name, value, typ in (("variant", cell.variant, pa.string()), ("model_size", cell.model_size, pa.string()),
                             ("tokens_per_param", cell.tokens_per_param, pa.float64()),
                             ("seed", cell.seed, pa.int64())):  # fmt: skip
        t = t.append_column(name, pa.array([value] * n, typ))
    return t


@implements("experiment")
def experiment_stage(tables: dict, params: ExperimentPlan, ctx) -> tuple[dict[str, pa.Table], dict]:
    cells = params.cells
    parts = list(tables.values())
    if len(parts) != 2 * len(cells):
        raise ValueError(f"experiment: {len(cells)} cells need {2 * len(cells)} inputs (evaluate, then "
                         f"evaluate_examples of each), got {len(parts)}")  # fmt: skip
    results = pa.concat_tables([_label(t, c) for t, c in zip(parts[: len(cells)], cells, strict=True)],
                               promote_options="permissive")  # fmt: skip
    examples = []
    for t, c in zip(parts[len(cells) :], cells, strict=True):
        if c.tokens_per_param is None:  # the comparison is over the main matrix
            examples += [_label(t, c), _label(compare.centered_rows(t), c), _label(compare.macro_rows(t), c)]
    examples = pa.concat_tables(examples, promote_options="permissive")
    exp = params.config
    baseline = exp.baseline or next(iter(exp.variants))
    table = compare.compare(examples, baseline, iters=exp.bootstrap_iters, level=exp.confidence, alpha=exp.alpha,
                            seed=exp.stats_seed)  # fmt: skip
    table = _with_truncation(pa.concat_tables([table, _seed_means(results, table, baseline)]), results)
    fit_rows, fit_params, fit_stats = scaling_fits(results, cells)
    out = {"experiment": table, "experiment_cells": results, "experiment_scaling": fit_rows,
           "experiment_scaling_fit": fit_params}  # fmt: skip
    return out, {"comparison": table.to_pylist(), "scaling": fit_stats}


def _with_truncation(table: pa.Table, results: pa.Table) -> pa.Table:
    """Flag each row with the examples its cells scored on a left-truncated prompt (the most over its seeds; lm-eval
    cuts a prompt longer than the context silently: tasks/evaluate/truncation.py). A row with any is read with care."""
    if "n_truncated" not in results.column_names:
        return table
    worst: dict[tuple, int] = {}
    for r in results.to_pylist():
        if r["tokens_per_param"] is None and r.get("n_truncated") is not None:
            key = (r["variant"], r["model_size"], r["task"])
            worst[key] = max(worst.get(key, 0), int(r["n_truncated"]))
    col = [worst.get((v, s, t)) for v, s, t in zip(*(table.column(c).to_pylist() for c in
                                                     ("variant", "model_size", "task")), strict=True)]  # fmt: skip
    i = table.schema.get_field_index("n_truncated")
    return table.set_column(i, "n_truncated", pa.array(col, pa.int64()))


def _seed_means(results: pa.Table, judged: pa.Table, baseline: str) -> pa.Table:
    """Seed means (no interval) of the main matrix's (task, metric) pairs that have no per-example scores."""
    have = {(r["variant"], r["model_size"], r["task"], r["metric"]) for r in judged.to_pylist()}
    acc: dict[tuple, list[float]] = {}
    for r in results.to_pylist():
        key = (r["variant"], r["model_size"], r["task"], r["metric"])
        if r["tokens_per_param"] is None and key not in have and r["value"] is not None:
            acc.setdefault(key, []).append(r["value"])
    rows = [{"variant": v, "model_size": s, "tokens_per_param": None, "task": t, "metric": m,
             "higher_is_better": compare.DIRECTION.get(m), "n_seeds": len(x),
             "mean": sum(x) / len(x), "baseline": baseline, "verdict": "no per-example scores"}
            for (v, s, t, m), x in sorted(acc.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1], kv[0][0]))]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=compare.COMPARISON_SCHEMA)


SCALING_SCHEMA = pa.schema(
    [
        ("variant", pa.string()), ("model_size", pa.string()), ("n_params", pa.int64()), ("tokens", pa.int64()),
        ("tokens_per_param", pa.float64()), ("compute", pa.float64()), ("n_seeds", pa.int64()),
        ("role", pa.string()), ("quantity", pa.string()), ("observed", pa.float64()), ("predicted", pa.float64()),
        ("residual", pa.float64()), ("relative_error", pa.float64()),
        # the naive predictors beside the fit (tasks/evaluate/scaling.py): the largest fitted compute's value, the mean
        ("naive_last", pa.float64()), ("naive_last_relative_error", pa.float64()),
        ("naive_mean", pa.float64()), ("naive_mean_relative_error", pa.float64()),
    ]
)  # fmt: skip
FIT_SCHEMA = pa.schema([("variant", pa.string()), ("law", pa.string()), ("param", pa.string()), ("value", pa.float64())])


def _loss_task(tasks: set[str]) -> str | None:
    """The held-out loss the laws use: all domains together, else the only domain."""
    if "heldout/all" in tasks:
        return "heldout/all"
    held = sorted(t for t in tasks if t.startswith("heldout/"))
    return held[0] if len(held) == 1 else None


def scaling_points(results: pa.Table, cells: tuple[Cell, ...]) -> dict[str, list[dict]]:
    """Per variant, one point per (size, tokens): the held-out loss in nats/token (ln perplexity) and the average
    top-1 error over the harness tasks (1 - mean acc; Gadre et al. average 17 tasks), means over seeds."""
    by_cell: dict[tuple, dict[tuple[str, str], float]] = {}
    for r in results.to_pylist():
        key = (r["variant"], r["model_size"], r["tokens_per_param"], r["seed"])
        by_cell.setdefault(key, {})[(r["task"], r["metric"])] = r["value"]
    grouped: dict[tuple, list[tuple[float, float | None]]] = {}
    for c in cells:
        vals = by_cell.get((c.variant, c.model_size, c.tokens_per_param, c.seed), {})
        task = _loss_task({t for t, _ in vals})
        if task is None or (task, "perplexity") not in vals:
            continue
        accs = [v for (t, m), v in vals.items() if m == "acc" and not t.startswith(("heldout/", "mmlu_"))
                and t != compare.CENTERED_TASK]  # fmt: skip
        err = 1.0 - sum(accs) / len(accs) if accs else None
        grouped.setdefault((c.variant, c.model_size, c.n_params, c.tokens), []).append(
            (math.log(vals[(task, "perplexity")]), err))
    out: dict[str, list[dict]] = {}
    for (v, size, n, d), xs in sorted(grouped.items()):
        errs = [e for _, e in xs if e is not None]
        out.setdefault(v, []).append({"model_size": size, "n_params": n, "tokens": d, "n_seeds": len(xs),
                                      "loss": sum(x for x, _ in xs) / len(xs),
                                      "error": sum(errs) / len(errs) if errs else None})  # fmt: skip
    return out


def scaling_fits(results: pa.Table, cells: tuple[Cell, ...]) -> tuple[pa.Table, pa.Table, dict]:
    """Fit both laws per variant where it has enough runs; a variant without says why in the stats."""
    rows, params, stats = [], [], {}
    for variant, points in scaling_points(results, cells).items():
        try:
            fit = scaling.fit_and_predict(points)
        except ValueError as e:  # too few or degenerate runs: reported, not fatal (the comparison still stands)
            stats[variant] = {"status": "skipped", "reason": str(e), "runs": len(points)}
            continue
        rows += [{"variant": variant, **{k: r[k] for k in SCALING_SCHEMA.names if k in r}} for r in fit["rows"]]
        for law, key in (("loss: Gadre et al. Eq. 4", "loss_fit"), ("error: Gadre et al. Eq. 5", "error_fit")):
            params += [{"variant": variant, "law": law, "param": k, "value": float(v)}
                       for k, v in (fit[key] or {}).items()]  # fmt: skip
        held = [r for r in fit["rows"] if r["role"] == "heldout"]
        stats[variant] = {"status": "fitted", "runs": len(points), "loss_fit": fit["loss_fit"],
                          "error_fit": fit["error_fit"],
                          "heldout_relative_error": {r["quantity"]: r["relative_error"] for r in held},
                          "heldout_relative_error_naive": {r["quantity"]: {"last": r["naive_last_relative_error"],
                                                                           "mean": r["naive_mean_relative_error"]}
                                                           for r in held}}  # fmt: skip
    return (pa.Table.from_pylist(rows, schema=SCALING_SCHEMA), pa.Table.from_pylist(params, schema=FIT_SCHEMA), stats)


def experiment_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    stats = manifest.get("stats") or {}
    rows = stats.get("comparison") or []
    out = [("experiment-comparison", rows,
            f"experiment {manifest['dataset']}: mean over seeds, bootstrap interval, paired test vs baseline")]
    fits = [{"variant": v, **{k: s.get(k) for k in ("status", "runs", "reason")},
             **{f"heldout_rel_err_{q}": e for q, e in (s.get("heldout_relative_error") or {}).items()},
             **{f"heldout_rel_err_{q}_naive_{k}": e for q, n in (s.get("heldout_relative_error_naive") or {}).items()
                for k, e in n.items()}}
            for v, s in (stats.get("scaling") or {}).items()]  # fmt: skip
    if fits:
        out.append(("experiment-scaling", fits, f"experiment {manifest['dataset']}: scaling-law fits"))
    return out
