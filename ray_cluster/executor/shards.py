"""The per-shard kinds: ``map`` (``fn(batch, params, **side)`` over every shard of the first input; side inputs are
small tables), ``actor`` (``fn(params, **side)`` builds a model once per actor, then maps batches: a Ray Data actor
pool) and ``sql_map`` (``fn(params)`` is SQL over ``batch``, run per batch in a sandboxed DuckDB: rules are data, not
code). A stage with a ``layer`` writes only what it adds to its input (a columns layer, or the rows it keeps)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ray_cluster import progress, runtime
from ray_cluster.executor import core, limited_sql
from storage import datasets, layers, provenance
from storage.datasets import DatasetRef

SQL_TIMEOUT_S = 300.0  # per batch, for params without sql_timeout_s; a filter's rules take milliseconds
SQL_MEMORY_GB = 2.0


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
    # user SQL gets a time and a memory bound (params' sql_timeout_s / sql_memory_gb): see limited_sql for why a
    # child process; past a bound, each of the stage's parts (a filter's rules) runs alone to name the culprit
    limits = {"timeout_s": getattr(params, "sql_timeout_s", SQL_TIMEOUT_S),
              "memory_gb": getattr(params, "sql_memory_gb", SQL_MEMORY_GB)}
    try:
        return limited_sql.run_sql(statements[0].query, batch, **limits)
    except limited_sql.SqlLimitError as e:
        culprit = "the stage's SQL"
        for label, part in getattr(params, "sql_parts", lambda: [])():
            try:
                limited_sql.run_sql(part, batch, **limits)
            except limited_sql.SqlLimitError:
                culprit = label
                break
            except duckdb.Error:  # a part that does not run alone is not the one past the bound
                continue
        recipe = provenance.run_context().get("recipe")
        where = f" (recipe {recipe})" if recipe else ""
        knob = "sql_timeout_s" if e.kind == "timeout" else "sql_memory_gb"
        raise limited_sql.SqlLimitError(f"{culprit}{where} {e}; raise {knob} if it is meant to", e.kind) from None


@functools.lru_cache(maxsize=8)
def side_table(ref: DatasetRef, columns: tuple[str, ...] | None = None) -> pa.Table:
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
        tables = {k: side_table(DatasetRef(**v)) for k, v in side.items()}
        if history is not None:
            tables["history"] = _history(DatasetRef(**history["ref"]), history["columns"])
        self.fn = cls(params, **tables)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.fn(batch)


def _apply(fn: Callable, item: dict) -> dict:
    """Worker: read one input shard (projected to the columns the stage reads, through its layers) in batches,
    apply ``fn(batch)``, write the output shard under the same name: the whole table, or only the stage's layer."""
    core._maybe_fail(item)
    dst, src = DatasetRef(**item["dst"]), DatasetRef(**item["src"])
    layer, where = item["layer"], f"{dst.stage} on {src}/{item['name']}"
    outs, offset = [], 0
    # a layer's input rows are fingerprinted as they stream by: its shard records what it was computed from
    rows = layers.SourceRows(src, item["name"], item["columns"], item["rows_per_call"]) if layer else \
        layers.iter_shard(src, item["name"], item["columns"], batch_size=item["rows_per_call"])
    for batch in rows:
        if layer == "rows":  # a selection records which input rows it kept (and how often)
            pos = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
            batch = batch.append_column(layers.POS, pa.array(pos))
        outs.append(_layer_part(layer, batch, fn(batch), item["rewrites"], offset, where))
        offset += batch.num_rows
        # rows done of the shard's rows, for the driver's mid-shard line (a 50,000-row shard is minutes of embed)
        progress.shard_rows(item.get("progress"), item["name"], offset, item.get("rows") or offset)
    out = pa.concat_tables(outs, promote_options="permissive")
    datasets.write_shard(dst, item["name"], rows.stamp(out) if layer else out)
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
        raise ValueError(
            f"{where}: a columns-layer stage must keep every row ({batch.num_rows} in, {out.num_rows} out)"
        )
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


def run(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    present, roles, dst, committed = core._prepare(stage, inputs, params, profile, target)
    if committed:
        return dst
    src, side = inputs[0], {k: v for k, v in roles.items() if k != stage.roles[0]}
    res = core.resources(stage, profile)
    done = datasets.existing_shards(dst)
    columns = core.projection(stage, params, layers.column_names(src))
    hide = _hidden(stage, kind, params, src, side) if stage.layer == "rows" else ()
    sizes = {f["name"]: int(f.get("rows") or 0) for f in datasets.read_manifest(src).get("files", [])}
    channel = f"{dst}/{os.getpid()}"
    items = [
        {"index": i, "name": name, "src": core._asdict(src), "dst": core._asdict(dst),
         "rows_per_call": res.rows_per_call, "columns": columns, "layer": stage.layer,
         "rewrites": list(stage.rewrites), "fail_from_shard": fail_from_shard,
         "side": {k: core._asdict(v) for k, v in side.items()}, "progress": channel, "rows": sizes.get(name, 0)}
        for i, name in enumerate(layers.shard_names(src))
        if name not in done
    ]
    t0 = time.perf_counter()
    secrets = core.secret_env(params)
    with progress.relaying(channel, stage.name, {it["name"]: it["rows"] for it in items}):
        if kind == "actor":
            history = {"ref": core._asdict(dst), "columns": stage.history} if stage.history is not None else None
            setup = functools.partial(_Model, stage.fn, params, {k: core._asdict(v) for k, v in side.items()},
                                      history)
            results = runtime.run_shards(items, _stateful, res, profile=profile, setup=setup, desc=stage.name,
                                         secrets=secrets)
        else:
            work = functools.partial(_stateless_entry, kind, stage.fn, stage.post, params)
            results = runtime.run_shards(items, work, res, profile=profile, desc=stage.name, secrets=secrets)
    elapsed = time.perf_counter() - t0
    stats = {"shards_computed": len(results), "shards_resumed": len(done), "seconds": round(elapsed, 3),
             "rows_in_computed": sum(r["rows_in"] for r in results)}
    if stage.summarize_output is not None:
        stats.update(stage.summarize_output(functools.partial(core._read_uncommitted, dst), elapsed, res, params))
    layer = {"kind": stage.layer, "of": str(src), "hide": list(hide)} if stage.layer else None
    core._commit(stage, dst, present, params, stats, expected={r["name"]: r["rows_out"] for r in results}, layer=layer)
    return dst


def _hidden(stage: Any, kind: str, params: Any, src: DatasetRef, side: dict[str, DatasetRef]) -> list[str]:
    """The input columns a selection stage drops from its view (e.g. ``kept`` hides MinHash signatures): learnt by
    running it on the input's empty wide table, so the stage function stays the only place that decides."""
    empty = layers.empty_table(src).append_column(layers.POS, pa.array([], pa.int64()))
    if kind == "sql_map":
        out = _sql_map_batch(stage.fn, stage.post, params, empty)
    else:
        out = stage.fn(empty, params, **{k: side_table(v) for k, v in side.items()})
    return [c for c in empty.column_names if c not in out.column_names and c != layers.POS]


def _stateless_entry(kind: str, fn: Callable, post: Callable | None, params: Any, item: dict) -> dict:
    side = {k: side_table(DatasetRef(**v)) for k, v in item["side"].items()}
    if kind == "sql_map":
        call = functools.partial(_sql_map_batch, fn, post, params)
    else:
        call = functools.partial(_call_map, fn, params, side)
    return _apply(call, item)
