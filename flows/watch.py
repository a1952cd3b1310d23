"""Incremental ingest of a watched fsspec prefix: each run ingests only the files no earlier run took.

    python -m flows.watch datasets_cfg/tiny.yaml                      # watch the recipe's own sources
    python -m flows.watch datasets_cfg/tiny.yaml s3://bucket/crawl/   # watch a prefix with the recipe's dataset/root

Scheduled nightly by prefect.yaml (deployment ``watch/tiny``). Every source of the recipe (a folder, a glob or an
object-store prefix) is listed; files not in the state table are ingested as one new ``{dataset}/ingest`` version
(its manifest lists exactly those inputs), and the state table ``{dataset}/watch_state`` gets one row per file taken
(prefix, file, size, mtime, the ingest version it went into, when). The state is itself a committed version whose
parents are the previous state and the new batch, so it is queryable (``select * from tiny__watch_state``) and
``quarry gc`` keeps every batch through the lineage. A file is matched by its path: a file rewritten in place after
it was taken is reported, not re-ingested (WARC/WET files are immutable; re-ingesting would duplicate documents).
Two runs must not race on one state table: the deployment's concurrency limit is 1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import datasets_cfg
from flows import runinfo, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef
from tasks.ingest import IngestSource

STATE_STAGE = "watch_state"
STATE_SCHEMA = pa.schema(
    [
        ("prefix", pa.string()),
        ("file", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.string()),
        ("batch", pa.string()),
        ("taken_at", pa.string()),
    ]
)


def read_state(root: str, dataset: str) -> tuple[DatasetRef | None, pa.Table]:
    """The latest committed state table of a dataset (empty when nothing was taken yet)."""
    ref = datasets.latest(root, dataset, STATE_STAGE)
    if ref is None:
        return None, STATE_SCHEMA.empty_table()
    return ref, datasets.read_table(ref).cast(STATE_SCHEMA)


def _fingerprint(uri: str) -> tuple[int | None, str]:
    fs, path = datasets.filesystem(uri)
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    return info.get("size"), str(mtime)


def new_files(sources: list[IngestSource], state: pa.Table) -> tuple[list[tuple[int, str]], list[str]]:
    """(source index, file) of every listed file not taken yet, and the taken files that changed since."""
    sizes_mtimes = zip(state["size"].to_pylist(), state["mtime"].to_pylist(), strict=True)
    taken = dict(zip(state["file"].to_pylist(), sizes_mtimes, strict=True))
    fresh, changed = [], []
    for s, uri in stage.list_input_files(sources):
        if uri not in taken:
            fresh.append((s, uri))
        elif taken[uri] != _fingerprint(uri):
            changed.append(uri)
    return fresh, changed


@task(cache_policy=NO_CACHE, task_run_name="watch_state")
def record_taken(
    root: str,
    dataset: str,
    previous: DatasetRef | None,
    state: pa.Table,
    batch: DatasetRef,
    files: list[tuple[str, str]],
) -> DatasetRef:
    """Commit a new state version: the previous rows plus one row per file of ``batch``."""
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    rows = []
    for prefix, uri in files:
        size, mtime = _fingerprint(uri)
        rows.append(
            {"prefix": prefix, "file": uri, "size": size, "mtime": mtime, "batch": str(batch), "taken_at": now}
        )
    table = pa.concat_tables([state, pa.Table.from_pylist(rows, schema=STATE_SCHEMA)])
    parents = [p for p in (previous, batch) if p is not None]
    ref = datasets.derive(parents, STATE_STAGE, sys.modules[__name__], None)
    datasets.write_table(ref, table, parents=parents, code=datasets.code_hash(sys.modules[__name__]))
    return ref


@flow(name="watch", log_prints=True, flow_run_name=runinfo.run_name)
@runinfo.tracked_flow
def watch(
    recipe: Recipe = DEFAULT_RECIPE,
    prefix: str | None = None,
    domain: str = "web",
    profile: ProfileName = None,
    storage_root: StorageRoot = None,
) -> dict:
    """Ingest the files of the recipe's sources (or of ``prefix``) that earlier runs did not take."""
    log = get_run_logger()
    cfg = datasets_cfg.load(recipe)
    sources = list(cfg.ingest.sources) if prefix is None else [IngestSource(path=prefix, domain=domain)]
    previous, state = read_state(cfg.root, cfg.dataset)
    fresh, changed = new_files(sources, state)
    for uri in changed:
        log.warning(f"watch: {uri} changed after it was ingested; not re-ingested (files are matched by path)")
    summary = {"dataset": cfg.dataset, "new_files": len(fresh), "already_taken": state.num_rows, "changed": changed}
    if not fresh:
        log.info(f"watch: no new files under {[s.path for s in sources]}; {state.num_rows} taken before")
        summary.update(batch=None, state=str(previous) if previous else None)
        return summary
    # one explicit source per new file, keeping the reader settings (domain, fields, limit) of its source
    batch_sources = [dataclasses.replace(sources[s], path=uri, exclude=()) for s, uri in fresh]
    profile = runtime.load_profile(cfg.cluster)
    with runtime.connected(profile):
        batch = stage.ingest_task(batch_sources, cfg.root, cfg.dataset, cfg.ingest.docs_per_shard, profile)
    new_state = record_taken(cfg.root, cfg.dataset, previous, state, batch, [(sources[s].path, u) for s, u in fresh])
    manifest = datasets.read_manifest(batch)
    summary.update(batch=str(batch), state=str(new_state), documents=manifest["num_rows"])
    try:
        create_table_artifact(
            key="watch-new-files",
            table=[{"file": u, "batch": str(batch)} for _, u in fresh],
            description=f"{len(fresh)} new files -> {batch} ({manifest['num_rows']} documents)",
        )
        create_markdown_artifact(
            key="watch-outputs",
            markdown=f"* batch: `{batch}` at `{batch.uri}`\n* state: `{new_state}` at `{new_state.uri}`",
        )
    except Exception as e:  # artifacts are a courtesy; the data is committed already
        log.warning(f"watch: could not publish artifacts: {e}")
    log.info(f"watch: {len(fresh)} new files -> {batch} ({manifest['num_rows']} documents); state {new_state}")
    return summary


if __name__ == "__main__":
    print(watch(sys.argv[1], *(sys.argv[2:3])))
