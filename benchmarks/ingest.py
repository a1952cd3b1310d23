"""Ingest throughput on the shared samples, side by side with datatrove's reader + extractor on the same files.

    python benchmarks/ingest.py            # one core (each side runs in this single process)

Two workloads:
* WARC -> text: the WARC samples (Dolma, resiliparse, warcio, Common Crawl) with HTML main-text extraction.
  quarry: FastWARC records + resiliparse (default) and + trafilatura; datatrove: WarcReader + Trafilatura.
* JSONL -> Parquet: the C4, Wikipedia, code, arXiv and StackExchange JSONL samples into a documents Parquet file.
  quarry: read_jsonl + Arrow + zstd Parquet; datatrove: JsonlReader + ParquetWriter.

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


def _child(name: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cpu = time.process_time()
    r = CASES[name]()
    r["cpu_seconds"] = time.process_time() - cpu
    r["peak_mb"] = _peak_mb()
    print(json.dumps(r))


def main() -> None:
    if not SHARED.exists():
        sys.exit(f"shared data not found at {SHARED}")
    results = {}
    for name in CASES:
        # taskset pins the child to one core: these are per-core numbers
        cmd = [sys.executable, __file__, "--case", name]
        if os.path.exists("/usr/bin/taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
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
    else:
        main()
