"""What committed data proving itself costs (issue 34): one realistic ingest shard (50,000 C4 documents, the default
``docs_per_shard``; ~115 MB of text) written with and without the checksum + fsync ($QUARRY_INTEGRITY), then the
checks: the open check (stat + footer hash + footer) and the full xxh64 of ``quarry verify`` / the reuse check.

    python -m benchmarks.integrity [--docs 50000] [--repeat 5] [--dir /path/on/the/disk/to/measure]

Each contender is timed ``repeat`` times, alternating, on one pinned core; the median is reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from benchmarks._common import SHARED, jsonl_texts, pin_one_core
from storage import datasets, verify
from storage.datasets import DatasetRef


def shard(docs: int) -> pa.Table:
    base = jsonl_texts(SHARED / "web" / "c4_sample" / "c4_sample.jsonl")
    # every text distinct (a number and a rotation of its words), so neither the dictionary nor zstd sees repeats
    texts = []
    for i in range(docs):
        words = base[i % len(base)].split(" ")
        k = (i // len(base)) % max(1, len(words))
        texts.append(f"{i} " + " ".join(words[k:] + words[:k]))
    return pa.table({"doc_id": [f"{i:016x}" for i in range(docs)], "url": [f"http://c4/{i}" for i in range(docs)],
                     "text": texts})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)
    pin_one_core()
    table = shard(args.docs)
    root = tempfile.mkdtemp(prefix="quarry-integrity-", dir=args.dir)
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for r in range(args.repeat):
            for mode in ("off", "on"):
                os.environ[datasets.INTEGRITY_ENV] = "0" if mode == "off" else "1"
                ref = DatasetRef(root, "bench", "ingest", f"{r:06x}{0 if mode == 'off' else 1:06x}")
                t0 = time.perf_counter()
                datasets.write_shard(ref, "part-00000.parquet", table)
                times[mode].append(time.perf_counter() - t0)
        os.environ[datasets.INTEGRITY_ENV] = "1"
        datasets.commit(ref)
        entry = datasets.read_manifest(ref)["files"][0]
        path = os.path.join(ref.uri, entry["name"])
        size = entry["bytes"]
        t_open = _median(lambda: _open(path, entry), args.repeat)
        t_plain = _median(lambda: pq.ParquetFile(path).metadata, args.repeat)
        t_full = _median(lambda: verify.file_checksum(path), args.repeat)
        data = open(path, "rb").read()
        t_hash = _median(lambda: xxhash.xxh64(data).hexdigest(), args.repeat)
    finally:
        os.environ.pop(datasets.INTEGRITY_ENV, None)
        shutil.rmtree(root, ignore_errors=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    mb = table.nbytes / 2**20
    print(f"shard: {args.docs} docs, {mb:.0f} MiB in Arrow, {size / 2**20:.1f} MiB on disk (zstd)")
    print(f"write_shard without checksum/fsync: {off * 1e3:.0f} ms   with: {on * 1e3:.0f} ms   "
          f"overhead {(on - off) * 1e3:+.0f} ms ({(on / off - 1) * 100:+.1f} %)")
    print(f"of which xxh64 of the bytes in memory: {t_hash * 1e3:.1f} ms (the rest: fsync of data and folder)")
    print(f"open check (stat + footer hash + footer): {t_open * 1e3:.2f} ms   plain footer read: {t_plain * 1e3:.2f} ms")
    print(f"full xxh64 (verify / reuse check, warm page cache): {t_full * 1e3:.0f} ms = "
          f"{size / 2**20 / t_full:.0f} MiB/s")


def _open(path: str, entry: dict):
    with datasets.open_parquet(path, entry) as pf:
        return pf.metadata


def _median(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


if __name__ == "__main__":
    main()
