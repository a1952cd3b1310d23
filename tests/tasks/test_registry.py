"""The stage registry is the one table the flows, the recipe schema and the cluster profiles read."""

from pathlib import Path

import pytest
import yaml

import datasets_cfg
from flows.run import profile_for
from ray_cluster import executor, runtime
from tasks import registry
from tests.conftest import shared_path

PROFILES = sorted((Path(runtime.PROFILES_DIR)).glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_keys_only_registry_stages(path):
    profile = profile_for(str(path))
    assert set(profile.stages) <= registry.resource_keys()


@pytest.mark.parametrize("path", datasets_cfg.recipes(), ids=lambda p: p.name)
def test_every_recipe_section_is_a_registry_stage_with_its_params(path):
    shared_path("eval")  # the bundled recipes name ../shared/data files (decontaminate checks its eval files)
    cfg = datasets_cfg.load(path)
    sections = registry.sections()
    for name in cfg.model_fields_set - {"dataset", "description", "storage_root", "cluster", "experiment", "same_dataset_as"}:
        value = getattr(cfg, name)
        assert name in sections, f"{path.name}: section {name!r} is no registry stage"
        assert isinstance(value, sections[name]), (name, type(value))
    profile_for(cfg.cluster)  # the recipe's profile loads against the registry too


def test_a_profile_naming_an_unknown_stage_is_an_error_naming_file_and_key(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump({"engine": "serial", "stages": {"kmeans": {"num_cpus": 2}}}))
    with pytest.raises(ValueError) as err:
        profile_for(str(bad))
    assert "typo" in str(err.value) and "'kmeans'" in str(err.value)


def test_a_recipe_section_for_an_unknown_stage_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "x", "ingest": {"sources": [{"path": "a.jsonl"}]}, "kmeans": {}}))
    with pytest.raises(datasets_cfg.RecipeError, match="kmeans"):
        datasets_cfg.load(recipe)


def test_gpu8_gives_hierarchical_kmeans_its_gpu():
    """gpu8 keyed k-means as `kmeans` while the flow asked for `hkmeans`: its num_gpus was silently ignored."""
    gpu8 = profile_for("gpu8")
    res = executor.resources(registry.stage("hkmeans"), gpu8)
    assert res.num_gpus == 1 and res.num_cpus == 8
    # a step of a multi-step section takes the section's resources unless it has its own
    local = runtime.Profile(stages={"exact_dedup": runtime.StageResources(num_cpus=2)})
    assert executor.resources(registry.stage("exact_dedup_hashes"), local).num_cpus == 2
    assert executor.resources(registry.stage("quality_signals"), local).num_cpus == local.default.num_cpus


def test_one_name_per_stage():
    """Params classes are named after their stage; no alias names stay behind."""
    import tasks.dedup.minhash as mh

    for alias in ("FuzzyDedupParams", "MinhashParams"):
        assert not hasattr(mh, alias)
    for stage in registry.STAGES.values():
        assert stage.kind in registry.KINDS
        assert all(i == "src" or i in registry.STAGES for i in stage.inputs), stage.name
        if stage.params is not None and stage.section == stage.name:
            words = stage.name.replace("_", "").lower()
            assert stage.params.__name__.lower().removesuffix("params") == words, (stage.name, stage.params)


def test_the_registry_and_the_recipe_schema_do_not_import_torch():
    """Every Ray worker unpickles stages (and so imports the registry): torch there cost each one ~300 MB of RSS and
    ~1.5 s. Only the stages that build a model import it."""
    import subprocess
    import sys

    code = ("import sys, tasks.registry, datasets_cfg, ray_cluster.executor; "
            "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stdout


def test_every_stage_fn_carries_the_name_of_its_stage():
    """Reading a stage function tells which stage(s) run it: each is marked at its definition (@implements)."""
    from tasks.common.stage import stages_of

    unmarked = {s.name: f"{s.fn.__module__}.{s.fn.__qualname__}" for s in registry.STAGES.values()
                if s.name not in stages_of(s.fn)}  # fmt: skip
    assert not unmarked, unmarked
    # one function may implement two stages, and then names both
    assert stages_of(registry.stage("heldout").fn) == ("heldout", "train_split")
    assert registry.stage("sentence_dedup_duplicates").fn is registry.stage("line_dedup_duplicates").fn


def test_a_stage_whose_fn_names_another_stage_is_refused():
    from tasks.common.stage import implements

    with pytest.raises(ValueError, match=r"stage heldout: .*kept_documents.* implements \('kept',\)"):
        registry.Stage("heldout", "map", registry.stage("kept").fn, None)

    def unmarked(batch, params):
        return batch

    with pytest.raises(ValueError, match="implements no stage"):
        registry.Stage("mystery", "map", unmarked, None)
    marked = implements("mystery")(unmarked)
    assert registry.Stage("mystery", "map", marked, None).fn is unmarked  # the decorator returns the function itself
    with pytest.raises(ValueError, match="stage names"):
        implements()


def test_every_stage_that_writes_the_verdict_reads_and_rewrites_all_of_it():
    """A columns layer stores only what a stage adds or rewrites: drop_stage travels with keep and drop_reason."""
    from tasks.common.verdict import VERDICT
    from tasks.filter.pii import PiiParams
    from tasks.filter.quality_filter import funnel_summary

    available = ["doc_id", "text", "url", *VERDICT]
    writers = [s for s in registry.STAGES.values() if s.summarize_output is funnel_summary]
    assert {s.name for s in writers} == {"line_dedup", "quality_filter", "pii", "decontaminate", "exact_dedup",
                                         "minhash_dedup", "sentence_dedup"}  # fmt: skip
    for s in writers:
        assert set(VERDICT) <= set(s.rewrites), s.name
        params = PiiParams(mode="flag") if s.name == "pii" else s.params()  # pii's redact mode keeps no verdict
        assert set(VERDICT) <= set(s.reads(params, available)), s.name
