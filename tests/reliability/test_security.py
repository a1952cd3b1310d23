"""Recipes and SQL filters are data, not code; secrets never reach manifests, logs, artifacts or output rows.

The secret test runs the real augment flow (Prefect API, Ray, storage) against our OpenAI-compatible server serving
the bundled model with authentication on, plants a unique key in the environment, and greps everything the run left
behind: every file under the storage root, the flow run's Prefect logs and artifacts, and the process's stdout/stderr.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from datasets_cfg import load as load_recipe
from tests.conftest import REPO, openai_server, shared_path

PLANTED = "sk-quarry-planted-7c1e9d2b-NEVER-LOG-ME"
KEY_ENV = "QUARRY_SECURITY_TEST_KEY"
CODE_DIRS = ("flows", "tasks", "storage", "datasets_cfg", "ray_cluster", "dashboards", "services")


def _code_files() -> list[Path]:
    files = [REPO / "quarry_cli.py"]
    for d in CODE_DIRS:
        files += sorted((REPO / d).rglob("*.py"))
    return files


def test_no_eval_exec_or_unsafe_deserialization_in_pipeline_code():
    """Recipes and filters are never executed as Python: no eval/exec/compile, no pickle of user input, no unsafe
    YAML loader anywhere in the pipeline's code (tests excluded)."""
    banned_calls = {"eval", "exec", "compile", "__import__"}
    found = []
    unsafe_loaders = {"Loader", "UnsafeLoader", "FullLoader"}
    for path in _code_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):  # a loader built on an unsafe one (ours extend yaml.SafeLoader)
                for base in node.bases:
                    if isinstance(base, ast.Attribute) and base.attr in unsafe_loaders:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno} class {node.name}(yaml.{base.attr})")
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            if isinstance(f, ast.Name) and name in banned_calls:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}()")
            if owner == "yaml" and name in {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"}:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} yaml.{name}()")
            if owner == "yaml" and name in unsafe_loaders:  # yaml.Loader(text).get_single_data()
                found.append(f"{path.relative_to(REPO)}:{node.lineno} yaml.{name}()")
            if owner in {"pickle", "cloudpickle", "marshal", "dill"} and name in {"load", "loads"}:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {owner}.{name}()")
    assert len(_code_files()) > 20  # the scan saw the code base, not an empty folder
    assert not found, found


def test_a_recipe_with_a_python_yaml_tag_is_rejected_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"dataset: evil\ningest: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(Exception) as err:
        load_recipe(recipe)
    assert "evil.yaml" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "predicate",
    [
        "(select count(*) from read_csv('/etc/passwd')) > 0",
        "(select count(*) from read_text('{secret_file}')) > 0",
        "length(getenv('{key_env}')) > 0",
        "(select count(*) from duckdb_settings() where name = 'x') = 0; COPY (select 1) TO '{out}'",
    ],
    ids=["read_csv", "read_text", "getenv", "statement_injection"],
)
def test_sql_filters_cannot_read_files_write_files_or_see_the_environment(predicate, tmp_path, monkeypatch):
    from ray_cluster.executor import sql_over_batch
    from tasks.filter.quality_filter import QualityFilterParams, quality_filter_sql

    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(PLANTED)
    monkeypatch.setenv(KEY_ENV, PLANTED)
    out = tmp_path / "evil.csv"
    pred = predicate.format(secret_file=secret_file, key_env=KEY_ENV, out=out)
    batch = pa.table({"doc_id": ["a"], "text": ["hello"], "rps_doc_word_count": [1]})
    params = QualityFilterParams(rules=[{"name": "evil", "sql": pred}])
    with pytest.raises(Exception) as err:
        sql_over_batch(quality_filter_sql, params, batch)
    assert PLANTED not in str(err.value)
    assert not out.exists()


@pytest.fixture(scope="module")
def keyed_server():
    """llama.cpp's OpenAI-compatible server with the bundled model, requiring the planted key (read from its
    environment, never from its command line)."""
    with openai_server("--api-key-env", KEY_ENV, env={KEY_ENV: PLANTED}) as (url, logs):
        yield url
    assert PLANTED not in logs["stderr"]  # the server does not log the key either


def test_the_engine_server_rejects_a_wrong_key_without_echoing_it(keyed_server):
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        keyed_server + "/chat/completions", method="POST",
        data=json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Authorization": "Bearer sk-wrong-key-123", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401
    assert "sk-wrong-key-123" not in err.value.read().decode()


@pytest.mark.slow
def test_planted_api_key_never_appears_in_outputs_logs_or_artifacts(keyed_server, tmp_path, monkeypatch, capfd,
                                                                   prefect_api, ray_local):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, LogFilter, LogFilterFlowRunId

    from flows.augment import augment
    from storage import datasets

    monkeypatch.setenv(KEY_ENV, PLANTED)
    root = tmp_path / "store"
    recipe = tmp_path / "keyed.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset": "keyed",
        "storage_root": str(root),
        "ingest": {"sources": [{"path": str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")),
                                "domain": "arxiv", "text_field": "abstract", "limit": 3}]},
        "augment": {"backend": "openai", "base_url": keyed_server, "model": "smollm2", "api_key_env": KEY_ENV,
                    "max_input_tokens": 48, "max_new_tokens": 6, "concurrency": 2},
    }))
    state = augment(str(recipe), return_state=True)
    ref = datasets.ref_from_string(str(root), state.result())
    rows = datasets.read_table(ref).to_pylist()
    # the key was really used: the server answers 401 without it, and every row got a generation
    assert len(rows) == 3 and all(r["aug_error"] is None and r["aug_text"] for r in rows), [r["aug_error"] for r in rows]

    leaks = []
    n_files = 0
    for path in root.rglob("*"):
        if path.is_file():
            n_files += 1
            if PLANTED.encode() in path.read_bytes():
                leaks.append(str(path))
    assert n_files >= 6  # manifests and shards of ingest and augment were searched
    out, err = capfd.readouterr()
    if PLANTED in out + err:
        leaks.append("stdout/stderr")

    import asyncio

    async def _prefect_text() -> tuple[int, int, str]:
        async with get_client() as client:
            flow_run_id = state.state_details.flow_run_id
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [flow_run_id]}))
            run_ids = [flow_run_id, *[r.id for r in runs]]
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": run_ids}))
            text = "\n".join([lg.message for lg in logs] + [str(a.data) + str(a.description) for a in arts])
            return len(logs), len(arts), text

    n_logs, n_artifacts, text = asyncio.run(_prefect_text())
    assert n_logs > 0 and n_artifacts > 0  # there was something to search
    if PLANTED in text:
        leaks.append("prefect logs/artifacts")
    assert not leaks, f"planted key found in {leaks}"
