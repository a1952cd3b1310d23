"""The ``export_tokens`` step: per shard (a Ray task each, resumable by shard like every map stage), a document's
token ids without special tokens, its split and its shuffle key; the writers add BOS/EOS as each format expects."""

from __future__ import annotations

import functools

import pyarrow as pa

from tasks.common.stage import implements
from tasks.export.params import ExportParams, shuffle_key, split_of, tokenizer_file

COPY_COLUMN = "sample_copy"  # curated's copy index: balance's bal_copies repeats a row, numbered 0..copies-1


@functools.lru_cache(maxsize=4)
def load(name: str):
    """A tokenizers.Tokenizer (Rust, no transformers import), once per worker."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file(name)))


@implements("export_tokens")
def export_tokens(batch: pa.Table, params: ExportParams) -> pa.Table:
    """doc_id, exp_copy, domain, source, text, exp_split, exp_key, exp_ids (list<uint32>; null for a copy and a null
    text), exp_n (the document's id count, copies included).

    A copy (exp_copy > 0) keeps its row, so the writer counts it in the blend, but is tokenized once. With
    ``shuffle`` the shard is sorted by exp_key, so export_files merges the shards into one seeded order in
    memory flat in the corpus size."""
    if params.text_column not in batch.column_names or "doc_id" not in batch.column_names:
        raise KeyError(f"export_tokens needs 'doc_id' and {params.text_column!r}, got {batch.column_names}")
    n = batch.num_rows
    doc_ids = batch.column("doc_id").to_pylist()
    texts = batch.column(params.text_column).to_pylist()
    copies = batch.column(COPY_COLUMN).to_pylist() if COPY_COLUMN in batch.column_names else [0] * n
    # tokenize each document once: its first copy, or a copy whose first row is in another batch (its count only)
    seen: dict[str, int] = {}
    for i in range(n):
        if texts[i] is not None and (not copies[i] or doc_ids[i] not in seen):
            seen.setdefault(doc_ids[i], i)
    todo = list(seen.values())
    enc = load(params.tokenizer).encode_batch_fast([texts[i] for i in todo], add_special_tokens=False) if todo else []
    got = {doc_ids[i]: e.ids for i, e in zip(todo, enc, strict=True)}
    ids = [got.get(doc_ids[i]) if texts[i] is not None and not copies[i] else None for i in range(n)]
    counts = [len(got[doc_ids[i]]) if texts[i] is not None else 0 for i in range(n)]
    col = lambda c: batch.column(c) if c in batch.column_names else pa.nulls(n, pa.string())  # noqa: E731
    out = pa.table({
        "doc_id": batch.column("doc_id"),
        "exp_copy": pa.array([int(c or 0) for c in copies], pa.int32()),
        "domain": col("domain").cast(pa.string()),
        "source": col("source").cast(pa.string()),
        "text": pa.array([t if not copies[i] else None for i, t in enumerate(texts)], pa.string()),
        "exp_split": pa.array([split_of(d, params.validation_fraction) for d in doc_ids], pa.string()),
        "exp_key": pa.array([shuffle_key(d, params.seed) if params.shuffle else 0 for d in doc_ids], pa.int64()),
        "exp_ids": pa.array(ids, pa.list_(pa.uint32())),
        "exp_n": pa.array(counts, pa.int64()),
    })
    return out.sort_by([("exp_key", "ascending")]) if params.shuffle else out
