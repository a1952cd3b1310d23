"""The mixture search end to end on a planted effect (issue 32): target = held-out bits/byte on Wikipedia over tiny
shared web / Wikipedia / code data; tiny proxies trained through the pack -> train -> evaluate stages on Ray."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import yaml

from storage import catalog, datasets
from tests.conftest import REPO, shared_path

# 11 nano trainings + held-out scoring: ~70 s each on this 2-core machine at load 15-20 (the setup ran 901 s and hit
# the suite's 900 s default once); the search and its validation are one fixture
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory, prefect_api):
    shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")
    tmp = tmp_path_factory.mktemp("mixture")
    data = yaml.safe_load((REPO / "datasets_cfg" / "tiny_mixture.yaml").read_text())
    for src in data["ingest"]["sources"]:
        src["path"] = str((REPO / "datasets_cfg" / src["path"]).resolve())
    data["storage_root"] = str(tmp / "store")
    # CI scale: web vs Wikipedia only (the held-out scoring of long code documents would dominate the time), 40
    # documents each, 15 % held out; 5 nano proxies of 10 steps of 4 x 64 tokens, then the optimum vs natural with 3
    # seeds (11 trainings; the recipe runs 12 tiny proxies of 40 steps over 3 domains, and uniform too). The serial
    # profile: the stages in this process, no Ray start-up per run (the experiment tests run them on Ray)
    data["ingest"]["sources"] = [dict(s, limit=40) for s in data["ingest"]["sources"] if s["domain"] != "code"]
    data["heldout"]["fraction"] = 0.15
    data["cluster"] = "serial"
    data["train"]["micro_batch_size"] = 4
    data["mixture"].update(n_mixtures=5, model_size="nano", max_steps=10, folds=5, simulations=20_000,
                           arms=["optimum", "natural"], bootstrap_iters=200)
    path = tmp / "mix.yaml"
    path.write_text(yaml.safe_dump(data))
    from flows.mixture import mixture

    fit = mixture(str(path))
    con = catalog.connect(str(tmp / "store"))  # the run's tables, printed for the README walkthrough (pytest -s)
    for view in ("mixture_fit_models", "mixture_weights", "mixture_validate"):
        print(con.execute(f"select * from tiny_mix__{view}").fetchdf().to_string())
    yield str(tmp / "store"), fit
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_the_search_finds_the_planted_wikipedia_effect_and_validates_it(mixture_run):
    root, fit = mixture_run
    con = catalog.connect(root)
    w = {(a, c): (x, n, cap) for a, c, x, n, cap in con.execute(
        "select arm, component, weight, natural_weight, cap from tiny_mix__mixture_weights").fetchall()}  # fmt: skip
    # the predicted optimum puts more weight on Wikipedia than the natural mixture does, within availability
    assert w[("optimum", "wikipedia")][0] > w[("natural", "wikipedia")][0] + 0.1, w
    assert all(x <= cap + 1e-9 for x, _, cap in w.values())
    proxies = con.execute("select count(*), count(distinct weights) from tiny_mix__mixture_fit").fetchone()
    assert proxies == (5, 5)
    # the held-out Spearman rho of both regressions is reported, and the chosen one ranks held-out mixtures well
    models = {r[0]: r[1:] for r in con.execute("select model, heldout_spearman, shuffled_spearman, chosen "
                                               "from tiny_mix__mixture_fit_models").fetchall()}  # fmt: skip
    assert set(models) == {"lightgbm", "linear"} and all(r[0] is not None for r in models.values())
    chosen = next(r for r in models.values() if r[2])
    assert chosen[0] > 0.5 and chosen[0] > chosen[1] + 0.3, models

    # the optimum is a committed curated selection; its blend names each component's prefix with its weight
    ref = datasets.ref_from_string(root, fit)
    sel = datasets.latest(root, "tiny_mix", "mixture_select")
    stats = datasets.read_manifest(sel)["stats"]
    assert "tiny_mixture_wikipedia_text_document" in stats["blend"]
    got = stats["components"]["wikipedia"]
    assert got["tokens_out"] == pytest.approx(got["weight"] * 20_000, abs=2_000)  # one document's overshoot
    curated = datasets.read_table(datasets.latest(root, "tiny_mixture", "curated"), columns=["domain"])
    assert curated.num_rows == int(datasets.read_table(sel, columns=["copies"]).column("copies").to_numpy().sum())

    # validation: the optimum vs the natural mixture, 3 seeds, on held-out Wikipedia bits/byte
    v = con.execute("select variant, n_seeds, interval, mean, delta, verdict from tiny_mix__mixture_validate "
                    "where task = 'heldout/wikipedia' and metric = 'bits_per_byte' order by variant").fetchall()
    assert [r[0] for r in v] == ["natural", "optimum"] and all(r[1] == 3 for r in v)
    # lower bits/byte than natural. Measured at this scale (10 nano steps, 9 held-out Wikipedia documents): delta
    # -0.0066, raw p 0.035, Holm-adjusted 0.10 -> "within noise"; the "better" needs a larger proxy/validation
    # scale than CI affords, so the test asserts the direction and that a verdict was reached, not "better"
    assert v[1][4] < 0 and v[1][5] in ("better", "within noise"), v
    assert datasets.read_manifest(ref)["stats"]["optimum_model"] in ("lightgbm", "linear")


@pytest.mark.slow
def test_with_weights_shuffled_against_the_targets_the_search_finds_nothing(mixture_run):
    """The same proxies' results refitted with each run's weights permuted among the runs: the held-out rho
    collapses and the optimum no longer favours Wikipedia, so the test above rests on the weights."""
    from tasks.mixture import stage
    from tasks.mixture.config import FitPlan, Run

    root, fit = mixture_run
    ref = datasets.ref_from_string(root, fit)
    man = datasets.read_manifest(ref)
    plan_runs = datasets.read_table(ref).to_pylist()
    evals = [datasets.ref_from_string(root, p) for p in man["parents"]]
    tables = {f"evaluate_{i}": datasets.read_table(e) for i, e in enumerate(evals)}
    import datasets_cfg

    cfg = datasets_cfg.validate(yaml.safe_load(open(REPO / "datasets_cfg" / "tiny_mixture.yaml")), "mix.yaml").mixture
    weights = [tuple(sorted(json.loads(r["weights"]).items())) for r in plan_runs]
    tokens = tuple(sorted(man["stats"]["tokens"].items()))
    kind = man["stats"]["optimum_model"]  # the same model's rho, shuffled and not (a max over models would bias up)
    real_rho = man["stats"]["heldout_spearman"][kind]
    rhos, wiki = [], []
    for seed in range(8):
        perm = np.random.default_rng(seed).permutation(len(weights))
        runs = tuple(Run("search", i, weights[j]) for i, j in enumerate(perm))
        out, st = stage.mixture_fit_stage(tables, FitPlan(cfg.__class__(**{**_asdict(cfg), "simulations": 5000, "folds": len(runs)}),
                                                          tokens, runs), None)
        rhos.append(st["heldout_spearman"][kind] or 0.0)
        wiki.append(st["optimum"]["wikipedia"] - st["natural"]["wikipedia"])
    assert np.mean(rhos) < real_rho - 0.3, (rhos, real_rho)
    assert np.mean(wiki) < man["stats"]["optimum"]["wikipedia"] - man["stats"]["natural"]["wikipedia"] - 0.1, wiki
    assert isinstance(out["mixture_fit"], pa.Table)


def _asdict(cfg):
    from dataclasses import fields

    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


@pytest.mark.slow
def test_the_mixture_panels_show_what_quarry_sql_shows(mixture_run):
    from dashboards import app

    root, _ = mixture_run
    con = catalog.connect(root, sandbox=True)
    panels = {p.name: p for p in app.load_panels() if p.name.startswith("mixture_")}
    assert set(panels) == {"mixture_fit", "mixture_weights", "mixture_validation"}
    plain = catalog.connect(root)
    for name, p in panels.items():
        shown = app.run_panel(con, p, "tiny_mix").table
        assert shown is not None and shown.num_rows > 0, name
        want = plain.sql(p.sql.replace("{view:", "tiny_mix__").replace("}", "")).to_arrow_table()
        assert shown.to_pylist() == want.to_pylist(), name
