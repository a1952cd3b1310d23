"""Shared bits of the per-stage benchmarks: the shared documents, one pinned core, docs/s and MB/s lines."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"


def pin_one_core() -> None:
    """Both contenders on the same single core (the per-core rate); a no-op where affinity is not supported."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def jsonl_texts(path: Path, field: str = "text", limit: int | None = None) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f.read().split("\n"):  # not splitlines(): texts hold U+2028
            if line.strip():
                out.append(json.loads(line)[field])
                if limit and len(out) >= limit:
                    break
    return out


def timed(fn, *args, repeat: int = 1):
    """(result of the last call, best wall seconds over `repeat` calls)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return out, best


def line(name: str, texts: list[str], seconds: float, ref_seconds: float | None = None) -> str:
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    ratio = "" if ref_seconds is None else f"  ({ref_seconds / seconds:.2f}x datatrove)"
    return f"{name:<12} {len(texts) / seconds:10.0f} docs/s  {mb / seconds:7.2f} MB/s per core{ratio}"
