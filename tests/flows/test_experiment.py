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
    data["experiment"]["seeds"] = [0]  # 3 cells keep CI short; the recipe itself runs 2 seeds
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
    cells = con.execute("select distinct variant, model_size, seed from tiny_matrix__experiment order by 1").fetchall()
    assert cells == [("balanced", "tiny", 0), ("filtered_dedup", "tiny", 0), ("raw", "tiny", 0)]
    # every cell has held-out bits/byte and the harness tasks, with stderr and n
    got = con.execute(
        "select variant, count(distinct task) from tiny_matrix__experiment "
        "where metric in ('bits_per_byte', 'acc') group by 1 order by 1"
    ).fetchall()
    assert all(n >= 3 for _, n in got), got  # heldout/all + copa + piqa at least
    bpb = con.execute("select value from tiny_matrix__experiment where task = 'heldout/all' and metric = 'bits_per_byte'").fetchall()
    assert all(0 < v < 10 for (v,) in bpb)
    # each cell trained: the loss went down over its 30 steps, on its own model version
    train_refs = [r[0] for r in con.execute("select ref from versions where stage = 'train'").fetchall()]
    assert len(train_refs) == 3
    for ref in train_refs:
        m = datasets.read_table(datasets.ref_from_string(root, ref)).sort_by("step")
        loss = m["loss"].to_pylist()
        assert len(loss) == 30 and sum(loss[-5:]) / 5 < sum(loss[:5]) / 5
    # both variants were evaluated on the same held-out documents
    parents = [datasets.read_manifest(datasets.ref_from_string(root, r[0]))["parents"] for r in
               con.execute("select ref from versions where stage = 'evaluate'").fetchall()]
    assert len({p[1] for p in parents}) == 1
    # a re-run skips every finished cell and lands on the same comparison version
    n = len(list(datasets.iter_manifests(root)))
    assert experiment(str(experiment_recipe)) == result
    assert len(list(datasets.iter_manifests(root))) == n
