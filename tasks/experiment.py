"""The ``experiment`` stage: one comparison table over every cell (data variant x model size x seed) of an
experiment matrix, and its summary (mean over seeds per variant, size, task and metric)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def cells(params: Any) -> list[tuple[str, str, int]]:
    """(variant, model size, seed) of every cell, in the order the flow runs them and hands them to the stage."""
    return [(v, size, seed) for v in params.variants for size in params.model_sizes for seed in params.seeds]


def experiment_stage(tables: dict, params: Any, ctx) -> tuple[pa.Table, dict]:
    """Every cell's evaluation rows, labelled with its variant, model size and seed."""
    parts = []
    for (variant, size, seed), t in zip(cells(params), tables.values(), strict=True):
        n = t.num_rows
        t = t.append_column("variant", pa.array([variant] * n)).append_column("model_size", pa.array([size] * n))
        parts.append(t.append_column("seed", pa.array([seed] * n, pa.int64())))
    table = pa.concat_tables(parts, promote_options="permissive")
    return table, {"comparison": summary(table).to_pylist()}


def summary(table: pa.Table) -> pa.Table:
    return (
        pa.TableGroupBy(table, ["variant", "model_size", "task", "metric"])
        .aggregate([("value", "mean"), ("value", "count")])
        .sort_by([("task", "ascending"), ("metric", "ascending"), ("variant", "ascending")])
    )


def experiment_artifact(manifest: dict) -> list[tuple[str, list[dict], str]]:
    rows = (manifest.get("stats") or {}).get("comparison") or []
    return [("experiment-comparison", rows, f"experiment {manifest['dataset']}: mean over seeds")]
