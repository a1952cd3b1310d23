"""Every recipe validates; a typo or a wrong type is an error naming the file and the key."""

import pytest
import yaml

import datasets_cfg
from tests.conftest import shared_path


@pytest.mark.parametrize("path", datasets_cfg.recipes(), ids=lambda p: p.name)
def test_every_recipe_validates(path):
    shared_path("eval")  # the bundled recipes name ../shared/data files (decontaminate checks its eval files)
    cfg = datasets_cfg.load(path)
    assert cfg.dataset


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "x", "ingest": {"sources": [{"path": "a.jsonl", "limt": 3}]}}))
    with pytest.raises(datasets_cfg.RecipeError) as err:
        datasets_cfg.load(recipe)
    assert "typo.yaml" in str(err.value) and "ingest.sources.0.limt" in str(err.value)


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "x", "ingest": {"sources": [{"path": "a", "limit": "many"}]}}))
    with pytest.raises(datasets_cfg.RecipeError, match=r"ingest\.sources\.0\.limit"):
        datasets_cfg.load(recipe)


def test_bad_dataset_name_and_invalid_yaml_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: Not-Snake\ningest: {sources: [{path: a}]}\n")
    with pytest.raises(datasets_cfg.RecipeError, match="dataset"):
        datasets_cfg.load(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("dataset: [unclosed\n")
    with pytest.raises(datasets_cfg.RecipeError, match="invalid YAML"):
        datasets_cfg.load(broken)


def test_relative_source_paths_resolve_against_the_recipe_file(tmp_path):
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "x", "ingest": {"sources": [{"path": "../docs.jsonl"}]}}))
    cfg = datasets_cfg.load(recipe)
    assert cfg.ingest.sources[0].path == str(tmp_path / "docs.jsonl")
