"""A section that would do nothing is refused or warned about; `quarry run --plan` says what a run would run, reuse
and skip (and the stale versions) without running anything, on the bundled tiny recipe before and after a run."""

import logging
from dataclasses import replace

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

import datasets_cfg
from datasets_cfg import sections
from flows import plan
from ray_cluster import executor, runtime
from storage import datasets
from tasks import registry
from tests.conftest import REPO, shared_path

TINY = yaml.safe_load((REPO / "datasets_cfg" / "tiny.yaml").read_text())


def _recipe(tmp_path, drop=(), **changes):
    """tiny.yaml with absolute paths, a root under tmp_path, some sections removed or changed."""
    data = {k: v for k, v in yaml.safe_load(yaml.safe_dump(TINY)).items() if k not in drop}
    for src in data["ingest"]["sources"]:
        src["path"] = str((REPO / "datasets_cfg" / src["path"]).resolve())
    for key in ("evaluate",):
        if key in data:
            data[key]["eval_dir"] = str((REPO / "datasets_cfg" / data[key]["eval_dir"]).resolve())
    data.update(storage_root=str(tmp_path / "store"), **changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("drop", "key", "needs"), [
    (("hkmeans",), "embed", "hkmeans"),  # the case: ran nothing and printed "curate finished"
    (("embed",), "hkmeans", "embed"),
    (("embed", "hkmeans", "semdedup"), "balance", "embed"),
    (("balance",), "semdedup", "balance"),
])  # fmt: skip
def test_a_section_that_would_do_nothing_is_a_recipe_error_naming_file_and_key(tmp_path, drop, key, needs):
    shared_path("web", "c4_sample", "c4_sample.jsonl")
    path = _recipe(tmp_path, drop)
    with pytest.raises(datasets_cfg.RecipeError) as e:
        sections.check_sections(datasets_cfg.load(path), path)
    assert str(path) in str(e.value) and f"`{key}` needs" in str(e.value) and f"`{needs}`" in str(e.value)
    # the CLI refuses it before any flow starts: exit 2, the message, never "finished"
    import quarry_cli

    out = CliRunner().invoke(quarry_cli.app, ["run", "curate", str(path)])
    assert out.exit_code == 2 and f"`{key}` needs" in out.output and "finished" not in out.output
    assert not (tmp_path / "store").exists()  # nothing ran


def test_quality_score_without_its_classifier_is_refused(tmp_path):
    shared_path("web", "c4_sample", "c4_sample.jsonl")
    path = _recipe(tmp_path, quality_score={})
    with pytest.raises(datasets_cfg.RecipeError, match="`quality_score` needs `quality_classifier`"):
        sections.check_sections(datasets_cfg.load(path), path)


def test_a_section_whose_result_nothing_uses_is_a_warning_in_the_log(tmp_path, caplog):
    shared_path("web", "c4_sample", "c4_sample.jsonl")
    path = _recipe(tmp_path, drop=("semdedup", "balance", "evaluate", "decontaminate"))
    with caplog.at_level(logging.WARNING, logger="quarry"):
        warnings = sections.check_sections(datasets_cfg.load(path), path)
    assert [w.split(": ", 1)[1].split(":")[0] for w in warnings] == ["`hkmeans` without `balance`",
                                                                     "`heldout` without `evaluate`"]
    assert [r.getMessage() for r in caplog.records if r.name == "quarry"] == warnings
    assert sections.check_sections(datasets_cfg.load(_recipe(tmp_path)), "tiny") == []  # the bundled recipe is clean


def test_plan_before_and_after_a_run_of_the_bundled_tiny_recipe(tmp_path):
    shared_path("web", "c4_sample", "c4_sample.jsonl")
    path = _recipe(tmp_path, drop=("quality_classifier",))
    root = str(tmp_path / "store")

    steps, stale, _ = plan.plan("evaluate", str(path))
    runs = [s for s in steps if s.action == "run"]
    assert [s.stage for s in runs][:3] == ["ingest", "heldout", "train_split"]
    assert [s.stage for s in runs[-2:]] == ["evaluate", "eval_contamination"]
    assert {s.stage: s.why for s in steps if s.action == "skip"} == {
        "quality_classifier": "section absent", "line_dedup": "section absent", "quality_score": "section absent",
        "sentence_dedup": "section absent"}  # fmt: skip
    assert not any(s.action == "reuse" for s in steps) and stale == []
    assert list(datasets.iter_manifests(root)) == []  # the plan ran nothing

    # a small real run: ingest and the held-out split (the serial engine; the profile is not part of a version)
    cfg = datasets_cfg.load(path)
    serial = runtime.load_profile("serial")
    docs = executor.run(registry.stage("ingest"), [], cfg.ingest, serial, root=cfg.root, dataset=cfg.dataset)
    held = executor.run(registry.stage("heldout"), [docs], replace(cfg.heldout, side="heldout"), serial)
    planned = {s.stage: s for s in runs}
    assert (planned["ingest"].version, planned["heldout"].version) == (docs.version, held.version)

    # a stale version: quality_signals committed under another code identity (what a code change leaves behind)
    old = datasets.DatasetRef(root, cfg.dataset, "quality_signals", "0123456789ab")
    datasets.write_shard(old, datasets.shard_name(0), pa.table({"doc_id": ["a"]}))
    datasets.commit(old, code=executor.code_of(registry.stage("pii")))

    steps, stale, warnings = plan.plan("evaluate", str(path))
    by = {s.stage: s for s in steps}
    assert (by["ingest"].action, by["ingest"].version, by["ingest"].why) == ("reuse", docs.version, "committed")
    assert (by["heldout"].action, by["heldout"].version) == ("reuse", held.version)
    assert (by["train_split"].action, by["train_split"].why) == ("run", "inputs committed")
    assert (by["language_id"].action, by["language_id"].why) == ("run", "after train_split")
    assert [r["ref"] for r in stale] == [f"{cfg.dataset}/quality_signals/0123456789ab"]
    text = plan.lines(steps, stale, warnings)
    assert f"reuse  {cfg.dataset}/ingest/{docs.version}  (committed)" in text
    assert text[len(steps)].startswith(f"{len(runs) - 2} to run, 2 reused from the store, 4 skipped")
    assert any(line.startswith(f"stale  {cfg.dataset}/quality_signals/0123456789ab") for line in text)

    # the CLI prints the same plan and still runs nothing
    import quarry_cli

    before = sorted(m["version"] for m in datasets.iter_manifests(root))
    out = CliRunner().invoke(quarry_cli.app, ["run", "--plan", "evaluate", str(path)])
    assert out.exit_code == 0, out.output
    assert f"reuse  {cfg.dataset}/heldout/{held.version}" in out.output and "nothing was run" in out.output
    assert sorted(m["version"] for m in datasets.iter_manifests(root)) == before
