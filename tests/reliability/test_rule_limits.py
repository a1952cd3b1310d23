"""A quality_filter rule cannot burn CPU or memory without bound: `sql_timeout_s` and `sql_memory_gb` hold.

Each hostile rule is a single SQL expression (it passes the one-expression gate and the sandbox: it reads no file);
the bound is what stops it. Both limits are set small so the tests take seconds; the error names the rule and the
file it was written in (a rule set's YAML, or the recipe's `quality_filter.rules[i]`), and the next batch is
evaluated normally (a killed evaluator is replaced).
"""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
import yaml

from datasets_cfg import RecipeError
from datasets_cfg import load as load_recipe
from ray_cluster.executor import sql_over_batch
from ray_cluster.executor.limited_sql import SqlLimitError
from tasks.filter.quality_filter import RULES_DIR, QualityFilterParams, quality_filter_sql

BATCH = pa.table({"doc_id": ["a", "b", "c"], "x": [1, 5, 9]})
BURN = "(SELECT count(*) FROM range(20000000000)) > 0"  # ~minutes of one core
HOG = "len(range(600000000)) > 0"  # one 4.8 GB list, allocated outside DuckDB's buffer manager


def _run(rules, **limits):
    return sql_over_batch(quality_filter_sql, QualityFilterParams(rules=rules, **limits), BATCH)


def test_a_cpu_burning_rule_is_stopped_at_the_timeout_and_named():
    t0 = time.monotonic()
    with pytest.raises(SqlLimitError) as err:
        _run((("small", "x < 9"), ("burn", BURN)), sql_timeout_s=1)
    took = time.monotonic() - t0
    msg = str(err.value)
    assert err.value.kind == "timeout"
    assert "rule 'burn'" in msg and "quality_filter.rules[1]" in msg and "1 s time limit" in msg, msg
    assert "sql_timeout_s" in msg
    assert took < 30, took  # the whole filter, then each rule alone: ~2 timeouts plus start-ups, not minutes
    # the evaluator was killed and replaced: the next batch runs
    assert _run((("small", "x < 9"),)).column("keep").to_pylist() == [True, True, False]


def test_a_memory_hogging_rule_is_stopped_at_the_memory_limit_and_named():
    t0 = time.monotonic()
    with pytest.raises(SqlLimitError) as err:
        _run((("small", "x < 9"), ("hog", HOG)), sql_memory_gb=0.25, sql_timeout_s=60)
    msg = str(err.value)
    assert err.value.kind == "memory"
    assert "rule 'hog'" in msg and "quality_filter.rules[1]" in msg and "sql_memory_gb" in msg, msg
    assert time.monotonic() - t0 < 30


def test_each_rule_is_labelled_with_the_file_it_was_written_in():
    """The labels the engine names a culprit by: a rule set's YAML (code, but still where to look), or the recipe."""
    labels = [label for label, _ in QualityFilterParams(rules=("gopher", ("mine", "x < 2"))).sql_parts()]
    gopher = [r["name"] for r in yaml.safe_load((RULES_DIR / "gopher.yaml").read_text())["rules"]]
    assert len(labels) == len(gopher) + 1
    assert all(str(RULES_DIR / "gopher.yaml") in lb for lb in labels[:-1]), labels
    assert f"rule {gopher[0]!r}" in labels[0] and labels[-1] == "quality_filter rule 'mine' (quality_filter.rules[1])"


@pytest.mark.parametrize("bad", [0, -1, "fast", 10**9])
@pytest.mark.parametrize("knob", ["sql_timeout_s", "sql_memory_gb"])
def test_limits_are_validated_at_recipe_load(tmp_path, knob, bad):
    """A RecipeError naming the file and the key, before anything runs."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "lim", "storage_root": str(tmp_path / "s"),
                                      "ingest": {"sources": [{"path": str(tmp_path / "x.jsonl")}]},
                                      "quality_filter": {"rules": "gopher", knob: bad}}))
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(recipe))
    assert str(recipe) in str(err.value) and knob in str(err.value), str(err.value)
