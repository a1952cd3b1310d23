"""Each per-document stage's worst case on adversarial documents (issue 35): seconds, peak memory, outcome.

Shapes (one document each, next to one normal document): one long token (no space), one character repeated (``:``,
which made datatrove's spaCy-based Gopher filter quadratic), one-character lines, a run of blanks between two
words (which made our sentence splitter quadratic). Each (stage, shape) runs in a forked child on one pinned core:
its peak RSS above the child's start is the memory ("peak MB"; "child MB": the peak RSS of the budget processes a
kernel runs its documents in, sampled every 0.2 s, the zygote's loaded spaCy included), a child past ``--limit`` seconds is killed ("killed"). Each measurement
runs the stage once on a normal document first, untimed (numba, models and the budget child start there).

    python benchmarks/adversarial.py [--chars 1000000] [--limit 300] [--stages exact,line,...]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import pin_one_core  # noqa: E402


def shapes(n: int) -> dict[str, str]:
    return {
        "one token": "x" * n,
        "one char ':'": ":" * n,
        "1-char lines": "a\n" * (n // 2),
        "blank run": "a" + " " * (n - 2) + "b",
    }


def _stages() -> dict:
    from tasks.dedup.exact import ExactDedupParams, exact_dedup_hashes
    from tasks.dedup.line import LineDedupParams, line_dedup_hashes
    from tasks.dedup.minhash import MinhashSignaturesParams, minhash_signatures
    from tasks.dedup.sentence import SentenceDedupParams, sentence_dedup_hashes
    from tasks.signals.datatrove_signals import DatatroveSignalsParams, datatrove_signals
    from tasks.signals.quality_signals import QualitySignalsParams, quality_signals

    def outcome_dt(out):
        return out.column("dt_gopher_repetition_reason")[0].as_py() or "ok"

    return {
        "exact_dedup_hashes": (lambda b: exact_dedup_hashes(b, ExactDedupParams()), None),
        "line_dedup_hashes": (lambda b: line_dedup_hashes(b, LineDedupParams()), None),
        "sentence_dedup_hashes": (lambda b: sentence_dedup_hashes(b, SentenceDedupParams()), None),
        "minhash_signatures": (lambda b: minhash_signatures(b, MinhashSignaturesParams()), None),
        "quality_signals": (lambda b: quality_signals(b, QualitySignalsParams()), None),
        "datatrove_signals": (lambda b: datatrove_signals(b, DatatroveSignalsParams()), outcome_dt),
    }


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _descendants_peak_kb(stop, out: list) -> None:
    """Poll the peak RSS (VmHWM) of this process's descendants (the budget zygote and its forked workers)."""
    me = os.getpid()
    while not stop.is_set():
        parents = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        mine, grew = {me}, True
        while grew:
            new = {p for p, pp in parents.items() if pp in mine} - mine
            grew, mine = bool(new), mine | new
        for p in mine - {me}:
            try:
                with open(f"/proc/{p}/status") as f:
                    hwm = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")]
                out.append(max(hwm, default=0))
            except OSError:
                pass
        stop.wait(0.2)


def _measure(fn, outcome, text: str, w) -> None:
    import threading

    import pyarrow as pa

    batch = pa.table({"doc_id": ["adv", "ok"], "text": [text, "A normal document. It has two sentences."],
                      "url": ["http://example.com:abc/", "https://example.com/"], "lang": ["en", "en"]})
    import tasks.signals.datatrove_signals as dts

    dts._WORKER = None  # the parent's budget child is not this process's: start (and warm) our own, untimed
    fn(batch.slice(1))
    start = _rss_kb()
    stop, samples = threading.Event(), [0]
    poller = threading.Thread(target=_descendants_peak_kb, args=(stop, samples), daemon=True)
    poller.start()
    t0 = time.perf_counter()
    try:
        out = fn(batch)
        result = outcome(out) if outcome else f"ok, {out.num_rows:,} rows"
    except Exception as e:  # noqa: BLE001 - the benchmark reports a crash as the outcome
        result = f"raised {type(e).__name__}"
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    stop.set()
    poller.join()
    if dts._WORKER is not None:
        dts._WORKER.close()
    child_mb = f"{max(samples) / 1024:.0f}" if max(samples) else "-"
    os.write(w, f"{seconds:.2f}\t{max(0, peak - start) / 1024:.0f}\t{child_mb}\t{result}".encode())


def run_one(fn, outcome, text: str, limit: float) -> tuple[str, str, str]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _measure(fn, outcome, text, w)
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        return f">{limit:.0f}", "-", "-", "killed"
    data = os.read(r, 4096).decode()
    os.close(r)
    return tuple(data.split("\t")) if data else ("-", "-", "-", "child died")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=1_000_000)
    ap.add_argument("--limit", type=float, default=300.0)
    ap.add_argument("--stages", default="")
    args = ap.parse_args()
    pin_one_core()
    stages = _stages()
    wanted = [s for s in args.stages.split(",") if s] or list(stages)
    docs = shapes(args.chars)
    for name in wanted:  # warm: numba compiles, models load, the budget child starts before any timing
        fn, _ = stages[name]
        import pyarrow as pa

        fn(pa.table({"doc_id": ["w"], "text": ["Warm up. Two sentences."], "url": ["https://a.b/"],
                     "lang": ["en"]}))
    print(f"{args.chars:,} characters per adversarial document, one core, limit {args.limit:.0f} s")
    print(f"{'stage':<22} {'shape':<14} {'seconds':>8} {'peak MB':>8} {'child MB':>8}  outcome")
    for name in wanted:
        fn, outcome = stages[name]
        for shape, text in docs.items():
            seconds, mb, child, result = run_one(fn, outcome, text, args.limit)
            print(f"{name:<22} {shape:<14} {seconds:>8} {mb:>8} {child:>8}  {result}", flush=True)


if __name__ == "__main__":
    main()
