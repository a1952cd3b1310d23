"""Where compute runs: cluster profiles, a Ray connection, and a shard-parallel executor. Knows no stage.

    profile = load_profile("local")              # ray_cluster/profiles/local.yaml
    with connected(profile):
        results = run_shards(items, work, profile.resources("quality_signals"))

``run_shards`` runs ``work(item)`` once per shard item as a Ray task (SPREAD over the nodes, retried when its worker
or node dies), while each shard's output name stays deterministic — the basis of shard-granular resume. Plain tasks,
not a Ray Data pipeline: the same 40 MinHash shards took 33 s through ``ray.data.from_items(...).map`` and 24 s as
tasks on 2 cores (Ray Data's streaming executor leaves cores idle between blocks and its driver loop and helper
actors take CPU from the workers; ``benchmarks/scale.py``). A stage that loads a model passes ``setup`` (a
zero-argument callable returning the model): it then runs as a Ray Data actor pool (``map_batches`` over a callable
class, ``concurrency`` actors), the model is loaded once per actor, and ``work(item, state)`` processes whole shards.

``engine: serial`` in a profile runs the same functions in-process (debugging, and places Ray cannot go);
``engine: dask`` sends them to a Dask cluster (CPU stages only).

Stopping (SIGTERM/SIGINT at the next safe point between shards, bounded by a watchdog) lives in ``stopping.py``.
A local Ray started here listens on loopback only (``_loopback_ray``).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ray_cluster.stopping import (  # noqa: F401 - stop_signals/stop_requested are runtime's API for flows
    POLL_S,
    check_stop,
    keep_signal_handlers,
    safe_points,
    stop_requested,
    stop_signals,
)

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


class StageResources(BaseModel):
    """Per-stage resources: how many CPUs/GPUs one shard worker takes and how many actors a model stage uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = 1
    num_gpus: float = 0
    concurrency: int = 1  # actors for model stages; keep it below the CPU count (a pool taking every CPU hangs Ray Data)
    rows_per_call: int = 1000  # rows per call of the stage function inside a shard (a model batches inside a call)
    max_retries: int = 3  # a shard task whose worker dies is retried by Ray this many times
    memory_gb: float | None = None


class Profile(BaseModel):
    """Where a recipe runs: a Ray address (or serial / Dask) plus per-stage resources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "local"
    engine: Literal["ray", "serial", "dask"] = "ray"
    address: str | None = None  # None: a local in-process Ray; "auto": an existing cluster; "ray://host:10001"
    num_cpus: int | None = None  # only for a local Ray started by us
    dask_address: str | None = None  # engine: dask; None starts a LocalCluster
    working_dir: str | None = None  # shipped to a remote cluster as runtime_env working_dir
    env_vars: dict[str, str] = Field(default_factory=dict)  # non-secret variables for workers
    default: StageResources = Field(default_factory=StageResources)
    stages: dict[str, StageResources] = Field(default_factory=dict)

    def resources(self, stage: str) -> StageResources:
        return self.stages.get(stage, self.default)


def load_profile(name_or_path: str | None) -> Profile:
    """A profile by name (``ray_cluster/profiles/{name}.yaml``) or by path; ``$QUARRY_PROFILE`` overrides the name."""
    name_or_path = os.environ.get("QUARRY_PROFILE") or name_or_path or "local"
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no cluster profile {name_or_path!r} (known: {known})")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    try:
        return Profile.model_validate(data)
    except Exception as e:
        raise ValueError(f"invalid profile {path}: {e}") from e


# ------------------------------------------------------------------------------------------------ Ray (stopping: stopping.py)

def _loopback_ray() -> dict[str, Any]:
    """ray.init options for a Ray this process starts for itself: every port on 127.0.0.1.

    Ray binds its gRPC servers (GCS, raylet, core workers), the dashboard agent, the runtime-env agent and the
    Prometheus ``/metrics`` exporter to the *node IP*, and to every interface unless that IP is a loopback address.
    ``_node_ip_address="127.0.0.1"`` alone is turned back into the host's address (``resolve_ip_for_localhost``)
    unless Ray runs in its single-machine mode, ``ENABLE_RAY_CLUSTER`` false (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    the mode Ray uses on macOS/Windows; read at import, so also set on the imported module). A profile with an
    ``address`` (a cluster) is not touched."""
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray's own processes, started below, read it too
    ray_constants.ENABLE_RAY_CLUSTER = False
    return {"_node_ip_address": "127.0.0.1", "include_dashboard": False}


@contextlib.contextmanager
def connected(profile: Profile) -> Iterator[None]:
    """Make sure Ray is up for this profile; a Ray started here stays up for later stages of the same process."""
    if profile.engine != "ray":
        yield
        return
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": True}
        runtime_env: dict[str, Any] = {}
        if profile.env_vars:
            runtime_env["env_vars"] = dict(profile.env_vars)
        # Inside a Ray Job (or with RAY_ADDRESS set) join that cluster; the job already shipped the working dir.
        in_job = bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"))
        if profile.address in (None, "local") and not in_job:
            kwargs["address"] = "local"
            kwargs["num_cpus"] = profile.num_cpus or os.cpu_count()
            kwargs.update(_loopback_ray())

            def _quiet_workers() -> None:  # pickled by value: runs in every worker of this local Ray
                import logging

                # Without a dashboard there is no State API, and Ray Train's placement-group cleaner warns about
                # that every few seconds for the whole run; the cleanup it guards still happens on a normal exit.
                logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
                    logging.ERROR
                )
                try:  # fastText's load_model notice on every model load (services/logs.py quiets the driver's)
                    import fasttext.FastText

                    fasttext.FastText.eprint = lambda *args, **kwargs: None
                except ImportError:
                    pass

            runtime_env["worker_process_setup_hook"] = _quiet_workers
        else:
            kwargs["address"] = profile.address if profile.address not in (None, "local") else "auto"
            if profile.working_dir and not in_job:
                runtime_env["working_dir"] = profile.working_dir
                runtime_env["excludes"] = ["tests/", "data/", ".venv/", ".git/"]
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        with keep_signal_handlers():
            ray.init(**kwargs)
    yield


def _quiet_ray_data() -> None:
    import ray.data

    # our own per-shard progress bar (below) replaces Ray Data's per-operator bars and execution banners
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


@contextlib.contextmanager
def _progress(desc: str, total: int) -> Iterator[Callable[[], None]]:
    """A Rich progress bar over shards (stderr), so long stages show how far they are; plus a line on the ``quarry``
    logger every ``$QUARRY_PROGRESS_LOG_S`` seconds (30) and at the end, for where no bar shows: a Ray Job's log,
    Prefect's run logs (PREFECT_LOGGING_EXTRA_LOGGERS=quarry), a CI log."""
    import logging

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    log = logging.getLogger("quarry")
    every = float(os.environ.get("QUARRY_PROGRESS_LOG_S", "30"))
    start = time.monotonic()
    state = {"done": 0, "logged": start}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
        disable=os.environ.get("QUARRY_PROGRESS", "1") == "0",
    ) as bar:
        task = bar.add_task(desc, total=total)

        def advance() -> None:
            bar.advance(task)
            state["done"] += 1
            now, done = time.monotonic(), state["done"]
            if done == total or now - state["logged"] >= every:
                state["logged"] = now
                left = (now - start) / done * (total - done)
                log.info(
                    f"{desc}: {done}/{total} shards ({100 * done // total} %), {now - start:.0f} s elapsed"
                    + (f", about {left:.0f} s left" if done < total else "")
                )

        yield advance


class ShardsFailed(RuntimeError):
    """Some shards of a stage raised; the others ran to the end and their shards are written (a re-run resumes)."""


def _guarded(work: Callable[..., dict], *args: Any) -> dict:
    """Run one shard; an exception becomes a failure record, so one bad shard never cancels the shards in flight
    beside it (their work would be lost) and the stage reports every failed shard at the end."""
    try:
        return work(*args)
    except Exception as e:  # noqa: BLE001 - reported with its type, message and traceback by run_shards
        import traceback

        return {"__failed__": f"{type(e).__name__}: {e}", "__traceback__": traceback.format_exc()[-4000:]}


def _raise_failures(desc: str, items: Sequence[dict], results: list[dict]) -> list[dict]:
    failed = [r for r in results if "__failed__" in r]
    if not failed:
        return results
    raise ShardsFailed(
        f"{desc}: {len(failed)} of {len(items)} shards failed (the other shards are written; re-running resumes). "
        f"First failure: {failed[0]['__failed__']}\n{failed[0]['__traceback__']}"
    )


class _ActorWorker:
    """Ray Data callable class: loads the stage's model once, then processes one shard item per call."""

    def __init__(self, setup: Callable[[], Any], work: Callable[[dict, Any], dict]):
        self.state = setup()
        self.work = work

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        items = [dict(zip(batch.keys(), values, strict=True)) for values in zip(*batch.values(), strict=True)]
        results = [_guarded(self.work, _unwrap(item), self.state) for item in items]
        return {"result": np.array([_encode(r) for r in results], dtype=object)}


def _with_env(env: dict[str, str], fn: Callable, *args: Any) -> Any:
    os.environ.update(env)
    return fn(*args)


def _unwrap(item: dict) -> dict:
    import json

    return json.loads(item["item"])


def _encode(result: Any) -> str:
    import json

    return json.dumps(result, default=str)


def run_shards(
    items: Sequence[dict],
    work: Callable[..., dict],
    resources: StageResources,
    *,
    profile: Profile | None = None,
    setup: Callable[[], Any] | None = None,
    desc: str = "shards",
    secrets: dict[str, str] | None = None,
) -> list[dict]:
    """Run ``work`` on every item (one item = one shard to produce) and return the results in item order.

    ``work(item) -> dict`` for stateless stages; with ``setup``, ``work(item, state) -> dict`` where ``state`` is
    what ``setup()`` returned, built once per actor. Items and results must be JSON-serialisable.
    ``secrets`` (env var name -> value, e.g. an API key) are set in each worker's environment before ``setup``/``work``
    run: workers of an already-running cluster did not inherit the driver's environment. They travel with the
    function (Ray's in-memory function table / Dask's task), never in a runtime_env (shown by Ray's dashboard and
    job API), a log or a manifest.
    """
    import functools

    if not items:
        return []
    if secrets:
        work = functools.partial(_with_env, dict(secrets), work)
        if setup is not None:
            setup = functools.partial(_with_env, dict(secrets), setup)
    with safe_points():
        return _run_shards(items, work, resources, profile, setup, desc)


def _run_shards(items: Sequence[dict], work: Callable[..., dict], resources: StageResources, profile: Profile | None,
                setup: Callable[[], Any] | None, desc: str) -> list[dict]:
    import functools
    import json

    engine = profile.engine if profile else "ray"
    if engine == "serial":
        state = setup() if setup else None
        results = []
        with _progress(desc, len(items)) as advance:
            for it in items:
                check_stop()
                results.append(_guarded(work, dict(it), state) if setup else _guarded(work, dict(it)))
                advance()
        return _raise_failures(desc, items, results)
    if engine == "dask":
        return _raise_failures(desc, items, _run_dask(items, functools.partial(_guarded, work), setup, profile, desc))

    if setup is None:
        return _raise_failures(desc, items, _run_tasks(items, work, resources, desc))

    import ray.data

    _quiet_ray_data()
    rows = [{"item": json.dumps(it, default=str)} for it in items]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # Bounded retries when an actor dies (a document that kills its actor every time, e.g. by OOM, must not retry
    # forever). Ray 2.60 deprecates **ray_remote_args without named replacements yet; silence that one warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(
            _ActorWorker,
            fn_constructor_kwargs={"setup": setup, "work": work},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, resources.concurrency)),
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus or None,
            max_restarts=resources.max_retries,
            max_task_retries=resources.max_retries,
        )
    # Ray Data does not preserve order across blocks; items carry their own key so callers can match them.
    with _progress(desc, len(items)) as advance:
        results = []
        for row in ds.iter_rows():
            check_stop()
            results.append(json.loads(row["result"]))
            advance()
    return _raise_failures(desc, items, results)


def _run_tasks(items: Sequence[dict], work: Callable[[dict], dict], resources: StageResources, desc: str) -> list[dict]:
    """One Ray task per shard item, all submitted at once (an item is a few hundred bytes; Ray queues what the CPUs
    cannot run yet), results collected as they finish. ``max_retries`` bounds re-runs after a worker or node death
    (a document that kills its worker every time, e.g. by OOM, must not retry forever); a Python exception is not
    retried: ``_guarded`` turns it into a failure record. SPREAD puts shards on every node of a multi-node cluster."""
    import json

    import ray

    def _shard(item: dict) -> dict:
        # ``work`` (and any secret env it carries) travels inside the function, exported once through Ray's
        # function table, not as a task argument pickled into every task spec
        return _guarded(work, item)

    task = ray.remote(_shard).options(
        num_cpus=resources.num_cpus, num_gpus=resources.num_gpus or 0, max_retries=resources.max_retries,
        retry_exceptions=False, scheduling_strategy="SPREAD",
    )
    pending = [task.remote(dict(it)) for it in items]
    results = []
    try:
        with _progress(desc, len(items)) as advance:
            while pending:
                check_stop()
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                # the same JSON shape as the other engines (numpy scalars become numbers, other objects strings)
                results.extend(json.loads(_encode(r)) for r in ray.get(done))
                for _ in done:
                    advance()
    except BaseException:
        for ref in pending:  # a stop (or a failure) leaves no shard running: its half-written output is never used
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    return results


def _run_dask(items: Sequence[dict], work: Callable, setup: Callable | None, profile: Profile | None,
              desc: str = "shards") -> list[dict]:
    from dask.distributed import Client, LocalCluster

    address = profile.dask_address if profile else None
    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
        address = cluster.scheduler_address
    try:
        with Client(address) as client:
            from dask.distributed import as_completed

            if setup is None:
                futures = [client.submit(work, dict(it), pure=False, retries=3) for it in items]
            else:
                futures = [client.submit(_dask_stateful, setup, work, dict(it), pure=False, retries=3) for it in items]
            try:
                with _progress(desc, len(items)) as advance:
                    for _ in as_completed(futures):
                        advance()
                        check_stop()  # a safe point per finished shard
            except BaseException:
                client.cancel(futures)
                raise
            return client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()


_DASK_STATE: dict[int, Any] = {}


def _dask_stateful(setup: Callable, work: Callable, item: dict) -> dict:
    key = id(setup)
    if key not in _DASK_STATE:  # one model per worker process, as an actor would hold it
        _DASK_STATE[key] = setup()
    return work(item, _DASK_STATE[key])


def run_remote(fn: Callable[..., Any], *args: Any, resources: StageResources | None = None, profile: Profile | None = None, **kwargs: Any) -> Any:
    """Run one global step (k-means fit, dedup components, a training job) on one worker with the stage's resources."""
    if profile is not None and profile.engine != "ray":
        return fn(*args, **kwargs)
    import ray

    resources = resources or StageResources()
    remote = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_retries=resources.max_retries)(fn)
    return ray.get(remote.remote(*args, **kwargs))
