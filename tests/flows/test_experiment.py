"""The tiny experiment matrix end to end: curate -> tokenize -> pack -> Ray Train -> evaluate per cell, compared."""

import shutil

import pytest
import yaml

from storage import catalog, datasets
from tests.conftest import REPO, shared_path


@pytest.fixture(scope="module")
def experiment_recipe(tmp_path_factory):
    shared_path("eval", "gauntlet", "copa.jsonl")
    tmp = tmp_path_factory.mktemp("experiment")
    data = yaml.safe_load((REPO / "datasets_cfg" / "tiny_experiment.yaml").read_text())
    for src in data["ingest"]["sources"]:
        src["path"] = str((REPO / "datasets_cfg" / src["path"]).resolve())
    data["evaluate"]["eval_dir"] = str((REPO / "datasets_cfg" / data["evaluate"]["eval_dir"]).resolve())
    data["storage_root"] = str(tmp / "store")
    data["experiment"]["seeds"] = [0]  # 3 cells + the 6-cell scaling sweep keep CI short; the recipe runs 2 seeds
    data["train"]["max_steps"] = 30
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    yield path
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_experiment_matrix_trains_evaluates_and_compares(experiment_recipe, prefect_api, ray_local):
    from flows.experiment import experiment

    result = experiment(str(experiment_recipe))
    root = str(experiment_recipe.parent / "store")
    con = catalog.connect(root)
    cells = con.execute("select distinct variant, model_size, tokens_per_param, seed from tiny_matrix__experiment_cells "
                        "order by all").fetchall()  # fmt: skip
    main = [c[:2] for c in cells if c[2] is None]
    assert main == [("balanced", "tiny"), ("filtered_dedup", "tiny"), ("raw", "tiny")]
    sweep = sorted((c[1], c[2]) for c in cells if c[2] is not None)
    assert sweep == [(s, m) for s in ("nano", "tiny") for m in (0.06, 0.12, 0.25)]
    # every cell has held-out bits/byte and the harness tasks, with stderr and n, and says how it was produced
    got = con.execute(
        "select variant, count(distinct task) from tiny_matrix__experiment_cells "
        "where metric in ('bits_per_byte', 'acc') and tokens_per_param is null group by 1 order by 1"
    ).fetchall()
    assert all(n >= 3 for _, n in got), got  # heldout/all + copa + piqa at least
    bpb = con.execute("select value from tiny_matrix__experiment_cells where task = 'heldout/all' and metric = 'bits_per_byte'").fetchall()
    assert all(0 < v < 10 for (v,) in bpb)
    prov = con.execute("select distinct harness_version, num_fewshot, fewshot_seed, batch_size, dtype, device "
                       "from tiny_matrix__experiment_cells where task = 'copa'").fetchall()  # fmt: skip
    assert len(prov) == 1 and prov[0][0].startswith("lm_eval==") and prov[0][1:] == (0, 1234, 16, "float32", "cpu")
    assert con.execute("select count(*) from tiny_matrix__experiment_cells where task_config_hash is null "
                       "or eval_file_hash is null").fetchone()[0] == 0  # fmt: skip

    # the comparison: seed mean with an interval around it, paired tests against raw, a verdict per row
    rows = {(r[0], r[1], r[2]): r[3:] for r in con.execute(
        "select variant, task, metric, mean, ci_low, ci_high, n_examples, delta, delta_ci_low, delta_ci_high, "
        "p_value, verdict from tiny_matrix__experiment where model_size = 'tiny'").fetchall()}  # fmt: skip
    for variant in ("raw", "filtered_dedup", "balanced"):
        for task, metric in (("copa", "acc"), ("piqa", "acc_norm"), ("heldout/all", "bits_per_byte"),
                             ("core_centered", "centered_acc")):  # fmt: skip
            mean, lo, hi, n, delta, dlo, dhi, p, verdict = rows[(variant, task, metric)]
            assert lo <= mean <= hi and n > 0, (variant, task, metric)
            if variant == "raw":
                assert verdict == "baseline" and delta is None
            else:
                assert dlo <= delta <= dhi and 0 < p <= 1 and verdict in ("better", "worse", "within noise")
    assert rows[("raw", "copa", "acc")][3] == 10  # the recipe's limit: 10 examples per task
    # the cell rows agree with the comparison: copa acc of raw is the mean of its examples
    cell = con.execute("select value from tiny_matrix__experiment_cells where variant = 'raw' and task = 'copa' "
                       "and metric = 'acc' and tokens_per_param is null").fetchone()[0]  # fmt: skip
    assert rows[("raw", "copa", "acc")][0] == pytest.approx(cell)
    assert rows[("raw", "heldout/all", "perplexity")][-1] == "no per-example scores"
    # a researcher reads the direction, the corrected p-value, the interval kind and the macro average in the table
    extra = {(r[0], r[1], r[2]): r[3:] for r in con.execute(
        "select variant, task, metric, higher_is_better, p_value, p_adjusted, correction, interval, n_truncated "
        "from tiny_matrix__experiment where model_size = 'tiny'").fetchall()}  # fmt: skip
    assert extra[("raw", "heldout/all", "bits_per_byte")][0] is False and extra[("raw", "copa", "acc")][0] is True
    assert extra[("raw", "heldout/all", "perplexity")][0] is False
    for (variant, _, metric), (_, p, p_adj, corr, interval, _) in extra.items():
        if metric == "perplexity":  # no per-example scores: a seed mean, no interval, never judged
            assert interval is None and p_adj is None
            continue
        assert interval == "examples only (n_seeds < 3)", (variant, metric)  # one seed here
        if variant != "raw" and p is not None:
            assert corr == "holm" and p <= p_adj <= 1
    assert ("balanced", "heldout/macro", "bits_per_byte") in extra
    assert extra[("raw", "copa", "acc")][-1] is not None  # the truncated-prompt count is carried, 0 or more

    # the scaling fit ran end to end on the balanced sweep: fitted on the small runs, the largest predicted
    fit = con.execute("select role, quantity, count(*), max(relative_error) from tiny_matrix__experiment_scaling "
                      "group by all order by all").fetchall()  # fmt: skip
    assert [(r[0], r[1], r[2]) for r in fit] == [("fit", "error", 6), ("fit", "loss", 6), ("heldout", "error", 1),
                                                 ("heldout", "loss", 1)]  # fmt: skip
    assert all(r[3] is not None and r[3] >= 0 for r in fit)
    params = dict(con.execute("select param, value from tiny_matrix__experiment_scaling_fit where variant = "
                              "'balanced' and law like 'loss%'").fetchall())  # fmt: skip
    assert {"E", "a", "b", "eta", "rmse"} <= set(params) and params["n_fit"] == 6
    ref = datasets.ref_from_string(root, result)
    assert datasets.read_manifest(ref)["stats"]["scaling"]["balanced"]["status"] == "fitted"

    # the dashboard shows those tables: the verdicts, the cells pivoted, observed vs predicted as a scatter
    from dashboards import app

    dash = catalog.connect(root, sandbox=True)
    panels = {p.name: p for p in app.load_panels()}
    verdicts = app.run_panel(dash, panels["experiment_verdicts"], "tiny_matrix").table.to_pylist()
    assert {(r["variant"], r["task"], r["metric"], r["verdict"]) for r in verdicts} == set(
        con.execute("select variant, task, metric, verdict from tiny_matrix__experiment").fetchall())  # fmt: skip
    pivot = app.run_panel(dash, panels["experiment_comparison"], "tiny_matrix").table.to_pylist()
    assert {(r["variant"], r["task"], r["acc"]) for r in pivot if r["task"] == "copa" and r["tokens_per_param"] is None} == set(
        con.execute("select variant, task, value from tiny_matrix__experiment_cells where task = 'copa' and "
                    "metric = 'acc' and tokens_per_param is null").fetchall())  # fmt: skip
    scatter = app.run_panel(dash, panels["scaling_fit"], "tiny_matrix").table
    assert scatter.num_rows == 3 * 14 and set(scatter["role"].to_pylist()) == {"fit", "heldout"}
    assert set(scatter["predictor"].to_pylist()) == {"fit", "naive: last", "naive: mean"}  # the baselines beside it
    naive = con.execute("select quantity, naive_last_relative_error, naive_mean_relative_error from "
                        "tiny_matrix__experiment_scaling where role = 'heldout'").fetchall()  # fmt: skip
    assert len(naive) == 2 and all(a >= 0 and b >= 0 for _, a, b in naive)
    charts = []

    class _St:
        def altair_chart(self, chart, **_):
            charts.append(chart.to_dict())

    app._chart(_St(), panels["scaling_fit"], scatter.to_pandas())
    assert charts[0]["spec"]["mark"]["type"] == "point" and charts[0]["facet"]["field"] == "quantity"

    # each main cell trained: the loss went down over its 30 steps, on its own model version
    train_refs = [r[0] for r in con.execute("select ref from versions where stage = 'train'").fetchall()]
    assert len(train_refs) == 9
    curves = [datasets.read_table(datasets.ref_from_string(root, r)).sort_by("step")["loss"].to_pylist()
              for r in train_refs]  # fmt: skip
    full = [c for c in curves if len(c) == 30]
    assert len(full) == 3 and all(sum(c[-5:]) / 5 < sum(c[:5]) / 5 for c in full)
    # all variants were evaluated on the same held-out documents
    parents = [datasets.read_manifest(datasets.ref_from_string(root, r[0]))["parents"] for r in
               con.execute("select ref from versions where stage = 'evaluate'").fetchall()]
    assert len({p[1] for p in parents}) == 1
    # a re-run skips every finished cell and lands on the same comparison version
    n = len(list(datasets.iter_manifests(root)))
    assert experiment(str(experiment_recipe)) == result
    assert len(list(datasets.iter_manifests(root))) == n
