"""Submit a flow to a Ray cluster as a Ray Job and stream its logs.

    quarry ray submit curate datasets_cfg/tiny.yaml --address http://head:8265 --root s3://bucket/quarry
    python -m services.ray_jobs ingest datasets_cfg/tiny.yaml --address http://127.0.0.1:8265 --root /mnt/shared/q

The job's entrypoint is the CLI behind a check of the job's Python (``python -m ray_cluster.job_entry run <flow>
<recipe>``), run inside a copy of this checkout (runtime_env ``working_dir``, without .git/.venv/data/tests), so the
stages run on the cluster with Ray Data / Ray Train through the same code a laptop runs.

* Python: a head on this machine gets this environment's interpreter for the entrypoint and for every worker
  (runtime_env ``py_executable``), so a head started outside the virtualenv still runs quarry; a remote head uses
  ``python`` (or ``--python``), and a Python without quarry's packages stops the job at once with one line saying so.
* Storage: the root must be one every node shares. ``memory://`` is refused, and so is a local path unless given
  explicitly (``--root``: you vouch that it is mounted at the same place on every node); with no root at all the job
  would write into its working directory, which Ray deletes with the job.
* ``RAY_ADDRESS`` is set inside a job, so the profile must say ``address: auto`` (``cluster``, the default, and
  ``gpu8`` do); it is passed as ``QUARRY_PROFILE``, which overrides the recipe's ``cluster:``.
* Recipe paths: a recipe inside the repository is shipped at its own path with its relative paths resolved here
  (``../../shared/...`` would otherwise resolve inside the job's unpacked working_dir); any other recipe must be
  readable on the cluster. Every local path the recipe opens must be visible there: a head on this machine sees
  them all (a missing input is refused), a remote head only those under ``--root``/``--shared`` (``check_visible``).
* ``PREFECT_API_URL`` is passed through, so the run appears in the Prefect UI when the cluster can reach that
  server; without it the job uses Prefect's ephemeral local API. The submission id is readable
  (``quarry-<flow>-<dataset>-<time>-<4 hex>``) and every version the job commits records it (``run.ray_job_id``).

This module knows no flow: it builds a command line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import re
import shlex
import socket
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# never shipped to the cluster: history, environments, local outputs, and test fixtures (51 MB of tests/data)
EXCLUDES = [".git/", ".venv/", ".venv-*/", "data/", ".quarry/", "tests/", "docs/", "benchmarks/", "*.egg-info/",
            "**/__pycache__/", ".ruff_cache/", ".pytest_cache/", ".hypothesis/", ".benchmarks/"]  # fmt: skip
# (.venv-*/: a second environment beside .venv, e.g. .venv-vllm at 4 GB, is no more the job's than .venv is)
FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
DEFAULT_PROFILE = "cluster"
# variables a flow needs on the cluster when they are set here (never secrets: those come from the cluster's env)
_PASS_THROUGH = ("PREFECT_API_URL", "QUARRY_SHARED_DATA", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# fsspec protocols whose paths mean the same thing on every node
_SHARED_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs", "oss", "r2", "b2", "http",
                     "https"}  # fmt: skip
_ROOT_HINT = "pass --root s3://bucket/prefix (or gs://...), or --root /path mounted at the same place on every node"


class JobsError(RuntimeError):
    """A submission that cannot work as asked; the message is one line saying what to pass or check."""


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

    url = _dashboard_url(address)
    try:  # RAY_AUTH_MODE unset + a token in $RAY_AUTH_TOKEN / ~/.ray/auth_token: send it (Ray >= 2.52 default)
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # an older Ray without token authentication
        pass
    try:
        return JobSubmissionClient(url)
    except Exception as e:  # Ray raises a ConnectionError wrapping pages of urllib3 retries: say it in one line
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise JobsError(
            f"cannot reach the Ray job server at {url} ({type(e).__name__}: {first}); check that the head runs "
            "with its dashboard (ray start --head --include-dashboard=true), that this port is reachable from here "
            "(`ray dashboard <cluster.yaml>` opens a tunnel) and that --address / $RAY_ADDRESS is http://<head>:8265"
        ) from None


def _recipe_fields(recipe: str) -> dict:
    """``dataset`` and ``storage_root`` of a recipe readable here (a relative root resolved against the recipe's
    folder, as datasets_cfg does); empty for a recipe only the cluster can read."""
    import yaml

    path = Path(recipe) if Path(recipe).is_absolute() or Path(recipe).exists() else REPO / recipe
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(data, dict):
        return {}
    root = data.get("storage_root")
    if isinstance(root, str):
        root = os.path.expandvars(root)
        if "://" not in root and not os.path.isabs(root):
            root = str((path.resolve().parent / root).resolve())
    return {"dataset": data.get("dataset"), "storage_root": root}


# recipe fields that name a file or folder, relative to the recipe file (datasets_cfg._resolve_paths resolves the
# same ones): the client resolves them, so a recipe runs as a job as it runs here
_SOURCE_LISTS = (("ingest", "sources"), ("quality_classifier", "positive"), ("quality_classifier", "negative"))
_DIR_FIELDS = (("evaluate", "eval_dir"), ("decontaminate", "eval_dir"), ("decontaminate", "cache_dir"))
# inputs that must exist where the job runs (outputs such as the storage root or a cache may be created there)
_INPUT_KINDS = ("ingest.sources", "quality_classifier", "evaluate.eval_dir", "decontaminate.eval_dir", "model")


def _is_local_path(value: object) -> bool:
    return isinstance(value, str) and bool(value) and "://" not in value and "$" not in value


def resolve_recipe(recipe: str | Path) -> tuple[dict, list[tuple[str, str]]]:
    """The recipe's YAML with its relative paths made absolute against the recipe's folder, as on this machine,
    and every local path the job will open: ``(key, absolute path)``.

    A value holding ``$VARIABLES`` is left for the cluster to expand (it must expand to an absolute path or a URL
    there); URLs (s3://, https://) are the same everywhere. ``same_dataset_as`` names a recipe, not data: a path
    inside the checkout stays relative (the checkout is shipped, and a recipe's claim is its path in the checkout).
    """
    import yaml

    path = Path(recipe).resolve()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise JobsError(f"cannot read recipe {recipe}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    if not isinstance(data, dict):
        raise JobsError(f"recipe {recipe}: the top level must be a mapping")
    base, seen = path.parent, []

    def absolute(value: str, key: str) -> str:
        out = value if os.path.isabs(value) else str((base / value).resolve())
        seen.append((key, out))
        return out

    for section, key in _SOURCE_LISTS:
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), list):
            for i, src in enumerate(sec[key]):
                if isinstance(src, dict) and _is_local_path(src.get("path")):
                    src["path"] = absolute(src["path"], f"{section}.{key}.{i}.path")
    for section, key in _DIR_FIELDS:
        sec = data.get(section)
        if isinstance(sec, dict) and _is_local_path(sec.get(key)):
            sec[key] = absolute(sec[key], f"{section}.{key}")
    if _is_local_path(data.get("storage_root")):
        data["storage_root"] = absolute(data["storage_root"], "storage_root")
    for section, sec in data.items():  # model files given as absolute paths (fastText, KenLM, a tokenizer folder)
        if isinstance(sec, dict):
            for key, value in sec.items():
                if key != "eval_dir" and key != "cache_dir" and _is_local_path(value) and os.path.isabs(value):
                    seen.append((f"{section}.{key}", value))
    same = data.get("same_dataset_as")
    if _is_local_path(same):
        target = (base / same).resolve()
        if not (path.is_relative_to(REPO) and target.is_relative_to(REPO)):
            data["same_dataset_as"] = str(target)
    return data, seen


def check_visible(paths: list[tuple[str, str]], local_cluster: bool, shared: list[str] | None = None) -> None:
    """Refuse, before anything is submitted, a path the job could not open, naming it in one line.

    A head on this machine sees every local absolute path (its workers run here): an input that does not exist is
    refused. A remote cluster sees none of this machine's paths: each must lie under a prefix the user vouches is
    mounted at the same place on every node (``shared``: ``--root`` and each ``--shared``), else it is refused."""
    shared_dirs = [Path(p).resolve() for p in shared or [] if p and "://" not in p]
    for key, value in paths:
        local = Path(value)
        if local_cluster:
            if any(key.startswith(k) for k in _INPUT_KINDS) and not local.exists():
                raise JobsError(f"recipe {key}: {value} does not exist on this machine, where the Ray head runs")
        elif not any(local.resolve().is_relative_to(d) for d in shared_dirs):
            raise JobsError(
                f"recipe {key}: {value} is a path on this machine, which a remote cluster cannot see: put it on "
                "object storage, or pass --shared <folder> if every node mounts that folder at the same place"
            )


def stage_working_dir(recipe: str | Path, resolved: dict, dest: Path) -> str | None:
    """Copy the checkout (without ``EXCLUDES``) to ``dest`` with the recipe replaced by its resolved form at the same
    relative path (so its claim and its run records name the same recipe as a local run); returns that path, or
    None for a recipe outside the checkout, which the job reads where it lies."""
    import fnmatch
    import shutil

    import yaml

    path = Path(recipe).resolve()
    if not path.is_relative_to(REPO):
        return None
    names = [e.rstrip("/").removeprefix("**/") for e in EXCLUDES]

    def ignore(folder: str, entries: list[str]) -> set[str]:
        return {e for e in entries if any(fnmatch.fnmatch(e, n) for n in names) and (Path(folder) / e).is_dir()
                or e.endswith(".pyc")}

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    rel = path.relative_to(REPO)
    header = f"# {rel}, its relative paths resolved on the submitting machine ({path.parent})\n"
    (dest / rel).write_text(header + yaml.safe_dump(resolved, sort_keys=False))
    return str(rel)


def check_root(root: str | None, recipe_root: str | None) -> str:
    """The storage root a job will use, when every node can share it; otherwise ``JobsError`` saying what to pass.

    ``root`` is what the user passed (``--root``); ``recipe_root`` the recipe's ``storage_root``, which wins in the
    flow as everywhere, so the two must agree."""
    if recipe_root and root and recipe_root.rstrip("/") != root.rstrip("/"):
        raise JobsError(f"the recipe's storage_root {recipe_root} would win over --root {root}: make them agree")
    effective = recipe_root or root
    if not effective:
        raise JobsError(
            "no storage root: the job would write to ./data inside its working directory, which Ray deletes with "
            f"the job; {_ROOT_HINT}"
        )
    protocol = effective.split("://", 1)[0].lower() if "://" in effective else "file"
    if protocol == "memory":
        raise JobsError(f"{effective} lives in one process's memory, which no other node can read; {_ROOT_HINT}")
    if protocol in _SHARED_PROTOCOLS:
        return effective
    if protocol not in ("file", "local"):
        raise JobsError(f"storage root {effective}: {protocol}:// is not a file system quarry knows; {_ROOT_HINT}")
    if not os.path.isabs(effective.split("://", 1)[-1]):
        raise JobsError(f"storage root {effective} is relative: each node would resolve it elsewhere; {_ROOT_HINT}")
    if not root:
        raise JobsError(
            f"the recipe stores under {effective}, a local path: pass --root {effective} if every node mounts it "
            "there, or give the recipe a storage_root on object storage"
        )
    return effective


def _host_is_local(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def submission_id(flow: str, dataset: str | None, now: dt.datetime | None = None) -> str:
    """``quarry-<flow>-<dataset>-<UTC time>-<4 hex>``: readable in ``ray job list``, unique per submission."""
    now = now or dt.datetime.now(dt.timezone.utc)
    name = re.sub(r"[^a-z0-9_]+", "-", (dataset or "recipe").lower()).strip("-") or "recipe"
    return f"quarry-{flow}-{name}-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def entrypoint(flow: str, recipe: str, python: str = "python") -> str:
    """The shell command the job runs: the quarry CLI's ``run`` behind a check of the job's Python (every flow the
    CLI knows, no list kept here)."""
    path = Path(recipe)
    if path.is_absolute():
        with_repo = path.resolve()
        if with_repo.is_relative_to(REPO):
            recipe = str(with_repo.relative_to(REPO))
    return f"{shlex.quote(python)} -m ray_cluster.job_entry run {shlex.quote(flow)} {shlex.quote(recipe)}"


def runtime_env(
    *,
    profile: str | None = None,
    root: str | None = None,
    env_vars: dict[str, str] | None = None,
    py_executable: str | None = None,
    job_id: str | None = None,
    working_dir: str | None = None,
) -> dict:
    """The job's runtime_env: this checkout (or ``working_dir``, its staged copy) as working_dir, plus the variables
    that tell the flow where it runs."""
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
    if job_id:  # every manifest the job commits records it (storage.datasets.run_context); its Prefect run's tag
        env["QUARRY_RUN_CONTEXT"] = json.dumps({"ray_job_id": job_id})
    env.update(env_vars or {})
    out = {"working_dir": working_dir or str(REPO), "excludes": list(EXCLUDES), "env_vars": env}
    if py_executable:  # the workers' interpreter (the entrypoint names it itself)
        out["py_executable"] = py_executable
    return out


AGENT_WAIT_S = 120


def submit(
    flow: str,
    recipe: str,
    address: str | None = None,
    *,
    profile: str | None = DEFAULT_PROFILE,
    root: str | None = None,
    env_vars: dict[str, str] | None = None,
    python: str | None = None,
    wait: bool = True,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
    entrypoint_num_cpus: float | None = None,
    entrypoint_num_gpus: float | None = None,
    shared: list[str] | None = None,
) -> tuple[str, str]:
    """Submit ``flow`` on ``recipe`` as a Ray Job; stream its logs to ``log``; returns (job id, final status).

    Refuses (``JobsError``) a storage root the cluster cannot share and an unreachable job server before anything
    is submitted, and so a path in the recipe the cluster could not open (``check_visible``; ``shared``: folders
    every node mounts at the same place). A recipe in the checkout is shipped with its relative paths resolved
    here (``stage_working_dir``), so ``datasets_cfg/tiny.yaml`` and its ``../../shared/...`` run as a job as is.
    ``python`` is the interpreter on the cluster's nodes: by default this one when the head runs on this machine,
    else ``python``. With ``wait=False`` it returns right after submission with the status at that moment. A job
    still running after ``timeout`` seconds is stopped and reported as such.
    """
    import tempfile

    fields = _recipe_fields(recipe)
    effective_root = check_root(root, fields.get("storage_root"))
    url = _dashboard_url(address)
    local_cluster = _host_is_local(url)
    readable = Path(recipe).is_file()  # else a recipe only the cluster can read, passed as given
    resolved, paths = resolve_recipe(recipe) if readable else ({}, [])
    check_visible([(k, v) for k, v in paths if k != "storage_root"], local_cluster, [effective_root, *(shared or [])])
    python = python or (sys.executable if local_cluster else "python")
    client = _client(url)
    job_id = submission_id(flow, fields.get("dataset"))
    with tempfile.TemporaryDirectory(prefix="quarry-job-") as staging:
        shipped = stage_working_dir(recipe, resolved, Path(staging) / "checkout") if readable else None
        submit_kwargs = dict(
            submission_id=job_id,
            entrypoint=entrypoint(flow, shipped or recipe, python),
            runtime_env=runtime_env(
                profile=profile, root=effective_root if root else None, job_id=job_id,
                env_vars={"QUARRY_JOB_ROOT": effective_root, **(env_vars or {})},
                py_executable=python if python != "python" else None,
                working_dir=str(Path(staging) / "checkout") if shipped else None,
            ),
            # what `ray job list` and the dashboard's job page show beside the submission id
            metadata={"job_name": f"quarry {flow} {fields.get('dataset') or Path(recipe).stem}",
                      "quarry_flow": flow, "quarry_recipe": str(recipe), "quarry_root": effective_root},
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus,
        )  # fmt: skip
        # A head that has just started answers "No available agent to submit job" until its job agent is up (tens
        # of seconds on a loaded machine): that one answer is retried for up to AGENT_WAIT_S, every other error is
        # final. The staged copy is uploaded by submit_job: it may go once that returns.
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                client.submit_job(**submit_kwargs)
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
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


def prefect_api() -> str | None:
    """The Prefect API a Ray-submitted run should report to: $PREFECT_API_URL, else the `quarry server up` one."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    try:
        from services import prefect_server

        status = prefect_server.server_status()
    except Exception:  # no state folder, or flows not importable here: the job uses an ephemeral API
        return None
    return status.get("api_url") if status.get("healthy") else None


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m services.ray_jobs", description="Submit a flow as a Ray Job.")
    ap.add_argument("flow")
    ap.add_argument("recipe")
    ap.add_argument("--address", default=None, help="Ray dashboard URL (default $RAY_ADDRESS or :8265)")
    ap.add_argument("--profile", default=DEFAULT_PROFILE, help="profile the job uses (needs address: auto)")
    ap.add_argument("--root", default=None, help="storage root on shared storage (QUARRY_ROOT)")
    ap.add_argument("--python", default=None, help="the Python on the cluster's nodes")
    ap.add_argument("--shared", action="append", default=None,
                    help="a local folder every node mounts at the same place (repeatable; for a remote cluster)")
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--timeout", type=float, default=None)
    args = ap.parse_args(argv)
    try:
        job_id, status = submit(
            args.flow, args.recipe, args.address, profile=args.profile, root=args.root, python=args.python,
            wait=not args.no_wait, timeout=args.timeout, shared=args.shared,
        )  # fmt: skip
    except (JobsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"job {job_id}: {status}")
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


if __name__ == "__main__":
    sys.exit(main())
