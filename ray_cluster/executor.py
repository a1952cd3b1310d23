"""The generic executor: runs any registry stage (tasks/registry.py) over versioned storage. Knows no stage name.

    ref = executor.run(stage, [src], params, profile)

Every stage goes through the same derive -> skip-if-committed -> compute -> check -> commit sequence; the kind says
how it computes:

* ``source``  external files -> document shards (+ a quarantine side output), one work item per input file:
  ``list_inputs(params) -> ([(spec, uri)], stats)`` on the driver, ``fn(uri, spec) -> (docs, bad)`` per file;
* ``map``     ``fn(batch, params, **side)`` over every shard of the first input (side inputs: small tables);
* ``actor``   ``fn(params, **side)`` builds a model once per actor, then maps batches (a Ray Data actor pool);
* ``sql_map`` ``fn(params)`` is SQL over ``batch``, run per batch in a sandboxed DuckDB (rules are data, not code);
* ``sql``     a global step in DuckDB that spills to disk (dedup group-bys): ``fn(con, exprs, params, columns)``,
  ``exprs[role]`` a relation over the role's wide table, ``exprs[f"{role}_in_order"]`` the same with ``__shard``,
  ``__row`` (corpus order);
* ``global``  ``fn(tables, params, ctx)`` over whole small tables on one worker, with side outputs committed as
  siblings and ``ctx.checkpoint`` for per-level/per-step resume (k-means, sampling, packing, training, evaluation);
* ``llm``     Ray Data's LLM processor (vLLM engines) per shard, when the stage's params route there.

Resume and idempotence: versions are content-addressed, a committed version is skipped, a partial one resumes at
shard granularity, and the manifest is written last. Before the commit the rows the workers reported are checked
against the shards the driver can see, so a storage root that the workers do not share fails loudly instead of
committing empty versions. Worker-side code lives here or in tasks/; flows only compose.

Size: one module on purpose: every kind shares the same derive/skip/check/commit path and worker entry points,
and splitting it would scatter that one sequence over several files.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import posixpath
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_cluster import runtime
from storage import datasets, layers
from storage.datasets import DatasetRef, StorageError

log = logging.getLogger("quarry")


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection hook that tests use to fail a stage after k shards."""


def _maybe_fail(item: dict) -> None:
    fail_from = item.get("fail_from_shard")
    if fail_from is not None and item["index"] >= fail_from:
        raise InjectedFailure(f"injected failure at shard {item['index']} (fail_from_shard={fail_from})")


def _asdict(ref: DatasetRef) -> dict:
    return {"root": ref.root, "dataset": ref.dataset, "stage": ref.stage, "version": ref.version}


def resources(stage: Any, profile: runtime.Profile) -> runtime.StageResources:
    """A stage's resources: its own profile entry, else its recipe section's (a step of exact_dedup), else default."""
    for key in (stage.name, stage.section):
        if key and key in profile.stages:
            return profile.stages[key]
    return profile.default


def code_of(stage: Any) -> Any:
    """What a version hashes besides params and parents: the stage function's module and the modules it names."""
    return (stage.fn, *stage.code) if stage.code else stage.fn


def secret_env(params: Any) -> dict[str, str]:
    """The secrets a stage's workers need: params name environment variables (fields ending in ``_env``, e.g.
    ``api_key_env``), never hold values. Those set in the driver's environment are forwarded to the workers."""
    if not dataclasses.is_dataclass(params):
        return {}
    names = [getattr(params, f.name) for f in dataclasses.fields(params) if f.name.endswith("_env")]
    return {n: os.environ[n] for n in names if isinstance(n, str) and os.environ.get(n)}


def check_shared_root(root: str, profile: runtime.Profile) -> None:
    """Refuse, before any work, a storage root that the cluster's workers cannot share."""
    fs, _ = datasets.filesystem(root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol == "memory" and profile.engine != "serial":
        raise StorageError(
            f"storage root {root!r} lives in this process's memory; the {profile.engine} workers of profile "
            f"{profile.name!r} would each write to their own copy. Use a shared root (a local folder for a local "
            "cluster, s3://... or a mounted path for a remote one) or the serial profile."
        )


# ------------------------------------------------------------------------------------------------ entry point


def run(
    stage: Any,
    inputs: Sequence[DatasetRef | None],
    params: Any,
    profile: runtime.Profile,
    *,
    root: str | None = None,
    dataset: str | None = None,
    fail_from_shard: int | None = None,
) -> DatasetRef:
    """Run one registry stage on its inputs (positional, in ``stage.inputs`` order; None for an absent optional
    input) and return the committed version; a no-op when that version is already committed. ``root`` and
    ``dataset`` name where a stage without inputs writes (ingest), or another dataset for the output (an
    experiment's table)."""
    kind = stage.route(params) if stage.route else stage.kind
    fn = {
        "source": _source, "map": _map, "actor": _map, "sql_map": _map, "sql": _sql, "global": _global, "llm": _llm,
    }.get(kind)
    if fn is None:
        raise ValueError(f"stage {stage.name!r} has an unknown kind {kind!r}")
    target = {"root": root, "dataset": dataset}
    return fn(stage, kind, list(inputs), params, profile, fail_from_shard, target)


def run_chain(steps: Sequence[Any], src: DatasetRef, params: Any, profile: runtime.Profile,
              runner: Callable[..., DatasetRef] | None = None) -> DatasetRef:
    """Run a recipe section's steps in order, each fed by the outputs it names (``src``: the section's input);
    ``runner(step, inputs, params, profile)`` wraps each step (a Prefect task in flows), default ``run``."""
    runner = runner or (lambda step, inputs, p, prof: run(step, inputs, p, prof))
    refs: dict[str, DatasetRef] = {"src": src}
    for step in steps:
        refs[step.name] = runner(step, [refs[i] for i in step.inputs], params, profile)
    return refs[steps[-1].name]


def _present(stage: Any, inputs: list[DatasetRef | None]) -> tuple[list[DatasetRef], dict[str, DatasetRef]]:
    if stage.variadic:
        if not inputs or any(r is None for r in inputs):
            raise ValueError(f"stage {stage.name!r} needs one or more inputs")
        return list(inputs), {f"{stage.roles[0]}_{i}": r for i, r in enumerate(inputs)}
    if len(inputs) > len(stage.inputs):
        raise ValueError(f"stage {stage.name!r} takes {len(stage.inputs)} inputs ({stage.roles}), got {len(inputs)}")
    inputs = inputs + [None] * (len(stage.inputs) - len(inputs))
    roles = {r: ref for r, ref in zip(stage.roles, inputs, strict=True) if ref is not None}
    missing = [r for r in stage.roles if r not in roles and r not in stage.optional]
    if missing:
        raise ValueError(f"stage {stage.name!r} needs inputs {missing}")
    return [r for r in inputs if r is not None], roles


def _prepare(stage: Any, inputs: list[DatasetRef | None], params: Any, profile: runtime.Profile, target: dict, *,
             workers: bool = True) -> tuple[list[DatasetRef], dict[str, DatasetRef], DatasetRef, bool]:
    """The opening every kind shares: derive the version, skip it when committed, refuse (before any work) a root
    the stage's workers could not share. Returns (inputs present, roles, version, already committed)."""
    present, roles = _present(stage, inputs)
    dst = datasets.derive(present, stage.name, code_of(stage), params, dataset=target["dataset"])
    if datasets.is_committed(dst):
        log.info(f"{stage.name}: {dst} already committed, skipping")
        return present, roles, dst, True
    if workers:
        check_shared_root(dst.root, profile)
    return present, roles, dst, False


def _commit(stage: Any, dst: DatasetRef, parents: list[DatasetRef], params: Any, stats: dict,
            expected: dict[str, int] | None = None, inputs: Sequence[str] = (), layer: dict | None = None) -> dict:
    """Check what the workers reported against what the driver sees, then write the manifest (the commit)."""
    if expected is not None:
        have = _shard_rows(dst)
        lost = {n: r for n, r in expected.items() if have.get(n) != r}
        if lost:
            raise StorageError(
                f"{stage.name}: workers reported {sum(lost.values())} rows in {len(lost)} shards that the driver "
                f"cannot see under {dst.uri} (e.g. {sorted(lost)[:3]}): the storage root is not shared with the "
                "cluster's workers. Nothing was committed."
            )
    kwargs = dict(parents=parents, params=params, code=datasets.code_hash(code_of(stage)), extra={"stats": stats},
                  inputs=inputs)
    manifest = layers.commit_layer(dst, layer, **kwargs) if layer else datasets.commit(dst, **kwargs)
    log.info(f"{stage.name}: {manifest['num_rows']} rows -> {dst.uri}")
    return manifest


def _read_uncommitted(ref: DatasetRef, columns: Sequence[str] | None = None) -> pa.Table:
    """The shards written so far (a stage's own bookkeeping just before its commit), projected to ``columns``."""
    fs, base = datasets.filesystem(ref.uri)
    tables = []
    for name in sorted(datasets.existing_shards(ref)):
        with fs.open(posixpath.join(base, name), "rb") as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
            tables.append(pf.read(columns=cols))
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def _shard_rows(ref: DatasetRef) -> dict[str, int]:
    fs, base = datasets.filesystem(ref.uri)
    out = {}
    for name in datasets.existing_shards(ref):
        with fs.open(posixpath.join(base, name), "rb") as f:
            out[name] = pq.ParquetFile(f).metadata.num_rows
    return out


# ------------------------------------------------------------------------------------------------ source (ingest)


def _source(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    root, dataset = target["root"], target["dataset"]
    if not root or not dataset:
        raise ValueError(f"stage {stage.name!r} reads external files: pass root= and dataset=")
    datasets.ensure_writable(root)
    check_shared_root(root, profile)
    files, listing = stage.list_inputs(params)
    uris = [u for _, u in files]
    ref = datasets.source_ref(root, dataset, stage.name, code_of(stage), params.version_params(), uris)
    if datasets.is_committed(ref):
        log.info(f"{stage.name}: {ref} already committed, skipping")
        return ref
    items = [
        {"index": i, "file": uri, "spec": spec, "ref": _asdict(ref), "side": list(stage.outputs),
         "docs_per_shard": params.docs_per_shard, "fail_from_shard": fail_from_shard}
        for i, (spec, uri) in enumerate(files)
    ]
    t0 = time.perf_counter()
    work = functools.partial(_read_source_item, stage.fn, stage.summarize)
    results = runtime.run_shards(items, work, resources(stage, profile), profile=profile, desc=stage.name)
    results.sort(key=lambda r: r["index"])
    elapsed = time.perf_counter() - t0
    stats = {**(stage.reduce(results, elapsed) if stage.reduce else {"seconds": round(elapsed, 3)}), **listing}
    vparams = params.version_params()
    for side in stage.outputs:  # the quarantine first: the documents' manifest is the commit of the whole ingest
        _commit(stage, ref.sibling(side), [], vparams, {},
                expected={r["side_shard"]: r["side_rows"] for r in results}, inputs=uris)
    expected = {name: rows for r in results for name, rows in r["shards"].items()}
    _commit(stage, ref, [], vparams, stats, expected=expected, inputs=uris)
    return ref


def _read_source_item(read: Callable, summarize: Callable | None, item: dict) -> dict:
    """Worker: read one input file into document shards and one side (quarantine) shard; skip shards present."""
    _maybe_fail(item)
    docs_ref = DatasetRef(**item["ref"])
    docs, bad = read(item["file"], item["spec"])  # a file that cannot be opened is a quarantine row, not a crash
    stem = f"part-{item['index']:05d}"
    out = {"index": item["index"], "file": item["file"], "shards": {}}
    if item["side"]:
        side_ref, side_name = docs_ref.sibling(item["side"][0]), f"{stem}-0000.parquet"
        if side_name not in datasets.existing_shards(side_ref):
            datasets.write_shard(side_ref, side_name, bad)
        out.update(side_shard=side_name, side_rows=bad.num_rows)
    per = item["docs_per_shard"]
    done = datasets.existing_shards(docs_ref)
    for c in range(max(1, -(-docs.num_rows // per))):
        name = f"{stem}-{c:04d}.parquet"
        part = docs.slice(c * per, per)
        if name not in done:
            datasets.write_shard(docs_ref, name, part)
        out["shards"][name] = part.num_rows
    if summarize is not None:
        out.update(summarize(docs, bad))
    return out


# ------------------------------------------------------------------------------------------------ map kinds


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
    import duckdb

    # execute() runs every statement and returns the LAST one's result: a smuggled second statement would replace
    # the stage's output. tasks/ already refuses such rules; this is the engine-side backstop.
    statements = duckdb.extract_statements(sql_fn(params))
    if len(statements) != 1:
        raise ValueError(f"a stage's SQL must be exactly one statement, got {len(statements)}")
    con = sandboxed_duckdb()
    try:
        con.register("batch", batch)
        return con.sql(statements[0]).to_arrow_table()
    finally:
        con.close()


@functools.lru_cache(maxsize=8)
def _side_table(ref: DatasetRef, columns: tuple[str, ...] | None = None) -> pa.Table:
    """A side input (dedup keepers, a sampler's selection, an earlier version's rows) read once per worker."""
    return datasets.read_table(ref, columns=columns)


def _history(ref: DatasetRef, columns: Sequence[str] | None) -> pa.Table | None:
    """Rows of every committed version of the same dataset/stage (e.g. earlier generations an actor may reuse)."""
    tables = []
    for m in datasets.iter_manifests(ref.root):
        if m["dataset"] == ref.dataset and m["stage"] == ref.stage:
            tables.append(datasets.read_table(DatasetRef(ref.root, ref.dataset, ref.stage, m["version"])))
    if not tables:
        return None
    out = pa.concat_tables(tables, promote_options="permissive")
    return out.select([c for c in columns if c in out.column_names]) if columns else out


class _Model:
    """The per-actor state of an ``actor`` stage: the stage's callable, built once with its side tables."""

    def __init__(self, cls: Callable, params: Any, side: dict[str, dict], history: dict | None):
        tables = {k: _side_table(DatasetRef(**v)) for k, v in side.items()}
        if history is not None:
            tables["history"] = _history(DatasetRef(**history["ref"]), history["columns"])
        self.fn = cls(params, **tables)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.fn(batch)


def _apply(fn: Callable, item: dict) -> dict:
    """Worker: read one input shard (projected to the columns the stage reads, through its layers) in batches,
    apply ``fn(batch)``, write the output shard under the same name: the whole table, or only the stage's layer."""
    _maybe_fail(item)
    dst, src = DatasetRef(**item["dst"]), DatasetRef(**item["src"])
    layer, where = item["layer"], f"{dst.stage} on {src}/{item['name']}"
    outs, offset = [], 0
    for batch in layers.iter_shard(src, item["name"], item["columns"], batch_size=item["rows_per_call"]):
        if layer == "rows":  # a selection records which input rows it kept (and how often)
            batch = batch.append_column(layers.POS, pa.array(np.arange(offset, offset + batch.num_rows, dtype=np.int64)))
        outs.append(_layer_part(layer, batch, fn(batch), item["rewrites"], offset, where))
        offset += batch.num_rows
    out = pa.concat_tables(outs, promote_options="permissive")
    datasets.write_shard(dst, item["name"], out)
    return {"index": item["index"], "name": item["name"], "rows_in": offset, "rows_out": out.num_rows}


def _layer_part(layer: str | None, batch: pa.Table, out: pa.Table, rewrites: Sequence[str], offset: int,
                where: str) -> pa.Table:
    """What a batch's output stores: everything (a full stage), or only what the stage added to its input."""
    if layer is None:
        return out
    new = [c for c in out.column_names if c not in batch.column_names]
    if layer == "rows":
        if layers.POS not in out.column_names:
            raise ValueError(f"{where}: a selection stage must keep its input's rows as they are (lost {layers.POS})")
        pos = out.column(layers.POS).to_numpy(zero_copy_only=False)
        if len(pos) and (np.any(np.diff(pos) < 0) or pos[0] < offset):
            raise ValueError(f"{where}: a selection stage must keep its rows in input order")
        return out.select([layers.POS, *new])
    if out.num_rows != batch.num_rows:
        raise ValueError(f"{where}: a columns-layer stage must keep every row ({batch.num_rows} in, {out.num_rows} out)")
    dropped = [c for c in batch.column_names if c not in out.column_names]
    if dropped:
        raise ValueError(f"{where}: a columns-layer stage dropped input columns {dropped}")
    for c in batch.column_names:
        # an undeclared change would be lost (the view shows the input's value): refuse it. Floats are skipped
        # (NaN != NaN); stages only ever add float columns.
        if c not in rewrites and not pa.types.is_floating(batch.schema.field(c).type) \
                and not out.column(c).equals(batch.column(c)):
            raise ValueError(f"{where}: the stage changed column {c!r}, which it does not declare in `rewrites`")
    own = [*new, *(c for c in rewrites if c in batch.column_names)]
    if not own:  # nothing added: the layer still records its row count
        return pa.table({layers.POS: pa.array(np.arange(offset, offset + out.num_rows, dtype=np.int64))})
    return out.select(own)


def _call_map(fn: Callable, params: Any, side: dict, batch: pa.Table) -> pa.Table:
    return fn(batch, params, **side)


def _sql_map_batch(sql_fn: Callable, post: Callable | None, params: Any, batch: pa.Table) -> pa.Table:
    out = sql_over_batch(sql_fn, params, batch)
    return post(out, params) if post is not None else out


def _stateful(item: dict, state: _Model) -> dict:
    return _apply(state, item)


def _map(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    present, roles, dst, committed = _prepare(stage, inputs, params, profile, target)
    if committed:
        return dst
    src, side = inputs[0], {k: v for k, v in roles.items() if k != stage.roles[0]}
    res = resources(stage, profile)
    done = datasets.existing_shards(dst)
    columns = projection(stage, params, layers.column_names(src))
    hide = _hidden(stage, kind, params, src, side) if stage.layer == "rows" else ()
    items = [
        {"index": i, "name": name, "src": _asdict(src), "dst": _asdict(dst), "rows_per_call": res.rows_per_call,
         "columns": columns, "layer": stage.layer, "rewrites": list(stage.rewrites),
         "fail_from_shard": fail_from_shard, "side": {k: _asdict(v) for k, v in side.items()}}
        for i, name in enumerate(layers.shard_names(src))
        if name not in done
    ]
    t0 = time.perf_counter()
    secrets = secret_env(params)
    if kind == "actor":
        history = {"ref": _asdict(dst), "columns": stage.history} if stage.history is not None else None
        setup = functools.partial(_Model, stage.fn, params, {k: _asdict(v) for k, v in side.items()}, history)
        results = runtime.run_shards(items, _stateful, res, profile=profile, setup=setup, desc=stage.name, secrets=secrets)
    else:
        work = functools.partial(_stateless_entry, kind, stage.fn, stage.post, params)
        results = runtime.run_shards(items, work, res, profile=profile, desc=stage.name, secrets=secrets)
    elapsed = time.perf_counter() - t0
    stats = {"shards_computed": len(results), "shards_resumed": len(done), "seconds": round(elapsed, 3),
             "rows_in_computed": sum(r["rows_in"] for r in results)}
    if stage.summarize_output is not None:
        stats.update(stage.summarize_output(functools.partial(_read_uncommitted, dst), elapsed, res, params))
    layer = {"kind": stage.layer, "of": str(src), "hide": list(hide)} if stage.layer else None
    _commit(stage, dst, present, params, stats, expected={r["name"]: r["rows_out"] for r in results}, layer=layer)
    return dst


def projection(stage: Any, params: Any, available: list[str]) -> list[str]:
    """The input columns a per-shard stage reads (Parquet projection: quality_filter never reads ``text``)."""
    if stage.reads is None:
        return list(available)
    wanted = set(stage.reads(params, list(available)))
    cols = [c for c in available if c in wanted]
    return cols or available[:1]  # a batch needs one column to carry its row count


def _hidden(stage: Any, kind: str, params: Any, src: DatasetRef, side: dict[str, DatasetRef]) -> list[str]:
    """The input columns a selection stage drops from its view (e.g. ``kept`` hides MinHash signatures): learnt by
    running it on the input's empty wide table, so the stage function stays the only place that decides."""
    empty = layers.empty_table(src).append_column(layers.POS, pa.array([], pa.int64()))
    if kind == "sql_map":
        out = _sql_map_batch(stage.fn, stage.post, params, empty)
    else:
        out = stage.fn(empty, params, **{k: _side_table(v) for k, v in side.items()})
    return [c for c in empty.column_names if c not in out.column_names and c != layers.POS]


def _stateless_entry(kind: str, fn: Callable, post: Callable | None, params: Any, item: dict) -> dict:
    side = {k: _side_table(DatasetRef(**v)) for k, v in item["side"].items()}
    if kind == "sql_map":
        call = functools.partial(_sql_map_batch, fn, post, params)
    else:
        call = functools.partial(_call_map, fn, params, side)
    return _apply(call, item)


# ------------------------------------------------------------------------------------------------ sql (global, spills)


def _sql(stage, kind, inputs, params, profile, fail_from_shard, target, rows_per_shard: int = 500_000) -> DatasetRef:
    """A global step in DuckDB that spills to disk; the result table is streamed out as shards. On Ray it runs as
    one task with the stage's resources, so the driver's memory does not grow with the corpus (at 2M documents the
    fuzzy-dedup joins held ~1 GB of the driver's 1.7 GB peak)."""
    present, roles, dst, committed = _prepare(stage, inputs, params, profile, target, workers=False)
    if committed:
        return dst
    res = resources(stage, profile)
    t0 = time.perf_counter()
    args = (stage, _asdict(dst), {r: _asdict(ref) for r, ref in roles.items()}, params, res, rows_per_shard)
    expected = runtime.run_remote(_sql_work, *args, resources=res, profile=profile)  # in-process off Ray
    _commit(stage, dst, present, params, {"seconds": round(time.perf_counter() - t0, 3)}, expected=expected)
    return dst


def sql_inputs(stage: Any, params: Any, roles: dict[str, DatasetRef], spill: str) -> tuple[dict, dict]:
    """(table expressions, columns) per role of a `sql` stage, as its function gets them: each input projected to
    the columns the stage reads, unsorted (the global steps group and join), and as ``<role>_in_order`` with the
    row identity (__shard, __row: corpus order, for steps that keep a first occurrence). A role whose columns lie
    in several layers is first flattened into one local Parquet file under ``spill`` (`layers.materialize`, one
    shard at a time): DuckDB's join of layers holds every row of the corpus in a hash table, past any budget."""
    columns = {r: projection(stage, params, layers.column_names(ref)) for r, ref in roles.items()}
    exprs = {}
    for role, ref in roles.items():
        if layers.needs_join(ref, columns[role]):
            path = os.path.join(spill, f"input-{role}.parquet")
            layers.materialize(ref, columns[role], path)
            exprs[role] = f"({layers.file_relation(path, columns[role])})"
            exprs[f"{role}_in_order"] = f"({layers.file_relation(path, columns[role], keys=True)})"
        else:
            exprs[role] = f"({layers.relation_sql(ref, columns[role], ordered=False)})"
            exprs[f"{role}_in_order"] = f"({layers.relation_sql(ref, columns[role], keys=True)})"
    return exprs, columns


def _sql_work(stage, dst: dict, roles: dict, params, res, rows_per_shard: int) -> dict[str, int]:
    """Worker: run the stage's SQL in a scratch DuckDB and write its result table as shards; rows per shard."""
    from storage import catalog

    dst = DatasetRef(**dst)
    with tempfile.TemporaryDirectory(prefix=f"quarry-{stage.name}-") as spill:
        exprs, columns = sql_inputs(stage, params, {r: DatasetRef(**v) for r, v in roles.items()}, spill)
        # the profile's memory_gb bounds DuckDB (it spills past it): fuzzy dedup of millions of docs in a fixed budget
        limit = f"{res.memory_gb}GB" if res.memory_gb else None
        con = catalog.scratch(dst.root, temp_directory=spill, memory_limit=limit)
        try:
            name = stage.fn(con, exprs, params, columns)
            reader = con.sql(f"SELECT * FROM {name}").to_arrow_reader(rows_per_shard)
            expected, index = {}, 0
            for batch in reader:
                if batch.num_rows or index == 0:
                    shard = datasets.shard_name(index)
                    datasets.write_shard(dst, shard, pa.Table.from_batches([batch]))
                    expected[shard] = batch.num_rows
                    index += 1
            if index == 0:  # an empty result still commits a (schema-carrying) shard
                datasets.write_shard(dst, datasets.shard_name(0), reader.schema.empty_table())
                expected[datasets.shard_name(0)] = 0
        finally:
            con.close()
    return expected


# ------------------------------------------------------------------------------------------------ global


class Checkpoint:
    """Per-step checkpoints of a global stage: step ``s`` of each named table is shard ``part-{s:05d}`` of that
    sibling version. A step is complete when every name has its shard (saved in order: the last one completes it)."""

    def __init__(self, dst: DatasetRef, names: Sequence[str]):
        self.dst, self.names = dst, list(names)

    def load(self) -> list[dict[str, pa.Table]]:
        have = {n: datasets.existing_shards(self.dst.sibling(n)) for n in self.names}
        steps, s = [], 1
        while all(datasets.shard_name(s) in have[n] for n in self.names):
            steps.append({n: datasets.read_shard(self.dst.sibling(n), datasets.shard_name(s)) for n in self.names})
            s += 1
        return steps

    def save(self, step: int, tables: dict[str, pa.Table]) -> None:
        for n in self.names:
            datasets.write_shard(self.dst.sibling(n), datasets.shard_name(step), tables[n])


@dataclasses.dataclass
class Context:
    """What a global stage may ask of the executor (never storage itself)."""

    dst: DatasetRef
    roles: dict[str, DatasetRef]
    checkpoint: Checkpoint | None
    resources: runtime.StageResources
    profile: runtime.Profile

    @property
    def local_dir(self) -> Path:
        """The version folder on a local/mounted filesystem (memory-mapped arrays, checkpoints, model files)."""
        return local_dir(self.dst)

    def input_dir(self, role: str) -> Path:
        return local_dir(self.roles[role])

    def input_manifest(self, role: str) -> dict:
        return datasets.read_manifest(self.roles[role])

    def input_ref(self, role: str) -> str:
        return str(self.roles[role])

    def distributed(self, loop: Callable[[dict], dict], config: dict) -> dict:
        """Run a training loop on the profile's workers (Ray Train's TorchTrainer), or in-process off Ray."""
        from ray_cluster.train import fit

        return fit(loop, config, self.resources, self.profile)


def local_dir(ref: DatasetRef) -> Path:
    """Stages that memory-map arrays or write checkpoints need a local or mounted storage root."""
    fs, path = datasets.filesystem(ref.uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        raise StorageError(f"{ref} is on {protocol}://; this stage needs a local or mounted storage root")
    return Path(path)


def _global(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    present, roles, dst, committed = _prepare(stage, inputs, params, profile, target)
    if committed:
        return dst
    res = resources(stage, profile)
    t0 = time.perf_counter()
    args = (stage, _asdict(dst), {r: _asdict(v) for r, v in roles.items()}, params, res, profile)
    if stage.driver:
        stats, expected = _global_work(*args)
    else:  # in-process off Ray
        stats, expected = runtime.run_remote(_global_work, *args, resources=res, profile=profile)
    stats = {**(stats or {}), "seconds": round(time.perf_counter() - t0, 3)}
    for side in [*stage.checkpoints, *stage.outputs]:  # siblings first: the main manifest commits the stage
        if datasets.existing_shards(dst.sibling(side)):
            _commit(stage, dst.sibling(side), present, params, {})
    _commit(stage, dst, present, params, stats, expected=expected)
    return dst


def _global_work(stage, dst: dict, roles: dict, params, res, profile) -> tuple[dict, dict[str, int]]:
    """Worker: read the inputs (projected to the stage's columns), run the stage, write its outputs."""
    dst_ref = DatasetRef(**dst)
    refs = {r: DatasetRef(**v) for r, v in roles.items()}
    tables = {}
    for r, ref in refs.items():
        cols = (stage.columns or {}).get(r, ())
        if cols is not None:  # None: the stage reads this input through ctx (a model folder, packed arrays)
            tables[r] = datasets.read_table(ref, columns=list(cols) or None)
    ckpt = Checkpoint(dst_ref, stage.checkpoints) if stage.checkpoints else None
    out = stage.fn(tables, params, Context(dst_ref, refs, ckpt, res, profile))
    stats = {}
    if isinstance(out, tuple):
        out, stats = out
    if isinstance(out, pa.Table):
        out = {stage.name: out}
    expected = {}
    for name, table in out.items():
        ref = dst_ref if name == stage.name else dst_ref.sibling(name)
        datasets.write_shards(ref, table)
        if name == stage.name:
            expected = {datasets.shard_name(i): len(s) for i, s in enumerate(_slices(table))}
    return stats, expected


def _slices(table: pa.Table, per: int = 100_000) -> list[pa.Table]:
    return [table.slice(i * per, per) for i in range(max(1, -(-table.num_rows // per)))]


# ------------------------------------------------------------------------------------------------ llm (vLLM engines)


def _llm(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    """Every pending shard goes through one set of vLLM engine replicas (Ray Data's LLM processor: starting an engine
    costs a minute on CPU, so not one per shard); each shard is written under its own name as soon as all its rows
    are back, so a killed run resumes shard by shard like every other stage. ``num_gpus: 0`` in the profile runs
    vLLM's CPU engine."""
    import pyarrow.compute as pc
    import ray.data

    from ray_cluster.llm import in_input_order, vllm_map

    present, _, dst, committed = _prepare(stage, inputs, params, profile, target)
    if committed:
        return dst
    src = inputs[0]
    res = resources(stage, profile)
    done = datasets.existing_shards(dst)
    t0 = time.perf_counter()
    shard_col = "__quarry_shard"  # which input shard a row came from (dropped before writing)
    todo = {}  # shard name -> (index among all shards, its doc_ids in order)
    parts = []
    for index, name in enumerate(layers.shard_names(src)):
        if name in done:
            continue
        # The driver reads each pending shard (bounded by the producing stage's docs_per_shard) and hands it to Ray
        # Data as a table: Ray Data's parquet reader lists files in a 1-CPU task, which never gets a CPU next to a
        # CPU engine and its light stages on 2 cores (a deadlock, seen here).
        table = layers.read_shard(src, name)  # the wide rows, through the layers the input lies on
        todo[name] = (index, table.column("doc_id").to_pylist())
        parts.append(ray.data.from_arrow(table.append_column(shard_col, pa.array([name] * table.num_rows, pa.string()))))
    expected: dict[str, int] = {}
    if parts:
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        out = vllm_map(ds, concurrency=max(1, res.concurrency), batch_size=res.rows_per_call,
                       num_gpus=res.num_gpus, num_cpus=res.num_cpus, **stage.llm(params))
        pending: dict[str, list[pa.Table]] = {n: [] for n in todo}
        have = dict.fromkeys(todo, 0)
        batches = iter(out.iter_batches(batch_format="pyarrow", batch_size=None))  # a generator: closable
        try:
            for batch in batches:
                for name in pc.unique(batch.column(shard_col)).to_pylist():
                    rows = batch.filter(pc.equal(batch.column(shard_col), name)).drop_columns([shard_col])
                    pending[name].append(rows)
                    have[name] += rows.num_rows
                    if have[name] == len(todo[name][1]):  # the shard is complete: write it now (resume point)
                        # shards complete in any order: fault injection counts the shards this run has written
                        _maybe_fail({"index": len(expected), "fail_from_shard": fail_from_shard})
                        rows = pa.concat_tables(pending.pop(name), promote_options="permissive")
                        table = in_input_order(rows, todo[name][1])
                        # Ray's own columns (`__inference_error__`: the stage records failures in its own columns)
                        table = table.drop_columns([c for c in table.column_names if c.startswith("__")])
                        datasets.write_shard(dst, name, table)
                        expected[name] = table.num_rows
        finally:
            batches.close()  # stops the engine replicas now, also when a write failed (they hold the CPUs/GPUs)
        short = {n: f"{have[n]}/{len(todo[n][1])}" for n in pending}
        if short:
            raise StorageError(f"{stage.name}: the LLM processor returned too few rows for shards {short} "
                               f"(rows back/rows in); they were not written and nothing was committed")
    elapsed = time.perf_counter() - t0
    stats = {}
    if stage.summarize_output is not None:
        stats = stage.summarize_output(functools.partial(_read_uncommitted, dst), elapsed, res, params)
    _commit(stage, dst, present, params, {**stats, "seconds": round(elapsed, 3)}, expected=expected)
    return dst

