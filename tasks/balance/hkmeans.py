"""Hierarchical k-means with resampling (Vo et al. 2024, arXiv 2405.15613), and the ``hkmeans`` stage.

Sample uniformly over the *support* of the embedding distribution rather than its density: levels are built
bottom-up (level t clusters the centroids of level t-1) and each level re-fits on the r points closest to each
centroid m-1 times, which spreads centroids away from dense regions. Implemented from the paper and
../shared/specs/hkmeans_balancing.md (the reference code, facebookresearch/ssl-data-curation, is CC-BY-NC and was
not copied). Torch (tasks/balance/kmeans.py), so the same code runs on CPU and CUDA. Deterministic under ``seed``:

    result = fit_hierarchical_kmeans(embeddings, HKMeansParams(levels=(200, 20, 5)))
    table = hkmeans_assignments(result, doc_ids)                   # doc_id, km_l1..km_lT, km_l1_dist

Levels are resumable: ``fit_level(X_prev_centroids, level, params, n_docs)`` needs nothing but level t-1's
centroids, and ``level_to_tables`` / ``level_from_tables`` round-trip a level through Arrow; ``hkmeans`` (the stage)
saves each level through the executor's checkpoint, so a killed fit resumes at the next level.
``assign_clusters(batch, params, result=...)`` labels new embeddings with a fitted tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.progress import Ticker
from tasks.common.stage import implements

# Spec "Published recipe" (arXiv 2405.15613 §4/App.): 1 resampling run at level 1, 10 above it.
_DEFAULT_STEPS = (1, 10, 10, 10)
# Spec: "for N documents a sensible default is 4 levels with k ≈ N/20, N/200, N/1000, N/5000".
_DEFAULT_DIVISORS = (20, 200, 1000, 5000)


@dataclass(frozen=True, kw_only=True, slots=True)
class HKMeansParams:
    """Hierarchical k-means settings (spec §"Per level").

    levels: k per level, bottom-up; () = 4 levels with k ≈ N/20, N/200, N/1000, N/5000 (at least 2, never more than
        the level below).
    iterations: Lloyd iterations per k-means run, fixed (50 in the paper).
    resampling_steps: m_t per level (m_t - 1 resampling runs); () = 1, 10, 10, 10 (paper), 10 for further levels.
    resampling_r: r_t per level (points closest to each centroid kept for a resampling run); () or 0 = half the
        average cluster size at that level (spec).
    level1_split: k' > 0 fits level 1 in two steps (k' clusters, then ceil(k_1/k') inside each); cannot be combined
        with resampling at level 1 (spec).
    n_candidates: k-means++ candidates per step; 0 = 2 + ln k (greedy k-means++, as scikit-learn).
    chunk_bytes: budget for one chunk × k float32 distance block.
    device: "auto" (cuda when present), "cpu" or "cuda".
    """

    levels: tuple[int, ...] = ()
    iterations: int = 50
    resampling_steps: tuple[int, ...] = ()
    resampling_r: tuple[int, ...] = ()
    level1_split: int = 0
    n_candidates: int = 0
    seed: int = 0
    chunk_bytes: int = 1 << 26
    device: str = "auto"

    def __post_init__(self) -> None:
        if any(k < 1 for k in self.levels):
            raise ValueError(f"levels must be positive cluster counts, got {self.levels!r}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if any(m < 1 for m in self.resampling_steps):
            raise ValueError(f"resampling_steps must be >= 1 (1 = no resampling), got {self.resampling_steps!r}")
        if any(r < 0 for r in self.resampling_r):
            raise ValueError(f"resampling_r must be >= 0 (0 = default), got {self.resampling_r!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")
        for name in ("level1_split", "n_candidates"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = default), got {getattr(self, name)}")
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {self.chunk_bytes}")
        steps = self.resampling_steps[:1] or _DEFAULT_STEPS[:1]
        if self.level1_split > 0 and steps[0] > 1:
            raise ValueError(
                "level1_split and resampling at level 1 cannot be combined (spec); set resampling_steps[0]=1"
            )

    def resolve(self, n_docs: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Per-level (k, m, r) for a corpus of n_docs; r = 0 means "half the average cluster size"."""
        if n_docs < 1:
            raise ValueError("hierarchical k-means needs at least one document")
        if self.levels:
            ks = tuple(self.levels)
        else:
            ks, prev = [], n_docs
            for div in _DEFAULT_DIVISORS:
                k = min(prev, max(2, round(n_docs / div)))
                ks.append(k)
                prev = k
            ks = tuple(ks)
        steps = tuple(
            self.resampling_steps[t]
            if t < len(self.resampling_steps)
            else (_DEFAULT_STEPS[t] if t < len(_DEFAULT_STEPS) else 10)
            for t in range(len(ks))
        )
        rs = tuple(self.resampling_r[t] if t < len(self.resampling_r) else 0 for t in range(len(ks)))
        return ks, steps, rs

# ---------------------------------------------------------------------------------------------------------------
# Levels


@dataclass
class LevelResult:
    """One level: centroids [k, d] float32; labels and squared distances of each level input (docs or centroids)."""

    level: int
    centroids: np.ndarray
    labels: np.ndarray
    distances: np.ndarray
    inertia: float = float("nan")


@dataclass
class HKMeansResult:
    levels: list[LevelResult] = field(default_factory=list)

    def parents(self, level: int) -> np.ndarray:
        """Parent (level+1 cluster) of each level `level` centroid — the tree."""
        return self.levels[level].labels

    def doc_labels(self) -> list[np.ndarray]:
        """Cluster of each document at every level, composing the tree."""
        out = [self.levels[0].labels]
        for lvl in self.levels[1:]:
            out.append(lvl.labels[out[-1]])
        return out


def _closest_per_cluster(labels: np.ndarray, dists: np.ndarray, r: int) -> np.ndarray:
    """Indices of the r points closest to their centroid in every cluster (spec resampling, strategy "c")."""
    order = np.lexsort((np.arange(len(labels)), dists, labels))
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    rank = np.arange(len(lab)) - np.repeat(starts, np.diff(np.r_[starts, len(lab)]))
    return np.sort(order[rank < r])


def _level_rng(seed: int, level: int, step: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, level, step]))


def fit_level(
    points: np.ndarray | Sequence[Any],
    level: int,
    params: HKMeansParams,
    n_docs: int,
    *,
    call: Callable[..., Any] | None = None,
    gather: Callable[[list], list] | None = None,
    ticker: Ticker | None = None,
) -> LevelResult:
    """Fit level `level` (1-based) on its input: embeddings at level 1, else level-1's centroids (resumable).
    ``ticker``: a progress line (level, resampling run, Lloyd iteration, inertia) every ~10 s.

    `points` is an array, or (level 1, distributed) a list of shard handles driven through `call`/`gather`.
    """
    import torch  # here, not at the top: every Ray worker imports this module through the registry

    from tasks.balance.kmeans import KMeansShard, fit_level_distributed, identity, kmeans, local_call

    ks, steps, rs = params.resolve(n_docs)
    if not 1 <= level <= len(ks):
        raise ValueError(f"level must be in 1..{len(ks)}, got {level}")
    k, m, r = ks[level - 1], steps[level - 1], rs[level - 1]
    if isinstance(points, np.ndarray) or isinstance(points, torch.Tensor):
        shards = [KMeansShard(points, device=params.device, chunk_bytes=params.chunk_bytes)]
        call = gather = None
    else:
        shards = list(points)
    call_ = call or local_call
    gather_ = gather or identity
    n = int(sum(gather_([call_(s, "num_rows") for s in shards])))
    if n == 0:
        raise ValueError(f"level {level} has no input points")
    k = min(k, n)

    def tick(run: int) -> Callable[[int, int, float], None] | None:
        if ticker is None:
            return None
        return lambda i, total, inertia: ticker.line(
            f"hkmeans: level {level}/{len(ks)} (k={k}, {n:,} points), run {run}/{m}, iteration {i}/{total}, "
            f"inertia {inertia:.4g}, {ticker.elapsed():.0f} s elapsed")

    fit = dict(iterations=params.iterations, n_candidates=params.n_candidates, call=call, gather=gather,
               on_iteration=tick(1))

    if level == 1 and params.level1_split > 0:
        return _fit_split(shards, k, params, call_, gather_, fit)

    c, labels, dists, hist = fit_level_distributed(shards, k, seed=_level_rng(params.seed, level), **fit)
    if m > 1:
        r = r or max(1, round(n / (2 * k)))  # spec: r_t ≈ half the average cluster size
    for step in range(1, m):
        subset = _closest_per_cluster(labels, dists, r)
        sub = _gather_rows(shards, subset, call_, gather_)
        c, _, _, _ = kmeans(
            sub,
            k,
            iterations=params.iterations,
            seed=_level_rng(params.seed, level, step),
            n_candidates=params.n_candidates,
            device=params.device,
            chunk_bytes=params.chunk_bytes,
            on_iteration=tick(step + 1),
        )
        parts = gather_([call_(s, "assign", c) for s in shards])  # re-assign ALL of X (spec)
        labels = np.concatenate([p[0] for p in parts])
        dists = np.concatenate([p[1] for p in parts])
    return LevelResult(level, c, labels, dists, float(dists.astype(np.float64).sum()))


def _gather_rows(shards, rows: np.ndarray, call, gather) -> np.ndarray:
    sizes = np.array(gather([call(s, "num_rows") for s in shards]), dtype=np.int64)
    bounds = np.cumsum(sizes)
    owner = np.searchsorted(bounds, rows, side="right")
    pieces = []
    for s in range(len(shards)):
        sel = rows[owner == s] - (bounds[s] - sizes[s])
        if len(sel):
            pieces.append(gather([call(shards[s], "rows", sel)])[0])
    return np.concatenate(pieces).astype(np.float32)


def _fit_split(shards, k, params, call, gather, fit) -> LevelResult:
    """Two-step level 1 (spec): k' clusters, then an independent k-means with ceil(k/k') clusters inside each."""
    from tasks.balance.kmeans import fit_level_distributed, kmeans

    coarse_k = min(params.level1_split, k)
    _, coarse, _, _ = fit_level_distributed(shards, coarse_k, seed=_level_rng(params.seed, 1), **fit)
    per = math.ceil(k / coarse_k)
    n = len(coarse)
    labels = np.zeros(n, dtype=np.int64)
    dists = np.zeros(n, dtype=np.float32)
    cents, offset = [], 0
    for cl in range(coarse_k):
        members = np.flatnonzero(coarse == cl)
        if len(members) == 0:
            continue
        sub = _gather_rows(shards, members, call, gather)
        kc = min(per, len(members))
        c, lab, dist, _ = kmeans(
            sub,
            kc,
            iterations=params.iterations,
            seed=_level_rng(params.seed, 1, cl + 1),
            n_candidates=params.n_candidates,
            device=params.device,
            chunk_bytes=params.chunk_bytes,
        )
        labels[members] = lab + offset
        dists[members] = dist
        cents.append(c)
        offset += kc
    return LevelResult(1, np.concatenate(cents), labels, dists, float(dists.astype(np.float64).sum()))


def fit_hierarchical_kmeans(
    embeddings: np.ndarray,
    params: HKMeansParams = HKMeansParams(),
    *,
    done: Sequence[LevelResult] = (),
    on_level: Callable[[LevelResult], None] | None = None,
) -> HKMeansResult:
    """Fit all levels bottom-up; `done` resumes after already-fitted levels, `on_level` lets the engine save each."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty [n, d] array, got shape {embeddings.shape}")
    n_docs = embeddings.shape[0]
    ks, _, _ = params.resolve(n_docs)
    result = HKMeansResult(list(done))
    ticker = Ticker()
    for level in range(len(result.levels) + 1, len(ks) + 1):
        x = embeddings if level == 1 else result.levels[-1].centroids
        lr = fit_level(x, level, params, n_docs, ticker=ticker)
        result.levels.append(lr)
        if on_level is not None:
            on_level(lr)
        # a step boundary: always a line
        ticker.line(f"hkmeans: level {level}/{len(ks)} done (k={len(lr.centroids)}, inertia {lr.inertia:.4g}), "
                    f"{ticker.elapsed():.0f} s elapsed{ticker.eta(level - len(done), len(ks) - len(done))}", force=True)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Arrow in/out


def embeddings_matrix(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """[n, d] float32 from a (fixed-size) list column; null embeddings are an error, not a silent drop."""
    if column not in table.column_names:
        raise ValueError(f"missing embedding column {column!r}; have {table.column_names}")
    col = table.column(column).combine_chunks()
    if col.null_count:
        raise ValueError(f"{col.null_count} rows have a null {column!r}; filter them (emb_error) before clustering")
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(len(col), dim)
    return np.array(col.to_pylist(), dtype=np.float32)


def _vector_array(mat: np.ndarray) -> pa.FixedSizeListArray:
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])


def level_to_tables(result: LevelResult) -> tuple[pa.Table, pa.Table]:
    """(assignments sorted by cluster then distance — spec step 3 —, centroids) for one level."""
    order = np.lexsort((np.arange(len(result.labels)), result.distances, result.labels))
    assignments = pa.table(
        {
            "point": pa.array(order, pa.int64()),
            "cluster": pa.array(result.labels[order], pa.int64()),
            "distance": pa.array(result.distances[order], pa.float32()),
        }
    )
    centroids = pa.table(
        {
            "cluster": pa.array(np.arange(len(result.centroids)), pa.int64()),
            "centroid": _vector_array(result.centroids),
        }
    )
    return assignments, centroids


def level_from_tables(level: int, assignments: pa.Table, centroids: pa.Table) -> LevelResult:
    """Inverse of level_to_tables (resume from a saved level)."""
    point = assignments.column("point").to_numpy()
    labels = np.empty(len(point), dtype=np.int64)
    dists = np.empty(len(point), dtype=np.float32)
    labels[point] = assignments.column("cluster").to_numpy()
    dists[point] = assignments.column("distance").to_numpy()
    cents = centroids.sort_by("cluster")
    return LevelResult(
        level, embeddings_matrix(cents, "centroid"), labels, dists, float(dists.astype(np.float64).sum())
    )


def hkmeans_assignments(result: HKMeansResult, doc_ids: Sequence[str] | pa.Array) -> pa.Table:
    """doc_id, km_l1..km_lT (cluster per level), km_l1_dist (squared L2 to the level-1 centroid)."""
    labels = result.doc_labels()
    if len(doc_ids) != len(labels[0]):
        raise ValueError(f"{len(doc_ids)} doc_ids for {len(labels[0])} clustered rows")
    cols = {"doc_id": pa.array(doc_ids, pa.string()) if not isinstance(doc_ids, pa.Array) else doc_ids}
    for t, lab in enumerate(labels, 1):
        cols[f"km_l{t}"] = pa.array(lab, pa.int64())
    cols["km_l1_dist"] = pa.array(result.levels[0].distances, pa.float32())
    return pa.table(cols)


def hkmeans_tree(result: HKMeansResult) -> pa.Table:
    """level, cluster, parent (null at the top), n_points (level inputs assigned), centroid."""
    parts = []
    for i, lvl in enumerate(result.levels):
        k = len(lvl.centroids)
        parent = result.levels[i + 1].labels if i + 1 < len(result.levels) else None
        parts.append(
            pa.table(
                {
                    "level": pa.array(np.full(k, lvl.level), pa.int32()),
                    "cluster": pa.array(np.arange(k), pa.int64()),
                    "parent": pa.array(parent, pa.int64()) if parent is not None else pa.nulls(k, pa.int64()),
                    "n_points": pa.array(np.bincount(lvl.labels, minlength=k), pa.int64()),
                    "centroid": _vector_array(lvl.centroids),
                }
            )
        )
    return pa.concat_tables(parts)


def assign_clusters(
    batch: pa.Table, params: HKMeansParams = HKMeansParams(), *, result: HKMeansResult, column: str = "embedding"
) -> pa.Table:
    """Kind (a): label new embeddings with a fitted tree; adds km_l1..km_lT and km_l1_dist (null embedding -> nulls)."""
    col = batch.column(column)
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
    n_levels = len(result.levels)
    labels = np.zeros((n_levels, batch.num_rows), dtype=np.int64)
    dist = np.zeros(batch.num_rows, dtype=np.float32)
    if valid.any():
        x = embeddings_matrix(batch.filter(pa.array(valid)), column)
        from tasks.balance.kmeans import KMeansShard

        shard = KMeansShard(x, device=params.device, chunk_bytes=params.chunk_bytes)
        lab, d = shard.assign(result.levels[0].centroids)
        labels[0, valid], dist[valid] = lab, d
        for t in range(1, n_levels):
            labels[t, valid] = result.levels[t].labels[labels[t - 1, valid]]
    out = batch
    for t in range(n_levels):
        out = out.append_column(f"km_l{t + 1}", pa.array(labels[t], pa.int64(), mask=~valid))
    return out.append_column("km_l1_dist", pa.array(dist, pa.float32(), mask=~valid))


@implements("hkmeans")
def hkmeans_stage(tables: dict, params: HKMeansParams, ctx: Any) -> tuple[dict[str, pa.Table], dict]:
    """The ``hkmeans`` stage: fit every level on the embedded documents, saving each level as it finishes (the
    executor's checkpoint: assignments, then centroids, so both present = the level is complete)."""
    from tasks.select.selection import embedded

    table = embedded(tables["embed"])
    x = embeddings_matrix(table)
    done = [
        level_from_tables(s, step["hkmeans_levels"].drop_columns(["level"]),
                          step["hkmeans_centroids"].drop_columns(["level"]))
        for s, step in enumerate(ctx.checkpoint.load(), 1)
    ]

    def save(level: LevelResult) -> None:
        a, c = level_to_tables(level)
        ctx.checkpoint.save(level.level, {
            "hkmeans_levels": a.append_column("level", pa.array([level.level] * a.num_rows, pa.int64())),
            "hkmeans_centroids": c.append_column("level", pa.array([level.level] * c.num_rows, pa.int64())),
        })

    result = fit_hierarchical_kmeans(x, params, done=done, on_level=save)
    out = {
        "hkmeans": hkmeans_assignments(result, table.column("doc_id").combine_chunks()),
        "hkmeans_tree": hkmeans_tree(result).drop_columns(["centroid"]),
    }
    return out, {"levels": [len(lv.centroids) for lv in result.levels], "resumed_levels": len(done), "docs": len(x)}
