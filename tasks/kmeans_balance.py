"""Hierarchical k-means with resampling and balanced hierarchical sampling (Vo et al. 2024, arXiv 2405.15613).

Sample uniformly over the *support* of the embedding distribution rather than its density: levels are built
bottom-up (level t clusters the centroids of level t-1) and each level re-fits on the r points closest to each
centroid m-1 times, which spreads centroids away from dense regions. Implemented from the paper and
../shared/specs/hkmeans_balancing.md (the reference code, facebookresearch/ssl-data-curation, is CC-BY-NC and was
not copied). Torch, so the same code runs on CPU and CUDA.

Global steps (kind c), all deterministic under `seed`:

    result = fit_hierarchical_kmeans(embeddings, KMeansParams(levels=(200, 20, 5)))
    table = hkmeans_assignments(result, doc_ids)                   # doc_id, km_l1..km_lT, km_l1_dist
    sample = balanced_sample(table, BalanceParams(target_size=1000))  # selected rows + bal_copies
    report = balance_report(table, sample)                         # dict of Arrow tables

Level 1 can be distributed: wrap one `KMeansShard(points)` per worker (e.g. a Ray actor) and drive them with
`fit_level_distributed(shards, k, ..., call=..., gather=...)`; per iteration only float64 sums and counts travel.
Levels are resumable: `fit_level(X_prev_centroids, level, params, n_docs)` needs nothing but level t-1's centroids,
and `level_to_tables` / `level_from_tables` round-trip a level through Arrow (the engine writes Parquet).
`assign_clusters(batch, params, result=...)` (kind a) labels new embeddings with a fitted tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

# Spec "Published recipe" (arXiv 2405.15613 §4/App.): 1 resampling run at level 1, 10 above it.
_DEFAULT_STEPS = (1, 10, 10, 10)
# Spec: "for N documents a sensible default is 4 levels with k ≈ N/20, N/200, N/1000, N/5000".
_DEFAULT_DIVISORS = (20, 200, 1000, 5000)


@dataclass(frozen=True, kw_only=True, slots=True)
class KMeansParams:
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


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present, so the same params run on a laptop and on a GPU worker."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------------------------
# One iteration, as pure functions (the distributed reduction)


# Rows per chunk. On CPU, 4096 rows keep the chunk's distance block and its float64 copy near the caches: at
# 200k x 384, k=1000 a step ran 1.5 s with 16384-row chunks and 1.0-1.1 s with 4096 (benchmarks/kmeans.py).
# GPUs want big kernels: there the chunk_bytes budget is what bounds a chunk.
_CPU_MAX_CHUNK_ROWS = 4096
_GPU_MAX_CHUNK_ROWS = 1 << 20


def _chunk_rows(k: int, chunk_bytes: int, device: torch.device | None = None) -> int:
    cap = _CPU_MAX_CHUNK_ROWS if device is None or device.type == "cpu" else _GPU_MAX_CHUNK_ROWS
    return max(1, min(cap, chunk_bytes // (4 * max(k, 1))))


def _as_tensor(a: Any, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype)
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # Arrow-backed buffers are read-only; torch wants writable memory
        a = a.copy()
    return torch.as_tensor(a, dtype=dtype, device=device)


def _nearest(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor):
    """Index and squared L2 distance of the nearest centroid: ||x||² - 2x·c + ||c||², one matmul (float32)."""
    d = torch.addmm(c_sq.unsqueeze(0), x, c.T, beta=1.0, alpha=-2.0)
    mins, labels = d.min(dim=1)
    return labels, (mins + x_sq).clamp_(min=0.0)


def _partial_sums(x, x_sq, c, chunk_bytes):
    k, dim = c.shape
    c_sq = (c * c).sum(1)
    sums = torch.zeros((k, dim), dtype=torch.float64, device=x.device)
    counts = torch.zeros(k, dtype=torch.int64, device=x.device)
    inertia = torch.zeros((), dtype=torch.float64, device=x.device)
    step = _chunk_rows(k, chunk_bytes, x.device)
    for i in range(0, x.shape[0], step):
        xb = x[i : i + step]
        labels, dist = _nearest(xb, x_sq[i : i + step], c, c_sq)
        # float64 sums (spec): a float32 accumulator drifts by ~1e-4 relative within 16k rows already (tested)
        sums.index_add_(0, labels, xb.double())
        counts += torch.bincount(labels, minlength=k)
        inertia += dist.sum(dtype=torch.float64)
    return sums, counts, inertia


def _assign(x, x_sq, c, chunk_bytes):
    c_sq = (c * c).sum(1)
    step = _chunk_rows(c.shape[0], chunk_bytes, x.device)
    labels, dists = [], []
    for i in range(0, x.shape[0], step):
        lab, dist = _nearest(x[i : i + step], x_sq[i : i + step], c, c_sq)
        labels.append(lab)
        dists.append(dist)
    if not labels:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float32)
    return torch.cat(labels), torch.cat(dists)


def assign_and_partial_sums(
    points_shard: np.ndarray | torch.Tensor,
    centroids: np.ndarray | torch.Tensor,
    *,
    chunk_bytes: int = 1 << 26,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray, float]:
    """One Lloyd E-step on a row shard: (per-cluster float64 sums [k,d], int64 counts [k], float64 inertia)."""
    return KMeansShard(points_shard, device=device, chunk_bytes=chunk_bytes).partial_sums(np.asarray(centroids))


def update_centroids(sums: np.ndarray, counts: np.ndarray, old: np.ndarray) -> np.ndarray:
    """M-step from summed partials: mean of members; an empty cluster keeps its old centroid (spec)."""
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts)
    new = np.array(old, dtype=np.float32, copy=True)
    nz = counts > 0
    new[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
    return new


# ---------------------------------------------------------------------------------------------------------------
# A row shard (one per worker) and the driver that reduces over shards


class KMeansShard:
    """Rows held by one worker. Every method is a pure step the driver calls; wrap it as a Ray actor to distribute."""

    def __init__(self, points: np.ndarray | torch.Tensor, *, device: str = "auto", chunk_bytes: int = 1 << 26):
        self.device = resolve_device(device)
        self.x = _as_tensor(points, self.device)
        if self.x.ndim != 2:
            raise ValueError(f"points must be a 2-D array, got shape {tuple(self.x.shape)}")
        if not bool(torch.isfinite(self.x).all()):
            raise ValueError("points contain NaN or inf; embed or drop those rows first")
        self.x_sq = (self.x * self.x).sum(1)
        self.chunk_bytes = chunk_bytes
        self._d2: torch.Tensor | None = None
        self._cand: torch.Tensor | None = None

    def num_rows(self) -> int:
        return int(self.x.shape[0])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.x[torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)].cpu().numpy()

    def _work(self, k: int) -> int:
        return self.x.numel() * k if self.device.type == "cpu" else 1 << 62

    def partial_sums(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        with _threads_for(self._work(len(centroids))):
            sums, counts, inertia = _partial_sums(
                self.x, self.x_sq, _as_tensor(centroids, self.device), self.chunk_bytes
            )
        return sums.cpu().numpy(), counts.cpu().numpy(), float(inertia)

    def assign(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with _threads_for(self._work(len(centroids))):
            labels, dists = _assign(self.x, self.x_sq, _as_tensor(centroids, self.device), self.chunk_bytes)
        return labels.cpu().numpy().astype(np.int64), dists.cpu().numpy().astype(np.float32)

    # k-means++: the driver sums potentials over shards and picks (spec "Distributed shape"). These steps are skinny
    # (rows × a few candidates) and memory-bound; single-threaded they ran 5-10× faster than with OpenMP on a busy CPU.
    def pp_reset(self) -> None:
        self._d2 = torch.full((self.num_rows(),), float("inf"), dtype=torch.float32, device=self.device)
        self._cand = None

    def pp_sample(self, residuals: np.ndarray) -> np.ndarray:
        """Rows drawn ∝ D²: residual u in [0, shard potential) -> the row where the float64 cumsum passes u."""
        with _threads_for(0):
            cs = torch.cumsum(self._d2.double(), 0)
            u = torch.as_tensor(np.asarray(residuals, dtype=np.float64), device=self.device)
            return torch.searchsorted(cs, u, right=True).clamp_(max=self.num_rows() - 1).cpu().numpy()

    def pp_potentials(self, candidates: np.ndarray) -> np.ndarray:
        """Potential Σ min(D², d(x, cand)²) of this shard for each candidate; cached for pp_commit."""
        with _threads_for(0):
            c = _as_tensor(candidates, self.device)
            c_sq = (c * c).sum(1)
            step = _chunk_rows(c.shape[0], self.chunk_bytes, self.device)
            out = torch.empty((self.num_rows(), c.shape[0]), dtype=torch.float32, device=self.device)
            for i in range(0, self.num_rows(), step):
                d = torch.addmm(c_sq.unsqueeze(0), self.x[i : i + step], c.T, beta=1.0, alpha=-2.0)
                d.add_(self.x_sq[i : i + step, None]).clamp_(min=0.0)
                torch.minimum(d, self._d2[i : i + step, None], out=out[i : i + step])
            self._cand = out
            return out.sum(0, dtype=torch.float64).cpu().numpy()

    def pp_commit(self, j: int) -> float:
        """Adopt candidate j of the last pp_potentials call; returns the new shard potential."""
        with _threads_for(0):
            self._d2 = self._cand[:, j].contiguous()
            self._cand = None
            return float(self._d2.sum(dtype=torch.float64))


class _threads_for:
    """Run small steps single-threaded: on a busy CPU an OpenMP region costs ~30 ms, more than the work itself."""

    def __init__(self, work: int):
        self.small = work < (1 << 24)

    def __enter__(self):
        self.prev = torch.get_num_threads()
        if self.small and self.prev > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.small and self.prev > 1:
            torch.set_num_threads(self.prev)


def _local_call(shard: Any, method: str, *args: Any) -> Any:
    return getattr(shard, method)(*args)


def _identity(results: list) -> list:
    return results


def _kmeanspp(shards, k, rng, n_candidates, call, gather) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; 2 + ln k candidates per step, keep the lowest potential)."""
    sizes = np.array(gather([call(s, "num_rows") for s in shards]), dtype=np.int64)
    n = int(sizes.sum())
    if n == 0:
        raise ValueError("k-means needs at least one point")
    n_cand = n_candidates or 2 + int(math.log(k))
    gather([call(s, "pp_reset") for s in shards])

    def fetch(global_rows: np.ndarray) -> np.ndarray:
        owner = np.searchsorted(np.cumsum(sizes), global_rows, side="right")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out = [None] * len(global_rows)
        for s in np.unique(owner):
            pos = np.flatnonzero(owner == s)
            rows = gather([call(shards[s], "rows", global_rows[pos] - offsets[s])])[0]
            for p, r in zip(pos, rows, strict=True):
                out[p] = r
        return np.stack(out).astype(np.float32)

    def commit(cands: np.ndarray) -> tuple[int, np.ndarray]:
        pots = np.array(gather([call(s, "pp_potentials", cands) for s in shards]), dtype=np.float64)  # [S, c]
        best = int(np.argmin(pots.sum(0)))
        shard_pot = np.array(gather([call(s, "pp_commit", best) for s in shards]), dtype=np.float64)
        return best, shard_pot

    first = fetch(np.array([rng.integers(n)]))
    _, shard_pot = commit(first)
    centroids = [first[0]]
    for _ in range(1, k):
        total = shard_pot.sum()
        if total <= 0:  # every point coincides with a centroid: duplicates become empty clusters that keep position
            cands = fetch(rng.integers(n, size=1))
        else:
            u = rng.random(n_cand) * total
            owner = np.minimum(np.searchsorted(np.cumsum(shard_pot), u, side="right"), len(shards) - 1)
            offsets = np.concatenate([[0.0], np.cumsum(shard_pot)[:-1]])
            rows = np.empty(n_cand, dtype=np.int64)
            for s in np.unique(owner):
                pos = np.flatnonzero(owner == s)
                rows[pos] = gather([call(shards[s], "pp_sample", u[pos] - offsets[s])])[0] + sizes[:s].sum()
            cands = fetch(rows)
        best, shard_pot = commit(cands)
        centroids.append(cands[best])
    return np.stack(centroids)


def fit_level_distributed(
    shards: Sequence[Any],
    k: int,
    *,
    iterations: int = 50,
    seed: int | np.random.Generator = 0,
    n_candidates: int = 0,
    init: np.ndarray | None = None,
    call: Callable[..., Any] | None = None,
    gather: Callable[[list], list] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """k-means++ then Lloyd over row shards; returns (centroids, labels, distances, inertia per iteration).

    `call(shard, method, *args)` starts a step on one shard and `gather(list)` resolves the results, so for Ray actors
    wrapping `KMeansShard`: `call=lambda a, m, *x: getattr(a, m).remote(*x)`, `gather=ray.get`. The defaults call
    local `KMeansShard` objects directly. Labels and distances come back in shard order, concatenated.
    """
    call = call or _local_call
    gather = gather or _identity
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    centroids = (
        np.asarray(init, dtype=np.float32)
        if init is not None
        else _kmeanspp(shards, k, rng, n_candidates, call, gather)
    )
    history = []
    for _ in range(iterations):
        parts = gather([call(s, "partial_sums", centroids) for s in shards])
        sums = sum(p[0] for p in parts)
        counts = sum(p[1] for p in parts)
        history.append(float(sum(p[2] for p in parts)))
        centroids = update_centroids(sums, counts, centroids)
    parts = gather([call(s, "assign", centroids) for s in shards])
    labels = np.concatenate([p[0] for p in parts])
    dists = np.concatenate([p[1] for p in parts])
    history.append(float(dists.astype(np.float64).sum()))
    return centroids, labels, dists, history


def kmeans(
    points: np.ndarray,
    k: int,
    *,
    iterations: int = 50,
    seed: int | np.random.Generator = 0,
    n_candidates: int = 0,
    init: np.ndarray | None = None,
    device: str = "auto",
    chunk_bytes: int = 1 << 26,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Flat k-means on one worker: the distributed driver over a single shard (one code path)."""
    shard = KMeansShard(points, device=device, chunk_bytes=chunk_bytes)
    return fit_level_distributed([shard], k, iterations=iterations, seed=seed, n_candidates=n_candidates, init=init)


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
    params: KMeansParams,
    n_docs: int,
    *,
    call: Callable[..., Any] | None = None,
    gather: Callable[[list], list] | None = None,
) -> LevelResult:
    """Fit level `level` (1-based) on its input: embeddings at level 1, else level-1's centroids (resumable).

    `points` is an array, or (level 1, distributed) a list of shard handles driven through `call`/`gather`.
    """
    ks, steps, rs = params.resolve(n_docs)
    if not 1 <= level <= len(ks):
        raise ValueError(f"level must be in 1..{len(ks)}, got {level}")
    k, m, r = ks[level - 1], steps[level - 1], rs[level - 1]
    if isinstance(points, np.ndarray) or isinstance(points, torch.Tensor):
        shards = [KMeansShard(points, device=params.device, chunk_bytes=params.chunk_bytes)]
        call = gather = None
    else:
        shards = list(points)
    call_ = call or _local_call
    gather_ = gather or _identity
    n = int(sum(gather_([call_(s, "num_rows") for s in shards])))
    if n == 0:
        raise ValueError(f"level {level} has no input points")
    k = min(k, n)
    fit = dict(iterations=params.iterations, n_candidates=params.n_candidates, call=call, gather=gather)

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
    params: KMeansParams = KMeansParams(),
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
    for level in range(len(result.levels) + 1, len(ks) + 1):
        x = embeddings if level == 1 else result.levels[-1].centroids
        lr = fit_level(x, level, params, n_docs)
        result.levels.append(lr)
        if on_level is not None:
            on_level(lr)
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
    batch: pa.Table, params: KMeansParams = KMeansParams(), *, result: HKMeansResult, column: str = "embedding"
) -> pa.Table:
    """Kind (a): label new embeddings with a fitted tree; adds km_l1..km_lT and km_l1_dist (null embedding -> nulls)."""
    col = batch.column(column)
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
    n_levels = len(result.levels)
    labels = np.zeros((n_levels, batch.num_rows), dtype=np.int64)
    dist = np.zeros(batch.num_rows, dtype=np.float32)
    if valid.any():
        x = embeddings_matrix(batch.filter(pa.array(valid)), column)
        shard = KMeansShard(x, device=params.device, chunk_bytes=params.chunk_bytes)
        lab, d = shard.assign(result.levels[0].centroids)
        labels[0, valid], dist[valid] = lab, d
        for t in range(1, n_levels):
            labels[t, valid] = result.levels[t].labels[labels[t - 1, valid]]
    out = batch
    for t in range(n_levels):
        out = out.append_column(f"km_l{t + 1}", pa.array(labels[t], pa.int64(), mask=~valid))
    return out.append_column("km_l1_dist", pa.array(dist, pa.float32(), mask=~valid))


# ---------------------------------------------------------------------------------------------------------------
# Balanced hierarchical sampling


@dataclass(frozen=True, kw_only=True, slots=True)
class BalanceParams:
    """Balanced hierarchical sampling (spec §"Balanced hierarchical sampling"; arXiv 2405.15613 §3.3).

    target_size: N*, in documents, or in `weight_column` units (e.g. tokens) when that is set.
    multiplier: m, the most copies of one document (1 = no duplication).
    strategy: "r" random within a leaf (the paper's choice for the final sample) or "c" closest to the centroid.
    weight_column: per-row non-negative integer weight (token count); None = count documents.
    levels: number of km_l* levels to use; 0 = every km_l<t> column present.
    """

    target_size: int
    multiplier: int = 1
    strategy: str = "r"
    weight_column: str | None = None
    levels: int = 0
    seed: int = 0
    doc_id_column: str = "doc_id"
    distance_column: str = "km_l1_dist"

    def __post_init__(self) -> None:
        if self.target_size < 0:
            raise ValueError(f"target_size must be >= 0, got {self.target_size}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.strategy not in ("r", "c"):
            raise ValueError(
                f"strategy must be 'r' (random) or 'c' (closest); 'furthest' is known to be bad, got {self.strategy!r}"
            )
        if self.levels < 0:
            raise ValueError(f"levels must be >= 0 (0 = every km_l* column), got {self.levels}")


def water_fill(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Quotas: largest integer cap x with Σ min(x, s_i) ≤ target, remainder +1 to random clusters with room."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if target >= sizes.sum():
        return sizes.copy()
    lo, hi = 0, int(sizes.max())
    while lo < hi:  # largest x with f(x) <= target; f is monotone
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= target:
            lo = mid
        else:
            hi = mid - 1
    quotas = np.minimum(sizes, lo)
    rem = int(target - quotas.sum())
    if rem:
        room = np.flatnonzero(sizes > lo)  # rem < len(room), else lo + 1 would fit
        quotas[rng.choice(room, size=rem, replace=False)] += 1
    return quotas


def _level_columns(table: pa.Table, levels: int) -> list[str]:
    names = []
    t = 1
    while f"km_l{t}" in table.column_names and (levels == 0 or t <= levels):
        names.append(f"km_l{t}")
        t += 1
    if not names or (levels and len(names) < levels):
        raise ValueError(f"balanced_sample needs km_l1..km_l{levels or 'T'} columns; have {table.column_names}")
    return names


def balanced_sample(table: pa.Table, params: BalanceParams) -> pa.Table:
    """Kind (c): the selected rows (with all input columns) plus `bal_copies` (1..m); unselected rows are omitted.

    The top level is water-filled, each cluster's quota is split among its children with one shared cap bounded by
    each child's flat size, and a leaf takes ⌊quota/|leaf|⌋ full copies plus the rest by strategy.
    """
    cols = _level_columns(table, params.levels)
    n = table.num_rows
    for c in cols:
        if table.column(c).null_count:
            raise ValueError(f"{table.column(c).null_count} rows have a null {c!r} (unclustered); drop them first")
    labels = [table.column(c).to_numpy().astype(np.int64) for c in cols]
    if params.weight_column is None:
        w = np.ones(n, dtype=np.int64)
    else:
        wcol = table.column(params.weight_column)
        if wcol.null_count:
            raise ValueError(f"{wcol.null_count} rows have a null {params.weight_column!r}")
        w = wcol.to_numpy().astype(np.int64)
        if (w < 0).any():
            raise ValueError(f"{params.weight_column!r} must be non-negative")
    m = params.multiplier
    rng = np.random.default_rng(params.seed)
    # Flat size of each cluster at each level: m × (documents or tokens) below it.
    flat = [
        np.bincount(lab, weights=w, minlength=int(lab.max()) + 1 if n else 0).astype(np.int64) * m for lab in labels
    ]
    top = len(cols) - 1
    present = np.flatnonzero(np.bincount(labels[top], minlength=len(flat[top])) > 0) if n else np.zeros(0, np.int64)
    quota = np.zeros(len(flat[top]), dtype=np.int64)
    if len(present):
        quota[present] = water_fill(flat[top][present], params.target_size, rng)
    for t in range(top, 0, -1):  # split each parent's quota among its children (level t -> t-1)
        pairs = np.unique(np.stack([labels[t], labels[t - 1]], 1), axis=0)  # (parent, child), parent-sorted
        child_quota = np.zeros(len(flat[t - 1]), dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
        for s, e in zip(starts, np.r_[starts[1:], len(pairs)], strict=True):
            parent, children = pairs[s, 0], pairs[s:e, 1]
            if quota[parent] > 0:
                child_quota[children] = water_fill(flat[t - 1][children], int(quota[parent]), rng)
        quota = child_quota
    # Leaves: full copies, then the rest by strategy, vectorised over all leaves.
    leaf = labels[0]
    leaf_w = flat[0] // m
    full = np.where(leaf_w > 0, quota // np.maximum(leaf_w, 1), 0)
    rest = quota - full * leaf_w
    if params.strategy == "c":
        if params.distance_column not in table.column_names:
            raise ValueError(f"strategy 'c' needs {params.distance_column!r}")
        key = table.column(params.distance_column).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        key = rng.random(n)
    order = np.lexsort((np.arange(n), key, leaf))
    cum = np.cumsum(w[order])
    lab_sorted = leaf[order]
    starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]]) if n else np.zeros(0, np.int64)
    seg_start = np.repeat(cum[starts] - w[order][starts], np.diff(np.r_[starts, n]))
    within = cum - seg_start  # inclusive running weight inside the leaf
    extra = (within <= rest[lab_sorted]) & (w[order] > 0) & (rest[lab_sorted] > 0)
    copies = np.zeros(n, dtype=np.int64)
    copies[order] = full[lab_sorted] + extra
    copies = np.minimum(copies, m)
    sel = np.flatnonzero(copies > 0)
    return table.take(pa.array(sel)).append_column("bal_copies", pa.array(copies[sel], pa.int32()))


# ---------------------------------------------------------------------------------------------------------------
# Balance report


def gini(sizes: np.ndarray) -> float:
    """Gini coefficient of cluster sizes (0 = all equal)."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    i = np.arange(1, len(x) + 1)
    return float(2 * (i * x).sum() / (len(x) * x.sum()) - (len(x) + 1) / len(x))


def entropy(sizes: np.ndarray) -> float:
    """Shannon entropy (nats) of the size distribution."""
    p = np.asarray(sizes, dtype=np.float64)
    p = p[p > 0] / p.sum() if p.sum() > 0 else p[:0]
    return float(-(p * np.log(p)).sum())


def kl_to_uniform(sizes: np.ndarray) -> float:
    """KL(sizes/Σ ‖ uniform over len(sizes)) = log k - H."""
    return float(math.log(len(sizes)) - entropy(sizes)) if len(sizes) else 0.0


def balance_report(
    before: pa.Table, after: pa.Table, *, domain_column: str = "domain", copies_column: str = "bal_copies"
) -> dict[str, pa.Table]:
    """Balance measures (spec §"Measures of balance") as Arrow tables, keyed by name.

    level_stats: per level, clusters, Gini/entropy/KL-to-uniform before and after, leaf (cluster) coverage,
        duplicate rate. cluster_sizes: level, cluster, size before/after. size_histogram: log2 bins of cluster sizes.
    domain_mix: domain share before/after (only when `domain_column` is in both tables).
    """
    cols = _level_columns(before, 0)
    copies = (
        after.column(copies_column).to_numpy().astype(np.int64)
        if copies_column in after.column_names
        else np.ones(after.num_rows, dtype=np.int64)
    )
    n_sel = int(copies.sum())
    dup_rate = float((n_sel - after.num_rows) / n_sel) if n_sel else 0.0
    stats, sizes_parts, hist_parts = [], [], []
    for t, c in enumerate(cols, 1):
        b_lab = before.column(c).to_numpy().astype(np.int64)
        a_lab = after.column(c).to_numpy().astype(np.int64)
        k = int(max(b_lab.max(initial=-1), a_lab.max(initial=-1))) + 1
        b = np.bincount(b_lab, minlength=k)
        a = np.bincount(a_lab, weights=copies, minlength=k).astype(np.int64)
        present = b > 0
        b, a, ids = b[present], a[present], np.flatnonzero(present)
        stats.append(
            {
                "level": t,
                "clusters": int(len(b)),
                "docs_before": int(b.sum()),
                "docs_after": int(a.sum()),
                "gini_before": gini(b),
                "gini_after": gini(a),
                "entropy_before": entropy(b),
                "entropy_after": entropy(a),
                "max_entropy": math.log(len(b)) if len(b) else 0.0,
                "kl_uniform_before": kl_to_uniform(b),
                "kl_uniform_after": kl_to_uniform(a),
                "coverage": float((a > 0).mean()) if len(a) else 0.0,
                "duplicate_rate": dup_rate,
            }
        )
        sizes_parts.append(
            pa.table(
                {
                    "level": pa.array(np.full(len(b), t), pa.int32()),
                    "cluster": pa.array(ids, pa.int64()),
                    "size_before": pa.array(b, pa.int64()),
                    "size_after": pa.array(a, pa.int64()),
                }
            )
        )
        top = int(max(b.max(initial=1), a.max(initial=1)))
        edges = 2 ** np.arange(0, int(math.ceil(math.log2(top + 1))) + 1)  # bins [1,2) [2,4) ...; 0 counted apart
        edges = np.r_[0, edges]
        hb, _ = np.histogram(b, bins=edges)
        ha, _ = np.histogram(a, bins=edges)
        hist_parts.append(
            pa.table(
                {
                    "level": pa.array(np.full(len(hb), t), pa.int32()),
                    "bin_lo": pa.array(edges[:-1], pa.int64()),
                    "bin_hi": pa.array(edges[1:], pa.int64()),
                    "clusters_before": pa.array(hb, pa.int64()),
                    "clusters_after": pa.array(ha, pa.int64()),
                }
            )
        )
    report = {
        "level_stats": pa.Table.from_pylist(stats),
        "cluster_sizes": pa.concat_tables(sizes_parts),
        "size_histogram": pa.concat_tables(hist_parts),
    }
    if domain_column in before.column_names and domain_column in after.column_names:
        db = before.column(domain_column).fill_null("<null>").to_pylist()
        da = after.column(domain_column).fill_null("<null>").to_pylist()
        names = sorted(set(db) | set(da))
        cb = {d: 0 for d in names}
        ca = {d: 0 for d in names}
        for d in db:
            cb[d] += 1
        for d, cp in zip(da, copies, strict=True):
            ca[d] += int(cp)
        tb, ta = max(sum(cb.values()), 1), max(sum(ca.values()), 1)
        report["domain_mix"] = pa.table(
            {
                "domain": names,
                "docs_before": [cb[d] for d in names],
                "share_before": [cb[d] / tb for d in names],
                "docs_after": [ca[d] for d in names],
                "share_after": [ca[d] / ta for d in names],
            }
        )
    return report
