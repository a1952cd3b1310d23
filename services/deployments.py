"""The deployments declared in ``prefect.yaml``: discover, register, trigger, wait, read a run's artifacts.

    quarry deploy             # register every deployment of prefect.yaml whose flow exists (+ discovered flows)
    quarry trigger ingest/tiny --param recipe=datasets_cfg/tiny.yaml

Deployments are ``<flow>/<dataset>`` (design §4). ``prefect.yaml`` is the single declaration (schedules, concurrency
limits, parameters) and stays usable with ``prefect deploy --all``; ``deploy()`` reads the same file so that a flow
whose module does not exist yet is skipped instead of failing the batch, and a new ``flows/<verb>.py`` with a
``@flow(name="<verb>")`` taking ``recipe`` gets a default deployment without touching the YAML.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.prefect_server import DEFAULT_POOL, REPO, read_state, state_dir

PREFECT_FILE = REPO / "prefect.yaml"
DEFAULT_RECIPE = "datasets_cfg/tiny.yaml"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# modules in flows/ that hold helpers, not flows
_NOT_FLOWS = {"__init__", "run"}


@dataclass
class DeploymentSpec:
    """One deployment: a flow entrypoint, its name, default parameters, schedules and concurrency."""

    flow: str
    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: int | None = None
    collision_strategy: str | None = None
    work_pool: str = DEFAULT_POOL
    work_queue: str | None = None
    job_variables: dict[str, Any] = field(default_factory=dict)
    paused: bool | None = None

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"

    @property
    def path(self) -> Path:
        return REPO / self.entrypoint.split(":")[0]


_TEMPLATE_RE = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")


def _expand(value: Any) -> Any:
    """Resolve prefect.yaml's ``{{ $ENV }}`` templates ($PWD is the repository root)."""
    if isinstance(value, str):
        return _TEMPLATE_RE.sub(lambda m: str(REPO) if m.group(1) == "PWD" else os.environ.get(m.group(1), ""), value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def discover_flows() -> dict[str, str]:
    """flow name -> entrypoint for every ``@flow(name=...)`` in flows/*.py (read with ast; nothing is imported)."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "flows").glob("*.py")):
        if path.stem in _NOT_FLOWS:
            continue
        try:
            tree = ast.parse(path.read_text())
        except SyntaxError:
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for dec in node.decorator_list:
                call = dec if isinstance(dec, ast.Call) else None
                target = call.func if call else dec
                if not (isinstance(target, ast.Name) and target.id == "flow"):
                    continue
                name = node.name
                for kw in call.keywords if call else []:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        name = kw.value.value
                args = {a.arg for a in node.args.args + node.args.kwonlyargs}
                if "recipe" in args:  # a deployment needs the recipe parameter the deployments pass
                    found[name] = f"flows/{path.name}:{node.name}"
    return found


def load_deployments(prefect_file: str | Path = PREFECT_FILE, *, recipe: str | None = None) -> list[DeploymentSpec]:
    """The deployments of prefect.yaml, plus a default one for each discovered flow the file does not mention.

    ``recipe`` replaces the ``recipe`` parameter of every deployment (deploy the same set for another dataset).
    """
    data = yaml.safe_load(Path(prefect_file).read_text()) or {}
    specs: list[DeploymentSpec] = []
    flows = discover_flows()
    by_entry = {v: k for k, v in flows.items()}
    for d in data.get("deployments") or []:
        d = _expand(d)
        entry = d["entrypoint"]
        pool = d.get("work_pool") or {}
        limit = d.get("concurrency_limit")
        specs.append(
            DeploymentSpec(
                flow=d.get("flow_name") or by_entry.get(entry) or entry.split(":")[1],
                name=d["name"],
                entrypoint=entry,
                parameters=dict(d.get("parameters") or {}),
                description=d.get("description"),
                tags=list(d.get("tags") or []),
                schedules=list(d.get("schedules") or []),
                concurrency_limit=limit.get("limit") if isinstance(limit, dict) else limit,
                collision_strategy=limit.get("collision_strategy") if isinstance(limit, dict) else None,
                work_pool=pool.get("name") or DEFAULT_POOL,
                work_queue=pool.get("work_queue_name"),
                job_variables=dict(pool.get("job_variables") or {}),
                paused=d.get("paused"),
            )
        )
    declared = {s.entrypoint for s in specs}
    default_name = Path(recipe or DEFAULT_RECIPE).stem
    for name, entry in sorted(flows.items()):
        if entry not in declared:
            specs.append(
                DeploymentSpec(flow=name, name=default_name, entrypoint=entry, parameters={"recipe": DEFAULT_RECIPE})
            )
    if recipe:
        for s in specs:
            if "recipe" in s.parameters:
                s.parameters["recipe"] = recipe
    return specs


def pull_steps(prefect_file: str | Path = PREFECT_FILE) -> list[dict]:
    """The pull steps of prefect.yaml, resolved (the worker runs flows from the repository checkout)."""
    data = yaml.safe_load(Path(prefect_file).read_text()) or {}
    return _expand(data.get("pull") or [])


class _PullSteps:
    """Runner storage that only contributes pull steps (the code is already on the worker's disk)."""

    def __init__(self, steps: list[dict]):
        self.steps = steps
        self._base = REPO

    def set_base_path(self, path: Path) -> None:
        self._base = path

    @property
    def destination(self) -> Path:
        return self._base

    @property
    def pull_interval(self) -> int:
        return 60

    async def pull_code(self) -> None:
        return None

    def to_pull_step(self) -> list[dict]:
        return self.steps

    def __eq__(self, other: Any) -> bool:
        return self.steps == getattr(other, "steps", None)


@contextlib.contextmanager
def using_api(api_url: str | None) -> Iterator[None]:
    """Point the Prefect client at ``api_url`` (else the server from .quarry/, else PREFECT_API_URL) for a block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = api_url or read_state(state_dir()).get("api_url") or os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise RuntimeError("no Prefect API: run `quarry server up` or set PREFECT_API_URL")
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield


def _schedule(cfg: dict):
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if cfg.get("cron"):
        sched = CronSchedule(cron=cfg["cron"], timezone=cfg.get("timezone") or "UTC")
    elif cfg.get("interval"):
        import datetime as dt

        sched = IntervalSchedule(interval=dt.timedelta(seconds=float(cfg["interval"])), timezone=cfg.get("timezone"))
    else:
        raise ValueError(f"a schedule needs cron or interval: {cfg}")
    return DeploymentScheduleCreate(
        schedule=sched, active=cfg.get("active", True), parameters=dict(cfg.get("parameters") or {})
    )


def deploy(
    api_url: str | None = None,
    *,
    prefect_file: str | Path = PREFECT_FILE,
    recipe: str | None = None,
    names: list[str] | None = None,
) -> dict[str, str]:
    """Register the deployments whose flow module exists; returns ``{"flow/name": deployment id or skip reason}``.

    ``names`` limits it to some deployments (``ingest/tiny``). The work pool is created when missing.
    """
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flows import load_flow_from_entrypoint

    specs = load_deployments(prefect_file, recipe=recipe)
    if names:
        unknown = set(names) - {s.full_name for s in specs}
        if unknown:
            raise ValueError(f"unknown deployments {sorted(unknown)}; known: {[s.full_name for s in specs]}")
        specs = [s for s in specs if s.full_name in names]
    steps = pull_steps(prefect_file)
    result: dict[str, str] = {}
    cwd = os.getcwd()
    os.chdir(REPO)  # entrypoints are relative to the repository root
    try:
        with using_api(api_url):
            for pool in sorted({s.work_pool for s in specs}):
                _ensure_pool(pool)
            for s in specs:
                if not s.path.exists():
                    result[s.full_name] = f"skipped: {s.entrypoint.split(':')[0]} does not exist yet"
                    continue
                flow = load_flow_from_entrypoint(s.entrypoint)
                dep = RunnerDeployment(
                    name=s.name,
                    flow_name=flow.name,
                    entrypoint=s.entrypoint,
                    parameters=s.parameters,
                    description=s.description,
                    tags=s.tags,
                    schedules=[_schedule(c) for c in s.schedules],
                    concurrency_limit=s.concurrency_limit,
                    concurrency_options={"collision_strategy": s.collision_strategy} if s.collision_strategy else None,
                    paused=s.paused,
                    work_pool_name=s.work_pool,
                    work_queue_name=s.work_queue,
                    job_variables=s.job_variables,
                    storage=_PullSteps(steps),
                )
                dep._set_defaults_from_flow(flow)
                result[s.full_name] = str(dep.apply())
    finally:
        os.chdir(cwd)
    return result


def _ensure_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def list_deployments(api_url: str | None = None) -> list[dict]:
    """Registered deployments with their schedules and concurrency limit (what the UI shows)."""
    from prefect.client.orchestration import get_client

    with using_api(api_url), get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        out = []
        for d in client.read_deployments():
            out.append(
                {
                    "name": f"{flows.get(d.flow_id, '?')}/{d.name}",
                    "id": str(d.id),
                    "parameters": d.parameters,
                    "schedules": [getattr(s.schedule, "cron", None) or str(s.schedule) for s in d.schedules],
                    # Prefect 3 keeps a deployment's limit as a global concurrency limit object
                    "concurrency_limit": d.concurrency_limit
                    or (d.global_concurrency_limit.limit if d.global_concurrency_limit else None),
                    "collision_strategy": str(d.concurrency_options.collision_strategy.value)
                    if d.concurrency_options
                    else None,
                    "work_pool": d.work_pool_name,
                    "pull_steps": d.pull_steps,
                }
            )
        return sorted(out, key=lambda r: r["name"])


class TriggerError(ValueError):
    """Why a run could not be started, in one line (an unknown deployment, a bad parameter, no server)."""


def trigger(name: str, parameters: dict[str, Any] | None = None, api_url: str | None = None) -> str:
    """Create a flow run of deployment ``flow/name`` with parameter overrides; returns the flow run id.

    The run's parameters (deployment defaults + overrides) are validated first, so a missing recipe, an unknown
    profile or a parameter the flow does not take is a ``TriggerError`` here instead of a failed run on the worker."""
    import httpx
    import pydantic
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    import datasets_cfg
    from flows import runinfo

    if name.count("/") != 1 or not all(name.split("/")):
        raise TriggerError(f"deployment {name!r} is not flow/name (e.g. ingest/tiny)")
    try:
        with using_api(api_url), get_client(sync_client=True) as client:
            try:
                dep = client.read_deployment_by_name(name)
            except ObjectNotFound:
                known = sorted(f"{f}/{d}" for f, d in _registered(client))
                raise TriggerError(
                    f"no deployment {name!r} on this server (registered: {', '.join(known) or 'none'}); "
                    "`quarry deploy` registers prefect.yaml's"
                ) from None
            accepted = set((dep.parameter_openapi_schema or {}).get("properties") or {})
            unknown = sorted(set(parameters or {}) - accepted) if accepted else []
            if unknown:
                raise TriggerError(f"{name} takes no parameter {', '.join(map(repr, unknown))} "
                                   f"(it takes {', '.join(sorted(accepted))})")  # fmt: skip
            merged = {**(dep.parameters or {}), **(parameters or {})}
            if "recipe" in merged:
                try:
                    runinfo.validate_params(merged, base=REPO)  # the worker runs flows from the repository root
                except datasets_cfg.RecipeError as e:
                    raise TriggerError(f"{name}: {str(e).splitlines()[0]}") from None
                except pydantic.ValidationError as e:
                    err = e.errors()[0]
                    raise TriggerError(f"{name}: parameter {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
            run = client.create_flow_run_from_deployment(dep.id, parameters=parameters or {})
            return str(run.id)
    except RuntimeError as e:  # using_api: no server known
        raise TriggerError(str(e)) from None
    except httpx.HTTPError as e:  # the server is not there (stopped, wrong --api-url)
        raise TriggerError(f"cannot reach the Prefect API ({type(e).__name__}: {e}); `quarry server status`") from None


def _registered(client) -> list[tuple[str, str]]:
    flows = {f.id: f.name for f in client.read_flows()}
    return [(flows.get(d.flow_id, "?"), d.name) for d in client.read_deployments()]


def ui_url(flow_run_id: str, api_url: str | None = None) -> str | None:
    """The run's page in the Prefect UI (the UI serves next to the API: http://host:port/runs/flow-run/<id>)."""
    from prefect.settings import PREFECT_UI_URL

    with using_api(api_url):
        base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


_VERSION_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \| `(.+)` \|$")


def summary_lines(result: dict, artifacts: list[dict], url: str | None) -> list[str]:
    """What `quarry trigger` prints after a run: its name, state and page, one line per artifact (the UI has the
    tables), and each committed version with the command that opens it."""
    lines = [f"{result.get('name')}: {result.get('state')}" + (f"  {url}" if url else "")]
    for a in sorted(artifacts, key=lambda a: str(a["key"])):
        data = a["data"]
        size = f"{len(data)} rows" if isinstance(data, list) else a["type"]
        lines.append(f"  artifact {a['key']} ({size}): {a.get('description') or ''}".rstrip(": "))
        if a["key"] == "versions" and isinstance(data, str):
            for row in data.splitlines():
                m = _VERSION_ROW.match(row)
                if m:
                    lines.append(f"    {m.group(1)}  {m.group(2).strip()} rows  {m.group(3)}")
                elif row.startswith("Nothing new"):
                    lines.append(f"    {row}")
    return lines


def wait(flow_run_id: str, timeout: float = 600.0, api_url: str | None = None, poll: float = 2.0) -> str:
    """Poll a flow run until it reaches a final state (or ``timeout`` seconds); returns the state type name."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with using_api(api_url), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(UUID(flow_run_id))
            state = run.state.type.value if run.state else "PENDING"
            if state in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} still {state} after {timeout:.0f}s")
            time.sleep(poll)


def run_artifacts(flow_run_id: str, api_url: str | None = None) -> list[dict]:
    """The artifacts a flow run (and its task runs) published: key, type, description, data."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def _read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    with using_api(api_url):
        arts = asyncio.run(_read())
    out = []
    for a in arts:
        data = a.data
        if isinstance(data, str):
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(data)
        out.append({"key": a.key, "type": a.type, "description": a.description, "data": data})
    return out


def flow_run_result(flow_run_id: str, api_url: str | None = None) -> dict:
    """Name, state and parameters of a flow run (what the CLI prints after a run)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with using_api(api_url), get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        return {
            "id": flow_run_id,
            "name": run.name,
            "state": run.state.name if run.state else None,
            "parameters": run.parameters,
        }


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML scalars) -> a deployment's parameters."""
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise ValueError(f"--param needs key=value, got {p!r}")
        out[key] = yaml.safe_load(value)
    return out
