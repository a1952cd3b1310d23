"""The curate recipe end to end at scale (Prefect + Ray, the real flow) beside datatrove on the same documents.

    python benchmarks/scale.py                      # N = 20,000 documents (make bench)
    python benchmarks/scale.py --n 200000
    python benchmarks/scale.py --n 2000000 --skip-peer

1. A deterministic (seeded) corpus of N documents assembled from real paragraphs of ../shared/data (C4, Wikipedia,
   WikiText-2, arXiv abstracts), written as JSONL files of 5,000 documents under --work (never the repo), with a
   planted share of exact duplicates (a copy of an earlier document) and of near duplicates (a copy with one
   sentence edited: one word replaced), whose 13-gram Jaccard to their original is measured and printed.
2. quarry: `flows.curate.curate` on a recipe written here (ingest -> RPv2 signals -> MinHash signatures -> Gopher +
   C4 rules -> exact dedup -> MinHash dedup at 0.8 (9 bands x 13 rows) -> kept) on the `local` profile (2 CPUs), on
   a Ray and Prefect API started before the clock starts (their start-up is printed apart). Bytes written are summed
   per stage folder of the storage root; peak RSS is the driver's (getrusage) and the Ray workers' (psutil over this
   process's descendants, sampled every 0.25 s).
3. Kernel-only: each stage's function timed directly in this process on its committed input (map stages on a sample
   of --kernel-docs rows, the DuckDB global steps on all rows). The ceiling is the time those kernels alone need for
   N documents on the same cores: sum over map stages of (s/doc x N) / cores, plus the global steps' seconds.
4. datatrove (LocalPipelineExecutor, the same JSONL files, 2 workers): GopherRepetition + GopherQuality + C4Quality
   (document-level rules: lorem ipsum, curly brackets, >= 5 sentences) -> MinhashDedupSignature -> Buckets ->
   Cluster -> Filter with 13-grams, 9 buckets x 13 hashes. Its per-document cost is linear, so past --peer-docs
   (default min(N, 10,000): it runs at ~20-30 docs/s here) it runs on the first --peer-docs documents of the corpus.
5. A fresh Python process's first batch of the numba kernels (signals + MinHash) with an empty and with a warm
   numba cache: what a new Ray worker pays without and with `cache=True`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("QUARRY_SHARED_DATA", REPO.parent / "shared" / "data"))
DOCS_PER_FILE = 5_000  # 2+ files even for the peer's first 10,000 docs: datatrove parallelizes by file
CORES = 2  # the local profile's Ray CPUs and datatrove's workers: the same cores for both
CURATE_STAGES = ("ingest", "quality_signals", "minhash_signatures", "quality_filter", "exact_dedup_hashes",
                 "exact_dedup_keepers", "exact_dedup", "minhash_edges", "minhash_clusters", "minhash_dedup", "kept")
# the stages whose writes the issue's budget counts (<= 1.5x the ingested documents' bytes)
BUDGET_STAGES = CURATE_STAGES[1:-1]

for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "QUARRY_PROGRESS": "0",
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
             "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)


# ------------------------------------------------------------------------------------------------ corpus


def _paragraphs() -> list[str]:
    """Distinct real English paragraphs (>= 8 words) from the shared samples, in a fixed order."""
    sources = [("web/c4_sample/c4_sample.jsonl", "text"), ("gold/c4_docs.jsonl", "text"),
               ("clean/wikipedia_1k/wikipedia.jsonl", "eng_Latn"), ("domains/arxiv_abstracts/arxiv_abstracts.jsonl",
                                                                    "abstract")]
    texts = []
    for rel, field in sources:
        path = SHARED / rel
        if not path.is_file():
            sys.exit(f"shared data not found: {path} (set QUARRY_SHARED_DATA or check out shared/ beside the repo)")
        with path.open(encoding="utf-8") as f:
            texts += [json.loads(line).get(field) or "" for line in f]
    wikitext = SHARED / "clean/wikitext2/wiki.test.raw"
    if wikitext.is_file():
        texts.append(wikitext.read_text(encoding="utf-8"))
    seen, out = set(), []
    for t in texts:
        for p in t.split("\n"):
            p = p.strip()
            if len(p.split()) >= 8 and not p.startswith("=") and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", "", text.lower()).split()  # close to RPv2's normalization, for the check only


def _shingles(words: list[str], n: int = 13) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def _edit_one_sentence(text: str, rng: np.random.Generator, vocab: list[str]) -> str:
    """One word of one sentence replaced: a near duplicate by construction (a few 13-grams change)."""
    words = text.split(" ")
    i = int(rng.integers(len(words)))
    words[i] = vocab[int(rng.integers(len(vocab)))]
    return " ".join(words)


def build_corpus(n: int, folder: Path, seed: int, exact_share: float, near_share: float) -> dict:
    """N documents in JSONL files of DOCS_PER_FILE; reused when a finished corpus of the same spec is there."""
    spec = {"n": n, "seed": seed, "exact_share": exact_share, "near_share": near_share, "docs_per_file": DOCS_PER_FILE}
    done = folder.with_suffix(".json")  # beside the folder: ingest reads every file inside it
    if done.is_file() and json.loads(done.read_text()).get("spec") == spec:
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paras = _paragraphs()
    vocab = sorted({w for p in paras[:2000] for w in p.split() if w.isalpha()})
    reservoir: list[str] = []  # originals that duplicates copy from (a bounded random sample: memory stays flat)
    long: list[str] = []  # originals of >= 200 words: one edited word keeps 13-gram Jaccard >= ~0.87
    planted = {"exact": 0, "near": 0}
    pairs: list[tuple[str, str]] = []
    text_bytes = 0
    f = None
    for i in range(n):
        if i % DOCS_PER_FILE == 0:
            if f:
                f.close()
            f = (folder / f"part-{i // DOCS_PER_FILE:05d}.jsonl").open("w", encoding="utf-8")
        r = rng.random()
        if reservoir and r < exact_share:
            text, kind = reservoir[int(rng.integers(len(reservoir)))], "exact"
        elif long and r < exact_share + near_share:
            orig = long[int(rng.integers(len(long)))]
            text, kind = _edit_one_sentence(orig, rng, vocab), "near"
            if len(pairs) < 300:
                pairs.append((orig, text))
        else:
            k = int(rng.integers(3, 9))
            text, kind = "\n".join(paras[j] for j in rng.choice(len(paras), size=k, replace=False)), "orig"
            for pool in (reservoir, long) if len(text.split()) >= 200 else (reservoir,):
                if len(pool) < 20_000:
                    pool.append(text)
                elif rng.random() < 0.05:
                    pool[int(rng.integers(len(pool)))] = text
        planted[kind] = planted.get(kind, 0) + 1
        text_bytes += len(text.encode("utf-8"))
        f.write(json.dumps({"id": f"doc{i}", "url": f"https://scale.example/{i}", "text": text}) + "\n")
    f.close()
    jac = sorted(len(a & b) / len(a | b) for a, b in ((_shingles(_words(x)), _shingles(_words(y))) for x, y in pairs))
    info = {"spec": spec, "paragraphs": len(paras), "planted": planted, "text_bytes": text_bytes,
            "jsonl_bytes": sum(p.stat().st_size for p in folder.glob("*.jsonl")),
            "near_jaccard13": {"min": jac[0], "median": jac[len(jac) // 2], "pairs": len(jac)} if jac else None}
    done.write_text(json.dumps(info))
    return info


# ------------------------------------------------------------------------------------------------ measuring


class RssSampler:
    """Peak RSS, sampled: this process (the driver) and its worker descendants, per worker process, summed over
    workers at once, and per process title (Ray titles a busy worker `ray::<task>`: which step peaked)."""

    def __init__(self, is_worker, every: float = 0.25):
        self.is_worker, self.every = is_worker, every
        self.peak_one = self.peak_sum = self.peak_driver = 0
        self.by_title: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            with contextlib.suppress(psutil.Error, OSError):
                self.peak_driver = max(self.peak_driver, me.memory_info().rss)
            for p in me.children(recursive=True):
                try:
                    if self.is_worker(p):
                        rss = p.memory_info().rss
                        total += rss
                        self.peak_one = max(self.peak_one, rss)
                        title = (p.cmdline() or ["?"])[0]
                        self.by_title[title] = max(self.by_title.get(title, 0), rss)
                except (psutil.Error, OSError):
                    continue
            self.peak_sum = max(self.peak_sum, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _is_ray_worker(p) -> bool:
    line = " ".join(p.cmdline())
    return line.startswith("ray::") or "default_worker.py" in line


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(n: float) -> float:
    return n / 2**20


# ------------------------------------------------------------------------------------------------ quarry


def write_recipe(work: Path, corpus: Path, root: Path, dataset: str, mh_verify: bool = False) -> Path:
    import yaml

    recipe = {
        "dataset": dataset, "cluster": "local", "storage_root": str(root),
        "ingest": {"docs_per_shard": DOCS_PER_FILE,
                   "sources": [{"path": str(corpus), "format": "jsonl", "domain": "web", "lang": "en"}]},
        "quality_signals": {"language": "en"},
        "minhash_signatures": {},
        "quality_filter": {"rules": ["gopher", "c4"]},
        "exact_dedup": {"keys": ["url", "text"], "priority": "longest"},
        "minhash_dedup": {"similarity": 0.8, "priority": "longest", **({"verify": True} if mh_verify else {})},
    }
    path = work / f"{dataset}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_quarry(recipe: Path, root: Path, dataset: str) -> dict:
    from prefect import flow

    from flows.curate import curate
    from ray_cluster import runtime

    shutil.rmtree(root, ignore_errors=True)  # a fresh store: a committed version would make the run a no-op
    t0 = time.perf_counter()
    with runtime.connected(runtime.load_profile("local")):
        flow(name="scale-warmup")(lambda: None)()  # starts the ephemeral Prefect API, as a server would be up
        startup = time.perf_counter() - t0
        with RssSampler(_is_ray_worker) as rss:
            t1 = time.perf_counter()
            final = curate(str(recipe))
            wall = time.perf_counter() - t1
    from storage import datasets

    stages = {}
    for name in CURATE_STAGES:
        ref = datasets.latest(str(root), dataset, name)
        if ref is None:
            raise SystemExit(f"stage {name} committed nothing under {root}")
        m = datasets.read_manifest(ref)
        stages[name] = {"ref": ref, "rows": m["num_rows"], "seconds": (m.get("stats") or {}).get("seconds"),
                        "bytes": _folder_bytes(root / dataset / name), "parents": m["parents"]}
    kept = stages["kept"]["rows"]
    from storage import catalog

    funnel = catalog.query(catalog.connect(str(root)), f"SELECT coalesce(drop_reason, 'kept') AS reason, count(*) AS n "
                           f"FROM {dataset}__minhash_dedup GROUP BY 1 ORDER BY 2 DESC").to_pylist()
    return {"final": final, "startup_s": startup, "funnel": {r["reason"]: r["n"] for r in funnel}, "wall_s": wall, "stages": stages, "kept": kept,
            # the driver's peak while the flow ran (sampled), not the process's lifetime peak (corpus building)
            "driver_rss": rss.peak_driver, "driver_rss_lifetime": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "worker_rss_by_title": dict(sorted(rss.by_title.items(), key=lambda kv: -kv[1])[:8]),
            "worker_rss_one": rss.peak_one, "worker_rss_sum": rss.peak_sum,
            "bytes_total": _folder_bytes(root / dataset)}


def _sample(ref, columns: list[str], rows: int):
    """The first ``rows`` rows of a version's wide table (through its layers), shard by shard."""
    import pyarrow as pa

    from storage import layers

    parts, have = [], 0
    for name in layers.shard_names(ref):
        if have >= rows:
            break
        part = layers.read_shard(ref, name, columns).slice(0, rows - have)
        parts.append(part)
        have += part.num_rows
    return pa.concat_tables(parts)


def kernel_rates(recipe: Path, root: Path, dataset: str, stages: dict, sample: int) -> dict:
    """Seconds per document (map stages, on a sample of their committed input) and seconds (global DuckDB steps)."""
    import pyarrow as pa

    from flows.run import load
    from ray_cluster import executor
    from storage import catalog, datasets, layers
    from tasks import registry
    from tasks.select.selection import KeptParams

    cfg, profile = load(str(recipe))
    out = {}
    for name in CURATE_STAGES:
        st = registry.stage(name)
        params = KeptParams() if name == "kept" else getattr(cfg, st.section)
        rpc = executor.resources(st, profile).rows_per_call
        parents = [datasets.ref_from_string(str(root), p) for p in stages[name]["parents"]]
        if st.kind == "source":
            files, _ = st.list_inputs(params)
            spec, uri = files[0]
            t0 = time.perf_counter()
            docs = pa.concat_tables([d for d, _bad, _ in st.fn([(uri, spec)])])  # one item of this one file
            out[name] = {"per_doc_s": (time.perf_counter() - t0) / docs.num_rows, "rows": docs.num_rows}
            continue
        if st.kind == "sql":
            roles = dict(zip(st.roles, parents, strict=True))
            with tempfile.TemporaryDirectory(prefix="quarry-scale-") as spill:
                scon = catalog.scratch(str(root), temp_directory=spill)
                t0 = time.perf_counter()
                # as the executor reads (projected, several layers flattened first): that is part of the step's cost
                exprs, columns = executor.sql_inputs(st, params, roles, spill)
                rel = st.fn(scon, exprs, params, columns)
                rows = scon.sql(f"SELECT * FROM {rel}").to_arrow_table().num_rows
                out[name] = {"global_s": time.perf_counter() - t0, "rows": rows}
                scon.close()
            continue
        src = parents[0]
        cols = executor.projection(st, params, layers.column_names(src))  # the columns the executor feeds it
        batch = _sample(src, cols, sample)
        if st.layer == "rows":  # a selection sees its input rows' positions, as in the executor
            batch = batch.append_column(layers.POS, pa.array(np.arange(batch.num_rows, dtype=np.int64)))
        side = {r: executor.side_table(ref) for r, ref in zip(st.roles[1:], parents[1:], strict=True)}
        if st.kind == "sql_map":
            def call(b, st=st, params=params):
                res = executor.sql_over_batch(st.fn, params, b)
                return st.post(res, params) if st.post else res
        else:
            def call(b, st=st, params=params, side=side):
                return st.fn(b, params, **side)
        call(batch.slice(0, min(rpc, 50)))  # compiled/cached kernels and lazy tables loaded, not timed
        t0 = time.perf_counter()
        for off in range(0, batch.num_rows, rpc):
            call(pa.Table.from_batches(batch.slice(off, rpc).to_batches()))
        out[name] = {"per_doc_s": (time.perf_counter() - t0) / max(1, batch.num_rows), "rows": batch.num_rows}
    return out


def fuzzy_audit(root: Path, dataset: str, sample: int = 3000, seed: int = 0) -> dict:
    """What the fuzzy drops really are: for a seeded sample of `mh_duplicate` documents, the exact 13-gram Jaccard
    (RPv2-normalized words, the signatures' shingles) to the closest other member of their MinHash cluster. Planted
    near copies are >= 0.82 to their original; a drop below the 0.8 threshold is an LSH band collision (candidates
    are not re-checked against the signatures, as in RPv2 and datatrove) or a chain of connected components."""
    from storage import catalog
    from tasks.common.textnorm import rpv2_normalize

    con = catalog.connect(str(root))
    rel = f"{dataset}__minhash_dedup"
    picked = con.sql(f"SELECT doc_id, mh_cluster_id FROM {rel} WHERE drop_reason = 'mh_duplicate' "
                     f"ORDER BY hash(doc_id || '{seed}') LIMIT {sample}").fetchall()
    if not picked:
        return {"sampled": 0}
    rows = con.sql(f"SELECT doc_id, mh_cluster_id, text FROM {rel} WHERE mh_cluster_id IN (SELECT unnest(?))",
                   params=[sorted({c for _, c in picked})]).fetchall()
    clusters: dict = {}
    for doc, cid, text in rows:
        # the signatures' own shingles; a drop always has >= 13 words (shorter documents get no signature)
        clusters.setdefault(cid, {})[doc] = _shingles(rpv2_normalize(text or "").split())
    best = []
    for doc, cid in picked:  # each sampled drop against every other member of its cluster
        s = clusters[cid][doc]
        best.append(max((len(s & t) / len(s | t) for d, t in clusters[cid].items() if d != doc and s | t),
                        default=0.0))
    best.sort()
    return {"sampled": len(best), "median": round(best[len(best) // 2], 3), "p1": round(best[len(best) // 100], 3),
            "share_ge_0.82": round(sum(b >= 0.8175 for b in best) / len(best), 4),
            "share_lt_0.8": round(sum(b < 0.8 for b in best) / len(best), 4),
            "share_lt_0.6": round(sum(b < 0.6 for b in best) / len(best), 4)}


# ------------------------------------------------------------------------------------------------ datatrove


def run_datatrove(corpus: Path, work: Path, docs: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    base = work / "datatrove"
    shutil.rmtree(base, ignore_errors=True)
    files = sorted(corpus.glob("part-*.jsonl"))[: -(-docs // DOCS_PER_FILE)]
    n_docs = min(docs, len(files) * DOCS_PER_FILE)
    paths = base / "inputs.txt"
    base.mkdir(parents=True)
    paths.write_text("\n".join(f.name for f in files) + "\n")
    tasks = len(files)
    cfg = MinhashConfig(n_grams=13, num_buckets=9, hashes_per_bucket=13, seed=42,
                        hash_config=HashConfig(precision=32, hash_fc="sha1"))
    c4 = C4QualityFilter(filter_no_terminal_punct=False, min_words_per_line=-1, max_word_length=-1,
                         filter_javascript=False, filter_policy=False)  # the document-level C4 rules quarry applies
    steps = [
        ([JsonlReader(str(corpus), paths_file=str(paths)), GopherRepetitionFilter(), GopherQualityFilter(), c4,
          JsonlWriter(str(base / "filtered"))], tasks),
        ([JsonlReader(str(base / "filtered")), MinhashDedupSignature(str(base / "sigs"), config=cfg)], tasks),
        ([MinhashDedupBuckets(str(base / "sigs"), str(base / "buckets"), config=cfg)], cfg.num_buckets),
        ([MinhashDedupCluster(str(base / "buckets"), str(base / "remove_ids"), config=cfg)], 1),
        ([JsonlReader(str(base / "filtered")), MinhashDedupFilter(str(base / "remove_ids")),
          JsonlWriter(str(base / "deduped"))], tasks),
    ]
    import psutil

    seconds = []
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. the Prefect API: not datatrove's
    with RssSampler(lambda p: p.pid not in before) as rss:
        t0 = time.perf_counter()
        for i, (pipeline, n_tasks) in enumerate(steps):
            t = time.perf_counter()
            LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=CORES,
                                  logging_dir=str(base / f"logs{i}")).run()
            seconds.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    kept = sum(1 for p in (base / "deduped").rglob("*.jsonl*") for _ in _open_lines(p))
    written = sum(_folder_bytes(base / d) for d in ("filtered", "sigs", "buckets", "remove_ids", "deduped"))
    return {"docs": n_docs, "wall_s": wall, "step_s": seconds, "kept": kept, "bytes_total": written,
            "worker_rss_one": rss.peak_one, "worker_rss_sum": rss.peak_sum}


def _open_lines(path: Path):
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


# ------------------------------------------------------------------------------------------------ numba cold/warm


FIRST_BATCH = """
import json, time, sys
t0 = time.perf_counter()
import pyarrow as pa
from tasks.signals.quality_signals import QualitySignalsParams, quality_signals
from tasks.dedup.minhash import MinhashSignaturesParams, minhash_signatures
texts = [json.loads(l)["text"] for _, l in zip(range(200), open(sys.argv[1]))]
b = pa.table({"doc_id": [str(i) for i in range(len(texts))], "text": texts, "lang": ["en"] * len(texts)})
t1 = time.perf_counter()
quality_signals(b, QualitySignalsParams(language="en"))
minhash_signatures(b, MinhashSignaturesParams())
print(json.dumps({"import_s": t1 - t0, "first_batch_s": time.perf_counter() - t1}))
"""


def numba_first_batch(corpus_file: Path) -> dict:
    """A fresh process's import + first batch with an empty numba cache (every kernel JIT-compiles), then again
    with the cache that run left (what a new Ray worker pays once the kernels are cached)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="quarry-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(REPO)}
        for label in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", FIRST_BATCH, str(corpus_file)], env=env, cwd=REPO,
                                 capture_output=True, text=True, check=True)
            out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------------------------------ report


def report(n: int, corpus: dict, q: dict, k: dict, dt: dict | None, nb: dict | None, git: str) -> str:
    mb_in = corpus["text_bytes"] / 1e6
    ingest_bytes = q["stages"]["ingest"]["bytes"]
    per_doc_map = sum(v["per_doc_s"] for v in k.values() if "per_doc_s" in v)
    global_s = sum(v["global_s"] for v in k.values() if "global_s" in v)
    ceiling_s = per_doc_map * n / CORES + global_s
    e2e = n / q["wall_s"]
    lines = [f"scale benchmark: N = {n:,} docs ({mb_in:,.0f} MB of text; planted {corpus['planted']}; near-dup "
             f"13-gram Jaccard {corpus['near_jaccard13']}), {CORES} cores, commit {git}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"Ray + Prefect start-up (not in wall): {q['startup_s']:.1f} s; quarry's funnel: {q['funnel']}",
             "peak RSS per worker process title (MB): " + ", ".join(
                 f"{t} {_mb(v):,.0f}" for t, v in q.get("worker_rss_by_title", {}).items()), "",
             "| | docs | wall s | docs/s | docs/s/core | MB/s/core | bytes written / input byte | peak RSS driver MB "
             "| peak RSS workers MB (one / all) | kept |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| quarry curate (Prefect + Ray) | {n:,} | {q['wall_s']:.1f} | {e2e:,.0f} | {e2e / CORES:,.0f} | "
             f"{mb_in / q['wall_s'] / CORES:.2f} | {q['bytes_total'] / corpus['text_bytes']:.2f} | "
             f"{_mb(q['driver_rss']):,.0f} | {_mb(q['worker_rss_one']):,.0f} / {_mb(q['worker_rss_sum']):,.0f} | "
             f"{q['kept']:,} |",
             f"| kernel-only ceiling (same stages) | {n:,} | {ceiling_s:.1f} | {n / ceiling_s:,.0f} | "
             f"{n / ceiling_s / CORES:,.0f} | {mb_in / ceiling_s / CORES:.2f} | | | | |"]
    if dt:
        dmb = mb_in * dt["docs"] / n
        lines.append(
            f"| datatrove LocalPipelineExecutor | {dt['docs']:,} | {dt['wall_s']:.1f} | {dt['docs'] / dt['wall_s']:,.0f} | "
            f"{dt['docs'] / dt['wall_s'] / CORES:,.1f} | {dmb / dt['wall_s'] / CORES:.3f} | "
            f"{dt['bytes_total'] / (corpus['text_bytes'] * dt['docs'] / n):.2f} | | "
            f"{_mb(dt['worker_rss_one']):,.0f} / {_mb(dt['worker_rss_sum']):,.0f} | {dt['kept']:,} |")
    lines += ["", "| stage | rows | stage wall s | kernel docs/s/core | kernel s (global) | bytes written | "
              "/ ingested bytes |", "|---|---|---|---|---|---|---|"]
    for name in CURATE_STAGES:
        s, kk = q["stages"][name], k[name]
        rate = f"{1 / kk['per_doc_s']:,.0f}" if "per_doc_s" in kk else ""
        glob = f"{kk['global_s']:.2f}" if "global_s" in kk else ""
        lines.append(f"| {name} | {s['rows']:,} | {s['seconds'] or 0:.1f} | {rate} | {glob} | "
                     f"{_mb(s['bytes']):,.1f} MB | {s['bytes'] / ingest_bytes:.2f} |")
    budget = sum(q["stages"][s]["bytes"] for s in BUDGET_STAGES)
    targets = [("end to end >= 70 % of the kernel ceiling", e2e / (n / ceiling_s), 0.70, ">="),
               ("signals + MinHash + filter + dedups bytes <= 1.5x ingested", budget / ingest_bytes, 1.5, "<=")]
    if dt:
        targets.append(("docs/s >= 15x datatrove's", e2e / (dt["docs"] / dt["wall_s"]), 15.0, ">="))
    lines.append("")
    for label, value, bound, op in targets:
        ok = value >= bound if op == ">=" else value <= bound
        lines.append(f"target {label}: {value:.2f} ({'met' if ok else 'NOT met'})")
    if nb:
        lines.append(f"fresh process, first batch of the numba kernels (signals + MinHash, 200 docs): empty cache "
                     f"{nb['cold']['first_batch_s']:.2f} s, cached {nb['warm']['first_batch_s']:.2f} s "
                     f"(imports {nb['cold']['import_s']:.1f} / {nb['warm']['import_s']:.1f} s)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="documents (20000; 200000; 2000000)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "quarry-scale",
                    help="corpus, store and peer outputs (not the repo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exact-share", type=float, default=0.05)
    ap.add_argument("--near-share", type=float, default=0.05)
    ap.add_argument("--kernel-docs", type=int, default=20_000, help="sample for the map stages' kernel rates")
    ap.add_argument("--peer-docs", type=int, default=None, help="datatrove's documents (default min(N, 10000))")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-numba", action="store_true")
    ap.add_argument("--mh-verify", action="store_true",
                    help="minhash_dedup re-checks LSH candidates against the signatures (verify: true)")
    args = ap.parse_args()
    work = args.work.resolve()
    if REPO in work.parents or work == REPO:
        sys.exit(f"--work {work} is inside the repository; pick a folder outside it")
    t = time.perf_counter()
    corpus_dir = work / f"corpus-{args.n}-s{args.seed}"
    corpus = build_corpus(args.n, corpus_dir, args.seed, args.exact_share, args.near_share)
    print(f"corpus: {corpus_dir} ({time.perf_counter() - t:.0f} s) {json.dumps(corpus)}", flush=True)
    dataset = f"scale{args.n}"
    root = work / f"store-{args.n}"
    recipe = write_recipe(work, corpus_dir, root, dataset, args.mh_verify)
    q = run_quarry(recipe, root, dataset)
    print(f"quarry: {q['wall_s']:.1f} s, {q['kept']} kept", flush=True)
    k = kernel_rates(recipe, root, dataset, q["stages"], args.kernel_docs)
    print(f"fuzzy drops, exact 13-gram Jaccard to the closest member of their cluster: "
          f"{json.dumps(fuzzy_audit(root, dataset))}", flush=True)
    import ray

    ray.shutdown()  # its idle workers would sit beside datatrove's on the same cores
    dt = None
    if not args.skip_peer:
        dt = run_datatrove(corpus_dir, work, args.peer_docs or min(args.n, 10_000))
        print(f"datatrove: {dt['wall_s']:.1f} s on {dt['docs']} docs, steps {[round(s, 1) for s in dt['step_s']]}",
              flush=True)
    nb = None if args.skip_numba else numba_first_batch(sorted(corpus_dir.glob("part-*.jsonl"))[0])
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    print()
    print(report(args.n, corpus, q, k, dt, nb, git))


if __name__ == "__main__":
    main()
