"""Fault-injection harness: run ONE stage kind on a fixed small input (serial profile, no Prefect), kill it, resume.

    python -m tests.reliability._harness <kind> <root> [--inputs DIR]   # one uninterrupted run of a stage kind
    python -m tests.reliability._harness serve                           # the zygote the tests talk to (stdin/stdout)

Kinds: ingest, signals, dedup, embed_kmeans, augment, train (see ``run_kind``). Every kind reads the same base input
(``prepare_base``: an ingest of C4 documents with planted exact and near duplicates, its MinHash signatures and
token ids) and
runs the production stages of the registry through the executor (``ray_cluster.executor`` over ``storage``).

Why a zygote: importing the engine and loading the models takes ~10-30 s on a shared 2-core box, and a stage kind
on the tiny input runs in well under a second once warm. ``serve`` imports everything and runs each kind once
uninterrupted (the reference, which also warms every cache), then forks one child per run; the test SIGKILLs that
child (after a seeded delay) or the child SIGKILLs itself at the n-th commit point (``os.rename``/``os.replace``/
``os.link`` under the storage root, just before or just after it). Either way the process dies without cleanup,
exactly like a worker killed by the OOM killer or a lost node. Torch and OpenMP are pinned to one thread so the
forked children inherit no thread pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
C4 = Path(os.environ.get("QUARRY_SHARED_DATA", REPO.parent / "shared" / "data")) / "web" / "c4_sample" / "c4_sample.jsonl"
KINDS = ("ingest", "signals", "dedup", "langid_pii_decontam", "subdoc_dedup", "quality_score", "embed_kmeans",
         "augment", "train", "export")
DATASET = "rel"
COMMIT_POINTS = ("rename", "replace", "link")
# columns whose values legitimately differ between two runs (wall-clock measurements)
VOLATILE = {"aug_latency_s", "tokens_per_s", "step_time_s", "mfu", "seconds"}
API_KEY_ENV = "QUARRY_RELIABILITY_LLM_KEY"


def _env() -> None:
    for k, v in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "QUARRY_PROGRESS": "0",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }.items():
        os.environ.setdefault(k, v)


# ------------------------------------------------------------------------------------------------ inputs


def make_inputs(inputs: Path) -> list[Path]:
    """Three JSONL files: 36 C4 documents, 4 exact copies (same url+text), 3 near copies, 2 broken lines."""
    if not C4.is_file():
        raise FileNotFoundError(f"shared data not found at {C4}")
    inputs.mkdir(parents=True, exist_ok=True)
    docs = []
    with C4.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append({"text": row["text"], "url": row.get("url") or f"http://c4/{len(docs)}"})
            if len(docs) == 36:
                break
    near = []
    for d in docs[:3]:
        words = d["text"].split()
        words[len(words) // 2] = "zebra"  # one word changed: Jaccard of 13-gram shingles stays well above 0.8 for long docs
        near.append({"text": " ".join(words), "url": d["url"] + "?near"})
    files = {
        "a.jsonl": docs[:18],
        "b.jsonl": docs[18:],
        "c.jsonl": docs[:4] + near,  # exact copies of a.jsonl's first four documents, and three near copies
    }
    out = []
    for name, rows in files.items():
        path = inputs / name
        if not path.exists():
            body = "".join(json.dumps(r) + "\n" for r in rows)
            if name == "b.jsonl":
                body += "{not json\n" + json.dumps({"text": 42}) + "\n"  # quarantined with a reason, never lost
            path.write_text(body, encoding="utf-8")
        out.append(path)
    return out


def sources(inputs: Path):
    from tasks.ingest.sources import IngestSource

    return [IngestSource(path=str(p), domain="web", lang="en") for p in make_inputs(inputs)]


def serial():
    from ray_cluster import runtime

    return runtime.load_profile("serial")


def base_refs(root: str):
    from storage import datasets

    return datasets.latest(root, DATASET, "ingest"), datasets.latest(root, DATASET, "minhash_signatures")


def prepare_base(base: str, inputs: Path) -> None:
    """The committed input every non-ingest kind starts from: ingest, its MinHash signatures and its token ids."""
    import tasks.dedup.minhash as mh
    from tests import stages

    ing = stages.ingest(sources(inputs), root=base, dataset=DATASET, docs_per_shard=4, profile=serial())
    stages.run("minhash_signatures", [ing], mh.MinhashSignaturesParams(), serial())
    stages.run("tokenize", [ing], tokenize_params(), serial())


# ------------------------------------------------------------------------------------------------ stage kinds


def embed_params():
    from tasks.balance.embed import EmbedParams

    return EmbedParams(max_seq_length=16, device="cpu")  # 16 tokens: the real model, a fraction of the cost


def augment_params(llm_url: str):
    from tasks.augment.tpt import AugmentParams

    return AugmentParams(backend="openai", base_url=llm_url, model="smollm2", api_key_env=API_KEY_ENV,
                         max_new_tokens=8, max_input_tokens=64, concurrency=2, retries=1, backoff_s=0.01)


def train_params():
    from tasks.train.trainer import TrainParams

    return TrainParams(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32,
                       micro_batch_size=4, max_steps=12, warmup_steps=2, checkpoint_every=2, keep_checkpoints=2)


def tokenize_params():
    from tasks.train.tokenize import TokenizeParams

    return TokenizeParams()


def pack_params():
    from tasks.train.tokenize import PackParams

    return PackParams(seq_len=16)


def run_kind(kind: str, root: str, inputs: Path, llm_url: str | None = None):
    """Run one stage kind to completion (resuming whatever a killed run left); returns the final DatasetRef.
    Every kind runs the production stages of the registry through the executor, as the flows do."""
    from tests import stages

    prof = serial()
    if kind == "ingest":
        return stages.ingest(sources(inputs), root=root, dataset=DATASET, docs_per_shard=4, profile=prof)
    ing, sig = base_refs(root)
    if ing is None or sig is None:
        raise RuntimeError(f"{root} holds no base input; copy prepare_base's root first")
    if kind == "signals":
        import tasks.signals.quality_signals as qs

        return stages.run("quality_signals", [ing], qs.QualitySignalsParams(language="en"), prof)
    if kind == "dedup":
        import tasks.dedup.exact as ed
        import tasks.dedup.minhash as mh

        ref = stages.section("exact_dedup", sig, ed.ExactDedupParams(), prof)
        return stages.section("minhash_dedup", ref, mh.MinhashDedupParams(num_partitions=2), prof)
    if kind == "langid_pii_decontam":  # the per-document columns stages, chained as in CURATION
        import tempfile

        import tasks.filter.decontaminate as dc
        import tasks.filter.pii as pii
        import tasks.signals.language_id as lid

        ided = stages.run("language_id", [ing], lid.LanguageIdParams(), prof)
        red = stages.run("pii", [ided], pii.PiiParams(mode="flag"), prof)
        # the index cache lives outside root: it is keyed by the eval files, shared by every run, never an output
        cache = str(Path(tempfile.gettempdir()) / "quarry-reliability-decontam-cache")
        params = dc.DecontaminateParams(eval_dir=str(C4.parents[2] / "eval"), tasks=("arc_easy", "copa"),
                                        cache_dir=cache)
        return stages.run("decontaminate", [red], params, prof)
    if kind == "subdoc_dedup":  # map -> DuckDB (sql) -> map with a side table, twice
        from tasks.dedup.line import LineDedupParams
        from tasks.dedup.sentence import SentenceDedupParams

        ref = stages.section("line_dedup", ing, LineDedupParams(), prof)
        return stages.section("sentence_dedup", ref, SentenceDedupParams(min_doc_words=20), prof)
    if kind == "quality_score":  # a global training stage, then an actor loading its model
        from tasks.signals.quality_classifier import QualityClassifierParams, QualityScoreParams

        # the base input's first two files as the two classes: the numbers are meaningless, the commits are not
        srcs = sources(inputs)
        params = QualityClassifierParams(positive=(srcs[0],), negative=(srcs[1],), epoch=5)
        pos = stages.ingest(params.positive, root=root, dataset=f"{DATASET}_qc_positive", docs_per_shard=8,
                            profile=prof)
        neg = stages.ingest(params.negative, root=root, dataset=f"{DATASET}_qc_negative", docs_per_shard=8,
                            profile=prof)
        model = stages.run("quality_classifier", [pos, neg], params, prof, dataset=DATASET)
        return stages.run("quality_score", [ing, model], QualityScoreParams(), prof)
    if kind == "embed_kmeans":
        import tasks.balance.hkmeans as km

        emb = stages.run("embed", [ing], embed_params(), prof)
        params = km.HKMeansParams(levels=(6, 2), iterations=10, resampling_steps=(1, 1), seed=0, device="cpu")
        return stages.run("hkmeans", [emb], params, prof)
    if kind == "augment":
        if not llm_url:
            raise ValueError("augment needs llm_url (an OpenAI-compatible endpoint)")
        return stages.run("augment", [ing], augment_params(llm_url), prof)
    if kind == "train":
        from storage import datasets

        tok = datasets.latest(root, DATASET, "tokenize")
        packed = stages.run("pack", [tok], pack_params(), prof)
        return stages.run("train", [packed], train_params(), prof)
    if kind == "export":  # tokenize per shard (map), then a global step writing Megatron/nanotron/MDS/HF files
        from tasks.export.params import ExportParams

        params = ExportParams(shuffle=True, validation_fraction=0.25, rows_per_file=8, mds_shard_bytes=4096)
        return stages.section("export", ing, params, prof)
    raise ValueError(f"unknown stage kind {kind!r}; known: {KINDS}")


# ------------------------------------------------------------------------------------------------ LLM endpoint


class _LLMHandler(BaseHTTPRequestHandler):
    """A deterministic OpenAI-compatible chat endpoint: the thinking is a hash of the prompt (no model needed)."""

    seen_keys: list[str] = []

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        type(self).seen_keys.append(self.headers.get("authorization", ""))
        prompt = json.dumps(body["messages"], sort_keys=True)
        content = f"The text is about {hashlib.sha1(prompt.encode()).hexdigest()[:12]}."
        payload = {
            "id": "x", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 6, "total_tokens": len(prompt.split()) + 6},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def start_llm_server() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LLMHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


# ------------------------------------------------------------------------------------------------ kill points


class KillHook:
    """Counts commit points under ``root`` (os.rename/replace/link) and SIGKILLs this process at the n-th one."""

    def __init__(self, root: str, event: str | None = None, n: int = 0, when: str = "before"):
        self.root, self.event, self.n, self.when = os.path.realpath(root), event, n, when
        self.counts: Counter = Counter()
        self.total = 0
        self._orig = {name: getattr(os, name) for name in COMMIT_POINTS}

    def _wrap(self, name: str):
        orig = self._orig[name]

        def hooked(src, dst, *a, **kw):
            if not os.path.realpath(str(dst)).startswith(self.root):
                return orig(src, dst, *a, **kw)
            self.counts[name] += 1
            self.total += 1
            hit = self.event in (name, "any") and (self.counts[name] if self.event == name else self.total) == self.n
            if hit and self.when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            out = orig(src, dst, *a, **kw)
            if hit:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        return hooked

    def __enter__(self):
        for name in COMMIT_POINTS:
            setattr(os, name, self._wrap(name))
        return self

    def __exit__(self, *exc):
        for name, fn in self._orig.items():
            setattr(os, name, fn)


# ------------------------------------------------------------------------------------------------ verification


def committed(root: str) -> dict[str, dict]:
    from storage import datasets

    return {f"{m['dataset']}/{m['stage']}/{m['version']}": m for m in datasets.iter_manifests(root)}


def read_version(manifest: dict):
    """The rows of a committed version, read from exactly the files its manifest lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(os.path.join(manifest["uri"], f["name"])) for f in manifest["files"]]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def row_multiset(table) -> Counter:
    cols = [c for c in table.column_names if c not in VOLATILE]
    return Counter(json.dumps(r, sort_keys=True, default=str) for r in table.select(cols).to_pylist())


def check_manifests(root: str) -> list[str]:
    """Problems with the committed versions under ``root``: listed files missing, row counts that do not add up,
    temporaries listed or left in a committed folder. An empty list means consistent."""
    import pyarrow.parquet as pq

    problems = []
    for key, m in committed(root).items():
        total = 0
        for f in m["files"]:
            path = os.path.join(m["uri"], f["name"])
            if f["name"].startswith("_tmp.") or not os.path.exists(path):
                problems.append(f"{key}: lists {f['name']} (missing or temporary)")
                continue
            rows = pq.ParquetFile(path).metadata.num_rows
            if rows != f["rows"]:
                problems.append(f"{key}: {f['name']} has {rows} rows, manifest says {f['rows']}")
            total += rows
        if total != m["num_rows"]:
            problems.append(f"{key}: files hold {total} rows, manifest num_rows {m['num_rows']}")
        leftovers = [n for n in os.listdir(m["uri"]) if n.startswith("_tmp.")]
        if leftovers:
            problems.append(f"{key}: temporaries left in a committed folder: {leftovers}")
    return problems


def check_catalog(root: str) -> tuple[int, list[str]]:
    """What a reader sees now: every view's row count equals its manifest's num_rows and reads no temporary file."""
    from storage import catalog

    problems = []
    con = catalog.connect(root)
    try:
        rows = con.execute("select dataset, stage, num_rows, files from versions").fetchall()
        latest = {f"{d}__{s}": (n, files) for d, s, n, files in rows}  # one version per (dataset, stage) here
        for view, (n, files) in latest.items():
            if any("/_tmp." in f for f in files):
                problems.append(f"{view}: a view lists a temporary file")
            seen = con.execute(f'select count(*) from "{view}"').fetchone()[0]
            if files and seen != n:
                problems.append(f"{view}: reader saw {seen} rows, manifest says {n}")
    finally:
        con.close()
    return len(rows), problems


def compare_to_reference(root: str, ref_root: str, base_root: str | None) -> dict:
    """Every version the reference run committed must be committed here with the same rows (volatile columns aside).

    Returns counts: versions compared, documents expected, lost and duplicated (by doc_id multiset), and a list of
    problems (an empty list means identical)."""
    import numpy as np

    mine, ref = committed(root), committed(ref_root)
    base = set(committed(base_root)) if base_root else set()
    problems = [f"missing version {k}" for k in sorted(set(ref) - set(mine))]
    problems += [f"unexpected version {k}" for k in sorted(set(mine) - set(ref))]
    out = {"versions": 0, "docs": 0, "lost": 0, "duplicated": 0}
    for key in sorted(set(ref) & set(mine) - base):
        a, b = read_version(mine[key]), read_version(ref[key])
        out["versions"] += 1
        if "doc_id" in b.column_names:
            got, want = Counter(a.column("doc_id").to_pylist()), Counter(b.column("doc_id").to_pylist())
            out["docs"] += sum(want.values())
            out["lost"] += sum((want - got).values())
            out["duplicated"] += sum((got - want).values())
        if "loss" in b.column_names:  # training: the resumed loss curve is the uninterrupted one
            a, b = a.sort_by("step"), b.sort_by("step")
            if a.column("step").to_pylist() != b.column("step").to_pylist():
                problems.append(f"{key}: steps differ")
            elif not np.allclose(a.column("loss").to_numpy(), b.column("loss").to_numpy(), rtol=0, atol=1e-6):
                problems.append(f"{key}: loss curve differs from the uninterrupted run")
            a, b = a.drop_columns(["loss", "grad_norm"]), b.drop_columns(["loss", "grad_norm"])
        if row_multiset(a) != row_multiset(b):
            problems.append(f"{key}: rows differ from the uninterrupted run")
        problems += [f"{key}: {f}" for f in _export_files_differ(mine[key], ref[key])]
    out["problems"] = problems
    return out


def _export_files_differ(mine: dict, ref: dict) -> list[str]:
    """An export's format files (beside its shards) must be the uninterrupted run's, byte for byte; the blend files
    name absolute paths under each root and are left out."""
    if not str(ref.get("stage", "")).startswith("export_"):
        return []
    a, b = Path(mine["uri"]), Path(ref["uri"])
    names = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.suffix != ".parquet"
                   and not p.name.startswith(("_manifest", "data_path_", "streams_", "datasets_")))
    names += sorted(str(p.relative_to(b)) for p in (b / "hf").rglob("*.parquet")) if (b / "hf").is_dir() else []
    def body(p: Path) -> bytes:  # the card names the git commit of the run, which others' commits may move
        data = p.read_bytes()
        return b"\n".join(x for x in data.split(b"\n") if not x.startswith(b"- code: git")) if p.name == "README.md" \
            else data

    return [f"export file {n} differs from the uninterrupted run" for n in names
            if not (a / n).is_file() or body(a / n) != body(b / n)]


def stray_temporaries(root: str) -> list[str]:
    """Temporary files anywhere under root (shards, manifests, checkpoints, metrics) once everything is committed."""
    found = []
    for dirpath, _, names in os.walk(root):
        found += [os.path.join(dirpath, n) for n in names if n.startswith("_tmp.") or n.endswith(".tmp")]
    return found


# ------------------------------------------------------------------------------------------------ zygote


class Zygote:
    """Process side of ``serve``: one JSON command per stdin line, one JSON answer per stdout line."""

    def __init__(self, inputs: Path, work: Path, llm_url: str | None):
        self.inputs, self.work, self.llm_url = inputs, work, llm_url
        self.base = str(work / "base")
        self.refs: dict[str, dict] = {}

    def prepare(self, kind: str) -> dict:
        """The uninterrupted reference run of a kind, in this process: it warms every cache the children inherit."""
        if kind not in self.refs:
            import shutil

            root = str(self.work / f"ref-{kind}")
            if kind != "ingest":
                shutil.copytree(self.base, root, dirs_exist_ok=True)
            with KillHook(root) as hook:
                final = run_kind(kind, root, self.inputs, self.llm_url)
            # time a second, warm run (what a forked child costs): delay kills are drawn over that span
            again = str(self.work / f"timing-{kind}")
            if kind != "ingest":
                shutil.copytree(self.base, again, dirs_exist_ok=True)
            t0 = time.perf_counter()
            run_kind(kind, again, self.inputs, self.llm_url)
            seconds = time.perf_counter() - t0
            shutil.rmtree(again)
            self.refs[kind] = {"root": root, "final": str(final), "seconds": seconds,
                               "events": dict(hook.counts), "total_events": hook.total}
        return self.refs[kind]

    def spawn(self, cmd: dict) -> int:
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:  # child: never return into the command loop
            log = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            if cmd.get("start_file"):  # a barrier so racing children start together
                while not os.path.exists(cmd["start_file"]):
                    time.sleep(0.001)
            kill = cmd.get("kill") or {}
            with KillHook(cmd["root"], kill.get("event"), kill.get("n", 0), kill.get("when", "before")):
                final = run_kind(cmd["kind"], cmd["root"], self.inputs, self.llm_url)
            from storage import datasets

            manifest = datasets.read_manifest(final)
            Path(cmd["result"]).write_text(json.dumps({"final": str(final), "created_at": manifest["created_at"]}))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    @staticmethod
    def wait(pid: int) -> dict:
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return {"pid": pid, "signal": os.WTERMSIG(status), "code": None}
        return {"pid": pid, "signal": None, "code": os.WEXITSTATUS(status)}

    def serve(self) -> None:
        import torch

        torch.set_num_threads(1)  # forked children must not inherit an OpenMP pool
        Path(self.base).parent.mkdir(parents=True, exist_ok=True)
        prepare_base(self.base, self.inputs)
        _reply({"ready": True, "base": self.base, "threads": threading.active_count()})
        for line in sys.stdin:
            cmd = json.loads(line)
            try:
                op = cmd["op"]
                if op == "prepare":
                    _reply(self.prepare(cmd["kind"]))
                elif op == "spawn":
                    _reply({"pid": self.spawn(cmd)})
                elif op == "wait":
                    _reply(self.wait(cmd["pid"]))
                elif op == "exit":
                    _reply({"bye": True})
                    return
                else:
                    _reply({"error": f"unknown op {op!r}"})
            except Exception as e:
                _reply({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


_PROTO = sys.stdout


def _reply(obj: dict) -> None:
    _PROTO.write(json.dumps(obj) + "\n")
    _PROTO.flush()


class ZygoteClient:
    """Test side: starts ``python -m tests.reliability._harness serve`` and talks to it."""

    def __init__(self, work: Path, llm_url: str | None, timeout: float = 600):
        import subprocess

        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.stderr = open(work / "zygote.log", "w")
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "QUARRY_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)})
        cmd = [sys.executable, "-m", "tests.reliability._harness", "serve", "--work", str(work),
               "--inputs", str(work / "inputs")]
        if llm_url:
            cmd += ["--llm-url", llm_url]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        self.hello = self._read()
        self.base = self.hello["base"]
        self.inputs = work / "inputs"

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.flush()
            tail = (self.work / "zygote.log").read_text()[-3000:]
            raise RuntimeError(f"fault-injection zygote died (exit {self.proc.poll()}):\n{tail}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"zygote: {out['error']}\n{out.get('traceback', '')}")
        return out

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def prepare(self, kind: str) -> dict:
        return self.call(op="prepare", kind=kind)

    def spawn(self, kind: str, root: str, *, kill: dict | None = None, start_file: str | None = None) -> tuple[int, Path]:
        result = Path(root + f".result-{time.monotonic_ns()}.json")
        pid = self.call(op="spawn", kind=kind, root=root, kill=kill, start_file=start_file,
                        log=str(self.work / "children.log"), result=str(result))["pid"]
        return pid, result

    def wait(self, pid: int) -> dict:
        return self.call(op="wait", pid=pid)

    def run(self, kind: str, root: str, *, kill: dict | None = None, delay: float | None = None) -> dict:
        """One child run; with ``delay`` the test SIGKILLs it after that many seconds (if it is still running)."""
        pid, result = self.spawn(kind, root, kill=kill)
        if delay is not None:
            time.sleep(delay)
            try:
                os.kill(pid, signal.SIGKILL)  # the zygote has not reaped it yet, so the pid cannot be reused
            except ProcessLookupError:
                pass
        status = self.wait(pid)
        # a child killed while it wrote its result leaves a partial file: only a clean exit has a result
        ok = status["signal"] is None and status["code"] == 0 and result.exists()
        status["result"] = json.loads(result.read_text()) if ok else None
        return status

    def close(self) -> None:
        try:
            self.call(op="exit")
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        self.stderr.close()

    def child_log_tail(self) -> str:
        path = self.work / "children.log"
        return path.read_text()[-4000:] if path.exists() else ""


# ------------------------------------------------------------------------------------------------ Ray worker death


def die_once(batch, params):
    """A stage function whose worker SIGKILLs itself the first time any shard reaches it (marker file)."""
    marker = Path(params["marker"])
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one caller wins the right to die
    except FileExistsError:
        return batch
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    return batch  # never reached


class DieOnce:
    """The same as a callable class (a Ray Data actor): the actor process dies on its first batch."""

    def __init__(self, params):
        self.params = params

    def __call__(self, batch):
        return die_once(batch, self.params)


def main(argv: list[str] | None = None) -> None:
    import argparse

    _env()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=(*KINDS, "serve"))
    ap.add_argument("root", nargs="?", help="storage root (a run of one kind)")
    ap.add_argument("--inputs", default=None, help="folder for the fixed input files")
    ap.add_argument("--work", default=None, help="serve: working folder")
    ap.add_argument("--llm-url", default=None, help="OpenAI-compatible endpoint for augment (default: a local stub)")
    args = ap.parse_args(argv)
    if args.kind == "serve":
        global _PROTO
        _PROTO = os.fdopen(os.dup(1), "w")  # the protocol channel; stray prints go to stderr
        os.dup2(2, 1)
        Zygote(Path(args.inputs), Path(args.work), args.llm_url).serve()
        return
    if not args.root:
        ap.error("root is required")
    inputs = Path(args.inputs or Path(args.root) / "_inputs")
    llm = args.llm_url
    if args.kind == "augment" and llm is None:
        _, llm = start_llm_server()
    if args.kind != "ingest":
        prepare_base(args.root, inputs)
    ref = run_kind(args.kind, args.root, inputs, llm)
    print(ref)


if __name__ == "__main__":
    main()
