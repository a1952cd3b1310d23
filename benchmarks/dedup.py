"""MinHash signatures + LSH throughput on the C4 gold documents: quarry vs datasketch vs datatrove, one core.

Each contender runs in its own fresh subprocess pinned to one CPU (so peak RSS is its own), on the same documents:

- quarry:     tasks.dedup.minhash.minhash_signatures (RPv2-exact: normalize, 13-gram sha1 shingles, 128 perms, band
              keys for 1.0/0.9/0.8/0.7) + minhash_edges/oracle_minhash_buckets/oracle_minhash_clusters (the Arrow
              buckets and components) at 0.8 (9 bands x 13 rows).
- datasketch: MinHash(num_perm=128).update_batch over the same RPv2 13-gram shingles + MinHashLSH(threshold=0.8)
              insert and query for every doc.
- datatrove:  MinhashDedupSignature.run (its own tokenizer/normalization, configured as RPv2: 13-grams, 9 x 13,
              seed 42, sha1 32-bit) writing its sorted bucket signature files; the signature step only, as its
              bucket/cluster steps are separate file-based jobs.

    python benchmarks/dedup.py [--docs ../shared/data/gold/c4_docs.jsonl] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DOCS = REPO / ".." / "shared" / "data" / "gold" / "c4_docs.jsonl"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(path: Path) -> tuple[list[str], list[str]]:
    with open(path) as f:
        docs = [json.loads(line) for line in f]
    return [d["id"] for d in docs], [d["text"] for d in docs]


def _run_quarry(ids: list[str], texts: list[str]) -> dict:
    import pyarrow as pa

    from tasks.dedup.minhash import (
        MinhashDedupParams,
        MinhashSignaturesParams,
        minhash_edges,
        minhash_signatures,
        oracle_minhash_buckets,
        oracle_minhash_clusters,
    )

    batch = pa.table({"doc_id": ids, "text": texts})
    minhash_signatures(batch.slice(0, 2), MinhashSignaturesParams())  # warm the band-layout cache (scipy quad), not timed
    t0 = time.perf_counter()
    sig = minhash_signatures(batch, MinhashSignaturesParams())
    t1 = time.perf_counter()
    params = MinhashDedupParams(similarity=0.8, num_partitions=4)
    edges = minhash_edges(sig, params)
    parts = [oracle_minhash_buckets(edges.filter(pa.compute.equal(edges.column("part"), p))) for p in range(4)]
    clusters = oracle_minhash_clusters(parts)
    t2 = time.perf_counter()
    return {"sig_s": t1 - t0, "lsh_s": t2 - t1, "dup_docs": clusters.num_rows}


def _run_datasketch(ids: list[str], texts: list[str]) -> dict:
    from datasketch import MinHash, MinHashLSH

    from tasks.common.textnorm import rpv2_normalize

    t0 = time.perf_counter()
    sigs = []
    for text in texts:
        w = rpv2_normalize(text).split()
        if len(w) < 13:
            sigs.append(None)
            continue
        m = MinHash(num_perm=128, seed=42)
        m.update_batch([" ".join(w[i : i + 13]).encode("utf-8") for i in range(len(w) - 12)])
        sigs.append(m)
    t1 = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)  # same optimum: 9 bands x 13 rows
    for i, m in zip(ids, sigs, strict=True):
        if m is not None:
            lsh.insert(i, m)
    dup = {i for i, m in zip(ids, sigs, strict=True) if m is not None and len(lsh.query(m)) > 1}
    t2 = time.perf_counter()
    return {"sig_s": t1 - t0, "lsh_s": t2 - t1, "dup_docs": len(dup)}


def _run_datatrove(ids: list[str], texts: list[str]) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(
        n_grams=13, num_buckets=9, hashes_per_bucket=13, seed=42, hash_config=HashConfig(precision=32, hash_fc="sha1")
    )
    with tempfile.TemporaryDirectory() as out:
        step = MinhashDedupSignature(output_folder=out, config=cfg)
        step.word_tokenizer.word_tokenize("warm up the spaCy tokenizer")  # lazy load, not timed
        docs = [Document(text=t, id=i) for i, t in zip(ids, texts, strict=True)]
        t0 = time.perf_counter()
        step.run(iter(docs), rank=0, world_size=1)
        t1 = time.perf_counter()
    return {"sig_s": t1 - t0, "lsh_s": None, "dup_docs": None}


RUNNERS = {"quarry": _run_quarry, "datasketch": _run_datasketch, "datatrove": _run_datatrove}


def _child(name: str, docs: Path) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    ids, texts = _load(docs)
    RUNNERS[name](ids[:3], texts[:3])  # imports, lazy models and caches load here, outside time and memory delta
    before = _rss_mb()
    res = RUNNERS[name](ids, texts)
    res.update(peak_rss_mb=_rss_mb(), peak_over_start_mb=_rss_mb() - before)
    res.update(n_docs=len(texts), mb=sum(len(t.encode("utf-8")) for t in texts) / 1e6)
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    ap.add_argument("--only", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        return _child(args.only, args.docs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    results = {}
    for name in RUNNERS:
        proc = subprocess.run(
            [sys.executable, __file__, "--only", name, "--docs", str(args.docs)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results.get("quarry")
    if base is None:
        sys.exit("quarry's run failed: no ratios to print")
    n, mb = (base["n_docs"], base["mb"]) if base else (0, 0)
    print(f"\n{n} docs, {mb:.2f} MB, one core each\n")
    head = f"{'':12}{'sig docs/s':>12}{'sig MB/s':>10}{'sig+LSH docs/s':>16}{'quarry x':>10}{'peak RSS MB':>13}{'(+work)':>9}  dup docs"
    print(head)
    for name, r in results.items():
        total = r["sig_s"] + (r["lsh_s"] or 0.0)
        ratio = (base["sig_s"] + base["lsh_s"]) and total / (base["sig_s"] + base["lsh_s"])
        full = f"{n / total:16.0f}" if r["lsh_s"] is not None else f"{'(sig only)':>16}"
        sig_ratio = r["sig_s"] / base["sig_s"] if r["lsh_s"] is None else ratio
        print(
            f"{name:12}{n / r['sig_s']:12.0f}{mb / r['sig_s']:10.2f}{full}{sig_ratio:10.2f}"
            f"{r['peak_rss_mb']:13.0f}{r['peak_over_start_mb']:9.0f}  {r['dup_docs']}"
        )
    print("\n'quarry x' = peer time / quarry time on the same work (sig+LSH; datatrove: signature step only).")


if __name__ == "__main__":
    main()
