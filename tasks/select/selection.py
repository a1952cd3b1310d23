"""Selections between stages: keep the documents earlier stages kept, or the ones a sampler chose.

Filters and dedup never delete rows (they set ``keep``/``drop_reason``, so the funnel stays queryable); the model
stages after them (embed, k-means, augment, tokenize) only need the kept documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.stage import implements


@dataclass(frozen=True, kw_only=True, slots=True)
class KeptParams:
    keep_column: str = "keep"
    # columns of earlier stages that downstream stages do not need (line spans are large); None keeps all
    drop_columns: tuple[str, ...] | None = None


@implements("kept")
def kept_documents(batch: pa.Table, params: KeptParams = KeptParams()) -> pa.Table:
    """Rows whose ``keep`` is true (all rows when no filter ran); ``drop_columns`` (or all ``rps_lines_*``) removed."""
    if params.keep_column in batch.column_names:
        batch = batch.filter(pc.fill_null(batch.column(params.keep_column), False))
    drop = params.drop_columns
    if drop is None:
        drop = tuple(c for c in batch.column_names if c.startswith(("rps_lines_", "minhash_signature_", "mh_values")))
    return batch.drop_columns([c for c in drop if c in batch.column_names])


@dataclass(frozen=True, kw_only=True, slots=True)
class SelectedParams:
    copies_column: str = "copies"  # how many times the sampler chose a document (m > 1 gives repeats)


@implements("curated")
def selected_documents(batch: pa.Table, params: SelectedParams = SelectedParams(), *, selection: pa.Table) -> pa.Table:
    """The batch's rows that ``selection`` (doc_id, copies) chose, each repeated ``copies`` times (at least once)."""
    ids = selection.column("doc_id").combine_chunks().cast(pa.string())
    idx = pc.index_in(batch.column("doc_id").combine_chunks().cast(pa.string()), value_set=ids)
    rows = pc.indices_nonzero(pc.is_valid(idx))
    picked = batch.take(rows)
    if params.copies_column in selection.column_names and picked.num_rows:
        copies = pc.take(selection.column(params.copies_column), pc.take(idx, rows)).to_numpy(zero_copy_only=False)
        import numpy as np

        copies = np.maximum(copies.astype(np.int64), 1)
        picked = picked.take(pa.array(np.repeat(np.arange(picked.num_rows), copies)))
        picked = picked.append_column("sample_copy", pa.array(np.concatenate([np.arange(c) for c in copies]) if len(copies) else [], pa.int64()))
    return picked


@dataclass(frozen=True, kw_only=True, slots=True)
class HeldoutParams:
    """Hold documents out by doc id before curation, so evaluation text is never trained on."""

    fraction: float = 0.05  # share of documents held out (per domain in expectation: the hash is uniform)
    seed: int = 0
    side: str = "train"  # which side of the split this stage keeps: "train" or "heldout"

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {self.fraction}")
        if self.side not in ("train", "heldout"):
            raise ValueError(f"side must be 'train' or 'heldout', got {self.side!r}")


def _unit_hash(ids: list[str], seed: int):  # -> np.ndarray of floats in [0, 1)
    import hashlib

    import numpy as np

    return np.array(
        [int.from_bytes(hashlib.sha1(f"{seed}:{i}".encode()).digest()[:8], "big") / 2**64 for i in ids], dtype=np.float64
    )


@implements("heldout", "train_split")
def split_by_doc_id(batch: pa.Table, params: HeldoutParams = HeldoutParams()) -> pa.Table:
    """The rows on ``params.side`` of a seeded hash split of ``doc_id`` (deterministic, independent of order)."""
    u = _unit_hash(batch.column("doc_id").to_pylist(), params.seed)
    held = u < params.fraction
    mask = held if params.side == "heldout" else ~held
    return batch.filter(pa.array(mask))


def attach(left: pa.Table, right: pa.Table, key: str = "doc_id") -> pa.Table:
    """Inner join on ``key`` by index lookup (Arrow's hash join cannot carry fixed-size-list embedding columns)."""
    idx = pc.index_in(left.column(key), value_set=right.column(key).combine_chunks())
    rows = pc.indices_nonzero(pc.is_valid(idx))
    out, pick = left.take(rows), pc.take(idx, rows)
    for name in right.column_names:
        if name != key and name not in out.column_names:
            out = out.append_column(name, right.column(name).take(pick))
    return out


def embedded(table: pa.Table) -> pa.Table:
    """doc_id + embedding of the rows that got one (rows with emb_error stay out of clustering, visibly)."""
    return table.filter(pc.is_null(table.column("emb_error"))).select(["doc_id", "embedding"])

