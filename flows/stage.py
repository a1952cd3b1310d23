"""The one generic stage task, plus the shard-level work it sends to the cluster.

Storage versions are the cache (Prefect caching is off): a committed version is skipped, a partial one resumes at
shard granularity (shards already in the version folder are not recomputed), and the manifest is written last.

    ref = run_stage(src, "quality_signals", quality_signals, params, profile)
"""

from __future__ import annotations

import functools
import os
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

import tasks.ingest as ingest_mod
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection hook that tests use to kill a stage after k shards."""


def _logger():
    try:
        return get_run_logger()
    except Exception:  # outside a flow/task run (plain Python use)
        import logging

        return logging.getLogger("quarry")


def _maybe_fail(item: dict) -> None:
    fail_from = item.get("fail_from_shard")
    if fail_from is not None and item["index"] >= fail_from:
        raise InjectedFailure(f"injected failure at shard {item['index']} (fail_from_shard={fail_from})")


# ------------------------------------------------------------------------------------------------ ingest


def list_input_files(sources: Sequence[ingest_mod.IngestSource]) -> list[tuple[int, str]]:
    """(source index, file URI) for every input file, each once, in a stable order; a missing input is an error."""
    return ingest_mod.list_input_files(sources)


def _ingest_file(item: dict) -> dict:
    """Read one input file into document shards (and one quarantine shard); skip shards already written."""
    _maybe_fail(item)
    spec = ingest_mod.IngestSource(**item["spec"])
    docs_ref = DatasetRef(**item["ref"])
    bad_ref = docs_ref.sibling("ingest_quarantine")
    t0 = time.perf_counter()
    rows = list(ingest_mod.read_file(item["file"], spec))  # a file that cannot be opened is one quarantine row
    docs, bad = ingest_mod.rows_to_tables(rows)
    per = item["docs_per_shard"]
    chunks = max(1, -(-docs.num_rows // per))
    stem = f"part-{item['index']:05d}"
    done_bad = datasets.existing_shards(bad_ref)
    if f"{stem}-0000.parquet" not in done_bad:
        datasets.write_shard(bad_ref, f"{stem}-0000.parquet", bad)
    done = datasets.existing_shards(docs_ref)
    written = 0
    for c in range(chunks):
        name = f"{stem}-{c:04d}.parquet"
        if name not in done:
            datasets.write_shard(docs_ref, name, docs.slice(c * per, per))
            written += 1
    return {
        "index": item["index"],
        "file": item["file"],
        "documents": docs.num_rows,
        "quarantined": bad.num_rows,
        "bytes": int(pa.compute.sum(docs["raw_bytes"]).as_py() or 0),
        "shards_written": written,
        "seconds": time.perf_counter() - t0,
        "domains": dict(Counter(docs["domain"].to_pylist())),
    }


def ingest(
    sources: Sequence[ingest_mod.IngestSource],
    *,
    root: str,
    dataset: str,
    docs_per_shard: int,
    profile: runtime.Profile,
    fail_from_shard: int | None = None,
) -> DatasetRef:
    """Ingest every source file into ``{dataset}/ingest/{version}`` (+ ``ingest_quarantine``); no-op when committed."""
    log = _logger()
    datasets.ensure_writable(root)
    files, repeats = ingest_mod.plan_inputs(sources)  # a file listed twice is read once (repeats: the others)
    params = {"sources": list(sources), "docs_per_shard": docs_per_shard}
    ref = datasets.source_ref(root, dataset, "ingest", ingest_mod, params, [f for _, f in files])
    if datasets.is_committed(ref):
        log.info(f"ingest: {ref} already committed, skipping")
        return ref
    import dataclasses

    items = [
        {
            "index": i,
            "file": f,
            "spec": dataclasses.asdict(sources[s]),
            "ref": dataclasses.asdict(ref),
            "docs_per_shard": docs_per_shard,
            "fail_from_shard": fail_from_shard,
        }
        for i, (s, f) in enumerate(files)
    ]
    t0 = time.perf_counter()
    results = runtime.run_shards(items, _ingest_file, profile.resources("ingest"), profile=profile, desc="ingest")
    elapsed = time.perf_counter() - t0
    results.sort(key=lambda r: r["index"])
    stats = {**_ingest_stats(results, elapsed), "repeated_inputs": repeats}
    bad_ref = ref.sibling("ingest_quarantine")
    datasets.commit(bad_ref, parents=[], params=params, code=datasets.code_hash(ingest_mod), inputs=[f for _, f in files])
    manifest = datasets.commit(
        ref,
        parents=[],
        params=params,
        code=datasets.code_hash(ingest_mod),
        inputs=[f for _, f in files],
        extra={"stats": stats},
    )
    log.info(
        f"ingest: {manifest['num_rows']} documents, {stats['quarantined']} quarantined from {len(files)} files "
        f"in {elapsed:.1f}s -> {ref.uri}"
    )
    _publish_table(
        "ingest-counts",
        [{"file": posixpath.basename(r["file"]), "documents": r["documents"], "quarantined": r["quarantined"]} for r in results],
        f"ingest of {dataset}: {stats['documents']} documents, {stats['quarantined']} quarantined",
    )
    return ref


def _ingest_stats(results: list[dict], elapsed: float) -> dict:
    domains: Counter = Counter()
    for r in results:
        domains.update(r["domains"])
    docs = sum(r["documents"] for r in results)
    nbytes = sum(r["bytes"] for r in results)
    return {
        "files": len(results),
        "documents": docs,
        "quarantined": sum(r["quarantined"] for r in results),
        "bytes": nbytes,
        "domains": dict(domains),
        "seconds": round(elapsed, 3),
        "docs_per_s": round(docs / elapsed, 1) if elapsed else None,
    }


def _publish_table(key: str, rows: list[dict], description: str) -> None:
    """A Prefect table artifact when running inside a flow; silently nothing in plain Python."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return  # outside a run Prefect would start a temporary API server just to store the artifact
    try:
        create_table_artifact(key=key, table=rows, description=description)
    except Exception:
        pass


# ------------------------------------------------------------------------------------------------ map stages


@functools.lru_cache(maxsize=8)
def _side_table(ref: DatasetRef) -> pa.Table:
    """A side input (dedup keepers, sampler selection) read once per worker process."""
    return datasets.read_table(ref)


def _apply_to_shard(item: dict, state: Any = None) -> dict:
    """Read one input shard in batches, apply the stage function (or the loaded model), write the output shard."""
    _maybe_fail(item)
    src_uri, dst = item["src"], DatasetRef(**item["dst"])
    fn = state if state is not None else item["fn"]
    side = {k: _side_table(DatasetRef(**v)) for k, v in (item.get("side") or {}).items()}
    fs, path = datasets.filesystem(src_uri)
    outs = []
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=item["batch_size"]):
            table = pa.Table.from_batches([batch])
            outs.append(fn(table) if state is not None else fn(table, item["params"], **side))
        if not outs:  # an empty shard still gets an output with the stage's schema
            empty = pf.schema_arrow.empty_table()
            outs.append(fn(empty) if state is not None else fn(empty, item["params"], **side))
    out = pa.concat_tables(outs, promote_options="permissive") if outs else pa.table({})
    datasets.write_shard(dst, item["name"], out)
    return {"index": item["index"], "name": item["name"], "rows_in": pf.metadata.num_rows, "rows_out": out.num_rows}


def secret_env(params: Any) -> dict[str, str]:
    """The secrets a stage's workers need: params name environment variables (fields ending in ``_env``, e.g.
    ``api_key_env``), never hold values. Those set in the driver's environment are forwarded to the workers."""
    import dataclasses

    if not dataclasses.is_dataclass(params):
        return {}
    names = [getattr(params, f.name) for f in dataclasses.fields(params) if f.name.endswith("_env")]
    return {n: os.environ[n] for n in names if isinstance(n, str) and os.environ.get(n)}


def map_stage(
    src: DatasetRef,
    stage: str,
    fn: Callable,
    params: Any,
    profile: runtime.Profile,
    *,
    stateful: bool = False,
    side: dict[str, DatasetRef] | None = None,
    code: Any = None,
    stats_fn: Callable[[DatasetRef], dict] | None = None,
    fail_from_shard: int | None = None,
) -> DatasetRef:
    """Run a per-batch function (or a callable class, ``stateful=True``) over every shard of ``src``.

    ``side`` maps keyword names to small committed tables passed to every call (``fn(batch, params, **side)``).
    """
    log = _logger()
    side = side or {}
    code = code or fn  # what the version hashes: fn's module, or e.g. (glue, the tasks module it calls)
    dst = datasets.derive([src, *side.values()], stage, code, params)
    if datasets.is_committed(dst):
        log.info(f"{stage}: {dst} already committed, skipping")
        return dst
    resources = profile.resources(stage)
    done = datasets.existing_shards(dst)
    items = []
    for i, uri in enumerate(datasets.files(src)):  # one manifest read
        name = posixpath.basename(uri)
        if name in done:
            continue
        item = {
            "index": i,
            "name": name,
            "src": uri,
            "dst": _asdict(dst),
            "batch_size": resources.batch_size,
            "fail_from_shard": fail_from_shard,
            "side": {k: _asdict(v) for k, v in side.items()},
        }
        items.append(item)
    t0 = time.perf_counter()
    if stateful:
        work, setup = _apply_to_shard, functools.partial(fn, params)
    else:
        work, setup = functools.partial(_apply_with, fn, params), None
    results = runtime.run_shards(items, work, resources, profile=profile, setup=setup, desc=stage, secrets=secret_env(params))
    elapsed = time.perf_counter() - t0
    rows_in = sum(r["rows_in"] for r in results)
    stats = {"shards_computed": len(results), "shards_resumed": len(done), "seconds": round(elapsed, 3), "rows_in_computed": rows_in}
    if stats_fn is not None:
        stats.update(stats_fn(dst))
    manifest = datasets.commit(
        dst,
        parents=[src, *side.values()],
        params=params,
        code=datasets.code_hash(code),
        extra={"stats": stats},
    )
    log.info(f"{stage}: {manifest['num_rows']} rows ({len(results)} shards computed, {len(done)} resumed) -> {dst.uri}")
    return dst


def _apply_with(fn: Callable, params: Any, item: dict) -> dict:
    return _apply_to_shard({**item, "fn": fn, "params": params})


def _asdict(ref: DatasetRef) -> dict:
    return {"root": ref.root, "dataset": ref.dataset, "stage": ref.stage, "version": ref.version}


@task(retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="ingest")
def ingest_task(sources, root, dataset, docs_per_shard, profile, fail_from_shard=None) -> DatasetRef:
    return ingest(sources, root=root, dataset=dataset, docs_per_shard=docs_per_shard, profile=profile, fail_from_shard=fail_from_shard)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(
    src: DatasetRef,
    stage: str,
    fn: Callable,
    params: Any,
    profile: runtime.Profile,
    stateful: bool = False,
    side: dict[str, DatasetRef] | None = None,
) -> DatasetRef:
    """The one generic stage task: skips committed versions, resumes partial ones, logs row counts."""
    return map_stage(src, stage, fn, params, profile, stateful=stateful, side=side)


# ------------------------------------------------------------------------------------------------ SQL and global steps


def sandboxed_duckdb(memory_limit: str | None = None, temp_directory: str | None = None):
    """A DuckDB connection for user SQL (filters are data, not code): it cannot read or write files or attach."""
    import duckdb

    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    if temp_directory:
        con.execute(f"SET temp_directory = '{temp_directory}'")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def sql_over_batch(sql_fn: Callable[[Any], str], params: Any, batch: pa.Table) -> pa.Table:
    """Run a stage's SQL (built by a pure ``sql_fn(params)`` in tasks/) over one batch registered as ``batch``."""
    con = sandboxed_duckdb()
    try:
        con.register("batch", batch)
        return con.execute(sql_fn(params)).to_arrow_table()
    finally:
        con.close()


def global_stage(
    srcs: DatasetRef | Sequence[DatasetRef],
    stage: str,
    fn: Callable[..., pa.Table],
    params: Any,
    profile: runtime.Profile,
    *,
    columns: Sequence[str] | None = None,
    extra_args: Sequence[Any] = (),
    code: Any = None,
) -> DatasetRef:
    """A global step (k-means fit, sampling, dedup components): one worker reads the inputs, ``fn`` returns a table."""
    log = _logger()
    srcs = [srcs] if isinstance(srcs, DatasetRef) else list(srcs)
    dst = datasets.derive(srcs, stage, code or fn, params)
    if datasets.is_committed(dst):
        log.info(f"{stage}: {dst} already committed, skipping")
        return dst
    t0 = time.perf_counter()
    runtime.run_remote(
        _global_work, fn, [_asdict(s) for s in srcs], _asdict(dst), params, list(columns) if columns else None,
        list(extra_args), resources=profile.resources(stage), profile=profile,
    )
    manifest = datasets.commit(
        dst, parents=srcs, params=params, code=datasets.code_hash(code or fn),
        extra={"stats": {"seconds": round(time.perf_counter() - t0, 3)}},
    )
    log.info(f"{stage}: {manifest['num_rows']} rows -> {dst.uri}")
    return dst


def _global_work(fn, srcs, dst, params, columns, extra_args) -> int:
    tables = [datasets.read_table(DatasetRef(**s), columns=columns) for s in srcs]
    out = fn(*tables, params, *extra_args)
    ref = DatasetRef(**dst)
    datasets.write_shards(ref, out)
    return out.num_rows



def sql_stage(
    srcs: DatasetRef | Sequence[DatasetRef],
    stage: str,
    run: Callable[..., str],
    params: Any,
    *,
    code: Any = None,
    rows_per_shard: int = 500_000,
) -> DatasetRef:
    """A global step in DuckDB that spills to disk: ``run(con, *input_exprs, params)`` builds a table and returns its
    name; the table is streamed out as shards. Used for dedup group-bys that must not hold everything in RAM."""
    log = _logger()
    srcs = [srcs] if isinstance(srcs, DatasetRef) else list(srcs)
    dst = datasets.derive(srcs, stage, code or run, params)
    if datasets.is_committed(dst):
        log.info(f"{stage}: {dst} already committed, skipping")
        return dst
    from storage import catalog

    t0 = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"quarry-{stage}-") as spill:
        con = catalog.scratch(dst.root, temp_directory=spill)
        try:
            name = run(con, *[catalog.parquet_expr(datasets.files(s)) for s in srcs], params)
            reader = con.sql(f"SELECT * FROM {name}").to_arrow_reader(rows_per_shard)
            index = 0
            for batch in reader:
                if batch.num_rows or index == 0:
                    datasets.write_shard(dst, datasets.shard_name(index), pa.Table.from_batches([batch]))
                    index += 1
            if index == 0:  # an empty result still commits a (schema-carrying) shard
                datasets.write_shard(dst, datasets.shard_name(0), reader.schema.empty_table())
        finally:
            con.close()
    manifest = datasets.commit(
        dst, parents=srcs, params=params, code=datasets.code_hash(code or run),
        extra={"stats": {"seconds": round(time.perf_counter() - t0, 3)}},
    )
    log.info(f"{stage}: {manifest['num_rows']} rows -> {dst.uri}")
    return dst


def publish_funnel(ref: DatasetRef) -> list[dict]:
    """The filter funnel (documents per drop_reason) of a version, as a Prefect table artifact and a log line."""
    if not any(f["name"] == "drop_reason" for f in datasets.read_manifest(ref)["schema"]):
        return []
    from storage import catalog

    con = catalog.scratch(ref.root)
    try:
        rows = catalog.query(
            con,
            f"SELECT coalesce(drop_reason, '(kept)') AS drop_reason, count(*) AS documents, "
            f"round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS percent "
            f"FROM {catalog.parquet_expr(datasets.files(ref))} GROUP BY 1 ORDER BY documents DESC",
        ).to_pylist()
    finally:
        con.close()
    _logger().info("funnel of %s: %s", ref, ", ".join(f"{r['drop_reason']}={r['documents']}" for r in rows))
    _publish_table("filter-funnel", rows, f"filter funnel of {ref}")
    return rows
