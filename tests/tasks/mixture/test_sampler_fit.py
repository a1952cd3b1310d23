"""The mixture search's pure parts: the Dirichlet sampler (around natural, within availability) and the fit /
optimum on synthetic targets with a known best mixture."""

import numpy as np
import pytest

from tasks.mixture import fit, sampler
from tasks.mixture.config import MixtureParams, Target, objective
from tasks.mixture.stage import blend, copies

TOKENS = {"code": 2_000, "web": 14_000, "wikipedia": 4_000}


def test_samples_center_on_the_natural_mixture_and_respect_availability():
    w = sampler.sample(TOKENS, 4000, concentration=5.0, target_tokens=10_000, max_epochs=4.0, seed=0)
    assert w.shape == (4000, 3) and np.allclose(w.sum(axis=1), 1.0)
    cap = np.array(list(sampler.caps(TOKENS, 10_000, 4.0).values()))  # code: 4 x 2000 / 10000 = 0.8
    assert cap.tolist() == [0.8, 1.0, 1.0] and (w <= cap + 1e-12).all()
    # the mean is the natural share (0.1, 0.7, 0.2): a Dirichlet truncated at 0.8 for code barely moves it
    assert np.allclose(w.mean(axis=0), [0.1, 0.7, 0.2], atol=0.02)
    # a tight budget: the cap binds (code at most 4 x 2000 / 40000 = 0.2) and no sample exceeds it
    tight = sampler.sample(TOKENS, 500, concentration=0.5, target_tokens=40_000, max_epochs=4.0, seed=1)
    assert tight[:, 0].max() <= 0.2 + 1e-12
    # the same seed gives the same mixtures
    assert np.array_equal(w, sampler.sample(TOKENS, 4000, concentration=5.0, target_tokens=10_000, max_epochs=4.0, seed=0))


def test_an_infeasible_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds max_epochs 1.0 x the 20000 tokens"):
        sampler.sample(TOKENS, 10, concentration=1.0, target_tokens=30_000, max_epochs=1.0, seed=0)


def test_uniform_is_projected_under_the_caps():
    cap = sampler.caps(TOKENS, 40_000, 4.0)  # code 0.2, web 1, wikipedia 0.4
    u = sampler.project({c: 1.0 for c in TOKENS}, cap)
    assert u["code"] == pytest.approx(0.2) and u["wikipedia"] == pytest.approx(0.4) and u["web"] == pytest.approx(0.4)


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Target = a loss that falls with the wikipedia share (column 2), plus noise; best = most wikipedia."""
    x = sampler.sample(TOKENS, n, concentration=1.0, target_tokens=10_000, max_epochs=4.0, seed=seed)
    y = 2.0 - 1.5 * x[:, 2] + 0.3 * x[:, 0] + np.random.default_rng(seed).normal(0, 0.02, n)
    return x, y


@pytest.mark.parametrize("kind", fit.MODELS)
def test_fit_ranks_held_out_mixtures_and_finds_the_planted_optimum(kind):
    x, y = _planted(40, 0)
    fits = fit.fit(x, y, folds=5, seed=0)
    assert fits[kind]["heldout_rho"] > 0.8  # held-out rank correlation on mixtures not used to fit
    sim = sampler.sample(TOKENS, 20_000, concentration=1.0, target_tokens=10_000, max_epochs=4.0, seed=3)
    best, pred = fit.optimum(fits[kind]["model"], sim, top_k=100)
    assert best[2] > 0.6 > 0.2  # far above wikipedia's natural 0.2
    assert pred < 2.0 - 1.5 * 0.2  # predicted better than the natural mixture's true loss
    # with the targets shuffled against the weights there is nothing to find: rho collapses to ~0
    assert abs(fit.shuffled_rho(x, y, folds=5, seed=0, kind=kind)) < 0.3


def test_too_few_runs_and_unknown_targets_are_refused():
    x, y = _planted(3, 0)
    with pytest.raises(ValueError, match="cannot be cross-validated"):
        fit.fit(x, y, folds=5, seed=0)
    t = (Target(task="heldout/wikipedia"), Target(task="copa", metric="acc", weight=0.5))
    assert objective({("heldout/wikipedia", "bits_per_byte"): 2.0, ("copa", "acc"): 0.6}, t) == pytest.approx(1.7)
    with pytest.raises(KeyError, match="heldout/code/bits_per_byte is not among"):
        objective({}, (Target(task="heldout/code"),))
    with pytest.raises(ValueError, match="n_mixtures must be >= 4"):
        MixtureParams(name="m", targets=t, n_mixtures=2)
    with pytest.raises(ValueError, match="has no direction"):
        Target(task="x", metric="rouge")


def test_selection_copies_hit_each_components_share_and_the_blend_names_them():
    group = np.array(["web"] * 6 + ["wikipedia"] * 4, dtype=object)
    lengths = np.full(10, 100)
    n = copies(group, lengths, {"web": 0.25, "wikipedia": 0.75}, 2000, np.random.default_rng(0))
    # wikipedia: 1500 tokens from 400 = 3 full passes + 300 more (3 documents, the last within one document)
    assert (n[group == "wikipedia"] * 100).sum() in (1500, 1600) and n[group == "wikipedia"].min() >= 3
    assert (n[group == "web"] * 100).sum() in (500, 600)
    assert blend({"web": 0.25, "wikipedia": 0.75}, "{dataset}_{component}_text_document", "d") == \
        "0.25 d_web_text_document 0.75 d_wikipedia_text_document"


def test_components_are_the_domain_or_one_hkmeans_level_and_no_document_goes_missing():
    import pyarrow as pa

    from tasks.mixture.label import LabelParams, mixture_label

    docs = pa.table({"doc_id": ["a", "b", "c"], "domain": ["web", "wikipedia", "web"]})
    assert mixture_label(docs).column("mix_component").to_pylist() == ["web", "wikipedia", "web"]
    clusters = pa.table({"doc_id": ["c", "a"], "km_l2": [1, 3]})  # b had no embedding: no cluster
    got = mixture_label(docs, LabelParams(by="km_l2"), clusters=clusters)
    assert got.num_rows == 3 and got.column("mix_component").to_pylist() == ["l2c3", "unclustered", "l2c1"]
    with pytest.raises(KeyError, match="no level column 'km_l4'"):
        mixture_label(docs, LabelParams(by="km_l4"), clusters=clusters)


def test_validation_judges_each_arm_against_natural_with_seeds_and_examples():
    """compare.py's statistics over the arms' per-example rows: a planted 0.3 bits/byte gain is 'better', an
    arm equal to natural up to noise is not."""
    import pyarrow as pa

    from tasks.mixture.config import Run, ValidatePlan
    from tasks.mixture.stage import mixture_validate_stage

    rng = np.random.default_rng(0)
    base = rng.uniform(2.0, 3.0, 30)
    runs, mains, examples = [], [], []
    for arm, shift in (("natural", 0.0), ("optimum", -0.3), ("uniform", 0.0)):
        for seed in (0, 1, 2):
            runs.append(Run(arm, seed, (("web", 0.5), ("wikipedia", 0.5))))
            v = base + shift + rng.normal(0, 0.02, 30)
            examples.append(pa.table({"task": ["heldout/wikipedia"] * 30, "metric": ["bits_per_byte"] * 30,
                                      "example": [str(i) for i in range(30)], "value": v, "weight": [100.0] * 30,
                                      "chance": pa.nulls(30, pa.float64())}))  # fmt: skip
            mains.append(pa.table({"task": ["heldout/wikipedia"], "metric": ["bits_per_byte"], "value": [v.mean()]}))
    tables = {f"evaluate_{i}": t for i, t in enumerate(mains + examples)}
    cfg = MixtureParams(name="m", targets=(Target(task="heldout/wikipedia"),), bootstrap_iters=200)
    table, stats = mixture_validate_stage(tables, ValidatePlan(cfg, tuple(runs), (), "nano"), None)
    got = {v["variant"]: v["verdict"] for v in stats["verdicts"]}
    assert got == {"natural": "baseline", "optimum": "better", "uniform": "within noise"}
    row = next(r for r in table.to_pylist() if r["variant"] == "optimum" and r["task"] == "heldout/wikipedia")
    assert row["n_seeds"] == 3 and row["interval"] == "seeds and examples" and row["delta"] < 0
