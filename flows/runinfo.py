"""Runs and data link up: which run made a version, and what a run made.

    @flow(name="curate", log_prints=True, flow_run_name=runinfo.run_name)
    @runinfo.tracked_flow
    def curate(recipe: Recipe = DEFAULT_RECIPE, profile: ProfileName = None, storage_root: StorageRoot = None) -> str:
        ...

* The flow's typed parameters (``Recipe``, ``ProfileName``, ``StorageRoot``) carry descriptions and defaults into
  the deployment's parameter schema, so Prefect's "Custom run" form explains them; ``RunParams`` is the same three
  as one model, which ``validate_params`` checks when a deployment is triggered (a missing recipe is an error at
  once, not ~25 s later inside the worker).
* ``run_name``: a flow run is named ``<flow>-<dataset>-<UTC time>`` (e.g. ``curate-tiny-20260102-030405``).
* ``tracked_flow`` wraps the flow body: it validates the recipe, applies ``profile``/``storage_root``, tags the run
  (``flow:<flow>``, ``dataset:<dataset>``), records the run in every manifest committed meanwhile (storage's run
  context: flow run id and name, deployment, Prefect UI link, Ray job, recipe path and content hash) and, when the
  body ends, publishes a markdown artifact ``versions`` listing each version the run committed with its row count
  and a ``quarry sql`` line that opens it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import inspect
import logging
import os
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

import datasets_cfg
from flows import leasing
from storage import datasets

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = "datasets_cfg/tiny.yaml"
ARTIFACT_KEY = "versions"

# Stage progress lines go to the `quarry` logger (ray_cluster.runtime); PREFECT_LOGGING_EXTRA_LOGGERS=quarry gives it
# Prefect's console and API handlers, but a logger left at NOTSET inherits the root's WARNING and drops them.
if logging.getLogger("quarry").level == logging.NOTSET:
    logging.getLogger("quarry").setLevel(logging.INFO)

Recipe = Annotated[
    str,
    Field(
        description="The recipe YAML: a path relative to the repository root (e.g. datasets_cfg/tiny.yaml) or an "
        "absolute path the worker can read. It says what to build; see datasets_cfg/tiny.yaml.",
        pattern=r"\.ya?ml$",
        min_length=6,
    ),
]
ProfileName = Annotated[
    str | None,
    Field(
        description="Where it runs: a cluster profile of ray_cluster/profiles (local, serial, cluster, gpu8, "
        "dask_local) or a profile YAML path. Empty: the recipe's `cluster:`.",
    ),
]
StorageRoot = Annotated[
    str | None,
    Field(
        description="Where versions are written: a folder or an fsspec URL (s3://bucket/quarry). Empty: the "
        "recipe's storage_root, else $QUARRY_ROOT, else ./data. A recipe that sets storage_root cannot be moved.",
    ),
]


class RunParams(BaseModel):
    """A flow run's parameters, checked as a whole: the recipe loads, the profile exists, the roots agree."""

    model_config = ConfigDict(extra="ignore")

    recipe: Recipe = DEFAULT_RECIPE
    profile: ProfileName = None
    storage_root: StorageRoot = None

    def check(self, base: Path = REPO) -> datasets_cfg.RunConfig:
        """The validated recipe; ``RecipeError`` naming what is wrong. Relative paths are relative to ``base`` (the
        directory the worker runs flows from)."""
        from ray_cluster import runtime

        path = Path(self.recipe)
        cfg = datasets_cfg.load(path if path.is_absolute() else base / path)
        if self.profile:  # (runtime.load_profile would look at $QUARRY_PROFILE first)
            named = runtime.PROFILES_DIR / f"{self.profile}.yaml"
            candidate = Path(self.profile) if Path(self.profile).suffix else named
            if not candidate.exists():
                known = ", ".join(sorted(p.stem for p in runtime.PROFILES_DIR.glob("*.yaml")))
                raise datasets_cfg.RecipeError(f"no cluster profile {self.profile!r} (known: {known})")
        if self.storage_root and cfg.storage_root and cfg.storage_root.rstrip("/") != self.storage_root.rstrip("/"):
            raise datasets_cfg.RecipeError(
                f"recipe {self.recipe} sets storage_root {cfg.storage_root}; it cannot also run under "
                f"{self.storage_root} (remove storage_root from the recipe, or leave this parameter empty)"
            )
        return cfg


def validate_params(parameters: dict[str, Any], base: Path = REPO) -> datasets_cfg.RunConfig:
    """Check a deployment run's parameters before the run is created (``RecipeError`` / pydantic's error)."""
    return RunParams.model_validate(parameters).check(base)


def recipe_hash(path: str | Path) -> str:
    """The recipe's content hash (sha256 of the file), so a run records exactly which recipe text it ran."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _recipe_path(recipe: str) -> Path:
    return Path(recipe).resolve()


def run_name() -> str:
    """``<flow>-<dataset>-<UTC time>``: Prefect calls this when a flow run starts (``flow_run_name=``)."""
    from prefect.runtime import flow_run

    recipe = (flow_run.parameters or {}).get("recipe") or DEFAULT_RECIPE
    try:
        dataset = datasets_cfg.load(recipe).dataset
    except (datasets_cfg.RecipeError, OSError):  # the flow itself reports the bad recipe
        dataset = Path(str(recipe)).stem
    return f"{flow_run.flow_name or 'flow'}-{dataset}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Set environment variables for a block (None: leave as is), then restore them: subflows see the same."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v}
    os.environ.update({k: v for k, v in values.items() if v})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prefect_fields() -> dict[str, str | None]:
    from prefect.runtime import deployment, flow_run

    fields = {"flow": flow_run.flow_name, "flow_run_id": flow_run.id, "flow_run_name": flow_run.name}
    if deployment.id:
        fields["deployment"] = f"{flow_run.flow_name}/{deployment.name}"
        fields["deployment_id"] = deployment.id
    # a link only to a server that outlives the run (the ephemeral API of `quarry run` stops with it)
    if flow_run.id and (os.environ.get("PREFECT_API_URL") or os.environ.get("PREFECT_UI_URL")):
        fields["run_url"] = flow_run.ui_url
    return fields


def _tag_run(flow_run_id: str | None, tags: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, tags=sorted(set(flow_run.tags or []) | set(tags)))
    except Exception as e:  # a tag is a convenience: never fail a run over it
        _log(f"could not tag flow run {flow_run_id}: {type(e).__name__}: {e}")


def _log(message: str) -> None:
    logging.getLogger("quarry").info(message)


def versions_markdown(run: str, committed: list[str], root: str, default_root: str | None = None) -> str:
    """The ``versions`` artifact: each version the run committed, its rows, and the command that opens it (with
    ``--root`` unless ``root`` is the default one outside the run, ``default_root``)."""
    default_root = default_root or datasets.default_root()
    root_arg = "" if root == default_root else f" --root {shlex.quote(root)}"
    lines = [f"### Versions committed by {run}", ""]
    if not committed:
        lines.append("Nothing new: every version this run needed was already committed.")
        return "\n".join(lines)
    lines += ["| version | rows | open it |", "|---|---|---|"]
    for ref in committed:
        dataset, stage, version = ref.split("/")
        try:
            rows = datasets.read_manifest(datasets.DatasetRef(root, dataset, stage, version))["num_rows"]
        except (OSError, ValueError, KeyError):
            rows = "?"
        query = f'select * from "{dataset}__{stage}@{version}" limit 10'
        lines.append(f"| `{ref}` | {rows} | `quarry sql{root_arg} {shlex.quote(query)}` |")
    return "\n".join(lines)


@contextlib.contextmanager
def tracked(
    recipe: str, profile: str | None = None, storage_root: str | None = None
) -> Iterator[datasets_cfg.RunConfig]:
    """Validate the run's parameters, apply profile/root, tag the run and record it; yields the recipe."""
    from prefect.artifacts import create_markdown_artifact

    cfg = RunParams(recipe=recipe, profile=profile, storage_root=storage_root).check(Path.cwd())
    path = _recipe_path(recipe)
    fields = _prefect_fields()
    _tag_run(fields.get("flow_run_id"), [f"flow:{fields.get('flow')}", f"dataset:{cfg.dataset}"])
    default_root = datasets.default_root()  # before a storage_root parameter becomes the run's $QUARRY_ROOT
    with (
        _environ(QUARRY_PROFILE=profile, QUARRY_ROOT=storage_root),
        datasets.using_run(
            **fields, recipe=str(path), recipe_hash=recipe_hash(path),
            profile=os.environ.get("QUARRY_PROFILE") or cfg.cluster,
        ) as committed,  # fmt: skip
        leasing.holding(cfg, path, committed, recipe_hash(path), fields.get("flow_run_id")),  # claim + gc lease
    ):
        try:
            yield cfg
        finally:
            if fields.get("flow_run_id"):
                markdown = versions_markdown(fields.get("flow_run_name") or "this run", committed, cfg.root, default_root)
                with contextlib.suppress(Exception):  # the run's outcome is its own, not the artifact's
                    create_markdown_artifact(
                        key=ARTIFACT_KEY, markdown=markdown, description=f"versions committed by {fields['flow']}"
                    )


def tracked_flow(fn: Callable) -> Callable:
    """Run a flow function inside ``tracked(recipe, profile, storage_root)``; put it under ``@flow``."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)  # Prefect reads the parameters (and their descriptions) through __wrapped__
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        from ray_cluster import runtime

        # SIGTERM/SIGINT stop the run at a stage's next safe point; a stop that Prefect's engine swallowed is
        # raised at the end all the same (RELIABILITY.md, guarantee 7)
        with runtime.stop_signals(), tracked(given["recipe"], given.get("profile"), given.get("storage_root")):
            result = fn(*args, **kwargs)
        runtime.check_stop()
        return result

    # Prefect takes a parameter's description in the UI form from the docstring's "Args:" section: write it from
    # RunParams' fields, the one place these descriptions live
    described = [n for n in RunParams.model_fields if n in signature.parameters]
    args = "\n".join(f"    {n}: {RunParams.model_fields[n].description}" for n in described)
    wrapper.__doc__ = f"{inspect.getdoc(fn) or ''}\n\nArgs:\n{args}\n"
    return wrapper
