"""MinHash signatures with RedPajama-V2 parity, LSH buckets, connected components and keep-one-per-cluster.

The stage is split the way datatrove splits `MinhashDedup{Signature,Buckets,Cluster,Filter}` so that no step needs
all buckets in RAM:

1. `minhash_signatures(batch, MinhashSignaturesParams)` (kind a): `mh_values` (+ RPv2 band keys
   `minhash_signature_<s>` with ``band_keys=True``; `band_keys(mh_values, s)` gives them from the values).
2. `minhash_edges(batch, MinhashDedupParams)` (kind a): one row per (band, 64-bit key, doc_id) plus a `part` column; the
   engine writes it hash-partitioned by `part`, so every bucket lives in exactly one partition.
3. buckets: duplicate pairs `(src, dst)` with `dst = min(doc_id)` of the bucket (RPv2 `run_lsh.py` step 2).
4. clusters: connected components over the pair table only (singletons never enter it); cluster id = min doc_id
   (RPv2 step 4).
5. keepers: one doc per cluster by a configurable priority.
6. `minhash_filter(batch, params, clusters=...)` (kind a + artifact): adds `mh_cluster_id`, `mh_cluster_size`,
   `mh_keep` and folds duplicates into `keep`/`drop_reason`/`drop_stage` (tasks.common.verdict).

Steps 3-5 are the ``minhash_clusters`` stage: DuckDB SQL in `tasks.dedup.minhash_sql` (spills past memory).
`oracle_minhash_buckets` / `oracle_minhash_clusters` here are test oracles of steps 3 and 4 in Arrow (the tests
hold the SQL to them; benchmarks/dedup.py times them), and tests/oracles/dedup.py restates step 5.

    from tasks.dedup.minhash import MinhashSignaturesParams, minhash_signatures
    out = minhash_signatures(batch, MinhashSignaturesParams())

Size: RPv2-parity signatures and the fuzzy dedup that consumes their band keys share one normalisation
and one band layout (in Arrow and in DuckDB SQL); keeping them together keeps the two in lockstep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.stage import implements
from tasks.common.textnorm import rpv2_normalize
from tasks.common.verdict import fold_verdict
from tasks.dedup.priority import Priority

# --------------------------------------------------------------------------------------------------------------------
# 1. Signatures
# --------------------------------------------------------------------------------------------------------------------

_MERSENNE_61 = np.uint64((1 << 61) - 1)  # datasketch/RPv2 `_mersenne_prime`
_MAX_HASH_32 = np.uint64(0xFFFFFFFF)  # datasketch `_max_hash` (32-bit hash values)


@dataclass(frozen=True, kw_only=True, slots=True)
class MinhashSignaturesParams:
    """RPv2 MinHash settings; defaults are `configs/rp_v2.0.conf` (13-grams, 128 perms, sims 1.0/0.9/0.8/0.7, seed 42)."""

    ngram_size: int = 13  # MINHASH_NGRAM_SIZE
    num_perm: int = 128  # MINHASH_NUM_PERMUTATIONS
    seed: int = 42  # pipeline.py --seed default
    similarities: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7)  # MINHASH_SIMILARITIES
    text_column: str = "text"
    # RPv2's band-key columns `minhash_signature_<s>`: each is the big-endian bytes of `mh_values`' band rows, so
    # they add nothing `mh_values` lacks but 4 x up to 512 B/doc (4x the values). Off: minhash_edges derives the
    # same bytes from `mh_values`; on: the RPv2 file layout, for users who export it.
    band_keys: bool = False

    def __post_init__(self) -> None:
        if self.ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {self.ngram_size}")
        # lsh_bands searches every (bands, rows) split of num_perm with two integrals each: cost ~ num_perm * ln
        if not 1 <= self.num_perm <= MAX_NUM_PERM:
            raise ValueError(f"num_perm must be in [1, {MAX_NUM_PERM}], got {self.num_perm}")
        if not self.similarities:
            raise ValueError("similarities must not be empty")
        for s in self.similarities:
            _check_similarity(s, "similarities")


MAX_NUM_PERM = 1024  # RPv2 uses 128, datasketch's examples 128-256


def _check_similarity(value: float, name: str) -> None:
    # a Jaccard threshold; lsh_bands would still pick some band layout for 1.5 or -1, with no meaning
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (a Jaccard similarity), got {value}")




@lru_cache(maxsize=8)
def rpv2_permutations(num_perm: int = 128, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint64 arrays as RPv2 draws them: per permutation a then b, interleaved, from RandomState(seed)."""
    rng = np.random.RandomState(seed)
    ab = np.array(
        [
            (rng.randint(1, _MERSENNE_61, dtype=np.uint64), rng.randint(0, _MERSENNE_61, dtype=np.uint64))
            for _ in range(num_perm)
        ],
        dtype=np.uint64,
    )
    a, b = ab[:, 0].copy(), ab[:, 1].copy()
    a.flags.writeable = b.flags.writeable = False
    return a, b


def _integral(f: Callable[[float], float], lo: float, hi: float) -> float:
    from scipy.integrate import quad  # datasketch uses scipy's quad; same integrator keeps the argmin identical

    return quad(f, lo, hi)[0]


@lru_cache(maxsize=64)
def lsh_bands(threshold: float, num_perm: int = 128) -> tuple[int, int]:
    """(bands, rows) minimising FP+FN area with weights 0.5/0.5: datasketch `_optimal_param`, used by RPv2."""
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        max_r = num_perm // b
        for r in range(1, max_r + 1):
            fp = _integral(lambda s, b=b, r=r: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)
            fn = _integral(lambda s, b=b, r=r: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)
            err = 0.5 * fp + 0.5 * fn
            if err < best:
                best, opt = err, (b, r)
    return opt


def signature_column(similarity: float) -> str:
    """RPv2 column name of the band keys for one similarity, e.g. `minhash_signature_0.8`."""
    return f"minhash_signature_{float(similarity)}"


def minhash_values(text: str, params: MinhashSignaturesParams = MinhashSignaturesParams()) -> np.ndarray | None:
    """128 uint32 MinHash values of one document, or None below `ngram_size` normalized words (RPv2)."""
    values, ok = _batch_values([text], params)
    return values[0] if ok[0] else None


def _batch_values(texts: list[str | None], params: MinhashSignaturesParams) -> tuple[np.ndarray, np.ndarray]:
    """(uint32[docs, num_perm], ok[docs]) for a batch: normalized texts concatenated, one numba pass (the per-shingle
    SHA-1 and the permutation min), instead of a Python loop over shingles."""
    from tasks.dedup._minhash_kernel import batch_minhash

    parts = [b"" if t is None else rpv2_normalize(t).encode("utf-8", "surrogatepass") for t in texts]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    buf = np.frombuffer(b"".join(parts), dtype=np.uint8)
    a, b = rpv2_permutations(params.num_perm, params.seed)
    return batch_minhash(buf, offsets, params.ngram_size, a, b)


LENGTH_COLUMN = "mh_text_length"  # the "longest" survivor's key, so the DuckDB clusters step never reads the text


@implements("minhash_signatures")
def minhash_signatures(batch: pa.Table, params: MinhashSignaturesParams = MinhashSignaturesParams()) -> pa.Table:
    """Add `mh_values` (list<uint32>[num_perm]) and `minhash_signature_<s>` (list<binary> band keys) per similarity,
    and `mh_text_length` (code points; null for a null text), the "longest" survivor priority's input.

    The signatures are null for documents with fewer than `ngram_size` normalized words or a null text (RPv2).
    """
    if params.text_column not in batch.column_names:
        raise ValueError(f"minhash_signatures needs a {params.text_column!r} column; got {batch.column_names}")
    texts = batch.column(params.text_column).to_pylist()
    values, ok = _batch_values(texts, params)
    mask = pa.array(~ok, pa.bool_())
    good = values[ok]  # null rows take no slots in the child arrays (consumers index values by offsets)

    def offsets(per_row: int) -> pa.Array:
        out = np.zeros(len(ok) + 1, dtype=np.int32)
        np.cumsum(ok.astype(np.int32) * per_row, out=out[1:])
        return pa.array(out)

    # mh_values: list<uint32> from one (docs x perms) array, null where RPv2 gives None
    mh_values = pa.ListArray.from_arrays(offsets(params.num_perm), pa.array(good.reshape(-1), pa.uint32()), mask=mask)
    keys = {s: _band_keys(good, s, params.num_perm, offsets, mask) for s in params.similarities} if params.band_keys else {}
    out = batch
    for name in ["mh_values", *(signature_column(s) for s in params.similarities), LENGTH_COLUMN]:
        if name in out.column_names:
            out = out.drop_columns([name])
    out = out.append_column(pa.field("mh_values", pa.list_(pa.uint32())), mh_values)
    # the fuzzy-dedup keeper step reads this, not the text: with a selection (a held-out split) in the chain it
    # otherwise flattened every document's text to disk for its length (~3 GB at 2M documents)
    out = out.append_column(LENGTH_COLUMN, pc.utf8_length(batch.column(params.text_column)).cast(pa.int64()))
    for s, k in keys.items():
        out = out.append_column(signature_column(s), k)
    return out


def _band_keys(good: np.ndarray, similarity: float, num_perm: int, offsets: Callable, mask: pa.Array) -> pa.Array:
    """RPv2 band keys of one similarity: per band, the big-endian bytes of its rows of MinHash values."""
    be = good.astype(">u4")
    bands, rows = lsh_bands(similarity, num_perm)
    width, nkeys = rows * 4, len(good) * bands
    blob = np.ascontiguousarray(be[:, : bands * rows]).tobytes()
    key_offs = pa.array(np.arange(0, nkeys * width + 1, width, dtype=np.int32))
    flat_keys = pa.BinaryArray.from_buffers(pa.binary(), nkeys, [None, key_offs.buffers()[1], pa.py_buffer(blob)])
    return pa.ListArray.from_arrays(offsets(bands), flat_keys, mask=mask)


def band_keys(mh_values: pa.Array | pa.ChunkedArray, similarity: float) -> pa.Array:
    """RPv2's `minhash_signature_<similarity>` column from a `mh_values` column (the same bytes the stage writes
    with ``band_keys=True``)."""
    arr = mh_values.combine_chunks() if isinstance(mh_values, pa.ChunkedArray) else mh_values
    ok = arr.is_valid().to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.uint32)
    num_perm = len(flat) // max(1, int(ok.sum())) if ok.any() else 128
    good = flat.reshape(-1, num_perm) if ok.any() else np.zeros((0, num_perm), np.uint32)

    def offsets(per_row: int) -> pa.Array:
        out = np.zeros(len(ok) + 1, dtype=np.int32)
        np.cumsum(ok.astype(np.int32) * per_row, out=out[1:])
        return pa.array(out)

    return _band_keys(good, similarity, num_perm, offsets, pa.array(~ok, pa.bool_()))


# --------------------------------------------------------------------------------------------------------------------
# 2-6. Fuzzy dedup: LSH edges -> buckets -> connected components -> keep one per cluster
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class MinhashDedupParams:
    """LSH fuzzy dedup settings.

    similarity: which band layout to bucket on; 0.8 (9 bands x 13 rows) is what the RPv2 paper's 1.6B ablations used.
    num_partitions: hash partitions of the (band, key) edge table; pick so one partition's edges fit in memory.
    priority: which doc of a cluster survives. "longest" (longest `text`), "lowest_doc_id", or "<column>:desc" /
        "<column>:asc" over a numeric column (e.g. a quality score). Ties always go to the lowest doc_id.
    only_kept: when the batch has a boolean `keep` column (quality_filter ran before), only kept docs enter the LSH,
        so a kept doc is never dropped as the duplicate of a rejected one.
    verify: re-check every candidate pair (a bucket member and the bucket's min doc_id) against the signatures and
        keep it only where the share of equal MinHash values, the unbiased Jaccard estimate (Broder 1997), reaches
        `similarity`. LSH alone accepts pairs below the threshold (9 x 13 bands take a J = 0.7 pair ~8 % of the time)
        and components chain them; RPv2 and datatrove do not re-check, so it is off by default. The DuckDB steps
        (the engine's path) need `mh_values` for it; the in-memory `oracle_minhash_buckets` does not verify.
    """

    similarity: float = 0.8  # RPv2 paper, sec. "Ablations": 128 hashes, 9 bands x 13 rows
    num_partitions: int = 16
    priority: str = "longest"
    only_kept: bool = True
    verify: bool = False
    doc_id_column: str = "doc_id"
    text_column: str = "text"

    def __post_init__(self) -> None:
        Priority.parse(self.priority)  # a clear error at config time
        if self.num_partitions < 1:
            raise ValueError("num_partitions must be >= 1")
        _check_similarity(self.similarity, "similarity")

    @property
    def survivor(self) -> Priority:
        return Priority.parse(self.priority)



# `key` is a 64-bit hash of a band's rows, not the rows' 4 x 13 bytes: buckets group the same docs (a false merge
# needs two different bands colliding in 64 bits: ~N^2/2^65 per band, 1e-7 at 2M docs) at 1/6 of the bytes.
EDGES_SCHEMA = pa.schema([("part", pa.int32()), ("band", pa.int32()), ("key", pa.uint64()), ("doc_id", pa.string())])
PAIRS_SCHEMA = pa.schema([("src", pa.string()), ("dst", pa.string())])
CLUSTERS_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("cluster_id", pa.string()), ("cluster_size", pa.int64()), ("keep", pa.bool_())]
)

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finalizer (Steele et al. 2014)


def _mix(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


def _band_hashes(values: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) 64-bit hashes of each band's MinHash rows (the band index is mixed in: no cross-band ties)."""
    with np.errstate(over="ignore"):
        v = values[:, : bands * rows].astype(np.uint64).reshape(len(values), bands, rows)
        h = np.broadcast_to(np.arange(bands, dtype=np.uint64), (len(values), bands)).copy()
        for r in range(rows):
            h = _mix(h ^ v[:, :, r])
    return h


@implements("minhash_edges")
def minhash_edges(batch: pa.Table, params: MinhashDedupParams = MinhashDedupParams()) -> pa.Table:
    """Explode the LSH bands of `params.similarity` into (part, band, key, doc_id) rows; null signatures give none.

    Bands come from `mh_values` (RPv2's band layout for the similarity, `lsh_bands`), or from a stored
    `minhash_signature_<s>` column; `part` = key mod num_partitions, so a bucket never spans partitions.
    """
    col = signature_column(params.similarity)
    source = "mh_values" if "mh_values" in batch.column_names else col
    for need in (source, params.doc_id_column):
        if need not in batch.column_names:
            raise ValueError(f"minhash_edges needs column {need!r} (run minhash_signatures first)")
    if params.only_kept and "keep" in batch.column_names:
        batch = batch.filter(pc.fill_null(batch.column("keep"), False))
    arr = batch.column(source).combine_chunks() if batch.num_rows else pa.array([], batch.schema.field(source).type)
    ok = arr.is_valid().to_numpy(zero_copy_only=False)
    if not ok.any():
        return EDGES_SCHEMA.empty_table()
    flat = pc.list_flatten(arr)
    if source == "mh_values":
        values = flat.to_numpy(zero_copy_only=False).astype(np.uint32).reshape(int(ok.sum()), -1)
        bands, rows = lsh_bands(params.similarity, values.shape[1])
    else:  # stored RPv2 keys: each is `rows` big-endian uint32 values
        width = len(flat[0].as_py())
        rows, bands = width // 4, len(flat) // int(ok.sum())
        blob = b"".join(flat.to_pylist())
        values = np.frombuffer(blob, dtype=">u4").astype(np.uint32).reshape(int(ok.sum()), bands * rows)
    keys = _band_hashes(values, bands, rows).reshape(-1)
    parent = np.repeat(np.flatnonzero(ok), bands)
    band = np.tile(np.arange(bands, dtype=np.int32), int(ok.sum()))
    part = (keys % np.uint64(params.num_partitions)).astype(np.int32)
    doc_ids = batch.column(params.doc_id_column).combine_chunks().cast(pa.string()).take(pa.array(parent))
    return pa.table([pa.array(part), pa.array(band), pa.array(keys, pa.uint64()), doc_ids], schema=EDGES_SCHEMA)


def oracle_minhash_buckets(edges: pa.Table) -> pa.Table:
    """Test oracle: step 3 of the ``minhash_clusters`` stage (its DuckDB SQL in tasks.dedup.minhash_sql) in Arrow.

    Duplicate pairs of one partition: for every (band, key) bucket with >1 docs, (doc_id -> min doc_id)."""
    if edges.num_rows == 0:
        return PAIRS_SCHEMA.empty_table()
    edges = edges.select(["band", "key", "doc_id"])
    groups = edges.group_by(["band", "key"]).aggregate([("doc_id", "min"), ("doc_id", "count")])
    groups = groups.filter(pc.greater(groups.column("doc_id_count"), 1)).select(["band", "key", "doc_id_min"])
    if groups.num_rows == 0:
        return PAIRS_SCHEMA.empty_table()
    joined = edges.join(groups, keys=["band", "key"], join_type="inner")
    joined = joined.filter(pc.not_equal(joined.column("doc_id"), joined.column("doc_id_min")))
    pairs = pa.table({"src": joined.column("doc_id"), "dst": joined.column("doc_id_min")}, schema=PAIRS_SCHEMA)
    return pairs.group_by(["src", "dst"]).aggregate([]).select(["src", "dst"])


def oracle_minhash_clusters(pairs: pa.Table | Iterable[pa.Table], max_iter: int = 100) -> pa.Table:
    """Test oracle: step 4 of the ``minhash_clusters`` stage (its DuckDB SQL in tasks.dedup.minhash_sql) in Arrow.

    Connected components of the pair graph: (doc_id, cluster_id = min doc_id of its component).

    Memory holds one int per node of the *pair* graph (docs that share a bucket), never the buckets; pass the
    partitions' pair tables as an iterable. Label propagation with pointer jumping converges in O(log diameter)
    rounds in practice.
    """
    tables = [pairs] if isinstance(pairs, pa.Table) else list(pairs)
    tables = [t.select(["src", "dst"]) for t in tables if t.num_rows]
    if not tables:
        return pa.table({"doc_id": pa.array([], pa.string()), "cluster_id": pa.array([], pa.string())})
    all_pairs = pa.concat_tables(tables).combine_chunks()
    src, dst = all_pairs.column("src").cast(pa.string()), all_pairs.column("dst").cast(pa.string())
    # sorted node ids make int order == doc_id order, so min label == min doc_id
    nodes = pc.unique(pa.chunked_array(src.chunks + dst.chunks)).sort()
    u = pc.index_in(src, value_set=nodes).to_numpy().astype(np.int64)
    v = pc.index_in(dst, value_set=nodes).to_numpy().astype(np.int64)
    labels = np.arange(len(nodes), dtype=np.int64)
    for _ in range(max_iter):
        before = labels.copy()
        m = np.minimum(labels[u], labels[v])
        np.minimum.at(labels, u, m)
        np.minimum.at(labels, v, m)
        while True:  # pointer jumping: a node takes its label's label
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(before, labels):
            break
    else:
        raise RuntimeError(f"oracle_minhash_clusters did not converge in {max_iter} rounds")
    return pa.table({"doc_id": nodes, "cluster_id": nodes.take(pa.array(labels))})


def later_repeats(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True for every row whose (non-null) doc_id occurred in an earlier row: the same document again (an input read
    twice). Dedup keeps the first and must never call a document a duplicate of itself."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    repeat = np.zeros(len(ids), dtype=bool)
    if len(ids) == 0 or pc.count_distinct(ids, mode="only_valid").as_py() == len(ids) - ids.null_count:
        return repeat
    codes = pc.fill_null(ids.dictionary_encode().indices, -1).to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    repeat[:] = codes >= 0
    repeat[first] = False
    return repeat


@implements("minhash_dedup")
def minhash_filter(batch: pa.Table, params: MinhashDedupParams = MinhashDedupParams(), *, clusters: pa.Table) -> pa.Table:
    """Add `mh_cluster_id` (own doc_id for singletons), `mh_cluster_size`, `mh_keep`; no row is removed.

    A duplicate gets keep=False, drop_reason="mh_duplicate", drop_stage="minhash_dedup" unless an earlier rule
    already rejected it (first failing rule wins); without an earlier filter the verdict columns are created here.
    """
    ids = batch.column(params.doc_id_column).combine_chunks().cast(pa.string())
    idx = pc.index_in(ids, value_set=clusters.column("doc_id").combine_chunks().cast(pa.string()))
    found = pc.is_valid(idx)
    cid = pc.if_else(
        found, clusters.column("cluster_id").take(pc.fill_null(idx, 0)) if clusters.num_rows else ids, ids
    )
    size = pc.if_else(found, clusters.column("cluster_size").take(pc.fill_null(idx, 0)) if clusters.num_rows else 1, 1)
    keep = pc.if_else(found, clusters.column("keep").take(pc.fill_null(idx, 0)) if clusters.num_rows else True, True)
    repeat = later_repeats(ids)
    if repeat.any():  # the same doc_id again in this batch: the first row is the document, the others copies of it
        keep = pc.and_(keep, pa.array(~repeat))
    out = batch
    for name in ("mh_cluster_id", "mh_cluster_size", "mh_keep"):
        if name in out.column_names:
            out = out.drop_columns([name])
    out = out.append_column("mh_cluster_id", cid.cast(pa.string()))
    out = out.append_column("mh_cluster_size", size.cast(pa.int64()))
    out = out.append_column("mh_keep", keep.cast(pa.bool_()))
    if "mh_duplicate_batch" in clusters.column_names:  # incremental: the earlier survivor's batch (issue 30)
        col = clusters.column("mh_duplicate_batch")
        batch_of = pc.if_else(found, col.take(pc.fill_null(idx, 0)), None) if clusters.num_rows else pa.nulls(len(ids), pa.string())
        if "mh_duplicate_batch" in out.column_names:
            out = out.drop_columns(["mh_duplicate_batch"])
        out = out.append_column("mh_duplicate_batch", batch_of.cast(pa.string()))
    # fold duplicates into keep/drop_reason/drop_stage; an earlier rule's reason wins
    dup_reason = pc.if_else(pa.array(repeat), pa.scalar("mh_repeated_doc_id"), pa.scalar("mh_duplicate"))
    return fold_verdict(out, pc.if_else(pc.invert(keep), dup_reason, None), stage="minhash_dedup")
