"""Ingest throughput on the shared samples, side by side with datatrove's reader + extractor on the same files.

    python benchmarks/ingest.py            # one core (each side runs in this single process)

Two workloads:
* WARC -> text: the WARC samples (Dolma, resiliparse, warcio, Common Crawl) with HTML main-text extraction.
  quarry: FastWARC records + resiliparse (default) and + trafilatura; datatrove: WarcReader + Trafilatura.
* JSONL -> Parquet: the C4, Wikipedia, code, arXiv and StackExchange JSONL samples into a documents Parquet file.
  quarry: read_jsonl + Arrow + zstd Parquet; datatrove: JsonlReader + ParquetWriter.

A third, ``--small-files``: N small JSONL files (3 records, ~150 bytes each, in folders of 1,000) through the real
``ingest`` stage (the executor, serial profile: one core), at N = 20,000 and 100,000 (``--million`` adds 1,000,000):
listing + planning seconds, work items, shards written, files/s and peak memory. Files/s should hold steady as N
grows (constant cost per file: no listing or planning that grows with the number of files already seen).

    python benchmarks/ingest.py --small-files            # 20k and 100k
    python benchmarks/ingest.py --small-files --million  # and 1M (~10 minutes, 4 GB of inodes)

Prints docs/s, MB/s (input bytes, one core), the CPU seconds the case used (process time: the number to compare on
a machine shared with other work, where wall time also counts waiting for the core) and peak memory (ru_maxrss of
this process, so the later row includes the earlier ones' high-water mark; each side is run in a fresh subprocess to
keep the numbers separate).
"""

from __future__ import annotations

import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QUARRY_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO))

WARCS = sorted(
    p
    for p in glob.glob(str(SHARED / "web" / "**" / "*.warc*"), recursive=True) + glob.glob(str(SHARED / "web" / "**" / "*.arc.gz"), recursive=True)
    if ".wat" not in p
)
JSONLS = [
    (SHARED / "web" / "c4_sample" / "c4_sample.jsonl", {"text_field": "text"}),
    (SHARED / "clean" / "wikipedia_1k" / "wikipedia.jsonl", {"text_field": "eng_Latn"}),
    (SHARED / "domains" / "github_code" / "github_code_sample.jsonl", {"text_field": "text"}),
    (SHARED / "domains" / "arxiv_abstracts" / "arxiv_abstracts.jsonl", {"text_field": "abstract"}),
]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quarry_warc(extractor: str) -> dict:
    from tasks.ingest.sources import IngestSource
    from tasks.ingest.stage import read_source

    docs = 0
    nbytes = sum(os.path.getsize(p) for p in WARCS)
    t = time.perf_counter()
    for p in WARCS:
        with open(p, "rb") as f:
            for kind, _ in read_source(f, p, IngestSource(path=p, extractor=extractor)):
                docs += kind == "document"
    return {"docs": docs, "bytes": nbytes, "seconds": time.perf_counter() - t}


def datatrove_warc() -> dict:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    docs = 0
    nbytes = sum(os.path.getsize(p) for p in WARCS)
    t = time.perf_counter()
    for p in WARCS:
        reader = WarcReader(os.path.dirname(p), glob_pattern=os.path.basename(p), compression="infer")
        extractor = Trafilatura(favour_precision=True, timeout=5.0)
        for d in extractor.run(reader.run()):
            docs += bool(d.text.strip())
    return {"docs": docs, "bytes": nbytes, "seconds": time.perf_counter() - t}


def quarry_jsonl() -> dict:
    import pyarrow.parquet as pq

    from tasks.ingest.sources import IngestSource
    from tasks.ingest.stage import read_source, rows_to_tables

    docs = 0
    nbytes = sum(os.path.getsize(p) for p, _ in JSONLS)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for i, (p, kw) in enumerate(JSONLS):
            with open(p, "rb") as f:
                table, _ = rows_to_tables(list(read_source(f, str(p), IngestSource(path=str(p), **kw))))
            pq.write_table(table, f"{out}/part-{i}.parquet", compression="zstd")
            docs += table.num_rows
    return {"docs": docs, "bytes": nbytes, "seconds": time.perf_counter() - t}


def datatrove_jsonl() -> dict:
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import ParquetWriter

    docs = 0
    nbytes = sum(os.path.getsize(p) for p, _ in JSONLS)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for i, (p, kw) in enumerate(JSONLS):
            reader = JsonlReader(str(p.parent), glob_pattern=p.name, text_key=kw["text_field"], id_key="url")
            writer = ParquetWriter(out, output_filename=f"part-{i}.parquet", compression="zstd")
            for _ in writer.run(reader.run()):
                docs += 1
    return {"docs": docs, "bytes": nbytes, "seconds": time.perf_counter() - t}


CASES = {
    "warc/quarry-resiliparse": lambda: quarry_warc("resiliparse"),
    "warc/quarry-trafilatura": lambda: quarry_warc("trafilatura"),
    "warc/datatrove-trafilatura": datatrove_warc,
    "jsonl/quarry": quarry_jsonl,
    "jsonl/datatrove": datatrove_jsonl,
}


def small_files(n: int) -> dict:
    """N small files through the ingest stage (serial profile), in a fresh temporary folder."""
    from ray_cluster import executor, runtime
    from storage import datasets
    from tasks import registry
    from tasks.ingest.sources import IngestSource
    from tasks.ingest.stage import IngestParams, input_files

    if n > 100:  # one-time costs (imports, the code identity, pyarrow's first conversion) outside the timing
        small_files(100)
    with tempfile.TemporaryDirectory(dir=os.environ.get("QUARRY_BENCH_TMP")) as tmp:
        src = Path(tmp) / "small"
        for i in range(n):
            if i % 1000 == 0:
                (src / f"d{i // 1000:04d}").mkdir(parents=True)
            lines = "".join(json.dumps({"text": f"small document {3 * i + k} of file {i}"}) + "\n" for k in range(3))
            (src / f"d{i // 1000:04d}" / f"f{i:07d}.jsonl").write_text(lines)
        params = IngestParams(sources=(IngestSource(path=str(src)),))
        t, cpu = time.perf_counter(), time.process_time()
        files, listing = input_files(params)
        listed, listed_cpu = time.perf_counter() - t, time.process_time() - cpu
        t, cpu = time.perf_counter(), time.process_time()
        ref = executor.run(registry.stage("ingest"), [], params, runtime.load_profile("serial"),
                           root=str(Path(tmp) / "store"), dataset="small")
        seconds, stage_cpu = time.perf_counter() - t, time.process_time() - cpu
        stats = datasets.read_manifest(ref)["stats"]
        return {"files": stats["files"], "docs": stats["documents"], "listing_seconds": listed, "seconds": seconds,
                "listing_cpu": listed_cpu, "stage_cpu": stage_cpu,
                "work_items": stats["work_items"], "shards": len(datasets.existing_shards(ref)),
                "bytes": stats["bytes"]}


def _child(name: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cpu = time.process_time()
    r = small_files(int(name.split(":")[1])) if name.startswith("small:") else CASES[name]()
    r["cpu_seconds"] = time.process_time() - cpu
    r["peak_mb"] = _peak_mb()
    print(json.dumps(r))


def _run_child(name: str) -> dict | None:
    # taskset pins the child to one core: these are per-core numbers
    cmd = [sys.executable, __file__, "--case", name]
    if os.path.exists("/usr/bin/taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        print(f"{name}: failed\n{out.stderr[-2000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main_small_files(sizes: list[int]) -> None:
    # wall time counts waiting for the core on a shared machine; the CPU columns (process time of the listing and of
    # the whole stage run, listing included) and files per CPU second are the numbers to compare
    print(f"{'files':>9s} {'list s':>7s} {'list cpu':>8s} {'items':>6s} {'shards':>7s} {'ingest s':>9s} {'cpu s':>7s} "
          f"{'files/s':>8s} {'files/cpu s':>11s} {'peak MB':>8s}")
    for n in sizes:
        r = _run_child(f"small:{n}")
        if r is None:
            continue
        print(f"{r['files']:9d} {r['listing_seconds']:7.2f} {r['listing_cpu']:8.2f} {r['work_items']:6d} {r['shards']:7d} "
              f"{r['seconds']:9.1f} {r['stage_cpu']:7.1f} {r['files'] / r['seconds']:8.0f} "
              f"{r['files'] / r['stage_cpu']:11.0f} {r['peak_mb']:8.0f}", flush=True)


def main() -> None:
    if not SHARED.exists():
        sys.exit(f"shared data not found at {SHARED}")
    results = {}
    for name in CASES:
        if (r := _run_child(name)) is not None:
            results[name] = r
    print(f"\n{'case':30s} {'docs':>6s} {'docs/s':>9s} {'MB/s/core':>10s} {'cpu s':>7s} {'peak MB':>8s}")
    for name, r in results.items():
        print(f"{name:30s} {r['docs']:6d} {r['docs'] / r['seconds']:9.1f} {r['bytes'] / 1e6 / r['seconds']:10.2f} "
              f"{r['cpu_seconds']:7.2f} {r['peak_mb']:8.0f}")
    for ours, theirs in (("warc/quarry-resiliparse", "warc/datatrove-trafilatura"), ("warc/quarry-trafilatura", "warc/datatrove-trafilatura"), ("jsonl/quarry", "jsonl/datatrove")):
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            ratio = (a["bytes"] / a["seconds"]) / (b["bytes"] / b["seconds"])
            print(f"{ours} vs {theirs}: {ratio:.2f}x the throughput")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        _child(sys.argv[2])
    elif "--small-files" in sys.argv:
        main_small_files([20_000, 100_000] + ([1_000_000] if "--million" in sys.argv else []))
    else:
        main()
