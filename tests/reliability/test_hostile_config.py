"""Hostile and mistaken recipes: each is a RecipeError at load time that names the file and the key, in bounded time
and memory, and never quotes a secret back.

Covers: duplicate YAML keys, out-of-range params (negative counts, fractions outside [0, 1], empty lists), unknown
rule sets, unset ${VARS}, a missing recipe path (no fall-back to the bundled recipe of the same name), alias bombs,
huge values, SQL rules that are not one expression (at load and at run time), and planted API keys.
"""

from __future__ import annotations

import logging
import time
import tracemalloc

import pyarrow as pa
import pytest
import yaml

import datasets_cfg
from datasets_cfg import RecipeError

PLANTED = "sk-proj-PLANTED-4f9a2c7e-DO-NOT-ECHO"
SOURCE = {"sources": [{"path": "docs.jsonl"}]}


def _write(tmp_path, body, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return path


def _error(tmp_path, body, name: str = "recipe.yaml") -> str:
    path = _write(tmp_path, body, name)
    with pytest.raises(RecipeError) as err:
        datasets_cfg.load(path)
    message = str(err.value)
    assert str(path) in message, message  # every error names the file
    return message


def _recipe(**sections) -> dict:
    return {"dataset": "x", "ingest": SOURCE, **sections}


# ------------------------------------------------------------------------------------------------ YAML itself


def test_a_duplicate_key_is_an_error_naming_the_key_and_both_lines(tmp_path):
    body = "dataset: x\ningest:\n  sources: [{path: a.jsonl}]\nquality_filter: {rules: gopher}\ningest:\n  sources: []\n"
    message = _error(tmp_path, body)
    assert "duplicate key 'ingest'" in message and "line 5" in message and "first at line 2" in message
    nested = "dataset: x\ningest:\n  sources:\n    - path: a.jsonl\n      limit: 3\n      limit: 300\n"
    assert "duplicate key 'limit'" in _error(tmp_path, nested) and "line 6" in _error(tmp_path, nested)


def test_the_recipe_loader_is_a_safe_loader():
    assert issubclass(datasets_cfg._RecipeLoader, yaml.SafeLoader)  # python/* tags stay unconstructable


def test_merge_keys_may_still_override_what_they_merge(tmp_path):
    body = "dataset: x\ningest:\n  sources:\n    - &src {path: a.jsonl, limit: 3}\n    - {<<: *src, limit: 5}\n"
    cfg = datasets_cfg.load(_write(tmp_path, body))
    assert [s.limit for s in cfg.ingest.sources] == [3, 5]


def test_billion_laughs_is_rejected_in_bounded_time_and_memory(tmp_path):
    """9 levels of 9 aliases: 9^9 = 387M strings once expanded; it used to exhaust memory in the error formatter."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    body = "\n".join(["dataset: x", "ingest: {sources: [{path: a.jsonl}]}", *lines, "description: *l8"]) + "\n"
    assert len(body) < 1000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        message = _error(tmp_path, body)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "aliases are expanded" in message and len(message) < 300
    assert seconds < 5 and peak < 20 * 2**20, (seconds, peak)
    print(f"\nalias bomb (9^9 expanded values): rejected in {seconds * 1000:.0f} ms, peak {peak / 1024:.0f} KiB")


def test_cyclic_alias_deep_nesting_and_a_huge_file_are_errors_not_crashes(tmp_path):
    assert "a cycle" in _error(tmp_path, "dataset: x\ningest: &a {sources: [*a]}\n")
    deep = "dataset: x\ningest: {sources: " + "[" * 400 + "]" * 400 + "}\n"  # a RecursionError in plain PyYAML
    assert "nested deeper than" in _error(tmp_path, deep)
    big = "dataset: x\ningest: {sources: [{path: a.jsonl}]}\ndescription: " + "y" * (datasets_cfg.MAX_RECIPE_BYTES + 1)
    assert "more than the" in _error(tmp_path, big)


def test_huge_values_are_clipped_in_error_messages(tmp_path):
    long_string = "9" * 20_000
    message = _error(tmp_path, _recipe(ingest={**SOURCE, "docs_per_shard": long_string + "x"}))
    assert "ingest.docs_per_shard" in message and len(message) < 1000
    message = _error(tmp_path, "dataset: x\ningest: {sources: [{path: a.jsonl}], docs_per_shard: -" + "7" * 6000 + "}\n")
    assert "invalid YAML" in message and len(message) < 1000  # int() of 6,000 digits raises ValueError in PyYAML
    message = _error(tmp_path, _recipe(ingest={**SOURCE, "docs_per_shard": [7] * 5_000}))
    assert "ingest.docs_per_shard" in message and len(message) < 1000
    message = _error(tmp_path, _recipe(exact_dedup={"priority": "p" * 20_000}))
    assert "exact_dedup" in message and len(message) < 1000  # a stage's own check quotes the value: clipped


# ------------------------------------------------------------------------------------------- values and paths


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"ingest": {"sources": [{"path": "a.jsonl", "limit": -1}]}}, "limit"),
        ({"ingest": {"sources": [{"path": "a.jsonl", "limit": 0}]}}, "limit"),
        ({"ingest": {"sources": [{"path": "a.jsonl", "max_doc_bytes": -5}]}}, "max_doc_bytes"),
        ({"ingest": {"sources": [{"path": ""}]}}, "path"),
        ({"ingest": {"sources": []}}, "ingest.sources"),
        ({"quality_filter": {"rules": "gopehr"}}, "gopehr"),
        ({"quality_filter": {"rules": ["gopher", "c44"]}}, "c44"),
        ({"quality_filter": {"rules": []}}, "no rules"),
        ({"quality_filter": {"line_rules": "gopher"}}, "line_rules"),
        ({"minhash_signatures": {}, "minhash_dedup": {"similarity": 1.5}}, "similarity"),
        ({"minhash_signatures": {}, "minhash_dedup": {"similarity": 0.85}}, "minhash_signatures.similarities"),
        ({"minhash_dedup": {}}, "minhash_signatures.similarities"),
        ({"minhash_signatures": {"similarities": []}}, "similarities"),
        ({"minhash_signatures": {"similarities": [0.8, -0.1]}}, "similarities"),
        ({"minhash_signatures": {"num_perm": 100_000}}, "num_perm"),
        ({"minhash_signatures": {"ngram_size": 0}}, "ngram_size"),
        ({"heldout": {"fraction": 1.5}}, "fraction"),
        ({"balance": {"target_size": 10, "levels": -1}}, "levels"),
        ({"hkmeans": {"chunk_bytes": 0}}, "chunk_bytes"),
        ({"hkmeans": {"n_candidates": -2}}, "n_candidates"),
        ({"semdedup": {"block_bytes": -1}}, "block_bytes"),
        ({"embed": {"max_retries": -1}}, "max_retries"),
        ({"augment": {"num_threads": 0}}, "num_threads"),
        ({"tokenize": {"target_tokens": 0}}, "target_tokens"),
        ({"tokenize": {"mixture_weights": {}}}, "mixture_weights"),
        ({"train": {"num_heads": 0}}, "num_heads"),  # was a ZeroDivisionError, not an error naming the key
        ({"train": {"min_lr_ratio": 2.0}}, "min_lr_ratio"),
        ({"train": {"beta2": 1.0}}, "beta2"),
        ({"train": {"lr": -0.1}}, "lr"),
        ({"evaluate": {"tasks": []}}, "tasks"),
        ({"evaluate": {"tasks": ["arc_easyy"]}}, "arc_easyy"),
        ({"evaluate": {"limit": 0}}, "limit"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10, "model_sizes": []}}, "model_sizes"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10, "model_sizes": ["huge"]}}, "huge"),
        ({"experiment": {"name": "e", "variants": {"raw": {"skip": ["heldout"]}}, "target_tokens": 10}}, "heldout"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10, "seeds": []}}, "seeds"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10, "baseline": "rwa"}}, "rwa"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10, "alpha": 0.9}}, "alpha"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10, "bootstrap_iters": 5}},
         "bootstrap_iters"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10,
                         "scaling": {"model_sizes": ["tiny"], "tokens_per_param": [20, -1]}}}, "tokens_per_param"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10,
                         "scaling": {"model_sizes": ["giant"], "tokens_per_param": [20]}}}, "giant"),
        ({"experiment": {"name": "e", "variants": {"raw": {}}, "target_tokens": 10,
                         "scaling": {"variants": ["nope"], "model_sizes": ["tiny"], "tokens_per_param": [20]}}}, "nope"),
        ({"evaluate": {"dtype": "float8"}}, "dtype"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_out_of_range_values_are_errors_naming_the_key(tmp_path, sections, key):
    message = _error(tmp_path, _recipe(**sections))
    assert key in message, message


def test_unset_variable_in_a_path_is_an_error_naming_it_and_a_set_one_is_expanded(tmp_path, monkeypatch):
    monkeypatch.delenv("QUARRY_TEST_UNSET", raising=False)
    message = _error(tmp_path, _recipe(storage_root="${QUARRY_TEST_UNSET}/store"))
    assert "${QUARRY_TEST_UNSET}" in message and "storage_root" in message
    message = _error(tmp_path, {"dataset": "x", "ingest": {"sources": [{"path": "$QUARRY_TEST_UNSET/a.jsonl"}]}})
    assert "QUARRY_TEST_UNSET" in message and "ingest.sources.0.path" in message
    monkeypatch.setenv("QUARRY_TEST_EMPTY", "")  # empty counts as unset: "${EMPTY}/x" must not become "/x"
    assert "QUARRY_TEST_EMPTY" in _error(tmp_path, _recipe(evaluate={"eval_dir": "${QUARRY_TEST_EMPTY}/eval"}))
    assert "closing" in _error(tmp_path, _recipe(storage_root="${QUARRY_TEST_UNSET/store"))
    monkeypatch.setenv("QUARRY_TEST_DATA", str(tmp_path / "data"))
    cfg = datasets_cfg.load(_write(tmp_path, {
        "dataset": "x", "storage_root": "${QUARRY_TEST_DATA}/store",
        "ingest": {"sources": [{"path": "$QUARRY_TEST_DATA/a.jsonl"}]},
        "tokenize": {"tokenizer": "${QUARRY_TEST_DATA}/tok"},
    }))
    assert cfg.storage_root == str(tmp_path / "data" / "store")
    assert cfg.ingest.sources[0].path == str(tmp_path / "data" / "a.jsonl")
    assert cfg.tokenize.tokenizer == str(tmp_path / "data" / "tok")


def test_a_missing_recipe_path_is_an_error_not_the_bundled_recipe_of_that_name(tmp_path):
    assert (datasets_cfg.RECIPES_DIR / "tiny.yaml").exists()  # the fall-back would have loaded this one
    with pytest.raises(RecipeError, match="recipe not found") as err:
        datasets_cfg.load(tmp_path / "tiny.yaml")
    assert str(tmp_path / "tiny.yaml") in str(err.value)


# ----------------------------------------------------------------------------------------------- SQL rules


@pytest.mark.parametrize(
    "rule, why",
    [
        ("rps_doc_word_count > 0; COPY (SELECT 1) TO 'out.csv'", "';'"),
        ("true) FROM batch UNION ALL SELECT * FROM batch WHERE (true", "unbalanced ')'"),
        ("rps_doc_word_count > 0 -- and the rest of the CASE", "comment"),
        ("rps_doc_word_count > 0 /* hidden */", "comment"),
        ("$$ ' $$ > 0", "'$'"),
        # E'\'' and `'` hide a quote from a scanner that models only '...' and "...": both are refused
        ("text = E'\\' ' OR x = 'a'", "escape string"),
        ("`'` = 1 OR x = '`'", "backtick"),
        ("text = 'unterminated", "unterminated string"),
        ("(rps_doc_word_count > 0", "unclosed '('"),
        ("rps_doc_word_count >", "Parser Error"),
        ("rps_doc_word_count > 0 ORDER BY 1", "Parser Error"),
    ],
    ids=["semicolon", "close_paren_union", "line_comment", "block_comment", "dollar_quote", "escape_string",
         "backtick", "unterminated", "unclosed", "syntax", "modifier"],
)
def test_a_rule_that_is_not_one_expression_is_rejected_at_load(tmp_path, rule, why):
    message = _error(tmp_path, _recipe(quality_filter={"rules": [["evil", rule]]}))
    assert "quality_filter.rules" in message and "'evil'" in message and why in message, message


def test_separators_inside_strings_and_quoted_identifiers_are_data(tmp_path):
    rules = [["semi", "text NOT LIKE '%;%' OR text = 'it''s -- fine'"], ["quoted", '"we;ird -- col" IS NULL'],
             ["regex", "NOT regexp_matches(text, '\\d{3}$') AND type = 'e'"]]
    cfg = datasets_cfg.load(_write(tmp_path, _recipe(quality_filter={"rules": rules})))
    assert [r[0] for r in cfg.quality_filter.rules] == ["semi", "quoted", "regex"]


def test_run_time_refuses_a_rule_that_never_passed_the_loader():
    """Params built in code skip the recipe loader: quality_filter_sql (tasks/) and sql_over_batch (the engine)
    refuse the second statement themselves, so its result can never replace the stage's output."""
    from ray_cluster.executor import sql_over_batch
    from tasks.filter.quality_filter import QualityFilterParams, quality_filter_sql

    batch = pa.table({"doc_id": ["a", "b"], "x": [1, 2]})
    evil = QualityFilterParams(rules=(("evil", "x > 0; SELECT 'pwned' AS doc_id"),))
    with pytest.raises(ValueError, match=r"rule 'evil' is not a single SQL expression: statement separator"):
        quality_filter_sql(evil)
    with pytest.raises(ValueError, match="exactly one statement, got 2"):
        sql_over_batch(lambda _: "SELECT * FROM batch; SELECT 'pwned' AS doc_id", None, batch)
    ok = sql_over_batch(quality_filter_sql, QualityFilterParams(rules=(("x_small", "x < 2"),)), batch)
    assert ok.column("doc_id").to_pylist() == ["a", "b"] and ok.column("keep").to_pylist() == [True, False]


# ------------------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "sections",
    [
        {"augment": {"backend": "openai", "api_key_env": PLANTED}},
        {"embed": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": PLANTED}},
        {"augment": {"backend": "openai", "api_key_env": {"key": PLANTED}}},
        {"augment": {"api_key": PLANTED}},  # an unknown key holding a secret
        {"augment": {"backend": "openai", "base_url": f"https://user:{PLANTED}@llm.example/v1"}},
        {"embed": {"base_url": f"http://u:{PLANTED}@h/v1", "model": "m", "max_retries": -1}},
        {"storage_root": f"s3://AKIAEXAMPLE:{PLANTED}@bucket/quarry"},
        {"ingest": {"sources": [{"path": f"ftp://me:{PLANTED}@host/docs.jsonl"}]}},
        {"augment": {"backend": "openai", "api_key_env": "OPENAI_API_KEY", "base_url": PLANTED * 3, "top_p": 7}},
    ],
    ids=["augment_key_env", "embed_key_env", "key_env_mapping", "unknown_api_key", "augment_url_password",
         "embed_url_password", "storage_root_password", "source_password", "other_error_beside_secret"],
)
def test_a_planted_key_is_never_echoed_by_validation(tmp_path, caplog, capfd, sections):
    caplog.set_level(logging.DEBUG)
    message = _error(tmp_path, {**_recipe(), **sections})
    out, err = capfd.readouterr()
    for where, text in (("error", message), ("log", caplog.text), ("stdout", out), ("stderr", err)):
        assert PLANTED not in text and PLANTED[:20] not in text, f"planted key in the {where}: {text[:500]}"


def test_a_planted_key_is_not_echoed_by_a_yaml_syntax_error_or_the_cli(tmp_path):
    from typer.testing import CliRunner

    import quarry_cli

    broken = _write(tmp_path, f"dataset: x\naugment:\n  api_key_env: {PLANTED}: oops\n", "broken.yaml")
    with pytest.raises(RecipeError) as err:
        datasets_cfg.load(broken)
    assert "line 3" in str(err.value) and PLANTED not in str(err.value)
    pasted = _write(tmp_path, {**_recipe(), "augment": {"backend": "openai", "api_key_env": PLANTED}}, "pasted.yaml")
    for path in (broken, pasted):  # the CLI prints the RecipeError and exits 2 before any flow starts
        result = CliRunner().invoke(quarry_cli.app, ["run", "ingest", str(path)])
        assert result.exit_code == 2 and "invalid" in result.output and PLANTED not in result.output


def test_stage_params_built_in_code_reject_a_pasted_key_without_echoing_it():
    from tasks.augment.tpt import AugmentParams
    from tasks.balance.embed import EmbedParams

    for build in (lambda: AugmentParams(api_key_env=PLANTED), lambda: EmbedParams(api_key_env=PLANTED),
                  lambda: EmbedParams(base_url=f"http://u:{PLANTED}@h/v1", model="m"),
                  lambda: AugmentParams(base_url=f"http://u:{PLANTED}@h/v1")):
        with pytest.raises(ValueError) as err:
            build()
        assert PLANTED not in str(err.value) and ("api_key_env" in str(err.value) or "base_url" in str(err.value))
