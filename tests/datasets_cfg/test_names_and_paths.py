"""Names and paths a recipe gives are checked at load, before Prefect or any stage starts.

A 300-character dataset name used to pass and fail with ENAMETOOLONG after the flow had started and retried; a
symlink loop in a recipe path was a RuntimeError (relative paths) or, at run time, "not found" (absolute ones).
Each is now a RecipeError naming the file and the key.
"""

from __future__ import annotations

import os

import pytest
import yaml

from datasets_cfg import RecipeError, load
from datasets_cfg.names import DERIVED_NAME_SUFFIXES, MAX_NAME_CHARS, NAME_MAX_BYTES


def _recipe(tmp_path, **over) -> str:
    data = {"dataset": "ok", "storage_root": str(tmp_path / "store"),
            "ingest": {"sources": [{"path": str(tmp_path / "in.jsonl")}]}}
    data.update(over)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("length", [MAX_NAME_CHARS + 1, 300, 5000])
def test_a_dataset_name_too_long_for_a_folder_is_refused_at_load(tmp_path, length):
    path = _recipe(tmp_path, dataset="a" * length)
    with pytest.raises(RecipeError) as err:
        load(path)
    msg = str(err.value)
    assert path in msg and "dataset:" in msg and f"{length} characters" in msg and str(MAX_NAME_CHARS) in msg, msg
    assert "a" * 61 not in msg  # the value is clipped, not echoed whole


def test_the_longest_allowed_name_and_every_name_derived_from_it_fit_on_disk(tmp_path):
    """Not arithmetic alone: the folders the pipeline makes from the longest accepted name are made here."""
    name = "a" * MAX_NAME_CHARS
    cfg = load(_recipe(tmp_path, dataset=name))
    for derived in (name, *(name + s for s in DERIVED_NAME_SUFFIXES)):
        assert len(derived.encode()) < NAME_MAX_BYTES
        (tmp_path / "store" / derived / "ingest" / "0123456789ab").mkdir(parents=True)
        (tmp_path / "store" / "_pointers" / derived / "ingest").mkdir(parents=True)
    assert cfg.dataset == name
    with pytest.raises(OSError):  # and the limit is real: a 300-character folder is what used to fail mid-run
        (tmp_path / ("a" * 300)).mkdir()


@pytest.mark.parametrize("name", ["Tiny", "tiny-1", "1tiny", "tiny.v2", "tïny", "../up", "a b", ""])
def test_a_dataset_name_outside_the_allowed_characters_is_refused(tmp_path, name):
    path = _recipe(tmp_path, dataset=name)
    with pytest.raises(RecipeError) as err:
        load(path)
    assert path in str(err.value) and "dataset:" in str(err.value)


def test_an_experiment_name_has_the_same_limit(tmp_path):
    exp = {"name": "e" * 300, "variants": {"base": {}}, "target_tokens": 1000}
    path = _recipe(tmp_path, experiment=exp)
    with pytest.raises(RecipeError) as err:
        load(path)
    assert path in str(err.value) and "experiment.name:" in str(err.value) and "300 characters" in str(err.value)


@pytest.fixture
def loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return tmp_path


@pytest.mark.parametrize(("key", "over"), [
    ("ingest.sources.0.path", {"ingest": {"sources": [{"path": "a/data.jsonl"}]}}),  # relative
    ("ingest.sources.0.path", {"ingest": {"sources": [{"path": "{tmp}/a/data.jsonl"}]}}),  # absolute
    ("ingest.sources.1.path", {"ingest": {"sources": [{"path": "in.jsonl"}, {"path": "{tmp}/b/*.jsonl"}]}}),  # glob
    ("storage_root", {"storage_root": "a/store"}),
    ("same_dataset_as", {"same_dataset_as": "{tmp}/a"}),
])
def test_a_symlink_loop_in_a_recipe_path_is_named_as_one(loop, key, over):
    over = yaml.safe_load(yaml.safe_dump(over).replace("{tmp}", str(loop)))
    path = _recipe(loop, **over)
    with pytest.raises(RecipeError) as err:
        load(path)
    msg = str(err.value)
    assert path in msg and f"{key}:" in msg and "symlink loop" in msg and "not found" not in msg, msg


def test_a_recipe_file_that_is_a_symlink_loop_says_so(loop):
    with pytest.raises(RecipeError) as err:
        load(str(loop / "a"))
    assert str(loop / "a") in str(err.value) and "symbolic links" in str(err.value)
    assert os.path.islink(loop / "a")
