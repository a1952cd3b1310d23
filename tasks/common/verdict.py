"""The one keep/drop verdict every filter and dedup folds its decision into.

Filters and dedup never delete rows: each sets ``keep``, ``drop_reason`` and ``drop_stage`` (the first failing rule
wins, so the funnel stays queryable). ``drop_stage`` names the registry stage that dropped the row: it is set
together with ``drop_reason`` when a row is newly dropped and is null while the row is kept, so the funnel groups by
it instead of guessing the stage from a reason's prefix. Defined once here; every family writes its verdict through
these helpers: ``fold_verdict`` (Arrow, per batch) and ``redecide_verdict_sql`` (quality_filter's DuckDB SELECT).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

VERDICT = ("keep", "drop_reason", "drop_stage")


def ensure_keep_columns(batch: pa.Table) -> pa.Table:
    """`keep` (all true), `drop_reason` and `drop_stage` (null) when no filter ran before: dedup folds its duplicates
    into them, so `kept` drops duplicates whether or not a quality filter ran (it reads `keep` alone). A verdict
    written before `drop_stage` existed gets a null one (the stage of its reasons is unknown)."""
    if "keep" not in batch.column_names:
        batch = batch.append_column("keep", pa.array([True] * batch.num_rows, pa.bool_()))
    for name in ("drop_reason", "drop_stage"):
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(batch.num_rows, pa.string()))
    return batch


def fold_verdict(out: pa.Table, reasons: Sequence[str | None] | pa.Array | pa.ChunkedArray, *, stage: str) -> pa.Table:
    """Fold a per-row reason (None = passes) into keep/drop_reason/drop_stage: a row still kept whose reason is set
    is dropped with that reason and ``drop_stage = stage``; an earlier rule's reason (and its stage) is never
    replaced."""
    if not stage:
        raise ValueError("fold_verdict needs the name of the stage that drops")
    out = ensure_keep_columns(out)
    if isinstance(reasons, pa.ChunkedArray):
        reasons = reasons.combine_chunks()
    reasons = reasons.cast(pa.string()) if isinstance(reasons, pa.Array) else pa.array(list(reasons), pa.string())
    if len(reasons) != out.num_rows:
        raise ValueError(f"fold_verdict: {len(reasons)} reasons for {out.num_rows} rows")
    failed = pc.is_valid(reasons)
    prev = pc.fill_null(out.column("keep"), False)
    newly = pc.and_(prev, failed)
    columns = {
        "keep": pc.and_(prev, pc.invert(failed)),
        "drop_reason": pc.if_else(newly, reasons, out.column("drop_reason").cast(pa.string())),
        "drop_stage": pc.if_else(newly, pa.scalar(stage, pa.string()), out.column("drop_stage").cast(pa.string())),
    }
    for name, values in columns.items():
        out = out.set_column(out.schema.get_field_index(name), name, values)
    return out


_NONE = "__verdict_none"  # an always-present NULL column, so a missing verdict column reads as NULL


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_tuple(values: Sequence[str]) -> str:
    return "(" + ", ".join(_sql_string(v) for v in values) + ")"


def redecide_verdict_sql(source: str, reason: str, *, stage: str) -> str:
    """A DuckDB SELECT over the table expression ``source`` whose verdict is re-decided by the SQL expression
    ``reason`` (NULL = kept): every other column of ``source`` as it is, an existing keep/drop_reason/drop_stage
    replaced (``drop_reason``, then ``drop_stage`` and ``keep`` last).

    ``drop_stage`` is ``stage`` where ``reason`` drops a row, except where it gives the row's earlier reason again (a
    rule that passes an earlier stage's drop through, e.g. ``coalesce(drop_reason, '') <> 'ld_empty_after_dedup'``
    named ``ld_empty_after_dedup``): the row keeps its earlier ``drop_stage``, since that stage dropped it. ``reason``
    may read the earlier keep/drop_reason/drop_stage; ``source`` need not have them (a column it lacks reads as
    NULL here, through an always-present NULL column, so the SELECT binds either way).
    """
    if not stage:
        raise ValueError("redecide_verdict_sql needs the name of the stage that drops")
    alias = source if source.isidentifier() else "__verdict_source"  # a rule may qualify a column by the source

    def earlier(column: str) -> str:
        return f"coalesce(*COLUMNS(lambda c: c IN {_sql_tuple((column, _NONE))}))"

    return (
        "SELECT * EXCLUDE (__prev_reason, __prev_stage),\n"
        "       CASE WHEN drop_reason IS NULL THEN NULL\n"
        "            WHEN drop_reason = __prev_reason AND __prev_stage IS NOT NULL THEN __prev_stage\n"
        f"            ELSE {_sql_string(stage)} END::VARCHAR AS drop_stage,\n"
        "       drop_reason IS NULL AS keep\n"
        "FROM (\n"
        f"  SELECT COLUMNS(lambda c: c NOT IN {_sql_tuple((*VERDICT, _NONE))}),\n"
        f"  ({reason})::VARCHAR AS drop_reason,\n"
        f"  {earlier('drop_reason')}::VARCHAR AS __prev_reason,\n"
        f"  {earlier('drop_stage')}::VARCHAR AS __prev_stage\n"
        f"  FROM (SELECT *, NULL::VARCHAR AS {_NONE} FROM {source}) AS {alias}\n"
        ")"
    )
