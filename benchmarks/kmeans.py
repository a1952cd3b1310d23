"""One level of k-means (quarry vs faiss-cpu) and embedding throughput (quarry Embedder vs raw sentence-transformers).

k-means: N × 384 float32 unit vectors (a seeded Gaussian mixture, like sentence embeddings), k clusters, the same
random initial centroids for both, 20 Lloyd iterations. quarry runs the exact per-iteration reduction the distributed
driver uses (KMeansShard.partial_sums: chunked matmul distances in float32, float64 sums, then update_centroids);
faiss runs faiss.Kmeans.train with init_centroids. Each contender runs in its own subprocess so peak RSS is its own.
Target: quarry ≤ 1.5× faiss time per iteration on CPU (median over iterations: the CPU is shared, min shown too). quarry's greedy k-means++ init is timed separately
(--kmeanspp) because faiss has no k-means++.

Embedding: docs/s and MB/s on ../shared/data/web/c4_sample with the bundled all-MiniLM-L6-v2 (max_seq_length 256),
quarry's Embedder vs SentenceTransformer.encode on the same texts.

    python benchmarks/kmeans.py            # 200k × 384, k=1000, 20 iterations; all 1000 C4 docs
    python benchmarks/kmeans.py --small    # 20k × 384, k=100; 100 C4 docs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
C4 = REPO / ".." / "shared" / "data" / "web" / "c4_sample" / "c4_sample.jsonl"


def _rss_mb() -> float:
    """Peak RSS of this process: VmHWM (ru_maxrss survives exec, so it would report the parent's data generation)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_data(n: int, dim: int, k: int, seed: int, path: Path) -> None:
    """Write the points and initial centroids once, so workers load one copy and peak RSS is algorithm + data."""
    import numpy as np

    rng = np.random.default_rng(seed)
    comps = 50
    means = rng.standard_normal((comps, dim)).astype(np.float32)
    weights = rng.dirichlet(np.full(comps, 0.3))  # unequal component sizes, as real topics
    comp = rng.choice(comps, size=n, p=weights)
    x = means[comp] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    init = x[rng.choice(n, size=k, replace=False)].copy()
    np.save(path / "x.npy", x)
    np.save(path / "init.npy", init)


def _data(path: str):
    import numpy as np

    return np.load(Path(path) / "x.npy"), np.load(Path(path) / "init.npy")


def _inertia(x, c) -> float:
    from tasks.balance.kmeans import KMeansShard

    _, d = KMeansShard(x, device="cpu").assign(c)
    return float(d.astype("float64").sum())


def _kmeans_quarry(path, k, iters, seed, kmeanspp) -> dict:
    import torch  # noqa: F401  (import cost counted in the baseline, as faiss's)

    from tasks.balance.kmeans import KMeansShard, kmeans, update_centroids

    x, init = _data(path)
    base = _rss_mb()
    shard = KMeansShard(x, device="cpu")
    c = init
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sums, counts, _ = shard.partial_sums(c)
        c = update_centroids(sums, counts, c)
        times.append(time.perf_counter() - t0)
    out = {
        "s_per_iter": statistics.median(times),
        "min_s_per_iter": min(times),
        "peak_rss_mb": _rss_mb(),
        "rss_over_data_mb": _rss_mb() - base,
        "inertia": _inertia(x, c),
    }
    if kmeanspp:
        t0 = time.perf_counter()
        kmeans(x, k, iterations=0, seed=seed, device="cpu")
        out["kmeanspp_s"] = time.perf_counter() - t0
    return out


def _kmeans_faiss(path, k, iters, seed, kmeanspp) -> dict:
    import faiss

    x, init = _data(path)
    base = _rss_mb()
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, max_points_per_centroid=10**9, verbose=False)
    km.train(x, init_centroids=init)
    cum = [s["time"] for s in km.iteration_stats]  # cumulative seconds per iteration
    times = [b - a for a, b in zip([0.0] + cum[:-1], cum, strict=True)]
    return {
        "s_per_iter": statistics.median(times),
        "min_s_per_iter": min(times),
        "peak_rss_mb": _rss_mb(),
        "rss_over_data_mb": _rss_mb() - base,
        "inertia": _inertia(x, km.centroids),
    }


def _texts(n: int) -> list[str]:
    with C4.open() as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f, strict=False)]


def _embed_quarry(n_docs: int) -> dict:
    import pyarrow as pa

    from tasks.balance.embed import Embedder, EmbedParams

    texts = _texts(n_docs)
    e = Embedder(EmbedParams(device="cpu"))
    e.embed_texts(texts[:4])  # warm-up, not timed
    t0 = time.perf_counter()
    e(pa.table({"text": texts}))
    dt = time.perf_counter() - t0
    return {"docs": len(texts), "s": dt, "mb": sum(len(t.encode()) for t in texts) / 1e6, "peak_rss_mb": _rss_mb()}


def _embed_st(n_docs: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from tasks.balance.embed import bundled_model_path

    texts = _texts(n_docs)
    m = SentenceTransformer(bundled_model_path(), device="cpu", local_files_only=True)
    m.encode(texts[:4])
    t0 = time.perf_counter()
    m.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    dt = time.perf_counter() - t0
    return {"docs": len(texts), "s": dt, "mb": sum(len(t.encode()) for t in texts) / 1e6, "peak_rss_mb": _rss_mb()}


_WORKERS = {
    "kmeans_quarry": _kmeans_quarry,
    "kmeans_faiss": _kmeans_faiss,
    "embed_quarry": _embed_quarry,
    "embed_st": _embed_st,
}


def _spawn(name: str, *args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--worker", name, json.dumps(args)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="20k points, k=100, 100 C4 docs")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kmeanspp", action="store_true", help="also time quarry's greedy k-means++ init")
    ap.add_argument("--embed-docs", type=int, default=None)
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        sys.path.insert(0, str(REPO))
        print(json.dumps(_WORKERS[a.worker](*json.loads(a.args))))
        return
    n = a.n or (20_000 if a.small else 200_000)
    k = a.k or (100 if a.small else 1000)
    dim = 384
    cores = os.cpu_count()
    print(f"k-means: {n} x {dim} float32, k={k}, {a.iters} iterations, same init, {cores} cores")
    with tempfile.TemporaryDirectory() as tmp:
        _make_data(n, dim, k, a.seed, Path(tmp))
        q = _spawn("kmeans_quarry", tmp, k, a.iters, a.seed, a.kmeanspp)
        f = _spawn("kmeans_faiss", tmp, k, a.iters, a.seed, False)
    print(
        f"{'':8} {'median s/iter':>13} {'min s/iter':>10} {'pts/s/core':>11} {'peak RSS MB':>12} {'RSS over data+libs':>18} {'inertia':>12}"
    )
    for name, r in (("quarry", q), ("faiss", f)):
        print(
            f"{name:8} {r['s_per_iter']:13.3f} {r['min_s_per_iter']:10.3f} {n / r['s_per_iter'] / cores:11.0f} {r['peak_rss_mb']:12.0f} "
            f"{r['rss_over_data_mb']:18.0f} {r['inertia']:12.2f}"
        )
    ratio = q["s_per_iter"] / f["s_per_iter"]
    print(
        f"quarry/faiss time per iteration: {ratio:.2f}x (target <= 1.5x) -> {'OK' if ratio <= 1.5 else 'MISSED'}; "
        f"inertia ratio {q['inertia'] / f['inertia']:.4f}"
    )
    if "kmeanspp_s" in q:
        print(f"quarry greedy k-means++ init: {q['kmeanspp_s']:.1f} s")
    if a.skip_embed or not C4.exists():
        print("embedding: skipped" + ("" if a.skip_embed else f" (no {C4})"))
        return
    nd = a.embed_docs or (100 if a.small else 1000)
    eq = _spawn("embed_quarry", nd)
    es = _spawn("embed_st", nd)
    print(f"embedding ({eq['docs']} C4 docs, {eq['mb']:.2f} MB, all-MiniLM-L6-v2, max_seq_length 256, CPU):")
    for name, r in (("quarry", eq), ("st", es)):
        print(
            f"{name:8} {r['docs'] / r['s']:8.1f} docs/s {r['mb'] / r['s'] / cores:8.3f} MB/s/core "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    print(f"quarry/sentence-transformers docs/s: {(eq['docs'] / eq['s']) / (es['docs'] / es['s']):.2f}x")


if __name__ == "__main__":
    main()
