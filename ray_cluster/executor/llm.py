"""The ``llm`` kind: Ray Data's LLM processor (vLLM engines) per shard, when the stage's params route there."""

from __future__ import annotations

import functools
import time

import pyarrow as pa

from ray_cluster import progress
from ray_cluster.executor import core
from storage import datasets, layers
from storage.datasets import DatasetRef, StorageError


def run(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    """Every pending shard goes through one set of vLLM engine replicas (Ray Data's LLM processor: starting an engine
    costs a minute on CPU, so not one per shard); each shard is written under its own name as soon as all its rows
    are back, so a killed run resumes shard by shard like every other stage. ``num_gpus: 0`` in the profile runs
    vLLM's CPU engine."""
    import pyarrow.compute as pc
    import ray.data

    from ray_cluster.llm import in_input_order, vllm_map

    present, _, dst, committed = core._prepare(stage, inputs, params, profile, target)
    if committed:
        return dst
    src = inputs[0]
    res = core.resources(stage, profile)
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
        tagged = table.append_column(shard_col, pa.array([name] * table.num_rows, pa.string()))
        parts.append(ray.data.from_arrow(tagged))
    expected: dict[str, int] = {}
    if parts:
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        out = vllm_map(ds, concurrency=max(1, res.concurrency), batch_size=res.rows_per_call,
                       num_gpus=res.num_gpus, num_cpus=res.num_cpus, **stage.llm(params))
        pending: dict[str, list[pa.Table]] = {n: [] for n in todo}
        have = dict.fromkeys(todo, 0)
        batches = iter(out.iter_batches(batch_format="pyarrow", batch_size=None))  # a generator: closable
        total, every, logged = sum(len(ids) for _, ids in todo.values()), progress.every_s(), time.monotonic()
        try:
            for batch in batches:
                for name in pc.unique(batch.column(shard_col)).to_pylist():
                    rows = batch.filter(pc.equal(batch.column(shard_col), name)).drop_columns([shard_col])
                    pending[name].append(rows)
                    have[name] += rows.num_rows
                    if have[name] == len(todo[name][1]):  # the shard is complete: write it now (resume point)
                        # shards complete in any order: fault injection counts the shards this run has written
                        core._maybe_fail({"index": len(expected), "fail_from_shard": fail_from_shard})
                        rows = pa.concat_tables(pending.pop(name), promote_options="permissive")
                        table = in_input_order(rows, todo[name][1])
                        # Ray's own columns (`__inference_error__`: the stage records failures in its own columns)
                        table = table.drop_columns([c for c in table.column_names if c.startswith("__")])
                        datasets.write_shard(dst, name, table)
                        expected[name] = table.num_rows
                if time.monotonic() - logged >= every:  # rows back mid-shard: an engine takes minutes per shard
                    logged, back, spent = time.monotonic(), sum(have.values()), time.perf_counter() - t0
                    left = f", about {spent / back * (total - back):.0f} s left" if 0 < back < total else ""
                    core.log.info(f"{stage.name}: {back:,}/{total:,} rows ({100 * back // max(1, total)} %), "
                                  f"{len(expected)}/{len(todo)} shards, {spent:.0f} s elapsed{left}")
        finally:
            batches.close()  # stops the engine replicas now, also when a write failed (they hold the CPUs/GPUs)
        short = {n: f"{have[n]}/{len(todo[n][1])}" for n in pending}
        if short:
            raise StorageError(f"{stage.name}: the LLM processor returned too few rows for shards {short} "
                               f"(rows back/rows in); they were not written and nothing was committed")
    elapsed = time.perf_counter() - t0
    stats = {}
    if stage.summarize_output is not None:
        stats = stage.summarize_output(functools.partial(core._read_uncommitted, dst), elapsed, res, params)
    core._commit(stage, dst, present, params, {**stats, "seconds": round(elapsed, 3)}, expected=expected)
    return dst
