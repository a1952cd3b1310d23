"""A living corpus at scale (issue 30): batches curated one after another, each against every earlier one.

    python benchmarks/incremental.py                                  # 10 batches x 200,000 documents (the target)
    python benchmarks/incremental.py --batches 4 --batch-docs 20000   # what fits a laptop's few minutes

1. benchmarks/scale.py's seeded corpus of batches x batch-docs documents (real paragraphs of ../shared/data, a
   planted share of exact and of one-word-edited near copies of earlier documents, most of them in earlier
   batches), in JSONL files of 5,000 under --work.
2. The ``watch`` flow (Prefect + Ray, the `local` profile) after each batch's files land in the watched folder: it
   ingests the new files and curates every batch (the earlier ones are committed: no-ops) with MinHash signatures,
   exact dedup (URL, text) and MinHash dedup at 0.8. Per batch: wall time, docs/s, the seconds of the incremental
   dedup steps (xb_* stages, from their manifests), peak RSS of one process (a Ray worker, or the driver on the
   serial profile) while the batch ran (sampled), the
   index bytes (both index versions after the batch) per document of the corpus so far.
3. The kept set (every batch's curated doc_ids) against one in-memory union run with "first batch wins"
   (`tests.oracles.incremental.union_first_batch_wins`; skipped past --check-max documents).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.scale import DOCS_PER_FILE, RssSampler, _folder_bytes, _is_ray_worker, build_corpus  # noqa: E402


def write_recipe(work: Path, incoming: Path, root: Path, profile: str) -> Path:
    import yaml

    path = work / "living.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "living", "cluster": profile, "storage_root": str(root),
        "ingest": {"docs_per_shard": DOCS_PER_FILE, "sources": [{"path": str(incoming), "domain": "web"}]},
        "minhash_signatures": {}, "exact_dedup": {}, "minhash_dedup": {},
    }, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-docs", type=int, default=200_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/quarry-incremental"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="local", help="cluster profile (serial: in-process, no Ray)")
    ap.add_argument("--check-max", type=int, default=400_000, help="largest corpus the one-shot check loads")
    args = ap.parse_args()
    if args.batch_docs % DOCS_PER_FILE:
        raise SystemExit(f"--batch-docs must be a multiple of {DOCS_PER_FILE} (the corpus files)")
    n = args.batches * args.batch_docs
    corpus = args.work / f"corpus-{n}"
    info = build_corpus(n, corpus, args.seed, exact_share=0.05, near_share=0.05)
    incoming, root = args.work / "incoming", args.work / "store"
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    incoming.mkdir(parents=True)
    recipe = write_recipe(args.work, incoming, root, args.profile)

    import types

    from prefect import flow

    from flows.curate import curate_batches
    from flows.run import load
    from flows.watch import watch
    from ray_cluster import executor, runtime
    from storage import datasets
    from tasks import registry

    direct = types.SimpleNamespace(  # the stages without Prefect tasks: every one is committed, a no-op
        stage=lambda name, inputs, params, prof, **kw: executor.run(registry.stage(name), inputs, params, prof, **kw),
        section=lambda name, src, params, prof: executor.run_chain(registry.section_steps(name), src, params, prof))
    files = sorted(corpus.glob("*.jsonl"))
    per = args.batch_docs // DOCS_PER_FILE
    rows = []
    with runtime.connected(runtime.load_profile(args.profile)):
        flow(name="incremental-warmup")(lambda: None)()  # the ephemeral Prefect API, started before the clocks
        for b in range(args.batches):
            for f in files[b * per:(b + 1) * per]:
                shutil.copy(f, incoming / f.name)
            with RssSampler(_is_ray_worker) as rss:
                t0 = time.perf_counter()
                summary = watch(str(recipe))
                wall = time.perf_counter() - t0
            cfg, profile = load(str(recipe))
            step = curate_batches(cfg, profile, direct, recheck=True)[-1]  # committed: reads the versions back
            # run_section leaves the keepers/clusters under their stage names, each index under its section's
            refs = {"xb_exact_keepers": step["xb_exact_keepers"], "xb_exact_index": step["exact_dedup"],
                    "xb_minhash_clusters": step["xb_minhash_clusters"], "xb_minhash_index": step["minhash_dedup"]}
            dedup_s = sum((datasets.read_manifest(r).get("stats") or {}).get("seconds") or 0 for r in refs.values())
            index_bytes = sum(_folder_bytes(Path(refs[k].uri)) for k in ("xb_exact_index", "xb_minhash_index"))
            last = summary["batches"][-1]
            rows.append({"batch": b + 1, "docs": last["new_documents"], "wall_s": round(wall, 1),
                         "docs_per_s": round(last["new_documents"] / wall), "dedup_s": round(dedup_s, 1),
                         "worker_peak_mb": round(max(rss.peak_one, rss.peak_driver) / 2**20), "cross_batch_dups": last["cross_batch_duplicates"],
                         "corpus": last["corpus"], "index_mb": round(index_bytes / 2**20, 1),
                         "index_b_per_doc": round(index_bytes / ((b + 1) * args.batch_docs), 1)})
            print(json.dumps(rows[-1]), flush=True)
        cfg, profile = load(str(recipe))
        steps = curate_batches(cfg, profile, direct, recheck=True)
    kept = {d for s in steps for d in datasets.read_table(s["curated"], columns=["doc_id"]).column(0).to_pylist()}
    check = None
    if n <= args.check_max:
        from tests.oracles.incremental import union_first_batch_wins

        check = kept == union_first_batch_wins([datasets.read_table(s["batch"], columns=["doc_id", "text", "url"])
                                                for s in steps])
    first, tenth = rows[0], rows[-1]
    print(f"\ncorpus: {info['planted']} planted; kept {len(kept)} of {n}; equals one-shot: {check}")
    print(f"last/first batch: wall {tenth['wall_s'] / first['wall_s']:.2f}x, dedup steps "
          f"{tenth['dedup_s'] / max(first['dedup_s'], 1e-9):.2f}x, worker peak "
          f"{tenth['worker_peak_mb'] / max(first['worker_peak_mb'], 1):.2f}x")
    print("| batch | docs | wall s | docs/s | dedup steps s | worker peak MB | cross-batch dups | corpus kept | "
          "index MB | index B/doc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['docs']} | {r['wall_s']} | {r['docs_per_s']} | {r['dedup_s']} | "
              f"{r['worker_peak_mb']} | {r['cross_batch_dups']} | {r['corpus']} | {r['index_mb']} | "
              f"{r['index_b_per_doc']} |")


if __name__ == "__main__":
    main()
