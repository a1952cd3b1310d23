"""The ``sql`` kind: a global step in DuckDB that spills to disk (dedup group-bys): ``fn(con, exprs, params,
columns)``, ``exprs[role]`` a relation over the role's wide table, ``exprs[f"{role}_in_order"]`` the same with
``__shard``, ``__row`` (corpus order)."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import pyarrow as pa

from ray_cluster import runtime
from ray_cluster.executor import core
from storage import datasets, layers
from storage.datasets import DatasetRef


def run(stage, kind, inputs, params, profile, fail_from_shard, target, rows_per_shard: int = 500_000) -> DatasetRef:
    """A global step in DuckDB that spills to disk; the result table is streamed out as shards. On Ray it runs as
    one task with the stage's resources, so the driver's memory does not grow with the corpus (at 2M documents the
    fuzzy-dedup joins held ~1 GB of the driver's 1.7 GB peak)."""
    present, roles, dst, committed = core._prepare(stage, inputs, params, profile, target, workers=False)
    if committed:
        return dst
    res = core.resources(stage, profile)
    t0 = time.perf_counter()
    args = (stage, core._asdict(dst), {r: core._asdict(ref) for r, ref in roles.items()}, params, res, rows_per_shard)
    expected = runtime.run_remote(_sql_work, *args, resources=res, profile=profile)  # in-process off Ray
    core._commit(stage, dst, present, params, {"seconds": round(time.perf_counter() - t0, 3)}, expected=expected)
    return dst


def sql_inputs(stage: Any, params: Any, roles: dict[str, DatasetRef], spill: str) -> tuple[dict, dict]:
    """(table expressions, columns) per role of a `sql` stage, as its function gets them: each input projected to
    the columns the stage reads, unsorted (the global steps group and join), and as ``<role>_in_order`` with the
    row identity (__shard, __row: corpus order, for steps that keep a first occurrence). A role whose columns lie
    in several layers is first flattened into one local Parquet file under ``spill`` (`layers.materialize`, one
    shard at a time): DuckDB's join of layers holds every row of the corpus in a hash table, past any budget."""
    columns = {r: core.projection(stage, params, layers.column_names(ref)) for r, ref in roles.items()}
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
