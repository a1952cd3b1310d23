"""Comparisons with uncertainty over per-example evaluation rows: a bootstrap interval over examples and seeds, a
paired test between two data variants on the same examples, a verdict, and the DCLM centered-accuracy aggregate.

Every estimate is a weighted mean over examples (weight 1 for an accuracy, the document's UTF-8 bytes for
bits/byte, so the weighted mean of per-document bits/byte is exactly sum(bits) / sum(bytes)), averaged over seeds.

* Interval: a two-level nonparametric bootstrap, seeds and examples resampled with replacement (the examples are a
  sample of the task's population and the seeds a sample of training randomness; Dror et al. 2018, "The
  Hitchhiker's Guide to Testing Statistical Significance in NLP", sec. 3; Madaan et al. 2024, "Quantifying variance
  in evaluation benchmarks", who find seed variance comparable to the examples' standard error on small models).
* Paired test: both variants are scored on the same examples, so the per-example difference (each variant's seed
  mean) is tested with an approximate randomization (sign-flip) test, the paired test Dror et al. recommend when
  no distribution can be assumed; p = (1 + #{|flipped| >= |observed|}) / (1 + iterations).
* Seeds: with fewer than MIN_SEEDS seeds a bootstrap over seeds is degenerate (two seeds give three possible
  resamples), so the interval then resamples examples only, over the seed mean, and says so (``interval``).
* Multiple comparisons: an experiment judges many (variant, task, metric) rows at once, so the p-values of one
  table are adjusted with Holm's step-down procedure (Holm 1979, "A simple sequentially rejective multiple test
  procedure"), which bounds the family-wise error rate at alpha under any dependence between the tests (the tasks
  share a model, so they are not independent); ``p_adjusted`` is what the verdict reads, ``p_value`` stays raw.
* Verdict: "better" / "worse" when the Holm-adjusted p < alpha AND the bootstrap interval of the difference
  excludes 0, else "within noise" (both must agree so that neither a lucky permutation nor a lucky resample
  decides alone). ``higher_is_better`` says which way "better" points for the row's metric.
* Held-out macro average: ``heldout/all`` weighs every byte equally, so a domain with long documents (code) decides
  it; ``heldout/macro`` is the mean over domains of each domain's bits/byte, reported beside it.
* DCLM aggregate (Li et al. 2024, DataComp-LM, sec. 3.5 "Core" centered accuracy): per task
  (acc - chance) / (1 - chance), averaged over tasks; chance is 1 / number of choices of each example.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# Which way is better, per metric; a metric not here gets no verdict (it is reported, not judged).
HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "centered_acc": True, "bits_per_byte": False}
# The direction shown in the table (perplexity has no per-example scores, so it is never judged, but it has a direction)
DIRECTION = {**HIGHER_IS_BETTER, "perplexity": False}
CENTERED_TASK = "core_centered"  # the DCLM-style aggregate's task name, beside the per-task rows
CENTERED_METRIC = "centered_acc"
MACRO_TASK = "heldout/macro"  # the per-domain macro average of held-out bits/byte, beside the byte-weighted heldout/all
MIN_SEEDS = 3  # below this the seed level of the bootstrap is degenerate: the interval is over examples only
CORRECTION = "holm"

EXAMPLE_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("metric", pa.string()),
        ("example", pa.string()),  # the example's id within the task (lm-eval doc_id, or the held-out doc_id)
        ("value", pa.float64()),
        ("weight", pa.float64()),  # 1 for accuracies, bytes for bits/byte
        ("chance", pa.float64()),  # 1 / number of choices (0 for cloze tasks); null where it does not apply
    ]
)


@dataclass(frozen=True)
class Scores:
    """One (variant, group, task, metric): values[seed, example] over the examples every seed scored."""

    examples: list[str]
    weights: np.ndarray  # (E,)
    values: np.ndarray  # (S, E)


def centered_rows(examples: pa.Table) -> pa.Table:
    """The DCLM centered accuracy as per-example rows of one pseudo-task, weighted 1/(T * n_task) so that their
    weighted mean is exactly the average over the T tasks of each task's mean centered accuracy. MMLU's subject
    tasks count as one task (DCLM reports MMLU as one), every other task by itself."""
    rows = [r for r in examples.to_pylist() if r["metric"] == "acc" and r["chance"] is not None]
    if not rows:
        return EXAMPLE_SCHEMA.empty_table()
    family = {r["task"]: ("mmlu" if r["task"].startswith("mmlu_") else r["task"]) for r in rows}
    per_family: dict[str, int] = defaultdict(int)
    for r in rows:
        per_family[family[r["task"]]] += 1
    t = len(per_family)
    out = [
        {"task": CENTERED_TASK, "metric": CENTERED_METRIC, "example": f"{r['task']}/{r['example']}",
         "value": (r["value"] - r["chance"]) / (1.0 - r["chance"]),
         "weight": 1.0 / (t * per_family[family[r["task"]]]), "chance": None}
        for r in rows
    ]  # fmt: skip
    return pa.Table.from_pylist(out, schema=EXAMPLE_SCHEMA)


def macro_rows(examples: pa.Table) -> pa.Table:
    """Held-out bits/byte macro-averaged over domains, as per-example rows of the pseudo-task ``heldout/macro``:
    a document of domain d (D domains, W_d bytes in all) weighs bytes / (D * W_d), so the weighted mean is exactly
    the mean over domains of each domain's byte-weighted bits/byte."""
    rows = [r for r in examples.to_pylist() if r["metric"] == "bits_per_byte" and r["task"].startswith("heldout/")
            and r["task"] not in ("heldout/all", MACRO_TASK)]  # fmt: skip
    totals: dict[str, float] = defaultdict(float)
    for r in rows:
        totals[r["task"]] += r["weight"]
    if len(totals) < 2:  # one domain: the macro average is that domain's row
        return EXAMPLE_SCHEMA.empty_table()
    d = len(totals)
    out = [{"task": MACRO_TASK, "metric": "bits_per_byte", "example": f"{r['task']}/{r['example']}",
            "value": r["value"], "weight": r["weight"] / (d * totals[r["task"]]), "chance": None} for r in rows]
    return pa.Table.from_pylist(out, schema=EXAMPLE_SCHEMA)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    return float((values * weights).sum() / weights.sum())


def collect(examples: pa.Table, keys: list[str]) -> dict[tuple, Scores]:
    """Per (keys..., task, metric): the seed x example matrix over the examples that every seed scored."""
    by: dict[tuple, dict[int, dict[str, tuple[float, float]]]] = defaultdict(lambda: defaultdict(dict))
    cols = {c: examples.column(c).to_pylist() for c in [*keys, "seed", "task", "metric", "example", "value", "weight"]}
    for i in range(examples.num_rows):
        key = (*(cols[k][i] for k in keys), cols["task"][i], cols["metric"][i])
        by[key][cols["seed"][i]][cols["example"][i]] = (cols["value"][i], cols["weight"][i])
    out = {}
    for key, seeds in by.items():
        common = sorted(set.intersection(*(set(v) for v in seeds.values())))
        if not common:
            continue
        order = sorted(seeds)
        values = np.array([[seeds[s][e][0] for e in common] for s in order], dtype=np.float64)
        weights = np.array([seeds[order[0]][e][1] for e in common], dtype=np.float64)
        out[key] = Scores(common, weights, values)
    return out


def _bootstrap(values: np.ndarray, weights: np.ndarray, iters: int, rng: np.random.Generator,
               chunk: int = 64) -> np.ndarray:
    """`iters` resampled estimates: seeds and examples drawn with replacement, weighted mean, mean over seeds.
    With fewer than MIN_SEEDS seeds only the examples are resampled, over the seed mean."""
    if values.shape[0] < MIN_SEEDS:
        values = values.mean(0, keepdims=True)
    s, e = values.shape
    out = np.empty(iters)
    for lo in range(0, iters, chunk):
        b = min(chunk, iters - lo)
        si = rng.integers(0, s, (b, s))
        ei = rng.integers(0, e, (b, e))
        w = weights[ei]  # (b, E)
        v = values[si[:, :, None], ei[:, None, :]]  # (b, S, E)
        out[lo : lo + b] = ((v * w[:, None, :]).sum(-1) / w.sum(-1)[:, None]).mean(-1)
    return out


def mean_ci(sc: Scores, iters: int, level: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean over seeds of the weighted mean, and its percentile bootstrap interval."""
    est = float(np.mean([weighted_mean(v, sc.weights) for v in sc.values]))
    boots = _bootstrap(sc.values, sc.weights, iters, rng)
    q = (1 - level) / 2
    return est, float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q))


def paired(a: Scores, b: Scores, iters: int, level: float, rng: np.random.Generator) -> dict | None:
    """a - b on the examples both scored: the difference, its bootstrap interval (seeds of each variant and the
    shared examples resampled) and the sign-flip p-value of the per-example differences of seed means."""
    common = sorted(set(a.examples) & set(b.examples))
    if not common:
        return None
    ia, ib = ({e: i for i, e in enumerate(x.examples)} for x in (a, b))
    va = a.values[:, [ia[e] for e in common]]
    vb = b.values[:, [ib[e] for e in common]]
    w = a.weights[[ia[e] for e in common]]
    d = va.mean(0) - vb.mean(0)  # per example: difference of seed means
    obs = weighted_mean(d, w)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(iters, len(common)))
    flipped = (signs * d * w).sum(-1) / w.sum()
    p = float((1 + np.sum(np.abs(flipped) >= abs(obs) - 1e-12)) / (1 + iters))
    boots = np.empty(iters)
    if min(va.shape[0], vb.shape[0]) < MIN_SEEDS:  # too few seeds to resample them: examples only
        va, vb = va.mean(0, keepdims=True), vb.mean(0, keepdims=True)
    for i in range(iters):  # seeds resampled per variant (independent runs), examples shared (paired)
        ei = rng.integers(0, len(common), len(common))
        sa = rng.integers(0, va.shape[0], va.shape[0])
        sb = rng.integers(0, vb.shape[0], vb.shape[0])
        boots[i] = weighted_mean(va[sa][:, ei].mean(0) - vb[sb][:, ei].mean(0), w[ei])
    q = (1 - level) / 2
    return {"delta": obs, "delta_ci_low": float(np.quantile(boots, q)), "delta_ci_high": float(np.quantile(boots, 1 - q)),
            "p_value": p, "n_paired": len(common)}  # fmt: skip


def verdict(metric: str, test: dict | None, alpha: float) -> str:
    """Judged on the adjusted p-value where the test carries one (``p_adjusted``), else the raw one."""
    if test is None or metric not in HIGHER_IS_BETTER:
        return "not judged"
    excludes_zero = test["delta_ci_low"] > 0 or test["delta_ci_high"] < 0
    if test.get("p_adjusted", test["p_value"]) >= alpha or not excludes_zero:
        return "within noise"
    return "better" if (test["delta"] > 0) == HIGHER_IS_BETTER[metric] else "worse"


COMPARISON_SCHEMA = pa.schema(
    [
        ("variant", pa.string()), ("model_size", pa.string()), ("tokens_per_param", pa.float64()),
        ("task", pa.string()), ("metric", pa.string()), ("higher_is_better", pa.bool_()),
        ("n_seeds", pa.int64()), ("n_examples", pa.int64()), ("interval", pa.string()),
        ("mean", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
        ("baseline", pa.string()), ("delta", pa.float64()), ("delta_ci_low", pa.float64()),
        ("delta_ci_high", pa.float64()), ("p_value", pa.float64()), ("p_adjusted", pa.float64()),
        ("correction", pa.string()), ("verdict", pa.string()), ("n_truncated", pa.int64()),
    ]
)  # fmt: skip


def compare(examples: pa.Table, baseline: str, *, iters: int = 1000, level: float = 0.95, alpha: float = 0.05,
            seed: int = 0) -> pa.Table:
    """One row per (variant, model_size, tokens_per_param, task, metric) of the per-example rows (columns of
    EXAMPLE_SCHEMA plus variant, model_size, tokens_per_param, seed): the seed mean, its interval and, against the
    baseline variant in the same group, the paired difference, p-value (raw and Holm-adjusted over every judged row
    of the table) and verdict. Deterministic given `seed`."""
    keys = ["variant", "model_size", "tokens_per_param"]
    scores = collect(examples, keys)
    rows, tests = [], []
    for key in sorted(scores, key=lambda k: (k[3], k[4], k[1], str(k[2]), k[0] != baseline, k[0])):
        variant, size, mult, task, metric = key
        sc = scores[key]
        # one generator per row, seeded by the row's key: a row's numbers do not depend on which other rows exist
        rng = np.random.default_rng([seed, *(ord(c) for c in repr(key))])
        mean, lo, hi = mean_ci(sc, iters, level, rng)
        base = scores.get((baseline, size, mult, task, metric))
        few = min(sc.values.shape[0], (base or sc).values.shape[0]) < MIN_SEEDS
        row = {"variant": variant, "model_size": size, "tokens_per_param": mult, "task": task, "metric": metric,
               "higher_is_better": DIRECTION.get(metric), "n_seeds": sc.values.shape[0],
               "n_examples": len(sc.examples),
               "interval": f"examples only (n_seeds < {MIN_SEEDS})" if few else "seeds and examples",
               "mean": mean, "ci_low": lo, "ci_high": hi, "baseline": baseline}  # fmt: skip
        if variant == baseline:
            row["verdict"] = "baseline"
        elif base is None:
            row["verdict"] = "no baseline"
        else:
            test = paired(sc, base, iters, level, rng)
            row.update(test or {})
            row.pop("n_paired", None)
            if test is not None and metric in HIGHER_IS_BETTER:
                tests.append(row)
            else:
                row["verdict"] = verdict(metric, test, alpha)
        rows.append(row)
    # Holm over the family of judged rows of this table, then each verdict on its adjusted p-value
    for row, p in zip(tests, holm([r["p_value"] for r in tests]), strict=True):
        row["p_adjusted"], row["correction"] = p, CORRECTION
        row["verdict"] = verdict(row["metric"], row, alpha)
    return pa.Table.from_pylist(rows, schema=COMPARISON_SCHEMA)
