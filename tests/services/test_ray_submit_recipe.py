"""The bundled recipe runs as a Ray Job as is (issue 28): its relative ``../../shared/...`` paths are resolved on the
client before submission, a path the cluster cannot see is refused before anything is submitted, and the job tells
where its data is. The last test submits datasets_cfg/tiny.yaml, unmodified, to a real local Ray head (the
``ray_head`` fixture of test_ray_jobs.py) and finds its versions under the root it was given."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

import datasets_cfg
from services import ray_jobs as jobs
from storage import catalog
from tests.conftest import REPO, shared_path
from tests.services.test_ray_jobs import _profile, ray_head  # noqa: F401 (the fixture, reused)

TINY = REPO / "datasets_cfg" / "tiny.yaml"


def test_the_client_resolves_every_relative_path_of_the_bundled_recipe():
    shared_path("web", "c4_sample", "c4_sample.jsonl")
    resolved, paths = jobs.resolve_recipe(TINY)
    here = datasets_cfg.load(TINY)  # what a local run opens
    assert [s["path"] for s in resolved["ingest"]["sources"]] == [s.path for s in here.ingest.sources]
    assert resolved["evaluate"]["eval_dir"] == here.evaluate.eval_dir
    assert all(Path(p).is_absolute() and Path(p).exists() for _, p in paths)
    assert ("evaluate.eval_dir", here.evaluate.eval_dir) in paths
    assert yaml.safe_load(TINY.read_text())["ingest"]["sources"][0]["path"].startswith("../../shared/")  # unmodified


def test_a_staged_checkout_holds_the_resolved_recipe_at_its_own_path(tmp_path):
    resolved, _ = jobs.resolve_recipe(TINY)
    rel = jobs.stage_working_dir(TINY, resolved, tmp_path / "checkout")
    assert rel == "datasets_cfg/tiny.yaml"
    staged = datasets_cfg.load(tmp_path / "checkout" / rel)  # read where the job reads it: paths still point home
    assert staged.ingest.sources == datasets_cfg.load(TINY).ingest.sources
    assert (tmp_path / "checkout" / "quarry_cli.py").is_file()
    shipped = {p.name for p in (tmp_path / "checkout").iterdir()}
    assert not shipped & {".git", ".venv", ".venv-vllm", "tests", "data", ".quarry"}


def test_a_path_a_remote_cluster_cannot_see_is_refused_in_one_line_before_submission(tmp_path):
    shared_path("web", "c4_sample", "c4_sample.jsonl")
    # no server listens at this address: the refusal comes before any connection
    with pytest.raises(jobs.JobsError) as e:
        jobs.submit("ingest", str(TINY), "http://10.255.255.1:8265", root="s3://bucket/quarry", wait=False)
    message = str(e.value)
    assert "\n" not in message and "ingest.sources.0.path" in message
    assert str(Path(datasets_cfg.load(TINY).ingest.sources[0].path)) in message and "--shared" in message
    # folders every node mounts (--shared) are visible; a missing input on a head on this machine is refused
    _, paths = jobs.resolve_recipe(TINY)
    jobs.check_visible(paths, local_cluster=False, shared=[str(Path(p).parent) for _, p in paths])
    with pytest.raises(jobs.JobsError, match=r"ingest\.sources\.0\.path: .*nope\.jsonl does not exist"):
        jobs.check_visible([("ingest.sources.0.path", str(tmp_path / "nope.jsonl"))], local_cluster=True)


@pytest.mark.timeout(900)
def test_the_bundled_tiny_recipe_runs_unmodified_as_a_ray_job(tmp_path, ray_head, prefect_api):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.settings import PREFECT_API_URL

    shared_path("web", "c4_sample", "c4_sample.jsonl")
    root = tmp_path / "store"
    lines: list[str] = []
    job_id, status = jobs.submit(
        "ingest", "datasets_cfg/tiny.yaml", ray_head, profile=str(_profile(tmp_path)), root=str(root),
        env_vars={"PREFECT_API_URL": PREFECT_API_URL.value()},  # the test's Prefect API: the run's tags are read back
        timeout=780, log=lines.append,
    )  # fmt: skip
    logs = "".join(lines)
    assert status == "SUCCEEDED", logs[-4000:]
    assert job_id.startswith("quarry-ingest-tiny-")
    last = [ln for ln in logs.splitlines() if ln.strip()][-1]
    assert f"its data is under --root {root}" in last, last
    con = catalog.connect(str(root))
    domains = dict(con.execute("select domain, count(*) from tiny__ingest group by 1").fetchall())
    assert {"web", "wikipedia", "code", "stackexchange", "arxiv"} <= set(domains)
    assert domains["wikipedia"] == 60 and domains["arxiv"] == 40  # the recipe's limits, read from ../../shared
    assert con.execute("select distinct ray_job_id from versions").fetchall() == [(job_id,)]

    async def tagged() -> list:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"ray-job:{job_id}"])))

    runs = asyncio.run(tagged())
    assert len(runs) == 1 and runs[0].name.startswith("ingest-tiny-") and runs[0].state.is_completed()
