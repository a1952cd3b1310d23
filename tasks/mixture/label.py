"""The mixture search's components as one column: ``mix_component`` = the document's domain, or its cluster at one
level of a committed hierarchical k-means (``km_l<k>``, tasks/balance/hkmeans.py), so the pack stage mixes by it."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.stage import implements

COLUMN = "mix_component"
UNCLUSTERED = "unclustered"  # a document hkmeans gave no cluster (no embedding): a component of its own, not dropped


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelParams:
    by: str = "domain"  # "domain" or "km_l<k>"


@implements("mixture_label")
def mixture_label(batch: pa.Table, params: LabelParams = LabelParams(), *, clusters: pa.Table | None = None) -> pa.Table:
    if params.by == "domain" or clusters is None:
        if params.by not in batch.column_names:
            raise KeyError(f"mixture_label: column {params.by!r} is not in the documents ({batch.column_names})")
        values = pc.cast(batch.column(params.by), pa.string())
    else:
        if params.by not in clusters.column_names:
            raise KeyError(f"mixture_label: hkmeans has no level column {params.by!r} ({clusters.column_names})")
        ids = clusters.column("doc_id").combine_chunks().cast(pa.string())
        idx = pc.index_in(batch.column("doc_id").combine_chunks().cast(pa.string()), value_set=ids)
        level = params.by.removeprefix("km_")
        found = pc.take(clusters.column(params.by).combine_chunks(), idx)
        values = pc.binary_join_element_wise(pa.scalar(level), pc.cast(found, pa.string()), "c")
    out = batch.drop_columns([COLUMN]) if COLUMN in batch.column_names else batch
    return out.append_column(COLUMN, pc.fill_null(values, UNCLUSTERED))
