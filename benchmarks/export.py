"""Tokenized exports (issue 31): tokens/s per core tokenizing + writing each format, beside datatrove's
DocumentTokenizer on the same documents and the same single core; peak memory at two corpus sizes.

    python benchmarks/export.py                 # the first 20,000 documents of the 200k scale corpus
    python benchmarks/export.py --n 200000      # all of it

The corpus is benchmarks/scale.py's (built under --work if absent). The documents are ingested once (untimed) into
a store under --work; each contender then runs in a fresh process pinned to one core, with the tokenizer's own
thread pool off (TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1):

* quarry: the ``export`` section (export_tokens -> export_files) through the executor on the serial profile, one
  format at a time, timed end to end (reading the shards, tokenizing, writing the format, committing), plus all four
  formats in one run at n/4 and n: its peak RSS is the streaming writers' (flat in n, growing only by the few bytes
  per document the indexes and the document-order table hold);
* datatrove: ``DocumentTokenizer`` (SmolLM2's tokenizer.json, eos appended, no shuffle, the default batch size) over
  the same texts handed in as Documents (their reading is untimed), writing its .ds/.index/.metadata files.
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
sys.path.insert(0, str(REPO))


def _child_env() -> dict:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "QUARRY_PROGRESS": "0"}


def ingest(corpus: Path, store: Path, n: int):
    from ray_cluster import runtime
    from tasks.ingest.sources import IngestSource
    from tests.stages import ingest as run_ingest

    files = sorted(corpus.glob("part-*.jsonl"))
    per_file = sum(1 for _ in files[0].open()) if files else 0
    take = files[: max(1, -(-n // per_file))] if per_file else []
    limit = min(per_file, n) if len(take) == 1 else None
    srcs = [IngestSource(path=str(f), domain=("web" if i % 2 else "wikipedia"), limit=limit, name=f.stem)
            for i, f in enumerate(take)]
    return run_ingest(srcs, root=str(store), dataset=f"export{n}", docs_per_shard=5000,
                      profile=runtime.load_profile("serial"))


def child_quarry(store: str, dataset: str, formats: list[str]) -> dict:
    from benchmarks._common import pin_one_core
    from ray_cluster import executor, runtime
    from storage import datasets
    from tasks import registry
    from tasks.export.params import ExportParams

    pin_one_core()
    ing = datasets.latest(store, dataset, "ingest")
    params = ExportParams(formats=tuple(formats), seed=len(formats) + time.time_ns() % 1_000_000)  # a new version
    t0 = time.perf_counter()
    ref = executor.run_chain(registry.section_steps("export"), ing, params, runtime.load_profile("serial"))
    wall = time.perf_counter() - t0
    stats = datasets.read_manifest(ref)["stats"]
    return {"seconds": wall, "tokens": stats["tokens"], "docs": stats["docs"],
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_datatrove(store: str, dataset: str, out: str) -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.tokens import DocumentTokenizer

    from benchmarks._common import pin_one_core
    from storage import datasets
    from tasks.export.params import tokenizer_file

    pin_one_core()
    t = datasets.read_table(datasets.latest(store, dataset, "ingest"), columns=["doc_id", "text"])
    docs = [Document(text=x, id=d) for d, x in zip(t.column("doc_id").to_pylist(), t.column("text").to_pylist(),
                                                   strict=True)]
    del t
    step = DocumentTokenizer(output_folder=out, tokenizer_name_or_path=str(tokenizer_file("smollm2")),
                             eos_token="<|endoftext|>", shuffle_documents=False)
    t0 = time.perf_counter()
    step.run(iter(docs), rank=0, world_size=1)
    wall = time.perf_counter() - t0
    tokens = int(Path(out, "00000_unshuffled.ds.metadata").read_text().splitlines()[1]) \
        if Path(out, "00000_unshuffled.ds.metadata").exists() else int(step.stats["tokens"].total)
    return {"seconds": wall, "tokens": tokens, "docs": len(docs),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(*args: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                       env=_child_env(), cwd=REPO)
    if p.returncode:
        raise SystemExit(f"child {args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "quarry-scale")
    ap.add_argument("--corpus-n", type=int, default=200_000, help="the scale corpus the documents come from")
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        res = child_quarry(rest[0], rest[1], rest[2].split(",")) if kind == "quarry" else \
            child_datatrove(rest[0], rest[1], rest[2])
        print(json.dumps(res))
        return
    corpus = args.work / f"corpus-{args.corpus_n}-s0"
    if not corpus.is_dir():
        from benchmarks.scale import build_corpus

        build_corpus(args.corpus_n, corpus, 0, 0.05, 0.05)
    store = args.work / "export-store"
    rows = []
    for n in sorted({max(1, args.n // 4), args.n}):
        ing = ingest(corpus, store, n)
        print(f"ingested {n} documents (untimed): {ing}", flush=True)
        if n == args.n:
            with tempfile.TemporaryDirectory(dir=args.work) as out:
                dt = run_child("datatrove", str(store), ing.dataset, out)
            rows.append(("datatrove DocumentTokenizer (.ds)", n, dt))
            for fmt in ("megatron", "nanotron", "mds", "hf"):
                rows.append((f"quarry {fmt}", n, run_child("quarry", str(store), ing.dataset, fmt)))
        rows.append(("quarry all four formats", n, run_child("quarry", str(store), ing.dataset,
                                                             "megatron,nanotron,mds,hf")))
    base = next(r[2] for r in rows if r[0].startswith("datatrove"))
    base_rate = base["tokens"] / base["seconds"]
    print("\n| contender | docs | tokens | s | tokens/s per core | vs datatrove | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for name, n, r in rows:
        rate = r["tokens"] / r["seconds"]
        print(f"| {name} | {n} | {r['tokens']} | {r['seconds']:.1f} | {rate:,.0f} | {rate / base_rate:.2f}x | "
              f"{r['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
