"""`quarry trigger` against a real Prefect server and process worker (loopback, SQLite; `server_up` as in
test_deploy.py): a mistake is one line naming it, a finished run is a short summary with its page and how to open
what it committed (with --root when the run was moved by storage_root), not hundreds of lines of artifact JSON."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

import quarry_cli
from flows import run as flow_run
from services import deployments, prefect_server
from storage import datasets
from tests.conftest import shared_path

runner = CliRunner()


@pytest.fixture(scope="module")
def server(prefect_service):
    """The server + worker of tests/flows/conftest.py (prefect_service, shared with test_deploy), ingest/tiny deployed."""
    deployments.deploy(prefect_service["api_url"], names=["ingest/tiny"])
    return prefect_service


def _trigger(api: str, *args: str):
    return runner.invoke(quarry_cli.app, ["trigger", *args, "--api-url", api], catch_exceptions=False)


def _one_line_error(out, *fragments: str) -> None:
    assert out.exit_code == 2, out.output
    assert len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output, out.output
    for f in fragments:
        assert f in out.output, out.output


def test_mistakes_are_one_line_naming_them(server, tmp_path):
    api = server["api_url"]
    _one_line_error(_trigger(api, "ingest/nope"), "no deployment 'ingest/nope'", "ingest/tiny", "quarry deploy")
    _one_line_error(_trigger(api, "ingest/tiny", "-p", f"recipe={tmp_path / 'missing.yaml'}"), "recipe not found")
    _one_line_error(_trigger(api, "ingest/tiny", "-p", "profile=nosuch"), "no cluster profile 'nosuch'")
    _one_line_error(_trigger(api, "ingest/tiny", "-p", "recpie=x.yaml"), "no parameter 'recpie'", "recipe")
    _one_line_error(_trigger(api, "ingest/tiny", "-p", "recipe"), "key=value")
    gone = f"http://127.0.0.1:{prefect_server.free_port()}/api"
    _one_line_error(_trigger(gone, "ingest/tiny"), "cannot reach the Prefect API")


@pytest.mark.timeout(600)
def test_a_finished_run_prints_its_page_and_what_it_committed_with_the_root(server, tmp_path):
    api = server["api_url"]
    recipe = tmp_path / "trig.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset": "trig", "cluster": "serial", "ingest": {"docs_per_shard": 10, "sources": [
            {"path": str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), "domain": "arxiv",
             "text_field": "abstract", "limit": 7}]}}))  # fmt: skip
    root = tmp_path / "moved"  # a storage_root parameter, not the recipe's: the worker's default root differs
    out = _trigger(api, "ingest/tiny", "-p", f"recipe={recipe}", "-p", f"storage_root={root}", "--timeout", "420")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) <= 12, out.output  # a summary, not the artifacts' JSON
    run_id = lines[0].split()[2]
    assert f"{server['ui_url']}/runs/flow-run/{run_id}" in lines[0]
    assert lines[1].startswith("ingest-trig-") and ": Completed" in lines[1]
    assert any(line.startswith("  artifact ingest-counts (1 rows)") for line in lines), out.output
    ref = datasets.latest(str(root), "trig", "ingest")
    version_line = next(line for line in lines if line.startswith(f"    {ref}"))
    assert "7 rows" in version_line and f"quarry sql --root {root} " in version_line
    # the command the summary prints opens what the run committed
    cmd = version_line.split("  ")[-1]
    query = cmd.split(f"--root {root} ", 1)[1].strip("'")
    opened = runner.invoke(quarry_cli.app, ["sql", "--root", str(root), query, "-f", "json"])
    assert opened.exit_code == 0 and len(opened.output.splitlines()) == 7, opened.output


def test_every_stage_publishes_its_own_artifact_key():
    keys = {flow_run.artifact_key("filter-funnel", s) for s in ("quality_filter", "pii", "decontaminate",
                                                                 "exact_dedup_mark")}  # fmt: skip
    assert keys == {"filter-funnel-quality-filter", "filter-funnel-pii", "filter-funnel-decontaminate",
                    "filter-funnel-exact-dedup-mark"}  # fmt: skip
    assert flow_run.artifact_key("ingest-counts", "ingest") == "ingest-counts"
