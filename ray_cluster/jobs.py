"""Submit a flow to a Ray cluster as a Ray Job and stream its logs.

    quarry ray submit curate datasets_cfg/tiny.yaml --address http://head:8265 --profile gpu8
    python -m ray_cluster.jobs ingest datasets_cfg/tiny.yaml --address http://127.0.0.1:8265

The job's entrypoint is the CLI (``python quarry_cli.py run <flow> <recipe>``), run inside a copy of this checkout
(runtime_env ``working_dir``, without .git/.venv/data/tests), so the stages run on the cluster with Ray Data / Ray
Train through the same code a laptop runs. ``RAY_ADDRESS`` is set inside a job, so the profile the job uses must say
``address: auto`` (``gpu8`` does): ``profile`` is passed as ``QUARRY_PROFILE``, which overrides the recipe's
``cluster:``. A recipe path inside the repository is passed relative to it (it is shipped); any other path must be
readable on the cluster (an object store, or a shared disk). ``root`` (``QUARRY_ROOT``) should be shared storage:
a job's working directory is deleted with it. ``PREFECT_API_URL`` is passed through so the run appears in the
Prefect UI when the cluster can reach that server; without it the job uses Prefect's ephemeral local API.

This module knows no flow: it builds a command line.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# never shipped to the cluster: history, environments, local outputs, and test fixtures (51 MB of tests/data)
EXCLUDES = [".git/", ".venv/", "data/", ".quarry/", "tests/", "docs/", "benchmarks/", "*.egg-info/", "**/__pycache__/",
            ".ruff_cache/", ".pytest_cache/"]  # fmt: skip
FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# variables a flow needs on the cluster when they are set here (never secrets: those come from the cluster's env)
_PASS_THROUGH = ("PREFECT_API_URL", "QUARRY_SHARED_DATA", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _dashboard_url(address: str | None) -> str:
    """The job server (Ray dashboard) URL: the given address, $RAY_ADDRESS, or the local head's default port."""
    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    if address.startswith("ray://"):
        raise ValueError(
            f"{address!r} is a Ray Client address; job submission needs the dashboard, http://<head>:8265"
        )
    return address if "://" in address else f"http://{address}"


def _client(address: str | None):
    """A job client; Ray's token authentication is used when a token is available (as the ``ray job`` CLI does)."""
    from ray.job_submission import JobSubmissionClient

    try:  # RAY_AUTH_MODE unset + a token in $RAY_AUTH_TOKEN / ~/.ray/auth_token: send it (Ray >= 2.52 default)
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # an older Ray without token authentication
        pass
    return JobSubmissionClient(_dashboard_url(address))


def entrypoint(flow: str, recipe: str) -> str:
    """The shell command the job runs: the quarry CLI's ``run`` (every flow the CLI knows, no list kept here)."""
    path = Path(recipe)
    if path.is_absolute():
        with_repo = path.resolve()
        if with_repo.is_relative_to(REPO):
            recipe = str(with_repo.relative_to(REPO))
    return f"python quarry_cli.py run {shlex.quote(flow)} {shlex.quote(recipe)}"


def runtime_env(
    *, profile: str | None = None, root: str | None = None, env_vars: dict[str, str] | None = None
) -> dict:
    """The job's runtime_env: this checkout as working_dir, plus the variables that tell the flow where it runs."""
    env = {k: os.environ[k] for k in _PASS_THROUGH if os.environ.get(k)}
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "QUARRY_PROGRESS": "0"})
    if "PREFECT_API_URL" not in env:
        # no server to report to: the flow starts Prefect's ephemeral API, which needs more than the default 20 s
        # on a node busy with Ray workers
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    if profile:
        env["QUARRY_PROFILE"] = profile
    if root:
        env["QUARRY_ROOT"] = root
    env.update(env_vars or {})
    return {"working_dir": str(REPO), "excludes": list(EXCLUDES), "env_vars": env}


def submit(
    flow: str,
    recipe: str,
    address: str | None = None,
    *,
    profile: str | None = "gpu8",
    root: str | None = None,
    env_vars: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
) -> tuple[str, str]:
    """Submit ``flow`` on ``recipe`` as a Ray Job; stream its logs to ``log``; returns (job id, final status).

    With ``wait=False`` it returns right after submission with the status at that moment. A job still running
    after ``timeout`` seconds is stopped and reported as such.
    """
    client = _client(address)
    job_id = client.submit_job(
        entrypoint=entrypoint(flow, recipe),
        runtime_env=runtime_env(profile=profile, root=root, env_vars=env_vars),
        metadata={"quarry_flow": flow, "quarry_recipe": recipe},
        entrypoint_num_cpus=entrypoint_num_cpus,
        entrypoint_num_gpus=entrypoint_num_gpus,
    )
    if not wait:
        raw = client.get_job_status(job_id)
        return job_id, str(getattr(raw, "value", raw))
    log = log or (lambda line: print(line, end="" if line.endswith("\n") else "\n", flush=True))
    try:
        asyncio.run(asyncio.wait_for(_stream(client, job_id, log), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        client.stop_job(job_id)
        log(f"job {job_id} still running after {timeout:.0f}s: stop requested\n")
    return job_id, _final_status(client, job_id, grace=60)


async def _stream(client, job_id: str, log: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        log(chunk)


def _final_status(client, job_id: str, grace: float) -> str:
    """The job's status once it is final (log streaming can end a moment before the status flips)."""
    deadline = time.monotonic() + grace
    while True:
        raw = client.get_job_status(job_id)
        status = str(getattr(raw, "value", raw))
        if status in FINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def job_logs(job_id: str, address: str | None = None) -> str:
    return _client(address).get_job_logs(job_id)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ray_cluster.jobs", description="Submit a flow as a Ray Job.")
    ap.add_argument("flow")
    ap.add_argument("recipe")
    ap.add_argument("--address", default=None, help="Ray dashboard URL (default $RAY_ADDRESS or :8265)")
    ap.add_argument("--profile", default="gpu8", help="profile the job uses (needs address: auto)")
    ap.add_argument("--root", default=None, help="storage root on shared storage (QUARRY_ROOT)")
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--timeout", type=float, default=None)
    args = ap.parse_args(argv)
    job_id, status = submit(
        args.flow, args.recipe, args.address, profile=args.profile, root=args.root, wait=not args.no_wait,
        timeout=args.timeout,
    )  # fmt: skip
    print(f"job {job_id}: {status}")
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


if __name__ == "__main__":
    sys.exit(main())
