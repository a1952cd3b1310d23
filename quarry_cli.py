"""The ``quarry`` command line: run flows, query the catalog with SQL, list and garbage-collect versions.

    quarry run curate datasets_cfg/tiny.yaml
    quarry sql "select domain, count(*) from tiny__ingest group by 1"
    echo 'select * from "tiny__ingest@0123456789ab" limit 5' | quarry sql -
    quarry views tiny                     # views (and their columns) you can query
    quarry datasets --lineage tiny/quality_filter          # latest version; or tiny/quality_filter/0123456789ab
    quarry gc
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `quarry run` starts an ephemeral Prefect API; Prefect gives it 20 s, which a loaded 2-core machine can miss (the
# demo failed so in a fresh clone beside other work). The tests' harness waits 90 s for the same reason.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# Progress lines of long stages (the `quarry` logger) go to the console and to the Prefect run's logs; read when
# prefect is first imported, so set before any flow module loads.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "quarry")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="quarry: raw web text to an evaluated language model.")
# A pipe or CI log gets a wide table rather than Rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 200)

# flow name -> module:function; a flow is a verb and its module has the same name (design §4)
FLOWS = {
    "ingest": "flows.ingest:ingest",
    "watch": "flows.watch:watch",
    "curate": "flows.curate:curate",
    "augment": "flows.augment:augment",
    "train": "flows.train:train",
    "evaluate": "flows.evaluate:evaluate",
    "experiment": "flows.experiment:experiment",
    "mixture": "flows.mixture:mixture",
    "demo": "flows.demo:demo",
}


def _root(root: str | None) -> str:
    from storage import datasets

    return root or datasets.default_root()


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(code)


def _load_flow(name: str):
    if name not in FLOWS:
        raise typer.BadParameter(f"unknown flow {name!r}; choose one of {', '.join(FLOWS)}")
    module, fn = FLOWS[name].split(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except ModuleNotFoundError as e:
        raise typer.BadParameter(f"flow {name!r} is not available: {e}") from e


@app.command()
def run(
    flow: str = typer.Argument(..., help=f"one of: {', '.join(FLOWS)}"),
    recipe: Path = typer.Argument(..., help="a recipe YAML, e.g. datasets_cfg/tiny.yaml"),
    plan: bool = typer.Option(False, "--plan", help="list the stages the run would run, reuse from the store "
                              "(version) and skip (why), and the stale versions; run nothing"),
) -> None:
    """Run a flow on a recipe (a local ephemeral Prefect API unless PREFECT_API_URL points at a server).

    SIGTERM or SIGINT stops the run and every process it started (the ephemeral Prefect server, Ray, Dask)."""
    import datasets_cfg
    from datasets_cfg import sections
    from services import supervise

    try:
        # fail fast with the file and key named; a section that would do nothing is refused here
        sections.check_sections(datasets_cfg.load(recipe), recipe, warn=False)
        if plan:
            from flows import plan as planning

            for line in planning.lines(*planning.plan(flow, str(recipe))):
                console.print(line, markup=False, highlight=False)
            return
    except datasets_cfg.RecipeError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    previous = supervise.start()  # the children it starts (Prefect's server, Ray, Dask) stop with it
    result = _load_flow(flow)(str(recipe))
    supervise.restore(previous)  # finished normally: hand the signals back (an in-process caller's)
    console.print(f"[green]{flow} finished:[/green] {result}")


def _print_table(table, fmt: str = "table", output: Path | None = None, *, force: bool = False,
                 max_rows: int = 0) -> None:
    """Print or write a result (flows/render.py: values are data, never markup; long and wide results capped)."""
    from dashboards import terminal as render

    try:
        render.emit(table, fmt, console, output=output, force=force, max_rows=max_rows)
    except render.RenderError as e:
        raise _fail(str(e), 2) from None


def _catalog(root: str | None, **kwargs):
    """The catalog at ``root``; a path with no committed version under it (a mistyped --root or QUARRY_ROOT) is a
    one-line error, not an empty catalog that answers every query with 0 rows."""
    from storage import catalog

    path = _root(root)
    con = catalog.connect(path, **kwargs)
    if con.execute("select count(*) from versions").fetchone()[0] == 0:
        from storage import datasets as ds

        fs, local = ds.filesystem(path)
        why = "no committed version under it" if fs.exists(local) else "no such directory"
        raise _fail(f"no catalog at {path} ({why}); --root or $QUARRY_ROOT names the storage root", 2)
    return con


@app.command()
def sql(
    query: str = typer.Argument(
        ..., help='DuckDB SQL over `versions` and the `{dataset}__{stage}` views ("-" reads it from stdin)'
    ),
    root: str | None = typer.Option(None, help="storage root (default $QUARRY_ROOT or ./data)"),
    format: str = typer.Option(
        "table", "--format", "-f", help="table | line (each row whole, one column a line) | markdown | csv | "
        "json (JSON Lines: one object a line) | json-array (one JSON array) | parquet (needs -o)"
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="write every row to this file (not overwritten "
                                       "unless --force); says what it wrote"),
    force: bool = typer.Option(False, "--force", help="let -o overwrite an existing file"),
    max_rows: int = typer.Option(40, "--max-rows", help="rows the table, line and markdown formats show "
                                 "(0 = every row; csv, json and -o files always get every row)"),
    allow_file_access: bool = typer.Option(False, "--allow-file-access", help="an unsandboxed connection: read and "
                                           "write any file (COPY, read_csv('/elsewhere'), ATTACH); by default only "
                                           "files under the root are readable and only queries run"),
) -> None:
    """Query the catalog: e.g. quarry sql "select drop_reason, count(*) from tiny__quality_filter group by 1".

    A pinned version is the quoted view "tiny__ingest@0123456789ab" (a unique prefix of the version, at least 4
    characters). A table too wide for the terminal elides its middle columns; --format line shows every column."""
    import re

    import duckdb

    from storage import catalog

    if query == "-":
        query = sys.stdin.read()
    if not query.strip():
        raise typer.BadParameter("empty query")
    # sandboxed by default: a query (shared in a doc, pasted from a chat) must not read ~/.aws or write over a shard
    con = _catalog(root, sandbox=not allow_file_access, allow_root=not allow_file_access)
    try:
        if not allow_file_access:
            catalog.check_read_only(query)
        table = catalog.query(con, query)
    except catalog.UnknownVersion as e:
        raise _fail(str(e)) from None
    except PermissionError as e:
        raise _fail(f"SQL refused: {e}; -o FILE writes a result, --allow-file-access lifts the sandbox") from None
    except duckdb.Error as e:
        hint = ""
        if isinstance(e, duckdb.PermissionException):
            hint = "\nthe sandbox reads only files under the root; --allow-file-access lifts it"
        elif isinstance(e, duckdb.CatalogException):  # a wrong name: say where the names are, do not list them all
            short = re.search(r'"[a-z][a-z0-9_]*__[a-z][a-z0-9_]*@([0-9a-f]{0,3})"', query)
            hint = ("\na pinned version needs at least 4 characters of the version: \"dataset__stage@0123\""
                    if short else "\n`quarry views` lists the views and their columns")  # fmt: skip
        raise _fail(f"SQL error: {e}{hint}") from None
    _print_table(table, format, output, force=force, max_rows=max_rows)


@app.command()
def export(
    view: str = typer.Argument(..., help='a view: tiny__curated, or a pinned version "tiny__curated@0123456789ab"'),
    out: Path = typer.Argument(..., help="the file to write (must not exist)"),
    format: str | None = typer.Option(None, "--format", "-f", help="parquet | jsonl (default: from the extension)"),
    root: str | None = typer.Option(None, help="storage root (default $QUARRY_ROOT or ./data)"),
) -> None:
    """Write one view as a single materialized file (the wide table, every layer joined) for tools that want one.

    DuckDB's COPY streams the view to the file, so a view larger than memory exports too; the file appears only
    when complete (written under a temporary name, then renamed)."""
    from storage import export as exporting

    # the README's shell form '"tiny__curated@0123"' keeps SQL's double quotes: they are not part of the name
    view = view.strip()
    if len(view) > 1 and view[0] == view[-1] == '"':
        view = view[1:-1]
    if "@" in view and len(view.rsplit("@", 1)[1]) < 4:
        raise _fail(f"export: {view}: a pinned version needs at least 4 characters of the version")
    try:
        rows, fmt = exporting.export_view(_root(root), view, out, format)
    except exporting.ExportError as e:
        raise _fail(f"export: {e}") from None
    console.print(f"wrote {rows} rows of {view} to {out} ({fmt})", markup=False, highlight=False)


@app.command()
def views(
    pattern: str | None = typer.Argument(None, help="only views whose name contains this (e.g. a dataset)"),
    root: str | None = typer.Option(None, help="storage root"),
    columns: bool = typer.Option(True, help="show each view's columns"),
) -> None:
    """List the views you can query (and their columns); the same as SQL `show tables` / `describe <view>`."""
    from storage import catalog

    table = catalog.views(_catalog(root))
    from dashboards import terminal as render

    rows = [r for r in table.to_pylist() if pattern is None or pattern in r["name"]]
    console.print(render.text_table(["name", "reads"] + (["columns"] if columns else []),
                                    [[r["name"], r["reads"] or "", *([", ".join(r["columns"])] if columns else [])]
                                     for r in rows], show_lines=columns))  # fmt: skip
    console.print(f"[dim]{len(rows)} relations; a pinned version: \"{{dataset}}__{{stage}}@{{version}}\"[/dim]")


@app.command()
def datasets(
    root: str | None = typer.Option(None, help="storage root"),
    lineage: str | None = typer.Option(
        None, help="show the lineage of a version: dataset/stage/version, or dataset/stage for its latest"
    ),
    stale: bool = typer.Option(
        False, "--stale", help="list the latest versions whose stage code (modules or declared packages) has changed "
        "since they were made: what the next run recomputes, and why"
    ),
) -> None:
    """List committed versions (rows, parents), the lineage of one version (each ancestor once), or the stale ones."""
    if stale:
        from flows.stale import stale_versions

        rows = stale_versions(_root(root))
        for r in rows:
            console.print(f"{r['ref']}  recorded {r['recorded']} -> now {r['current']}", markup=False, highlight=False)
            for line in r["changes"]:
                console.print(f"    {line}", markup=False, highlight=False)
        console.print(f"{len(rows)} stale version(s): the next run of their stages recomputes them and what follows",
                      markup=False, highlight=False)
        return
    from storage import catalog

    con = _catalog(root)
    if lineage:
        try:
            table = catalog.lineage(con, lineage)
        except catalog.UnknownVersion as e:
            raise _fail(str(e), 2) from None
        _print_table(table)
        return
    table = catalog.query(
        con,
        "select dataset, stage, version, num_rows, parents, num_files, date_trunc('second', created_at) created_at, "
        "flow_run_name from versions "
        "order by dataset, created_at",
    )
    _print_table(table)


def _recipe_datasets(path: Path) -> set[str]:
    """The datasets a recipe writes (its dataset, and an experiment's comparison table); empty when it is invalid."""
    import datasets_cfg

    try:
        cfg = datasets_cfg.load(path)
    except (datasets_cfg.RecipeError, OSError):
        return set()
    return {cfg.dataset} | ({cfg.experiment.name} if cfg.experiment else set()) | ({cfg.mixture.name} if cfg.mixture else set())


def gc_plan(root: str) -> list[dict]:
    """Every committed version with ``keep``, the ``reason`` (the policy: storage/gc.py) and its size in ``bytes``;
    datasets are referenced by the recipes in datasets_cfg/ and those the manifests recorded (``run.recipe``)."""
    import datasets_cfg
    from storage import catalog, gc, leases

    con = catalog.connect(root)
    configured = [(f"recipe {path.relative_to(datasets_cfg.RECIPES_DIR.parent)}", _recipe_datasets(path))
                  for path in datasets_cfg.recipes()]
    sql = "select dataset, list(distinct recipe) recipes from versions where recipe is not null group by 1"
    recorded = {r["dataset"]: r["recipes"] for r in catalog.query(con, sql).to_pylist()}
    # exists() first: datasets_cfg.load would fall back to datasets_cfg/<same name> for a deleted file
    writes = {recipe: _recipe_datasets(Path(recipe)) if Path(recipe).exists() else None
              for recipes in recorded.values() for recipe in recipes}
    sql = "select ref, dataset, stage, version, uri, num_rows, created_at, parents from versions order by ref"
    rows = catalog.query(con, sql).to_pylist()
    current = {(r["dataset"], r["stage"]): r["version"] for r in catalog.query(con, "select * from pointers").to_pylist()}
    decisions = gc.decide(rows, *gc.references(configured, recorded, writes), current=current, live=leases.live(root))
    for r in rows:
        r.update(bytes=gc.version_bytes(r["uri"]), keep=decisions[r["ref"]].keep, reason=decisions[r["ref"]].reason)
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def verify(
    selector: str | None = typer.Argument(None, help="dataset[/stage[/version]] (default: every committed version)"),
    root: str | None = typer.Option(None, help="storage root"),
    quick: bool = typer.Option(False, help="sizes and footers only (no full checksum)"),
) -> None:
    """Check committed files against their manifests (presence, size, xxh64, footer, rows); exit 1 naming each bad
    file and what differs."""
    from storage import verify as integrity

    try:
        refs, problems = integrity.verify_root(_root(root), selector, full=not quick)
    except ValueError as e:
        raise _fail(str(e), 2) from None
    if not refs:
        raise _fail(f"no committed version matches {selector or '*'} under {_root(root)}", 2)
    for p in problems:
        console.print(str(p), style="red", markup=False, highlight=False, soft_wrap=True)
    bad = len({p.ref for p in problems})
    console.print(f"{len(refs)} versions checked, {bad} bad, {len(problems)} bad files", markup=False)
    if problems:
        raise typer.Exit(1)


@app.command()
def gc(
    root: str | None = typer.Option(None, help="storage root"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be deleted and why; delete nothing"),
    grace_s: float = typer.Option(6 * 3600, help="an uncommitted version is abandoned after this many seconds "
                                  "without a write (and with no live run leasing its dataset)"),
) -> None:
    """Delete versions no recipe references: superseded versions outside every current version's lineage (the
    pointers), datasets no recipe writes (recipes in datasets_cfg/ and those recorded in the manifests both count),
    and uncommitted versions killed runs left. Versions a live run leases, and their lineage, are kept."""
    from storage import datasets as ds
    from storage import gc as policy
    from storage import leases, pointers

    root = _root(root)
    plan = gc_plan(root)
    doomed = [r for r in plan if not r["keep"]]
    doomed += [dict(r, num_rows="-") for r in policy.abandoned(root, [r["ref"] for r in plan], leases.live(root), grace_s)]
    if not doomed:
        console.print("nothing to delete")
        return
    from dashboards import terminal as render

    console.print(render.text_table(["version", "rows", "size", "why"],
                                    [[r["ref"], r["num_rows"], _size(r["bytes"]), r["reason"]] for r in doomed]))
    total = _size(sum(r["bytes"] for r in doomed))
    if dry_run:
        console.print(f"dry run: would delete these {len(doomed)} versions ({total})", markup=False)
        return
    if not yes and not typer.confirm(f"delete these {len(doomed)} versions ({total})?"):
        # a piped answer is not echoed: end the prompt's line first
        console.print(("" if sys.stdin.isatty() else "\n") + "nothing deleted", markup=False)
        return
    pointers.adopt(root)  # an old root's newest-created_at choice becomes its pointer: it stays put from now on
    leased, refs = policy.lease_reasons(leases.live(root))  # a run that started since the plan: leave it be
    gone = [r for r in doomed if r["ref"].split("/")[0] not in leased and r["ref"] not in refs]
    for r in gone:
        ds.delete_version(ds.ref_from_string(root, r["ref"]))
    leases.remove_dead(root)
    console.print(f"deleted {len(gone)} versions ({_size(sum(r['bytes'] for r in gone))})")


# ---------------------------------------------------------------------------------------------- service commands
server_app = typer.Typer(no_args_is_help=True, help="A local Prefect server (SQLite, or Postgres) and a process worker.")
app.add_typer(server_app, name="server")
ray_app = typer.Typer(no_args_is_help=True, help="Run flows on a Ray cluster.")
app.add_typer(ray_app, name="ray")


@server_app.command("up")
def server_up(
    port: int = typer.Option(4200, help="API and UI port"),
    host: str = typer.Option("127.0.0.1", help="bind address (0.0.0.0 to serve a team)"),
    worker: bool = typer.Option(True, help="also start a process worker on the quarry-process pool"),
) -> None:
    """Start the Prefect server and a worker in the background (pid files and logs in .quarry/)."""
    from services import prefect_server

    info = prefect_server.server_up(host=host, port=port, worker=worker)
    console.print(f"[green]Prefect UI[/green] {info['ui_url']}   API {info['api_url']}   database {info['database']}")
    console.print(f"export PREFECT_API_URL={info['api_url']}   # so `quarry run` reports to this server")


@server_app.command("down")
def server_down() -> None:
    """Stop the worker and the server that `quarry server up` started."""
    from services import prefect_server

    stopped = prefect_server.server_down()
    console.print(f"stopped {', '.join(f'{k} ({v})' for k, v in stopped.items())}" if stopped else "nothing running")


@server_app.command("status")
def server_status() -> None:
    """Is the server healthy, is the worker running."""
    from services import prefect_server

    status = prefect_server.server_status()
    console.print_json(json.dumps(status))
    if not status["healthy"]:
        raise typer.Exit(1)


@app.command()
def deploy(
    recipe: str | None = typer.Option(None, help="use this recipe as every deployment's `recipe` parameter"),
    name: list[str] | None = typer.Option(None, "--name", "-n", help="only these deployments (flow/name)"),
    api_url: str | None = typer.Option(None, help="Prefect API (default: the server from `quarry server up`)"),
) -> None:
    """Register the deployments of prefect.yaml (schedules, concurrency limits) whose flows exist."""
    import datasets_cfg
    from services import deployments

    if recipe is not None:
        try:
            datasets_cfg.load(recipe)  # a typo fails now, not at 02:00 in the nightly run
        except datasets_cfg.RecipeError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2) from None
        # the worker runs from the repository root (prefect.yaml's pull step), not from here
        recipe = str(Path(recipe).resolve())
    for full_name, result in deployments.deploy(api_url, recipe=recipe, names=name or None).items():
        style = "yellow" if result.startswith("skipped") else "green"
        console.print(f"[{style}]{full_name}[/{style}]  {result}")


@app.command()
def trigger(
    deployment: str = typer.Argument(..., help="flow/name, e.g. ingest/tiny"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="key=value (value parsed as YAML)"),
    wait: bool = typer.Option(True, help="wait for the run to end and print a summary: state, page, artifacts"),
    timeout: float = typer.Option(3600, help="seconds to wait"),
    api_url: str | None = typer.Option(None, help="Prefect API (default: the server from `quarry server up`)"),
    as_json: bool = typer.Option(False, "--json", help="print the run and every artifact's data as JSON instead"),
) -> None:
    """Start a run of a registered deployment (what the UI's "Run" does), optionally waiting for it."""
    from services import deployments

    try:
        params = deployments.parse_params(param or [])
        run_id = deployments.trigger(deployment, params, api_url)
    except ValueError as e:  # TriggerError too: an unknown deployment, a missing recipe, an unknown profile
        raise _fail(f"trigger: {e}", 2) from None
    url = deployments.ui_url(run_id, api_url)
    console.print(f"flow run {run_id}" + (f"  {url}" if url else ""), markup=False, highlight=False)
    if not wait:
        return
    state = deployments.wait(run_id, timeout=timeout, api_url=api_url)
    result, artifacts = deployments.flow_run_result(run_id, api_url), deployments.run_artifacts(run_id, api_url)
    if as_json:
        print(json.dumps({**result, "artifacts": artifacts}, indent=2, default=str))
    else:
        for line in deployments.summary_lines(result, artifacts, url):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if state != "COMPLETED":
        raise typer.Exit(1)


@ray_app.command("submit")
def ray_submit(
    flow: str = typer.Argument(..., help=f"one of: {', '.join(FLOWS)}"),
    recipe: str = typer.Argument(..., help="a recipe inside this repo (shipped with the job) or a path the cluster can read"),
    address: str | None = typer.Option(None, help="Ray dashboard URL, e.g. http://head:8265 (default $RAY_ADDRESS)"),
    profile: str = typer.Option("cluster", help="cluster profile the job uses (its address must be `auto`)"),
    root: str | None = typer.Option(
        None, help="storage root every node shares (QUARRY_ROOT): s3://bucket/quarry, or a path mounted on every node"
    ),
    python: str | None = typer.Option(
        None, help="the Python on the cluster's nodes (default: this venv's for a head on this machine, else python)"
    ),
    wait: bool = typer.Option(True, help="stream the logs until the job ends"),
    timeout: float | None = typer.Option(None, help="stop the job after this many seconds"),
    shared: list[str] | None = typer.Option(
        None, "--shared", help="a local folder every node mounts at the same place (repeatable): the recipe's paths "
        "under it are visible to a remote cluster"
    ),
) -> None:
    """Submit a flow as a Ray Job (runtime_env working_dir = this checkout, the recipe's relative paths resolved
    here) and stream its logs."""
    from services import ray_jobs as jobs

    if flow not in FLOWS:
        raise typer.BadParameter(f"unknown flow {flow!r}; choose one of {', '.join(FLOWS)}")
    env = {}
    api = jobs.prefect_api()
    if api:
        env["PREFECT_API_URL"] = api  # so the run shows in the Prefect UI (the cluster must reach this URL)
        console.print(f"[dim]the run reports to Prefect at {api}[/dim]")
    try:
        job_id, status = jobs.submit(
            flow, recipe, address, profile=profile, root=root, python=python, env_vars=env, wait=wait, timeout=timeout,
            shared=shared,
        )
    except (jobs.JobsError, ValueError) as e:
        raise _fail(f"error: {e}", 2) from None
    console.print(f"job {job_id}: [{'green' if status == 'SUCCEEDED' else 'red'}]{status}[/]")
    if wait and status != "SUCCEEDED":
        raise typer.Exit(1)


slurm_app = typer.Typer(no_args_is_help=True, help="Run flows on a Slurm allocation (a Ray cluster per job).")
app.add_typer(slurm_app, name="slurm")


@slurm_app.command("submit")
def slurm_submit(
    flow: str = typer.Argument(..., help=f"one of: {', '.join(FLOWS)}"),
    recipe: Path = typer.Argument(..., help="a recipe YAML every node can read at this path"),
    nodes: int = typer.Option(1, "--nodes", "-N", help="nodes: a Ray head on the first, a Ray worker on each other"),
    cpus_per_task: int | None = typer.Option(None, "--cpus-per-task", help="CPUs per node (one task per node)"),
    partition: str | None = typer.Option(None, "--partition", "-p", help="Slurm partition"),
    time_limit: str | None = typer.Option(None, "--time", "-t", help="time limit, e.g. 02:00:00"),
    root: str | None = typer.Option(None, help="storage root every node shares (QUARRY_ROOT), e.g. s3://bucket/q"),
    profile: str = typer.Option("cluster", help="cluster profile (its address must be `auto`)"),
    output: str | None = typer.Option(None, "--output", "-o", help="the job's log (default slurm-%j.out)"),
    ray_start_args: str = typer.Option("", help="extra `ray start` arguments for every node"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the sbatch script; submit nothing"),
) -> None:
    """Submit a flow as one sbatch job: Ray head + workers inside the allocation, the flow, then everything stops
    (also on scancel). The job inherits this environment (PREFECT_API_URL, object-store credentials)."""
    from ray_cluster import slurm

    if flow not in FLOWS:
        raise typer.BadParameter(f"unknown flow {flow!r}; choose one of {', '.join(FLOWS)}")
    try:
        script = slurm.render(flow, recipe, nodes=nodes, cpus_per_task=cpus_per_task, partition=partition,
                              time_limit=time_limit, root=root, profile=profile, output=output,
                              ray_start_args=ray_start_args)
        if dry_run:
            print(script, end="")
            return
        job_id = slurm.submit(script)
    except slurm.SlurmError as e:
        raise _fail(f"error: {e}", 2) from None
    print(f"submitted slurm job {job_id} ({flow} on {nodes} node(s)); follow it: quarry slurm status {job_id}")


@slurm_app.command("status")
def slurm_status(job_id: str = typer.Argument(..., help="the job id `quarry slurm submit` printed")) -> None:
    """A job's state, nodes, run time and log file (scontrol: no accounting database needed)."""
    from ray_cluster import slurm

    try:
        info = slurm.status(job_id)
    except slurm.SlurmError as e:
        raise _fail(f"error: {e}", 2) from None
    for key in ("JobId", "JobName", "JobState", "Reason", "ExitCode", "RunTime", "NumNodes", "NodeList", "StdOut"):
        if key in info:
            print(f"{key:<9} {info[key]}")


@app.command()
def dashboard(
    port: int = typer.Option(8501, help="port to serve on"),
    host: str = typer.Option("127.0.0.1", help="bind address"),
    root: str | None = typer.Option(None, help="storage root (default $QUARRY_ROOT or ./data)"),
) -> None:
    """Open the read-only dashboard over the catalog (Streamlit) at http://HOST:PORT."""
    from dashboards import app as dash

    console.print(f"dashboard on http://{host}:{port}  (Ctrl-C to stop)")
    raise typer.Exit(dash.serve(_root(root), port=port, host=host))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
