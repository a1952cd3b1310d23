"""Prefect as a service, for real: a Prefect server and a process worker started by `server_up` on a free loopback
port (temp PREFECT_HOME, SQLite), deployments from prefect.yaml, runs triggered through the API with new parameters.

This server is not the session's `prefect_test_harness`: every call names its API URL (`using_api`), and the server
and worker are subprocesses that `server_down` ends by their process groups.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from services import deployments, prefect_server
from storage import catalog, datasets
from tests.conftest import REPO, save_screenshot, shared_path


@pytest.fixture(scope="module")
def server(prefect_service):
    """The server + worker of tests/flows/conftest.py (prefect_service, shared with test_cli_trigger): its teardown checks
    that `server_down` stops both."""
    return prefect_service


def _lines(path: Path, n: int, start: int = 0) -> str:
    with open(path) as f:
        return "".join(line for i, line in enumerate(f) if start <= i < start + n)


def test_prefect_yaml_declares_every_flow_with_the_recipe_parameter():
    specs = {s.full_name: s for s in deployments.load_deployments()}
    for flow in ("ingest", "watch", "curate", "augment", "train", "evaluate", "experiment"):
        assert specs[f"{flow}/tiny"].parameters == {"recipe": "datasets_cfg/tiny.yaml"}
        assert specs[f"{flow}/tiny"].concurrency_limit >= 1
    assert specs["watch/tiny"].schedules[0]["cron"] == "0 2 * * *"
    assert specs["watch/tiny"].collision_strategy == "CANCEL_NEW"
    steps = deployments.pull_steps()
    assert steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]


def test_a_new_flow_module_gets_a_default_deployment_and_missing_ones_are_skipped(tmp_path):
    found = deployments.discover_flows()
    assert found["ingest"] == "flows/ingest.py:ingest" and found["watch"] == "flows/watch.py:watch"
    pf = tmp_path / "prefect.yaml"
    pf.write_text(yaml.safe_dump({"deployments": [{"name": "x", "entrypoint": "flows/nope.py:nope",
                                                    "parameters": {"recipe": "r.yaml"}}]}))  # fmt: skip
    specs = {s.full_name: s for s in deployments.load_deployments(pf, recipe="datasets_cfg/other.yaml")}
    # every discovered flow not in the file gets <flow>/<recipe stem>, with the recipe given
    assert specs["ingest/other"].entrypoint == "flows/ingest.py:ingest"
    assert specs["ingest/other"].parameters == {"recipe": "datasets_cfg/other.yaml"}
    assert not specs["nope/x"].path.exists()


@pytest.mark.timeout(600)
def test_server_deploys_and_runs_ingest_with_new_parameters_publishing_artifacts(server, tmp_path):
    api = server["api_url"]
    result = deployments.deploy(api, names=["ingest/tiny", "watch/tiny"])
    assert set(result) == {"ingest/tiny", "watch/tiny"} and all(not v.startswith("skipped") for v in result.values())
    listed = {d["name"]: d for d in deployments.list_deployments(api)}
    assert listed["watch/tiny"]["schedules"] == ["0 2 * * *"] and listed["watch/tiny"]["concurrency_limit"] == 1
    assert listed["watch/tiny"]["collision_strategy"] == "CANCEL_NEW"
    assert listed["ingest/tiny"]["work_pool"] == prefect_server.DEFAULT_POOL
    assert listed["ingest/tiny"]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"][
        "directory"
    ] == str(REPO)

    recipe = tmp_path / "deployed.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset": "deployed", "storage_root": str(tmp_path / "store"), "cluster": "serial",
        "ingest": {"docs_per_shard": 10, "sources": [
            {"path": str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), "domain": "arxiv",
             "text_field": "abstract", "limit": 12},
            {"path": str(shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")), "domain": "wikipedia",
             "text_field": "eng_Latn", "limit": 8}]},
    }))  # fmt: skip
    run_id = deployments.trigger("ingest/tiny", {"recipe": str(recipe)}, api)
    state = deployments.wait(run_id, timeout=420, api_url=api, poll=0.5)
    assert state == "COMPLETED", (Path(server["prefect_home"]).parent / "worker.log").read_text()[-4000:]
    assert deployments.flow_run_result(run_id, api)["parameters"] == {"recipe": str(recipe)}
    arts = {a["key"]: a for a in deployments.run_artifacts(run_id, api)}
    counts = arts["ingest-counts"]["data"]
    assert {r["file"]: r["documents"] for r in counts} == {"arxiv_abstracts.jsonl": 12, "wikipedia.jsonl": 8}
    ref = datasets.latest(str(tmp_path / "store"), "deployed", "ingest")
    assert ref is not None and datasets.read_manifest(ref)["num_rows"] == 20
    # the run and the data link up: the versions it committed record it, its artifact lists them
    assert deployments.flow_run_result(run_id, api)["name"].startswith("ingest-deployed-")
    run = datasets.read_manifest(ref)["run"]
    assert run["flow_run_id"] == run_id and run["deployment"] == "ingest/tiny"
    assert run["run_url"].startswith(server["ui_url"]) and run_id in run["run_url"]
    con = catalog.connect(str(tmp_path / "store"))
    assert con.execute("select distinct flow_run_id, run_url from versions").fetchall() == [(run_id, run["run_url"])]
    listed_versions = arts["versions"]["data"]
    assert arts["versions"]["type"] == "markdown" and f"`{ref}` | 20 |" in listed_versions
    assert f'"deployed__ingest@{ref.version}"' in listed_versions
    # the stage's progress line (the quarry logger) reached the run's logs in the API
    assert any(m.startswith("ingest: ") and "shards (100 %)" in m for m in _run_logs(run_id, api))
    _screenshot_versions_artifact(server["ui_url"], run_id, api, tmp_path)


def _run_logs(run_id: str, api: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            return [log.message for log in logs]

    with deployments.using_api(api):
        return asyncio.run(read())


def _screenshot_versions_artifact(ui_url: str, run_id: str, api: str, tmp_path: Path) -> None:
    """The run's versions artifact in the Prefect UI (docs/prefect_run.png): what it committed, how to open it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from tests.dashboards.test_dashboards import Browser

    async def artifact_id() -> str:
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=["versions"])))  # fmt: skip
            return str(arts[0].id)

    with deployments.using_api(api):
        url = f"{ui_url}/artifacts/artifact/{asyncio.run(artifact_id())}"
    browser = Browser(width=1400, height=900)
    try:
        shot = tmp_path / "prefect_run.png"
        browser.render(url, expect=["Versions committed by ingest-deployed-", "quarry sql"], screenshot=shot)
        save_screenshot(shot, "prefect_run.png")
    finally:
        browser.close()


@pytest.mark.timeout(600)
def test_watched_prefix_second_run_ingests_only_the_new_file(server, tmp_path):
    api = server["api_url"]
    deployments.deploy(api, names=["watch/tiny"])
    c4 = shared_path("web", "c4_sample", "c4_sample.jsonl")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text(_lines(c4, 5, 0))
    (inbox / "b.jsonl").write_text(_lines(c4, 4, 5))
    root = tmp_path / "store"
    recipe = tmp_path / "watched.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "watched", "storage_root": str(root), "cluster": "serial",
                                      "ingest": {"docs_per_shard": 10, "sources": [{"path": str(inbox), "domain": "web"}]}}))  # fmt: skip

    def run() -> dict:
        run_id = deployments.trigger("watch/tiny", {"recipe": str(recipe)}, api)
        assert deployments.wait(run_id, timeout=300, api_url=api, poll=0.5) == "COMPLETED"
        return {a["key"]: a for a in deployments.run_artifacts(run_id, api)}

    first = run()
    assert sorted(Path(r["file"]).name for r in first["watch-new-files"]["data"]) == ["a.jsonl", "b.jsonl"]
    (inbox / "c.jsonl").write_text(_lines(c4, 3, 9))
    second = run()
    new = second["watch-new-files"]["data"]
    assert [Path(r["file"]).name for r in new] == ["c.jsonl"]
    batch = datasets.ref_from_string(str(root), new[0]["batch"])
    manifest = datasets.read_manifest(batch)
    assert manifest["num_rows"] == 3 and [Path(p).name for p in manifest["inputs"]] == ["c.jsonl"]
    con = catalog.connect(str(root))
    state = con.execute("select file, batch from watched__watch_state order by file").fetchall()
    assert [Path(f).name for f, _ in state] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert len({b for _, b in state}) == 2  # two batches: {a, b} then {c}
    third = run()  # nothing new: no batch, no artifact of new files
    assert "watch-new-files" not in third
    assert con.execute("select count(*) from versions where stage = 'ingest'").fetchone()[0] == 2


@pytest.mark.timeout(300)
def test_prefect_ui_shows_the_deployments(server, tmp_path):
    from tests.dashboards.test_dashboards import Browser

    deployments.deploy(server["api_url"], names=["ingest/tiny", "watch/tiny"])
    browser = Browser(width=1400, height=900)
    try:
        shot = tmp_path / "prefect_ui.png"
        text = browser.render(f"{server['ui_url']}/deployments", expect=["ingest", "watch", "tiny"], screenshot=shot)
        assert "Deployments" in text
        save_screenshot(shot, "prefect_ui.png")
    finally:
        browser.close()


def test_server_status_reports_nothing_running_for_an_unused_state_dir(tmp_path):
    status = prefect_server.server_status(state=tmp_path)
    assert not status["server_running"] and not status["healthy"] and status["server_pid"] is None
    assert prefect_server.server_down(state=tmp_path) == {}
    assert json.dumps(status)  # what `quarry server status` prints
