"""Sub-document dedup throughput: quarry's sentence_dedup (or line_dedup) vs datatrove's SentenceDedup, one core.

Each contender runs in its own fresh subprocess pinned to one CPU, on the same documents (the C4 sample followed
by the C4 gold documents, the same 1000 documents again: every line and span of the second half is a duplicate)

- quarry:    the three stage functions the executor runs: ``*_hashes`` over the batch -> Parquet -> the DuckDB
             first-occurrence SELECT (``line_dedup.duplicates_sql``) -> the rewrite map with the duplicates as a
             side table.
- datatrove: ``SentenceDedupSignature`` -> ``SentenceFindDedups`` -> ``SentenceDedupFilter`` on a local folder
             (3-sentence spans, or ``split_sentences=False, n_sentences=1`` for lines: its line-dedup mode).

The two differ in sentence splitting (datatrove: NLTK punkt via its word tokenizer; quarry: a regex) and
normalization, so the number of removed units differs a little; the time is for the same job on the same text.

    python benchmarks/sentence_dedup.py [--docs FILE ...]
    python benchmarks/line_dedup.py
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
DATA = REPO / ".." / "shared" / "data"
DEFAULT_DOCS = [DATA / "web" / "c4_sample" / "c4_sample.jsonl", DATA / "gold" / "c4_docs.jsonl"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(paths: list[Path]) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for p in paths:
        with open(p) as f:
            for i, line in enumerate(f):
                ids.append(f"{p.stem}-{i}")
                texts.append(json.loads(line)["text"])
    return ids, texts


def _run_quarry(mode: str, ids: list[str], texts: list[str]) -> dict:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.dedup import line as ld
    from tasks.dedup import sentence as sd

    if mode == "line":
        params, hashes_fn, rewrite, col = ld.LineDedupParams(), ld.line_dedup_hashes, ld.line_dedup, "ld_lines_removed"
    else:
        params, hashes_fn, rewrite = sd.SentenceDedupParams(), sd.sentence_dedup_hashes, sd.sentence_dedup
        col = "sn_sentences_removed"
    batch = pa.table({"doc_id": ids, "text": texts})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "part-00000.parquet")
        pq.write_table(hashes_fn(batch, params), path)
        con = duckdb.connect()
        con.execute(f"SET temp_directory = '{tmp}'")
        ordered = (f"(SELECT *, parse_filename(filename) AS __shard, file_row_number AS __row "
                   f"FROM read_parquet(['{path}'], filename = true, file_row_number = true))")
        dups = con.sql(ld.duplicates_sql(ordered)).arrow()
        dups = dups.read_all() if hasattr(dups, "read_all") else dups
        out = rewrite(batch, params, duplicates=dups)
    seconds = time.perf_counter() - t0
    chars = sum(len(t) for t in texts) - sum(len(t) for t in out.column("text").to_pylist())
    return {"s": seconds, "units_removed": sum(out.column(col).to_pylist()), "chars_removed": chars,
            "docs_dropped": out.num_rows - sum(out.column("keep").to_pylist())}


def _run_datatrove(mode: str, ids: list[str], texts: list[str]) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datatrove.data import Document
    from datatrove.pipeline.dedup.sentence_dedup import (
        SentDedupConfig,
        SentenceDedupFilter,
        SentenceDedupSignature,
        SentenceFindDedups,
    )
    from datatrove.utils.hashing import HashConfig

    # sha1/64 bit: CCNet's hash (and datatrove's xxhash default fails on str with the installed xxhash)
    hashing = HashConfig(precision=64, hash_fc="sha1")
    cfg = (SentDedupConfig(split_sentences=False, n_sentences=1, min_doc_words=0, min_num_sentences=1,
                           hash_config=hashing)
           if mode == "line" else SentDedupConfig(hash_config=hashing))
    with tempfile.TemporaryDirectory() as tmp:
        sig, dup = os.path.join(tmp, "sigs"), os.path.join(tmp, "dups")
        docs = [Document(text=t, id=i) for i, t in zip(ids, texts, strict=True)]
        SentenceDedupSignature(output_folder=sig, config=cfg).run(iter(docs[:0]), rank=0, world_size=1)  # warm-up
        t0 = time.perf_counter()
        SentenceDedupSignature(output_folder=sig, config=cfg).run(iter(docs), rank=0, world_size=1)
        SentenceFindDedups(data_folder=sig, output_folder=dup, config=cfg).run(rank=0, world_size=1)
        docs = [Document(text=t, id=i) for i, t in zip(ids, texts, strict=True)]
        kept = list(SentenceDedupFilter(data_folder=dup, config=cfg).run(iter(docs), rank=0, world_size=1))
        seconds = time.perf_counter() - t0
    chars = sum(len(t) for t in texts) - sum(len(d.text) for d in kept)
    return {"s": seconds, "units_removed": None, "chars_removed": chars, "docs_dropped": len(texts) - len(kept)}


RUNNERS = {"quarry": _run_quarry, "datatrove": _run_datatrove}


def _child(name: str, mode: str, docs: list[Path]) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    ids, texts = _load(docs)
    RUNNERS[name](mode, ids[:3], texts[:3])  # imports and lazy models load here, outside the time
    before = _rss_mb()
    res = RUNNERS[name](mode, ids, texts)
    res.update(peak_rss_mb=_rss_mb(), peak_over_start_mb=_rss_mb() - before, n_docs=len(texts),
               mb=sum(len(t.encode("utf-8")) for t in texts) / 1e6)
    print(json.dumps(res))


def main(mode: str = "sentence") -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, nargs="+", default=DEFAULT_DOCS)
    ap.add_argument("--mode", choices=("sentence", "line"), default=mode, help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        return _child(args.only, args.mode, args.docs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results = {}
    for name in RUNNERS:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--only", name, "--mode", args.mode,
                               "--docs", *map(str, args.docs)], capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results.get("quarry")
    if base is None:
        sys.exit("quarry's run failed: no ratios to print")
    print(f"\n{args.mode} dedup, {base['n_docs']} docs, {base['mb']:.2f} MB, one core each\n")
    print(f"{'':12}{'docs/s':>10}{'MB/s':>8}{'quarry x':>10}{'chars removed':>15}{'docs dropped':>14}"
          f"{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:12}{base['n_docs'] / r['s']:10.0f}{base['mb'] / r['s']:8.2f}{r['s'] / base['s']:10.2f}"
              f"{r['chars_removed']:15d}{r['docs_dropped']:14d}{r['peak_rss_mb']:13.0f}")
    print("\n'quarry x' = peer time / quarry time on the same documents (all three steps).")


if __name__ == "__main__":
    main()
