"""A flow submitted as a Ray Job to a real Ray head started by the test (`ray start --head --block`) with the
virtualenv off its PATH (a bare `python` there lacks typer), logs streamed.

The head runs in its own process session and is ended by signalling that session: `ray stop` would also stop every
other Ray on the machine (other test sessions share it).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from services import ray_jobs as jobs
from storage import catalog
from tests.conftest import REPO, free_ports, shared_path

RAY_BIN = Path(sys.executable).with_name("ray")


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return True  # answering (401 while Ray's token authentication is on): the job client sends the token
    except OSError:
        return False


@pytest.fixture()
def ray_head():
    """A one-CPU Ray head with its dashboard (the job server) on loopback, started the way a user who did not
    activate the virtualenv would (its bin/ not on PATH); yields the dashboard URL."""
    gcs, dash, client, agent_http, agent_grpc, metrics, rt_env, nm, om = free_ports(9)
    # short temp dir: Ray's unix socket paths must stay under 107 characters
    temp = tempfile.mkdtemp(prefix="qrj-", dir="/tmp")
    venv_bin = Path(sys.executable).parent
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != venv_bin]
    env = {**os.environ, "PATH": os.pathsep.join(path or ["/usr/bin", "/bin"])}
    env.pop("VIRTUAL_ENV", None)
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(RAY_BIN), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus", "1", "--num-gpus", "0",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--include-dashboard", "true",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env),
        "--node-manager-port", str(nm), "--object-manager-port", str(om), "--temp-dir", temp,
    ]  # fmt: skip
    log = open(Path(temp) / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while not _up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start: {(Path(temp) / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):  # `ray start --block` may ignore TERM
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # raylet/gcs children that outlived the leader
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


def _recipe(tmp_path: Path) -> Path:
    sources = [
        {"path": str(shared_path("web", "c4_sample", "c4_sample.jsonl")), "domain": "web", "limit": 30},
        {"path": str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), "domain": "arxiv",
         "text_field": "abstract", "limit": 20},
    ]  # fmt: skip
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump({"dataset": "rayjob", "storage_root": str(tmp_path / "store"),
                                    "ingest": {"docs_per_shard": 20, "sources": sources}}))  # fmt: skip
    return path


def _profile(tmp_path: Path) -> Path:
    # inside a job RAY_ADDRESS names the cluster: the profile must attach to it, not start a local Ray
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"engine": "ray", "address": "auto", "default": {"num_cpus": 1}}))
    return path


def test_entrypoint_passes_repo_recipes_relative_and_other_paths_as_given(tmp_path):
    assert jobs.entrypoint("ingest", str(REPO / "datasets_cfg" / "tiny.yaml")) == (
        "python -m ray_cluster.job_entry run ingest datasets_cfg/tiny.yaml"
    )
    assert jobs.entrypoint("curate", str(tmp_path / "my recipe.yaml")).endswith(f"'{tmp_path / 'my recipe.yaml'}'")
    assert jobs.entrypoint("ingest", "r.yaml", "/opt/venv/bin/python").startswith("/opt/venv/bin/python -m ")


def test_runtime_env_ships_the_checkout_without_venv_data_or_tests():
    env = jobs.runtime_env(profile="gpu8", root="s3://bucket/quarry", job_id="quarry-ingest-x", py_executable="/v/py")
    assert env["working_dir"] == str(REPO)
    assert {".git/", ".venv/", "data/", "tests/"} <= set(env["excludes"])
    assert env["env_vars"]["QUARRY_PROFILE"] == "gpu8" and env["env_vars"]["QUARRY_ROOT"] == "s3://bucket/quarry"
    assert json.loads(env["env_vars"]["QUARRY_RUN_CONTEXT"]) == {"ray_job_id": "quarry-ingest-x"}
    assert env["py_executable"] == "/v/py"


def test_runtime_env_passes_the_clients_prefect_api_through(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
    assert jobs.runtime_env()["env_vars"]["PREFECT_API_URL"] == "http://prefect.internal:4200/api"


def test_submission_ids_are_readable_and_unique():
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    a, b = jobs.submission_id("curate", "tiny", now), jobs.submission_id("curate", "tiny", now)
    assert a.startswith("quarry-curate-tiny-20260102-030405-") and a != b


def test_ray_client_address_is_rejected_with_the_dashboard_hint():
    with pytest.raises(ValueError, match="8265"):
        jobs._dashboard_url("ray://head:10001")


def test_shared_roots_pass_and_local_ones_need_an_explicit_root():
    assert jobs.check_root("s3://bucket/q", None) == "s3://bucket/q"
    assert jobs.check_root(None, "gs://bucket/q") == "gs://bucket/q"
    assert jobs.check_root("/mnt/shared/q", "/mnt/shared/q/") == "/mnt/shared/q/"
    for root, recipe_root in ((None, None), ("memory://x", None), ("rel/dir", None), (None, "/local/only")):
        with pytest.raises(jobs.JobsError, match="--root"):
            jobs.check_root(root, recipe_root)


def test_a_python_without_quarrys_packages_stops_the_job_with_one_line(tmp_path):
    bare = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if Path(p).exists()), None)
    if bare is None or subprocess.run([bare, "-c", "import typer"], capture_output=True).returncode == 0:
        pytest.skip("no Python without typer on this machine")
    out = subprocess.run([bare, "-m", "ray_cluster.job_entry", "run", "ingest", "x.yaml"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 3 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "lacks typer" in out.stderr and "--python" in out.stderr


@pytest.mark.timeout(600)
def test_ingest_submitted_as_a_ray_job_succeeds_and_streams_its_logs(tmp_path, ray_head):
    recipe, profile = _recipe(tmp_path), _profile(tmp_path)
    lines: list[str] = []
    job_id, status = jobs.submit(
        "ingest",
        str(recipe),
        ray_head,
        profile=str(profile),
        root=str(tmp_path / "store"),  # the recipe's own root, vouched for as shared (one machine here)
        env_vars={"PREFECT_HOME": str(tmp_path / "prefect_home")},  # the job's ephemeral Prefect API stays in tmp
        timeout=480,
        log=lines.append,
    )
    logs = "".join(lines)
    assert status == "SUCCEEDED", logs[-4000:]
    assert job_id.startswith("quarry-ingest-rayjob-")
    assert "ingest finished:" in logs and "rayjob/ingest/" in logs  # the CLI's last line, streamed from the job
    con = catalog.connect(str(tmp_path / "store"))
    counts = dict(con.execute("select domain, count(*) from rayjob__ingest group by 1").fetchall())
    assert counts == {"web": 30, "arxiv": 20}
    assert con.execute("select distinct ray_job_id from versions").fetchall() == [(job_id,)]
    assert jobs.job_logs(job_id, ray_head).strip()  # the job server kept the full log


def test_cluster_launcher_config_passes_rays_schema_with_a_cpu_head_and_a_gpu_group():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((REPO / "ray_cluster" / "gpu8.cluster.yaml").read_text()))
    validate_config(config)  # Ray's own ray-schema.json
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(n["resources"].get("GPU", 0) >= 1 for n in nodes.values())
    assert "2.60.0" in config["docker"]["image"]  # the Ray the job client runs


def test_kuberay_manifests_define_a_gpu_worker_group_and_a_job_with_the_cli_entrypoint():
    cluster = yaml.safe_load((REPO / "ray_cluster" / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((REPO / "ray_cluster" / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == "2.60.0"
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        gpu = [g for g in spec["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus")]
        limits = gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == gpu[0]["rayStartParams"]["num-gpus"]
    assert job["spec"]["entrypoint"] == jobs.entrypoint("curate", "datasets_cfg/tiny.yaml")
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["QUARRY_PROFILE"] == "gpu8"
    text = "\n".join(p.read_text() for p in (REPO / "ray_cluster").rglob("*.yaml"))
    assert "aws_secret_access_key" not in text.lower() and "password" not in text.lower()  # infra only, no secrets


def test_shard_progress_is_logged_where_no_progress_bar_shows(monkeypatch, caplog):
    from ray_cluster import runtime

    serial = runtime.Profile(name="serial", engine="serial")
    monkeypatch.setenv("QUARRY_PROGRESS", "0")  # as inside a Ray Job: no bar
    items = [{"i": i} for i in range(3)]

    def lines() -> list[str]:
        return [r.getMessage().split(",")[0] for r in caplog.records if r.name == "quarry"]

    with caplog.at_level(logging.INFO, logger="quarry"):
        runtime.run_shards(items, dict, runtime.StageResources(), profile=serial, desc="toy")
        assert lines() == ["toy: 3/3 shards (100 %)"]  # short stages: the final line only (every 30 s by default)
        caplog.clear()
        monkeypatch.setenv("QUARRY_PROGRESS_LOG_S", "0")
        runtime.run_shards(items, dict, runtime.StageResources(), profile=serial, desc="toy")
    assert lines() == ["toy: 1/3 shards (33 %)", "toy: 2/3 shards (66 %)", "toy: 3/3 shards (100 %)"]
