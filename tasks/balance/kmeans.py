"""Flat k-means in torch, as pure functions over row shards: one Lloyd iteration is a reduction of per-shard
sums and counts, so the same code runs on one CPU, one GPU, or Ray actors holding one ``KMeansShard`` each.

    centroids, labels, dists, history = kmeans(points, k=1000, iterations=50, seed=0)

Distributed: wrap one ``KMeansShard(points)`` per worker and drive them with
``fit_level_distributed(shards, k, call=..., gather=...)``; per iteration only float64 sums and counts travel.
Used by tasks/balance/hkmeans.py (hierarchical levels, Vo et al. 2024) and tasks/balance/semdedup.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


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


def local_call(shard: Any, method: str, *args: Any) -> Any:
    return getattr(shard, method)(*args)


def identity(results: list) -> list:
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
    on_iteration: Callable[[int, int, float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """k-means++ then Lloyd over row shards; returns (centroids, labels, distances, inertia per iteration).
    ``on_iteration(i, iterations, inertia)`` after each Lloyd iteration (progress lines).

    `call(shard, method, *args)` starts a step on one shard and `gather(list)` resolves the results, so for Ray actors
    wrapping `KMeansShard`: `call=lambda a, m, *x: getattr(a, m).remote(*x)`, `gather=ray.get`. The defaults call
    local `KMeansShard` objects directly. Labels and distances come back in shard order, concatenated.
    """
    call = call or local_call
    gather = gather or identity
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    centroids = (
        np.asarray(init, dtype=np.float32)
        if init is not None
        else _kmeanspp(shards, k, rng, n_candidates, call, gather)
    )
    history = []
    for i in range(iterations):
        parts = gather([call(s, "partial_sums", centroids) for s in shards])
        sums = sum(p[0] for p in parts)
        counts = sum(p[1] for p in parts)
        history.append(float(sum(p[2] for p in parts)))
        centroids = update_centroids(sums, counts, centroids)
        if on_iteration is not None:
            on_iteration(i + 1, iterations, history[-1])
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
    on_iteration: Callable[[int, int, float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Flat k-means on one worker: the distributed driver over a single shard (one code path)."""
    shard = KMeansShard(points, device=device, chunk_bytes=chunk_bytes)
    return fit_level_distributed([shard], k, iterations=iterations, seed=seed, n_candidates=n_candidates, init=init,
                                 on_iteration=on_iteration)
