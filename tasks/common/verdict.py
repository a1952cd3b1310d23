"""The one keep/drop verdict every filter and dedup folds its decision into.

Filters and dedup never delete rows: each sets ``keep`` and ``drop_reason`` (the first failing rule wins, so the
funnel stays queryable). Defined once here; every family folds through it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

VERDICT = ("keep", "drop_reason")


def ensure_keep_columns(batch: pa.Table) -> pa.Table:
    """`keep` (all true) and `drop_reason` (null) when no filter ran before: dedup folds its duplicates into them,
    so `kept` drops duplicates whether or not a quality filter ran (it reads `keep` alone)."""
    if "keep" not in batch.column_names:
        batch = batch.append_column("keep", pa.array([True] * batch.num_rows, pa.bool_()))
    if "drop_reason" not in batch.column_names:
        batch = batch.append_column("drop_reason", pa.nulls(batch.num_rows, pa.string()))
    return batch


def fold_verdict(out: pa.Table, reasons: list[str | None]) -> pa.Table:
    """Fold a per-row reason (None = passes) into keep/drop_reason: an earlier rule's reason is never replaced."""
    out = ensure_keep_columns(out)
    failed = pa.array([r is not None for r in reasons], pa.bool_())
    prev = pc.fill_null(out.column("keep"), False)
    newly = pc.and_(prev, failed)
    out = out.set_column(out.schema.get_field_index("keep"), "keep", pc.and_(prev, pc.invert(failed)))
    return out.set_column(out.schema.get_field_index("drop_reason"), "drop_reason",
                          pc.if_else(newly, pa.array(reasons, pa.string()), out.column("drop_reason")).cast(pa.string()))
