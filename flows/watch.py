"""Incremental ingest of a watched fsspec prefix: each run ingests only the files no earlier run took.

    python -m flows.watch datasets_cfg/tiny.yaml                      # watch the recipe's own sources
    python -m flows.watch datasets_cfg/tiny.yaml s3://bucket/crawl/   # watch a prefix with the recipe's dataset/root

Scheduled nightly by prefect.yaml (deployment ``watch/tiny``). Every source of the recipe (a folder, a glob or an
object-store prefix) is listed; files not in the state table are ingested as one new ``{dataset}/ingest`` version
(its manifest lists exactly those inputs), and the state table ``{dataset}/watch_state`` gets one row per file taken
(prefix, file, size, mtime, the ingest version it went into, when). The state is itself a committed version whose
parents are the new batch and the previous state, so it is queryable (``select * from tiny__watch_state``) and
``quarry gc`` keeps every batch through the lineage. Two runs must not race on one state table: the deployment's
concurrency limit is 1.
"""

from __future__ import annotations

import dataclasses
import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import runinfo
from flows.run import load, publish_table, stage
from flows.runinfo import DEFAULT_RECIPE, ProfileName, Recipe, StorageRoot
from ray_cluster import runtime
from storage import datasets
from tasks.ingest import watch as watch_mod
from tasks.ingest.sources import IngestSource, plan_sources


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
    cfg, profile = load(recipe)
    sources = list(cfg.ingest.sources) if prefix is None else [IngestSource(path=prefix, domain=domain)]
    previous = datasets.latest(cfg.root, cfg.dataset, "watch_state")
    state = datasets.read_table(previous) if previous else watch_mod.STATE_SCHEMA.empty_table()
    plan = plan_sources(sources)  # the sources with their name and root: a file's doc_ids as in a full ingest
    fresh, changed = watch_mod.new_files(plan.files, state.cast(watch_mod.STATE_SCHEMA))
    for uri in changed:
        log.warning(f"watch: {uri} changed after it was ingested; not re-ingested (files are matched by path)")
    summary = {"dataset": cfg.dataset, "new_files": len(fresh), "already_taken": state.num_rows, "changed": changed}
    if not fresh:
        log.info(f"watch: no new files under {[s.path for s in sources]}; {state.num_rows} taken before")
        summary.update(batch=None, state=str(previous) if previous else None)
        if previous is not None and curates(cfg):  # a batch whose curation was killed resumes here
            with runtime.connected(profile):
                summary.update(batches=_curate(cfg, profile))
        return summary
    # one explicit source per new file, keeping the reader settings (domain, fields, limit) of its source
    batch_params = dataclasses.replace(
        cfg.ingest, sources=tuple(dataclasses.replace(plan.sources[s], path=uri, exclude=()) for s, uri in fresh))
    taken = watch_mod.WatchParams(files=tuple((sources[s].path, u) for s, u in fresh))
    with runtime.connected(profile):
        batch = stage("ingest", [], batch_params, profile, root=cfg.root, dataset=cfg.dataset)
        new_state = stage("watch_state", [batch, previous], taken, profile)
        curated = _curate(cfg, profile) if curates(cfg) else []
    documents = datasets.read_manifest(batch)["num_rows"]
    summary.update(batch=str(batch), state=str(new_state), documents=documents, batches=curated)
    if curated:
        publish_table("watch-batches", curated, f"{len(curated)} batches curated; corpus {curated[-1]['corpus']} docs")
    publish_table("watch-new-files", [{"file": u, "batch": str(batch)} for _, u in fresh],
                  f"{len(fresh)} new files -> {batch} ({documents} documents)")
    try:
        create_markdown_artifact(
            key="watch-outputs", markdown=f"* batch: `{batch}` at `{batch.uri}`\n* state: `{new_state}` at `{new_state.uri}`")
    except Exception as e:  # artifacts are a courtesy; the data is committed already
        log.warning(f"watch: could not publish artifacts: {e}")
    log.info(f"watch: {len(fresh)} new files -> {batch} ({documents} documents); state {new_state}")
    return summary


def curates(cfg) -> bool:
    """A recipe with any curation section: the deployment curates each batch it ingests (issue 30)."""
    from tasks import registry

    return any(getattr(cfg, name, None) is not None for name in registry.CURATION)


def _curate(cfg, profile) -> list[dict]:
    """Curate every batch against those before it (the earlier ones are committed: no-ops); per batch the new
    documents, the cross-batch duplicates dropped and the curated corpus size after it."""
    from flows.curate import curate_batches

    rows, corpus = [], 0
    for step in curate_batches(cfg, profile):
        corpus += datasets.read_manifest(step["curated"])["num_rows"]
        rows.append({"batch": str(step["batch"]), "new_documents": datasets.read_manifest(step["batch"])["num_rows"],
                     "cross_batch_duplicates": step["cross_batch_duplicates"], "curated": str(step["curated"]),
                     "corpus": corpus})
    return rows


if __name__ == "__main__":
    print(watch(sys.argv[1], *(sys.argv[2:3])))
