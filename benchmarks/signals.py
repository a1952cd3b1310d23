"""Benchmark: RPv2 quality signals on one core, side by side on the same C4 gold documents.

    python benchmarks/signals.py [--docs N] [--repeat R] [--skip-datatrove]

Rows (all pinned to one CPU core, same documents, same run):
  * quarry `quality_signals` (every rule-based RPv2 signal; MinHash is tasks/dedup/minhash.py's and excluded);
  * the RPv2 reference implementation (togethercomputer/RedPajama-Data app/src, rule-based signals only, the way
    core/worker.py builds its Document) if a throwaway venv exists at /tmp/rpv2ref (venv/ + app/src/, see
    REF_HELP); otherwise the spec's measured reference figure, labelled as such;
  * datatrove's GopherQuality + GopherRepetition + C4Quality + FineWebQuality filters (a different signal family).
Times are CPU seconds (time.process_time) on the pinned core, best of --repeat. Prints docs/s, MB/s (UTF-8 bytes
of text) and peak memory (tracemalloc peak of the timed call, plus process
max RSS), and the speed ratio of quarry against each peer.
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
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLD = REPO / ".." / "shared" / "data" / "gold" / "c4_docs.jsonl"
REF_DIR = Path("/tmp/rpv2ref")
REF_HELP = ("git archive the public togethercomputer/RedPajama-Data (app/src) into /tmp/rpv2ref and create "
            "/tmp/rpv2ref/venv with: pip install nltk numpy scipy msgspec fasttext-wheel")
SPEC_REF_MS_PER_DOC = 4.0  # ../shared/specs/rpv2_signals.md: 4.0 ms/doc signals (+2.3 ms MinHash), one core

REF_RUNNER = r'''
import json, sys, time, tracemalloc, resource
from pathlib import Path
from core.document import Document
from core.quality_signals.content import register_content_callables
from core.quality_signals.repetitions import register_repetitions_callables
from core.quality_signals.natural_language import register_natural_language_callables
from core.quality_signals.lines import register_lines_callables
texts = json.load(open(sys.argv[1]))
bad_words, bad_urls = sys.argv[2], sys.argv[3]
signals = (register_content_callables("en", bad_urls, bad_words) + register_repetitions_callables()
           + register_natural_language_callables() + register_lines_callables())
def run():
    for t in texts:
        doc = Document(t, domain=None, precompute_ngrams=True, precompute_hash_features=True, dsir_buckets=10000)
        for fn in signals:
            fn(doc)
run()  # warm-up
t0 = time.process_time(); run(); dt = time.process_time() - t0
tracemalloc.start(); run(); peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"seconds": dt, "peak_bytes": peak,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
'''


def _pin_one_core() -> int:
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    return cpu


def _timed(fn, repeat: int):
    """Best-of-`repeat` CPU seconds (time.process_time: the machine is shared, and CPU time on one pinned core is
    what docs/s per core means), then one extra run under tracemalloc for the peak Python-heap allocation."""
    fn()  # warm-up (numba compile / model load)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def _row(name, seconds, n_docs, n_bytes, peak, note=""):
    return {"name": name, "seconds": seconds, "docs_s": n_docs / seconds, "mb_s": n_bytes / 1e6 / seconds,
            "ms_doc": 1e3 * seconds / n_docs, "peak_mb": peak / 1e6 if peak is not None else None, "note": note}


def bench_quarry(texts, repeat):
    import pyarrow as pa

    sys.path.insert(0, str(REPO))
    from tasks.signals.quality_signals import QualitySignalsParams, quality_signals

    batch = pa.table({"text": texts})
    params = QualitySignalsParams()
    return _timed(lambda: quality_signals(batch, params), repeat)


def bench_reference(texts, cpu):
    py = REF_DIR / "venv" / "bin" / "python"
    src = REF_DIR / "app" / "src"
    if not (py.exists() and src.exists()):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "docs.json").write_text(json.dumps(texts))
        bad_words = tmp / "bad_words"
        bad_words.mkdir()
        (bad_words / "en.txt").write_text((REPO / "tasks" / "resources" / "ldnoobw_en.txt").read_text())
        (tmp / "domain_to_category_id.json").write_text("{}")
        (tmp / "runner.py").write_text(REF_RUNNER)
        res = subprocess.run(
            ["taskset", "-c", str(cpu), str(py), str(tmp / "runner.py"), str(tmp / "docs.json"), str(bad_words),
             str(tmp)], cwd=src, env={**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "42"},
            capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print("reference run failed:", res.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads(res.stdout.strip().splitlines()[-1])


def bench_datatrove(texts, repeat):
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    filters = [GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(), FineWebQualityFilter()]

    def run():
        for i, t in enumerate(texts):
            for f in filters:
                f.filter(Document(text=t, id=str(i)))

    return _timed(run, repeat)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cpu = _pin_one_core()
    texts = [json.loads(line)["text"] for line in open(GOLD, encoding="utf-8")][: args.docs]
    n, nbytes = len(texts), sum(len(t.encode()) for t in texts)
    print(f"{n} C4 gold docs, {nbytes / 1e6:.2f} MB, pinned to CPU {cpu}, load avg {os.getloadavg()[0]:.1f}")

    sec, peak = bench_quarry(texts, args.repeat)
    rows = [_row("quarry quality_signals (rule-based RPv2)", sec, n, nbytes, peak)]
    ref = bench_reference(texts, cpu)
    if ref is not None:
        rows.append(_row("RPv2 reference app/src (measured now)", ref["seconds"], n, nbytes, ref["peak_bytes"]))
    else:
        sec = SPEC_REF_MS_PER_DOC * n / 1e3
        rows.append(_row("RPv2 reference (SPEC FIGURE, not measured)", sec, n, nbytes, None,
                         f"no venv at {REF_DIR}; {REF_HELP}"))
    if not args.skip_datatrove:
        sec, peak = bench_datatrove(texts, 1)
        rows.append(_row("datatrove Gopher+GopherRep+C4+FineWeb filters", sec, n, nbytes, peak))

    print(f"{'':48} {'docs/s':>9} {'MB/s':>7} {'ms/doc':>8} {'peak MB':>8}  quarry speed-up")
    base = rows[0]["seconds"]
    for r in rows:
        peak = f"{r['peak_mb']:8.1f}" if r["peak_mb"] is not None else f"{'n/a':>8}"
        ratio = r["seconds"] / base
        print(f"{r['name']:48} {r['docs_s']:9.0f} {r['mb_s']:7.2f} {r['ms_doc']:8.3f} {peak}  {ratio:7.1f}x"
              + (f"   ({r['note']})" if r["note"] else ""))
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")


if __name__ == "__main__":
    main()
