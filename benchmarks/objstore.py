"""Object-store I/O, measured: the scale corpus curated on a local root vs an ``s3://`` root, and S3 client libraries.

    python benchmarks/objstore.py --n 200000            # curate local vs s3 (corpus cached by benchmarks/scale.py)
    python benchmarks/objstore.py --n 20000 --libs-only  # only the library comparison

The S3 endpoint is moto (``moto_server``) in its own process on loopback, so its CPU time is measured apart (psutil):
moto is a Python server that parses and stores every request in one process, so on a 2-core box it competes with
the curate for the same cores; its own seconds are reported beside the wall time. Its request log (one line per
request) gives the request counts per stage and per operation, counted at the server (every Ray worker included).

1. curate: benchmarks/scale.py's recipe (ingest -> signals -> MinHash -> filters -> exact + fuzzy dedup -> kept) on the
   `local` profile (2 CPUs), once with a local root and once with ``s3://bench/root``; per stage: seconds, MB written
   (the committed files), MB/s written, MB read (the stage's inputs' committed bytes: an upper bound, projection reads
   less), requests by operation.
2. libraries, on one committed signals shard and a synthetic 64 MiB write: Parquet read with column projection and
   with all columns (s3fs file vs pyarrow's S3FileSystem with ``pre_buffer`` on/off vs obstore when installed), and
   a multipart write (s3fs ``pipe_file`` with 16 / 50 MiB parts vs pyarrow's S3 output stream vs obstore ``put``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import benchmarks.scale as scale  # noqa: E402 - after the path insert (also sets the Prefect/Ray env defaults)

BUCKET = "bench"


@contextlib.contextmanager
def moto_process(log_path: Path):
    """moto_server in its own process (its CPU apart from the curate's), the S3 env pointing at it."""
    import psutil

    from tests.conftest import free_port

    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)
    deadline = time.time() + 60
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline:
                raise SystemExit("moto_server did not start") from None
            time.sleep(0.3)
    try:
        yield port, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def cpu_s(p) -> float:
    t = p.cpu_times()
    return t.user + t.system


_LINE = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) /([^ ?]*)(\?[^ ]*)? HTTP')


def requests_by_stage(log_path: Path, dataset: str) -> dict:
    """Requests per stage folder and operation, from moto's access log (a LIST names its prefix in the query)."""
    out = defaultdict(Counter)
    for line in log_path.read_text(errors="replace").splitlines():
        m = _LINE.search(line)
        if not m:
            continue
        method, path, query = m.group(1), m.group(2), m.group(3) or ""
        if method == "GET" and ("list-type" in query or "prefix=" in query):
            pm = re.search(r"prefix=([^&]*)", query)
            path, op = f"{BUCKET}/" + (pm.group(1) if pm else ""), "LIST"
        else:
            op = {"GET": "GET", "PUT": "PUT", "HEAD": "HEAD", "DELETE": "DELETE", "POST": "POST"}[method]
        parts = path.split("/")
        stage = parts[3] if len(parts) > 3 and parts[2] == dataset else "(other)"
        out[stage][op] += 1
    return {k: dict(v) for k, v in out.items()}


def curate_once(root: str, recipe: Path, dataset: str) -> dict:
    from flows.curate import curate
    from storage import datasets

    t1 = time.perf_counter()
    curate(str(recipe))
    wall = time.perf_counter() - t1
    stages = {}
    for name in scale.CURATE_STAGES:
        ref = datasets.latest(root, dataset, name)
        m = datasets.read_manifest(ref)
        stages[name] = {"rows": m["num_rows"], "seconds": (m.get("stats") or {}).get("seconds"),
                        "bytes": sum(f["bytes"] for f in m["files"]), "parents": m["parents"]}
    for st in stages.values():
        st["read_bytes"] = sum(stages[p.split("/")[1]]["bytes"] for p in st["parents"] if p.split("/")[1] in stages)
    return {"wall_s": wall, "stages": stages, "kept": stages["kept"]["rows"]}


def _mb(n: float) -> float:
    return n / 2**20


def run_curate(n: int, work: Path) -> dict:
    import shutil

    corpus_dir = work / f"corpus-{n}-s0"
    scale.build_corpus(n, corpus_dir, 0, 0.05, 0.05)
    dataset = f"objstore{n}"
    local_root = work / f"objstore-local-{n}"
    shutil.rmtree(local_root, ignore_errors=True)
    log_path = work / f"moto-{n}.log"
    # moto first (the Ray workers inherit its endpoint from this environment), then one Ray cluster for both runs
    with moto_process(log_path) as (port, moto):
        from prefect import flow

        from ray_cluster import runtime
        from storage import datasets

        fs = datasets.filesystem(f"s3://{BUCKET}")[0]
        fs.mkdir(BUCKET)
        s3_root = f"s3://{BUCKET}/root"
        s3_recipe = scale.write_recipe(work, corpus_dir, s3_root, dataset)  # the same recipe on the s3 root
        s3_recipe = s3_recipe.rename(work / f"{dataset}-s3.yaml")
        recipe = scale.write_recipe(work, corpus_dir, local_root, dataset)
        with runtime.connected(runtime.load_profile("local")):
            flow(name="objstore-warmup")(lambda: None)()
            local = curate_once(str(local_root), recipe, dataset)
            print(f"local: {local['wall_s']:.1f} s, {local['kept']} kept", flush=True)
            c0 = cpu_s(moto)
            s3 = curate_once(s3_root, s3_recipe, dataset)
            s3["moto_cpu_s"] = cpu_s(moto) - c0
    s3["requests"] = requests_by_stage(log_path, dataset)
    print(f"s3: {s3['wall_s']:.1f} s (moto's own CPU {s3['moto_cpu_s']:.1f} s), {s3['kept']} kept", flush=True)
    return {"n": n, "local": local, "s3": s3}


# ------------------------------------------------------------------------------------------------ libraries


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run_libs(work: Path) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    log_path = work / "moto-libs.log"
    out = {}
    with moto_process(log_path) as (port, moto):
        from storage import datasets

        s3 = datasets.filesystem(f"s3://{BUCKET}")[0]
        s3.mkdir(BUCKET)
        rng = np.random.default_rng(0)
        # a shard shaped like a signals shard: text plus ~20 float columns, 8 row groups
        rows = 40_000
        texts = [("lorem ipsum dolor " * int(k)) for k in rng.integers(5, 60, rows)]
        table = pa.table({"doc_id": [f"d{i}" for i in range(rows)], "text": texts,
                          **{f"sig_{j}": rng.random(rows) for j in range(20)}})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=rows // 8)
        data = buf.getvalue()
        key = f"{BUCKET}/libs/part-00000.parquet"
        s3.pipe_file(key, data)
        cols = ["doc_id", "sig_0", "sig_1", "sig_2"]
        pa_s3 = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="bench",
                                  secret_key="bench", region="us-east-1")
        reads = {
            "s3fs, projection": lambda: pq.ParquetFile(s3.open(key, "rb")).read(columns=cols),
            "s3fs, all columns": lambda: pq.ParquetFile(s3.open(key, "rb")).read(),
            "pyarrow S3, projection, pre_buffer": lambda: pq.read_table(key, columns=cols, filesystem=pa_s3,
                                                                         pre_buffer=True),
            "pyarrow S3, projection, no pre_buffer": lambda: pq.read_table(key, columns=cols, filesystem=pa_s3,
                                                                            pre_buffer=False),
            "pyarrow S3, all columns, pre_buffer": lambda: pq.read_table(key, filesystem=pa_s3, pre_buffer=True),
        }
        big = rng.bytes(64 * 2**20)
        writes = {
            "s3fs pipe_file, 16 MiB parts": lambda: s3.pipe_file(f"{BUCKET}/libs/w1", big, chunksize=16 * 2**20),
            "s3fs pipe_file, 50 MiB parts (s3fs default: one 64 MiB PUT)": lambda: s3.pipe_file(f"{BUCKET}/libs/w2",
                                                                                                 big),
            "pyarrow S3 output stream": lambda: _pa_write(pa_s3, f"{BUCKET}/libs/w3", big),
        }
        try:
            import obstore
            from obstore.store import S3Store

            store = S3Store(BUCKET, endpoint=f"http://127.0.0.1:{port}", access_key_id="bench",
                            secret_access_key="bench", region="us-east-1", client_options={"allow_http": True})

            def ob_read(columns):
                raw = obstore.get(store, "libs/part-00000.parquet").bytes()
                return pq.read_table(pa.BufferReader(memoryview(raw)), columns=columns)

            reads["obstore get + pyarrow, projection (whole object)"] = lambda: ob_read(cols)
            writes["obstore put (multipart, 16 MiB chunks)"] = lambda: obstore.put(store, "libs/w4", big,
                                                                                   chunk_size=16 * 2**20)
        except ImportError:
            out["obstore"] = "not installed"
        for name, fn in reads.items():
            c0 = cpu_s(moto)
            s = _best(fn)
            out.setdefault("read", {})[name] = {"s": round(s, 3), "MB/s": round(_mb(len(data)) / s, 1),
                                               "moto_cpu_s_3x": round(cpu_s(moto) - c0, 2)}
        for name, fn in writes.items():
            c0 = cpu_s(moto)
            s = _best(fn)
            out.setdefault("write", {})[name] = {"s": round(s, 3), "MB/s": round(64 / s, 1),
                                                "moto_cpu_s_3x": round(cpu_s(moto) - c0, 2)}
        out["shard_mb"] = round(_mb(len(data)), 1)
    return out


def _pa_write(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def report(curate: dict | None, libs: dict | None) -> str:
    lines = []
    if curate:
        loc, s3 = curate["local"], curate["s3"]
        lines += [f"curate, {curate['n']:,} documents, `local` profile (2 CPUs); moto in its own process",
                  "", f"wall: local {loc['wall_s']:.1f} s, s3 {s3['wall_s']:.1f} s "
                  f"({s3['wall_s'] / loc['wall_s']:.2f}x); moto's own CPU during the s3 run {s3['moto_cpu_s']:.1f} s",
                  "", "| stage | local s | s3 s | MB written | local MB/s written | s3 MB/s written | MB read (inputs) | "
                  "s3 requests |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for name in scale.CURATE_STAGES:
            a, b = loc["stages"][name], s3["stages"][name]
            req = s3["requests"].get(name, {})
            la, lb = a["seconds"] or 0, b["seconds"] or 0
            lines.append(f"| {name} | {la:.1f} | {lb:.1f} | {_mb(b['bytes']):.1f} | "
                         f"{_mb(a['bytes']) / la if la else 0:.1f} | {_mb(b['bytes']) / lb if lb else 0:.1f} | "
                         f"{_mb(b['read_bytes']):.1f} | {', '.join(f'{k} {v}' for k, v in sorted(req.items()))} |")
        other = s3["requests"].get("(other)", {})
        lines.append(f"\nrequests outside a stage folder (pointers, leases, probes, catalog): {other}")
        lines.append(f"kept: local {loc['kept']}, s3 {s3['kept']}")
    if libs:
        lines += ["", f"libraries, one {libs['shard_mb']} MiB Parquet shard (8 row groups, 22 columns) and a 64 MiB "
                  "write, best of 3:", "", "| operation | library | s | MB/s | moto CPU s (3 runs) |", "|---|---|---:|---:|---:|"]
        for kind in ("read", "write"):
            for name, r in libs.get(kind, {}).items():
                lines.append(f"| {kind} | {name} | {r['s']} | {r['MB/s']} | {r['moto_cpu_s_3x']} |")
        if "obstore" in libs:
            lines.append(f"\nobstore: {libs['obstore']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "quarry-scale")
    ap.add_argument("--libs-only", action="store_true")
    ap.add_argument("--curate-only", action="store_true")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    libs = None if args.curate_only else run_libs(work)
    if libs:
        print(json.dumps(libs, indent=1), flush=True)
    curate = None if args.libs_only else run_curate(args.n, work)
    print()
    print(report(curate, libs))


if __name__ == "__main__":
    main()
