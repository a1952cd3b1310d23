"""The dashboard tells the truth: every panel's numbers equal `quarry sql` over the stage the panel names.

The store is real up to the kept documents (ingest with a broken file, held-out split, RPv2 signals, MinHash, the
Gopher filter, exact and fuzzy dedup with planted duplicates, kept) and carries the later stages' output contracts
on the real doc ids (k-means, balance, curated, augment, train, evaluate). Each panel is checked twice against
independent SQL (run through the CLI, over the named stage's view): from its HTML table as the app renders it
(fast), and as a real headless Chromium shows it on the page. A panel reading the wrong stage fails the check: the
last test feeds it the bugs this dashboard had (a funnel over the last stage with a drop_reason, a yield joined to
every parent, histograms over the curated documents).

Chromium is driven over the DevTools protocol (a websocket), because Streamlit renders after a websocket round trip
that `--dump-dom` / `--screenshot` with `--virtual-time-budget` do not wait for: we poll the page text until the
panels are there, then read the tables and take the screenshot (docs/dashboard.png).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import html.parser
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

import quarry_cli
import tasks.dedup.exact as exact_mod
import tasks.dedup.minhash as minhash_mod
import tasks.select.selection as select_mod
from dashboards import app
from ray_cluster import runtime
from storage import catalog, datasets
from tasks.ingest.sources import IngestSource
from tests import stages
from tests.conftest import save_screenshot, shared_path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERIAL = runtime.Profile(name="serial", engine="serial")
DATASET = "dash"

# every panel's DOM: its Streamlit container (key panel_<name>), its table, and the lineage graph's size
_EXTRACT_JS = """
(() => {
  const out = {};
  for (const box of document.querySelectorAll('[class*="st-key-panel_"]')) {
    const key = [...box.classList].find(c => c.startsWith('st-key-panel_'));
    const table = box.querySelector('table[data-panel]');
    const svg = [...box.querySelectorAll('svg')].find(s => s.querySelector('g.node'));
    const label = svg ? svg.querySelector('g.node text') : null;
    out[key.slice('st-key-panel_'.length)] = {
      text: box.innerText,
      head: table ? [...table.tHead.rows[0].cells].map(c => c.innerText.trim()) : null,
      rows: table ? [...table.tBodies[0].rows].map(r => [...r.cells].map(c => c.innerText.trim())) : null,
      links: table ? [...table.querySelectorAll('a')].map(a => a.href) : [],
      graph: svg ? {nodes: svg.querySelectorAll('g.node').length, edges: svg.querySelectorAll('g.edge').length,
                    width: svg.getBoundingClientRect().width, height: svg.getBoundingClientRect().height,
                    label_px: label ? label.getBoundingClientRect().height : 0} : null,
    };
  }
  return JSON.stringify(out);
})()
"""


# ----------------------------------------------------------------------------------------------- a headless browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Headless Chromium in its own process session, driven through the DevTools protocol."""

    def __init__(self, width: int = 1400, height: int = 900):
        if not os.path.exists(CHROMIUM):
            pytest.skip("chromium not installed (apt-get install -y chromium; the Makefile/CI set-up does it)")
        self.profile = tempfile.mkdtemp(prefix="qchr-")
        self.width, self.height = width, height
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws_url = pages[0]["webSocketDebuggerUrl"]

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)

    def render(
        self,
        url: str,
        expect: list[str],
        screenshot: Path,
        timeout: float = 120,
        full_height: int | None = None,
        extract: str | None = None,
    ) -> str:
        """Open ``url``, wait until the page text holds every ``expect`` string, screenshot it; returns the text, or
        what the ``extract`` expression evaluated to (a string) once the page is complete."""
        return asyncio.run(self._render(url, expect, screenshot, timeout, full_height, extract))

    async def _render(self, url, expect, screenshot, timeout, full_height, extract) -> str:
        import websockets

        async with websockets.connect(self.ws_url, max_size=64 * 2**20) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params):
                i = next(ids)
                await ws.send(json.dumps({"id": i, "method": method, "params": params}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == i:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg["result"]

            async def evaluate(expression: str) -> str:
                r = await call("Runtime.evaluate", expression=expression)
                return r["result"].get("value", "")

            async def text() -> str:
                return await evaluate("document.body ? document.body.innerText : ''")

            await call("Page.enable")
            await call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            body = ""
            while time.monotonic() < deadline:
                body = await text()
                if all(e in body for e in expect):
                    break
                await asyncio.sleep(1)
            else:
                missing = [e for e in expect if e not in body]
                raise AssertionError(f"page never showed {missing}; it shows:\n{body[:3000]}")
            await asyncio.sleep(3)  # charts draw after their data arrives
            if full_height:
                await call("Emulation.setDeviceMetricsOverride", width=self.width, height=full_height,
                           deviceScaleFactor=1, mobile=False)  # fmt: skip
                await asyncio.sleep(2)
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            return await evaluate(extract) if extract else await text()


# ----------------------------------------------------------------------------------------------- a store with data


def _write(parents: list[datasets.DatasetRef], stage_name: str, table: pa.Table) -> datasets.DatasetRef:
    ref = datasets.derive(parents, stage_name, None, {"rows": table.num_rows})
    datasets.write_table(ref, table, parents=parents)
    return ref


def _inputs() -> tuple[Path, Path]:
    """A file with one good and one broken line, and near-duplicates of six C4 documents (one word changed, another
    URL: exact dedup cannot see them, MinHash does). They live at a fixed path: a doc id hashes its file's path, and
    the held-out split hashes the doc id, so a path that changed per run would make which duplicates survive random."""
    folder = Path(tempfile.gettempdir()) / "quarry-test-dashboard-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    lines = shared_path("web", "c4_sample", "c4_sample.jsonl").read_text().splitlines()[10:16]
    near = []
    for i, line in enumerate(lines):
        words = json.loads(line)["text"].split(" ")
        words[len(words) // 2] = "zebra"
        near.append(json.dumps({"text": " ".join(words), "url": f"http://near.example/{i}"}))
    arc = [json.loads(x) for x in shared_path("eval", "gauntlet", "arc_easy.jsonl").read_text().splitlines()[:2]]
    planted = []  # two C4 documents, each with a real ARC-Easy question and its answer: decontaminate drops them
    for i, (line, item) in enumerate(zip(shared_path("web", "c4_sample", "c4_sample.jsonl").read_text()
                                         .splitlines()[60:62], arc, strict=True)):  # fmt: skip
        text = json.loads(line)["text"] + f" {item['query'].removeprefix('Question: ')} {item['choices'][item['gold']]}"
        planted.append(json.dumps({"text": text, "url": f"http://leak.example/{i}"}))
    spanish = [  # web documents in Spanish with e-mails and phones: a domain with PII in two languages, so a panel that
        # joined per-domain PII totals onto every language row would count them twice
        "La biblioteca municipal abre sus puertas de lunes a viernes por la mañana y por la tarde, y los sábados "
        "organiza talleres de lectura para niños y adultos. Para reservar una sala de estudio, escriba a "
        f"reservas{i}@biblioteca-ejemplo.es o llame al +34 91 555 01 2{i}. Los socios pueden llevarse hasta seis libros "
        "durante tres semanas, renovar el préstamo desde la página web y consultar el catálogo completo de la red de "
        "bibliotecas de la ciudad, que incluye revistas, películas y música de todos los géneros y épocas."
        for i in range(4)
    ]
    files = {
        "spanish_pii.jsonl": "\n".join(json.dumps({"text": t, "url": f"http://es.example/{i}"})
                                       for i, t in enumerate(spanish)) + "\n",
        "broken.jsonl": '{"text": "a fine document about rivers and their deltas", "url": "http://x.org/1"}\n{not json\n',
        "near_dups.jsonl": "\n".join(near) + "\n",
        "contaminated.jsonl": "\n".join(planted) + "\n",
    }  # fmt: skip
    for name, text in files.items():
        path = folder / name
        if not path.exists() or path.read_text() != text:  # another session may be reading it: replace atomically
            tmp = folder / f".{name}.{os.getpid()}"
            tmp.write_text(text)
            tmp.replace(path)
    return (folder / "broken.jsonl", folder / "near_dups.jsonl", folder / "contaminated.jsonl",
            folder / "spanish_pii.jsonl")


def _subdoc_and_quality_score(root: Path, train, signals, fuzzy) -> None:
    """Line dedup and quality score as side branches; sentence dedup after fuzzy dedup (the chain's last filter)."""
    from tasks.dedup.line import LineDedupParams
    from tasks.dedup.sentence import SentenceDedupParams
    from tasks.signals.quality_classifier import QualityClassifierParams, QualityScoreParams

    stages.section("line_dedup", train, LineDedupParams(), SERIAL)
    last = stages.section("sentence_dedup", fuzzy, SentenceDedupParams(), SERIAL)
    qc = QualityClassifierParams(
        positive=(IngestSource(path=str(shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")), domain="wikipedia",
                               text_field="eng_Latn", limit=150),),
        negative=(IngestSource(path=str(shared_path("web", "c4_sample", "c4_sample.jsonl")), domain="web", limit=150),))
    sets = [stages.ingest(srcs, root=str(root), dataset=f"{DATASET}_qc_{role}", docs_per_shard=100, profile=SERIAL)
            for role, srcs in (("positive", qc.positive), ("negative", qc.negative))]
    model = stages.run("quality_classifier", sets, qc, SERIAL, dataset=DATASET)
    stages.run("quality_score", [signals, model], QualityScoreParams(), SERIAL)
    return last


def _build_store(root: Path) -> dict:
    from tasks.filter.decontaminate import DecontaminateParams
    from tasks.filter.pii import PiiParams
    from tasks.filter.quality_filter import QualityFilterParams
    from tasks.signals.language_id import LanguageIdParams
    from tasks.signals.quality_signals import QualitySignalsParams

    bad, near, leaked, spanish = _inputs()
    sources = [
        IngestSource(path=str(shared_path("web", "c4_sample", "c4_sample.jsonl")), domain="web", limit=40),
        IngestSource(path=str(shared_path("gold", "c4_docs.jsonl")), domain="web", limit=8),  # same URLs: exact dups
        IngestSource(path=str(near), domain="web"),
        IngestSource(path=str(leaked), domain="web"),
        IngestSource(path=str(spanish), domain="web"),
        IngestSource(path=str(shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")), domain="wikipedia",
                     text_field="eng_Latn", limit=20),
        IngestSource(path=str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), domain="arxiv",
                     text_field="abstract", limit=20),
        IngestSource(path=str(shared_path("domains", "github_code", "github_code_sample.jsonl")), domain="code",
                     limit=15),  # the Gopher rules drop code: only the signals stage still has it
        IngestSource(path=str(bad), domain="web"),
    ]  # fmt: skip
    docs = stages.ingest(sources, root=str(root), dataset=DATASET, docs_per_shard=40, profile=SERIAL)
    split = select_mod.HeldoutParams(fraction=0.1, seed=0)
    stages.run("heldout", [docs], dataclasses.replace(split, side="heldout"), SERIAL)
    train = stages.run("train_split", [docs], split, SERIAL)
    ided = stages.run("language_id", [train], LanguageIdParams(), SERIAL)
    signals = stages.run("quality_signals", [ided], QualitySignalsParams(), SERIAL)
    mh = stages.run("minhash_signatures", [signals], minhash_mod.MinhashSignaturesParams(), SERIAL)
    filtered = stages.run("quality_filter", [mh], QualityFilterParams(rules="gopher"), SERIAL)
    redacted = stages.run("pii", [filtered], PiiParams(), SERIAL)
    decont = DecontaminateParams(eval_dir=str(shared_path("eval")), tasks=("arc_easy", "copa"),
                                 cache_dir=str(root / "cache"))
    clean = stages.run("decontaminate", [redacted], decont, SERIAL)
    exact = stages.section("exact_dedup", clean, exact_mod.ExactDedupParams(), SERIAL)
    fuzzy = stages.section("minhash_dedup", exact, minhash_mod.MinhashDedupParams(similarity=0.8), SERIAL)
    last = _subdoc_and_quality_score(root, train, signals, fuzzy)
    kept = stages.run("kept", [last], select_mod.KeptParams(), SERIAL)
    ids = datasets.read_table(kept, columns=["doc_id", "domain", "text"])
    n = ids.num_rows
    # the later stages' output contracts on the real kept doc_ids: k-means assignments, a balanced sample with
    # copies, the curated documents, generated documents, a loss curve and eval scores
    hk = _write([kept], "hkmeans", pa.table({"doc_id": ids["doc_id"], "km_l1": [i % 4 if i % 5 else 0 for i in range(n)]}))
    pick = ids.slice(0, 24)
    bal = _write([hk, kept], "balance", pa.table({
        "doc_id": pick["doc_id"], "km_l1": [i % 4 for i in range(24)], "bal_copies": [1 + (i % 4 == 0) for i in range(24)]}))  # fmt: skip
    curated = _write([kept, bal], "curated", pa.table({
        "doc_id": pa.concat_arrays([pick["doc_id"].combine_chunks(), pick["doc_id"].combine_chunks()[:6]]),
        "domain": pa.concat_arrays([pick["domain"].combine_chunks(), pick["domain"].combine_chunks()[:6]])}))  # fmt: skip
    aug = _write([curated], "augment", pa.table({
        "aug_source_id": ids["doc_id"][:10], "domain": ids["domain"][:10],
        "text": [f"<think>step {i}</think> " + t for i, t in enumerate(ids["text"][:10].to_pylist())]}))  # fmt: skip
    with datasets.using_run(flow="train", flow_run_id="0f0e", flow_run_name="train-dash-20260102-030405",
                            run_url="http://127.0.0.1:4200/runs/flow-run/0f0e"):  # fmt: skip
        trained = _write([aug], "train", pa.table({
            "step": list(range(1, 31)), "loss": [8.0 / (1 + 0.2 * s) for s in range(30)], "lr": [1e-3] * 30,
            "tokens_per_s": [5000.0] * 30}))  # fmt: skip
    stages.run("eval_contamination", [trained, kept], decont, SERIAL)
    _write([trained], "evaluate", pa.table({
        "model_version": ["m1"] * 4 + ["m2"] * 4, "task": ["arc_easy", "arc_easy", "heldout/web", "heldout/web"] * 2,
        "metric": ["acc", "acc_norm", "bits_per_byte", "perplexity"] * 2,
        "value": [0.31, 0.30, 1.9, 40.0, 0.35, 0.33, 1.7, 33.0], "stderr": [0.02] * 8, "n": [100] * 8,
        # the provenance every evaluate row carries (Biderman et al. 2024), as tasks/evaluate/harness.py writes it
        "harness_version": ["lm_eval==0.4.x"] * 8, "task_config_hash": ["c0ffee"] * 8, "eval_file_hash": ["f00d"] * 8,
        "num_fewshot": [0] * 8, "fewshot_seed": [1234] * 8, "batch_size": [16] * 8, "dtype": ["float32"] * 8,
        "device": ["cpu"] * 8}))  # fmt: skip
    # every example's score, as the evaluate stage writes it beside its table: arc_easy has 4 choices (chance 0.25),
    # one item 3 (1/3), so its chance is their mean; held-out perplexity has no chance (null)
    _write([trained], "evaluate_examples", pa.table({
        "task": ["arc_easy"] * 4 + ["heldout/web"], "metric": ["acc", "acc", "acc_norm", "acc_norm", "bits_per_byte"],
        "example": ["0", "1", "0", "1", "d"], "value": [1.0, 0.0, 1.0, 0.0, 1.9], "weight": [1.0] * 4 + [100.0],
        "chance": [0.25, 1 / 3, 0.25, 1 / 3, None]}))  # fmt: skip
    return {"docs": docs, "signals": signals, "kept": kept}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash") / "store"
    return str(root), _build_store(root)


# ----------------------------------------------------------------------------------------------- the checks


def _sql(root: str):
    """``quarry sql -f json`` through the CLI: the numbers a user gets for the same question (memoized: the store
    does not change within this module, and every check asks the same questions)."""
    runner = CliRunner()
    seen: dict[str, list[dict]] = {}

    def run(query: str) -> list[dict]:
        if query not in seen:
            out = runner.invoke(quarry_cli.app, ["sql", "--root", root, "-f", "json", query], catch_exceptions=False)
            assert out.exit_code == 0, out.output
            seen[query] = [json.loads(line) for line in out.output.splitlines() if line.strip()]
        return seen[query]

    return run


@pytest.fixture(scope="module")
def sql(store):
    return _sql(store[0])


def _num(text: str):
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


# columns that hold names, not numbers (a version such as 205028050888 is all digits)
_TEXT_COLUMNS = {"version", "parents", "parent", "child", "input", "side_inputs", "stage", "step", "domain", "source",
                 "reason", "signal", "phase", "km_l1", "task", "metric", "model_version", "run", "deployment",
                 "ray_job_id", "recipe_hash", "git_commit", "created_at", "example_source", "lang"}  # fmt: skip


def _rows(panel: dict) -> list[dict]:
    """A rendered table as dicts of numbers (where a cell is one) and strings."""
    out = []
    for cells in panel["rows"]:
        row = {}
        for name, cell in zip(panel["head"], cells, strict=True):
            try:
                row[name] = cell if name in _TEXT_COLUMNS else _num(cell)
            except ValueError:
                row[name] = cell
        out.append(row)
    return out


def check_panels(panels: dict[str, dict], sql) -> None:
    """Every panel's rendered rows against SQL over the stage it must read (``dash__<stage>``)."""
    v = DATASET

    def by(rows, *keys, value):
        return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r[value] for r in rows}

    # versions: one row per committed version
    want = {r["version"]: r["num_rows"] for r in sql(f"select version, num_rows from versions where dataset = '{v}'")}
    assert by(_rows(panels["versions"]), "version", value="num_rows") == want
    runs = sql(f"select flow_run_name, run_url from versions where dataset = '{v}' and run_url is not null")
    assert runs and {r["run_url"] for r in runs} <= set(panels["versions"]["links"])  # each links to its run
    assert {r["flow_run_name"] for r in runs} <= {r["run"] for r in _rows(panels["versions"])}

    # lineage: the parent -> child edges of the manifests
    edges = {(r["parent"], r["child"]) for r in sql(
        f"select unnest(parents) parent, ref child from versions where dataset = '{v}'")}  # fmt: skip
    shown = {(r["parent"], r["child"]) for r in _rows(panels["lineage"]) if r["parent"]}
    assert shown == edges

    # stage yield: one row per stage; rows out = the stage's view, rows in = its main input (first parent) pinned
    yields = _rows(panels["stage_yield"])
    assert len(yields) == len({r["stage"] for r in yields})
    stages = sorted(r["stage"] for r in yields)
    out_n = sql(" union all ".join(f"select '{s}' s, count(*) n from {v}__{s}" for s in stages))
    inputs = sorted({r["input"] for r in yields if r["input"]})
    pinned = [i.split("/") for i in inputs]
    in_n = sql(" union all ".join(f"select '{i}' i, count(*) n from \"{d}__{s}@{ver}\"" for i, (d, s, ver) in
                                  zip(inputs, pinned, strict=True)))  # fmt: skip
    assert {r["stage"]: r["rows_out"] for r in yields} == by(out_n, "s", value="n")
    assert {r["stage"]: r["rows_in"] for r in yields if r["input"]} == {
        r["stage"]: by(in_n, "i", value="n")[r["input"]] for r in yields if r["input"]}

    # documents per domain and input file
    ingest = sql(f"select domain, regexp_extract(source, '[^/]+$') src, count(*) n from {v}__ingest group by all")
    assert by(_rows(panels["ingest_domains"]), "domain", "source", value="documents") == by(
        ingest, "domain", "src", value="n")  # fmt: skip

    # quarantined records by reason
    q = sql(f"select reason, count(*) n from {v}__ingest_quarantine group by all")
    assert by(_rows(panels["quarantine"]), "reason", value="records") == by(q, "reason", value="n")

    # sub-document dedup: units removed per stage and domain, each from its own stage's view
    sub = sql(f"select 'line_dedup' stage, domain, sum(ld_lines_removed)::BIGINT n from {v}__line_dedup group by all "
              f"union all select 'sentence_dedup', domain, sum(sn_sentences_removed)::BIGINT from {v}__sentence_dedup "
              "group by all")
    assert by(_rows(panels["subdoc_dedup"]), "stage", "domain", value="units_removed") == by(
        sub, "stage", "domain", value="n")  # fmt: skip
    assert sum(r["n"] for r in sub) > 0  # the planted C4 copies lose their lines
    # quality score: documents per domain summed over the buckets
    scored: dict[str, int] = {}
    for r in _rows(panels["quality_score"]):
        scored[r["domain"]] = scored.get(r["domain"], 0) + r["documents"]
    qs = sql(f"select domain, count(*) n from {v}__quality_score where quality_score is not null group by 1")
    assert scored == by(qs, "domain", value="n")

    # the funnel, step by step and per domain, against each stage's own view
    funnel = _rows(panels["filter_funnel"])
    steps_ = {r["step"]: r for r in funnel}
    domains = [r["domain"] for r in sql(f"select distinct domain from {v}__ingest order by 1")]
    read = {r["domain"]: r["n"] for r in sql(
        f"select domain, count(*) n from (select domain, source from {v}__ingest union all select i.domain, "
        f"q.source from {v}__ingest_quarantine q join (select distinct source, domain from {v}__ingest) i "
        "using (source)) group by 1")}  # fmt: skip
    assert {d: steps_["read"][d] for d in domains} == read
    assert steps_["quarantine"]["removed"] == sql(f"select count(*) n from {v}__ingest_quarantine")[0]["n"]
    assert steps_["held out"]["removed"] == sql(f"select count(*) n from {v}__heldout")[0]["n"]
    # every (stage that dropped, reason) of the last filter's view is one step, under that stage, with its count
    reasons = sql(f"select drop_stage s, drop_reason r, count(*) n from {v}__sentence_dedup "
                  "where drop_reason is not null group by all")  # fmt: skip
    assert {(r["s"], r["r"]): r["n"] for r in reasons} == {
        (r["stage"], s): r["removed"] for s, r in steps_.items()
        if r["stage"] in ("quality_filter", "pii", "decontaminate", "exact_dedup", "minhash_dedup", "sentence_dedup")
        and not s.endswith(": none")}  # fmt: skip
    assert {r["r"]: r["n"] for r in reasons}.get("decontam_arc_easy") == 2  # the planted ARC items, in the funnel
    assert steps_["decontam_arc_easy"]["stage"] == "decontaminate"
    # the stage each row names is the one whose reasons it gives (the prefixes the funnel used to guess from)
    prefixes = {"ed_": "exact_dedup", "mh_": "minhash_dedup", "decontam_": "decontaminate", "pii_": "pii",
                "sn_": "sentence_dedup"}  # fmt: skip
    for r in reasons:
        assert r["s"] == next((s for p, s in prefixes.items() if r["r"].startswith(p)), "quality_filter"), r
    rules = {r["r"] for r in reasons if r["s"] == "quality_filter"}
    assert len(rules) >= 3 and {"ed_url_duplicate", "mh_duplicate"} <= {r["r"] for r in reasons}
    order = [r["stage"] for r in funnel]
    assert order.index("exact_dedup") > max(i for i, s in enumerate(order) if s == "quality_filter")
    assert order.index("minhash_dedup") > order.index("exact_dedup")
    kept = {r["domain"]: r["n"] for r in sql(f"select domain, count(*) n from {v}__kept group by 1")}
    assert {d: steps_["kept"][d] for d in domains} == {d: kept.get(d, 0) for d in domains}
    assert steps_["kept"]["remaining"] == sum(kept.values()) < steps_["read"]["remaining"]
    assert steps_["curated"]["remaining"] == sql(f"select count(*) n from {v}__curated")[0]["n"]

    # signal histograms over the signals stage: every scored document once per signal, every domain (code too)
    hist = [r for r in _rows(panels["signal_histograms"]) if r["signal"] == "word_count"]
    scored = {r["domain"]: r["n"] for r in sql(f"select domain, count(*) n from {v}__quality_signals group by 1")}
    totals: dict[str, int] = {}
    for r in hist:
        totals[r["domain"]] = totals.get(r["domain"], 0) + r["documents"]
    assert totals == scored and "code" in totals

    # fuzzy-dedup clusters of the minhash_dedup stage
    clusters = sql(f"select mh_cluster_size s, count(distinct mh_cluster_id) c, count(*) d from {v}__minhash_dedup "
                   "group by 1")  # fmt: skip
    assert {(r["cluster_size"], r["clusters"], r["documents"]) for r in _rows(panels["dedup_clusters"])} == {
        (r["s"], r["c"], r["d"]) for r in clusters}
    assert any(r["s"] > 1 for r in clusters)  # the planted near-duplicates

    # k-means: hkmeans assignments before, the balanced sample with its copies after
    bal = _rows(panels["cluster_balance"])
    before = sql(f"select km_l1::varchar k, count(*) n from {v}__hkmeans group by 1")
    after = sql(f"select km_l1::varchar k, sum(bal_copies)::bigint n from {v}__balance group by 1")
    assert {str(r["km_l1"]): r["documents"] for r in bal if r["phase"] == "before"} == by(before, "k", value="n")
    assert {str(r["km_l1"]): r["documents"] for r in bal if r["phase"] == "after"} == by(after, "k", value="n")

    gen = sql(f"select domain, count(*) n from {v}__augment group by 1")
    assert by(_rows(panels["tpt_generation"]), "domain", value="generated") == by(gen, "domain", value="n")

    loss = sql(f"select step, loss from {v}__train order by step")
    assert [(int(r["step"]), pytest.approx(r["loss"], rel=1e-5)) for r in _rows(panels["training_loss"])] == [
        (r["step"], r["loss"]) for r in loss]  # fmt: skip

    scores = sql(f"select metric, task, model_version m, round(value, 4) v from {v}__evaluate")
    assert sorted((r["metric"], r["task"], r["model_version"], r["value"]) for r in _rows(panels["eval_scores"])) == sorted(
        (r["metric"], r["task"], r["m"], r["v"]) for r in scores)  # fmt: skip
    # eval contamination: per task, items found in the model's training documents
    cont = sql(f"select task, model_version m, items, contaminated c from {v}__eval_contamination")
    assert {(r["task"], r["model_version"]): (r["items"], r["contaminated"]) for r in _rows(panels["eval_contamination"])} \
        == {(r["task"], r["m"]): (r["items"], r["c"]) for r in cont}  # fmt: skip
    assert {r["task"]: r["c"] for r in cont} == {"arc_easy": 0, "copa": 0}  # dropped before kept: not trained on

    # languages and PII per (domain, language): each document's PII under its own language, so every column sums
    # to the pii stage's totals (a join of per-domain totals onto language rows counts a domain's PII once per row)
    pii_rows = _rows(panels["pii_language"])
    per_lang = sql(f"select l.domain, coalesce(l.lang, '(none)') lang, count(*) documents, sum(p.pii_email)::bigint "
                   f"emails, sum(p.pii_ip)::bigint ips, sum(p.pii_phone)::bigint phones, sum(p.pii_secret)::bigint "
                   f"secrets from {v}__language_id l left join {v}__pii p using (doc_id) group by all")  # fmt: skip
    kinds = ("documents", "emails", "ips", "phones", "secrets")
    want = {(r["domain"], r["lang"]): tuple(r[k] for k in kinds) for r in per_lang}
    assert pii_rows and all(want[(r["domain"], r["lang"])] == tuple(r[k] for k in kinds) for r in pii_rows
                            if r["lang"] != "(other)")  # fmt: skip
    totals = sql(f"select count(*) documents, sum(pii_email)::bigint emails, sum(pii_ip)::bigint ips, "
                 f"sum(pii_phone)::bigint phones, sum(pii_secret)::bigint secrets from {v}__pii")[0]  # fmt: skip
    assert {k: sum(r[k] or 0 for r in pii_rows) for k in kinds} == totals
    two = [d for d in {r["domain"] for r in pii_rows} if sum(r["domain"] == d for r in pii_rows) > 1]
    assert "web" in two and want[("web", "es")][1] > 0  # the planted Spanish e-mails: a domain with PII in two languages
    comparison = {(r["model_version"], r["task"]): r for r in _rows(panels["experiment_comparison"])}
    acc = sql(f"select model_version, task, value from {v}__evaluate where metric = 'acc'")
    for r in acc:
        assert comparison[(r["model_version"], r["task"])]["acc"] == pytest.approx(r["value"])


def _panels_as_rendered(con, panels: list[app.Panel], views) -> dict[str, dict]:
    """Each panel's table as the app renders it (its HTML), parsed back into header and cells."""
    out = {}
    for p in panels:
        result = app.run_panel(con, p, DATASET, views)
        if result.table is None:
            out[p.name] = {"head": None, "rows": None, "links": [], "text": result.message}
            continue
        parser = _TableParser()
        parser.feed(app.html_table(p.name, result.table))
        out[p.name] = {"head": parser.head, "rows": parser.rows, "links": parser.links,
                       "text": app.reads_caption(app.resolve(p.sql, DATASET, views), views)}  # fmt: skip
    return out


class _TableParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.head, self.rows, self.links, self._cell, self._in = [], [], [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs)["href"])
        elif tag in ("th", "td"):
            self._cell = ""
        elif tag == "tr" and self._in == "tbody":
            self.rows.append([])
        elif tag in ("thead", "tbody"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            (self.head if tag == "th" else self.rows[-1]).append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


# ----------------------------------------------------------------------------------------------- tests


def test_every_panel_file_has_a_title_a_chart_and_a_no_data_message():
    panels = app.load_panels()
    names = {p.name for p in panels}
    assert {"versions", "lineage", "stage_yield", "filter_funnel", "signal_histograms", "dedup_clusters",
            "cluster_balance", "tpt_generation", "training_loss", "eval_scores", "experiment_comparison",
            "eval_contamination", "pii_language", "experiment_verdicts", "scaling_fit"} <= names  # fmt: skip
    for p in panels:
        assert p.title != p.name and p.empty.startswith("run ") and p.chart in ("table", "bar", "line", "point", "graph")
        assert "{last:" not in p.sql and "{first:" not in p.sql  # panels name their stage, they do not guess it


def test_panels_without_their_tables_say_which_flow_to_run(tmp_path):
    root = tmp_path / "store"
    docs = stages.ingest(
        [IngestSource(path=str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), domain="arxiv",
                      text_field="abstract", limit=5)],
        root=str(root), dataset="bare", docs_per_shard=10, profile=SERIAL,
    )  # fmt: skip
    con = catalog.connect(str(root), sandbox=True)
    out = {p.name: app.run_panel(con, p, docs.dataset) for p in app.load_panels()}
    assert out["ingest_domains"].table.to_pylist()[0]["documents"] == 5
    for name in ("filter_funnel", "signal_histograms", "dedup_clusters", "training_loss", "eval_scores"):
        assert out[name].table is None and out[name].message.startswith("no data yet: run `quarry run")


def test_every_panel_equals_quarry_sql_over_the_stage_it_names(store, sql):
    root, _ = store
    con = catalog.connect(root, sandbox=True)
    views = app.dataset_views(con, DATASET)
    rendered = _panels_as_rendered(con, app.load_panels(), views)
    check_panels(rendered, sql)
    reads = {name: p["text"] for name, p in rendered.items()}
    assert "dash__sentence_dedup" in reads["filter_funnel"] and "dash__quality_signals" in reads["signal_histograms"]
    assert "dash__minhash_dedup" in reads["dedup_clusters"] and "dash__evaluate" in reads["eval_scores"]


def test_a_panel_reading_the_wrong_stage_fails_the_check(store, sql):
    """The bugs this dashboard had, fed to the same check: each must fail it."""
    root, _ = store
    con = catalog.connect(root, sandbox=True)
    views = app.dataset_views(con, DATASET)
    good = {p.name: p for p in app.load_panels()}
    old_yield = (  # every parent joined: a stage with two parents counted twice
        "WITH edges AS (SELECT ref, unnest(parents) AS parent FROM versions WHERE dataset = '{dataset}')\n"
        "SELECT v.stage, v.version, p.ref AS input, p.num_rows AS rows_in, v.num_rows AS rows_out FROM versions v "
        "LEFT JOIN edges e ON e.ref = v.ref LEFT JOIN versions p ON p.ref = e.parent WHERE v.dataset = '{dataset}' "
        "AND NOT v.stage LIKE '%quarantine'"
    )
    bugs = {
        "filter_funnel": good["filter_funnel"].sql.replace("{view:sentence_dedup|minhash_dedup|exact_dedup|quality_filter}", "{view:kept}"),
        "signal_histograms": good["signal_histograms"].sql.replace("{view:quality_signals}", "{view:kept}"),
        "dedup_clusters": good["dedup_clusters"].sql.replace("{view:minhash_dedup}", "{view:kept}"),
        "stage_yield": old_yield,
        "pii_language": (
            "WITH p AS (SELECT domain, sum(pii_email) AS emails, sum(pii_ip) AS ips, sum(pii_phone) AS phones, "
            "sum(pii_secret) AS secrets FROM {view:pii} GROUP BY 1), l AS (SELECT domain, coalesce(lang, '(none)') "
            "AS lang, count(*) AS documents FROM {view:language_id} GROUP BY 1, 2) "
            "SELECT l.domain, l.lang, l.documents, p.emails, p.ips, p.phones, p.secrets FROM l LEFT JOIN p USING (domain)"
        ),
    }  # fmt: skip
    for name, bad_sql in bugs.items():
        panels = [dataclasses.replace(p, sql=bad_sql) if p.name == name else p for p in good.values()]
        with pytest.raises(AssertionError):
            check_panels(_panels_as_rendered(con, panels, views), sql)


def _specs(root: str) -> dict:
    """Each panel's chart as Vega-Lite (a dict), or the message shown instead of it (a string)."""
    con = catalog.connect(root, sandbox=True)
    views = app.dataset_views(con, DATASET)
    out = {}
    for p in app.load_panels():
        result = app.run_panel(con, p, DATASET, views)
        if result.table is not None:
            chart = app.chart_spec(p, result.table.to_pandas())
            out[p.name] = chart if chart is None or isinstance(chart, str) else chart.to_dict()
    return out


def _values(spec: dict) -> list[dict]:
    return next(iter(spec["datasets"].values()))


def test_charts_plot_what_their_titles_say_on_honest_axes(store, sql):
    root, _ = store
    specs = _specs(root)
    # stage yield: documents in and out of the document stages only (not LSH edges, hashes or training steps)
    plotted = {r["stage"] for r in _values(specs["stage_yield"])}
    text_views = {r["s"] for r in sql("select distinct regexp_replace(table_name, '^dash__', '') s from duckdb_columns() "
                                      "where table_name like 'dash\\_\\_%' escape '\\' and column_name = 'text'")}  # fmt: skip
    assert plotted and plotted <= text_views and {"minhash_edges", "train", "exact_dedup_keepers"}.isdisjoint(plotted)
    assert {r["phase"] for r in _values(specs["stage_yield"])} == {"rows_in", "rows_out"}
    # counts get whole-number ticks
    for name in ("quarantine", "dedup_clusters"):
        assert specs[name]["encoding"]["y"]["axis"] == {"format": "d", "tickMinStep": 1}, name
    # no contaminated item: a sentence, not a plot with one 0.000000 tick
    assert sql(f"select sum(contaminated)::bigint n from {DATASET}__eval_contamination")[0]["n"] == 0
    assert specs["eval_contamination"].startswith("no contamination found")
    # eval scores: one chart per metric on its own scale, perplexity on a log axis, +-1 stderr bars
    charts = {c["title"].split(": ", 1)[1].split(" ")[0]: c for c in specs["eval_scores"]["concat"]}
    assert set(charts) == {r["metric"] for r in sql(f"select distinct metric from {DATASET}__evaluate")}
    for metric, chart in charts.items():
        bars, errors = chart["layer"][:2]
        assert bars["encoding"]["xOffset"]["field"] == "model_version"  # two models side by side, not summed
        assert errors["mark"]["type"] == "errorbar" and errors["encoding"]["y2"]["field"] == "_hi"
        assert (bars["encoding"]["y"].get("scale", {}).get("type") == "log") == (metric == "perplexity")
    rows = next(iter(specs["eval_scores"]["datasets"].values()))
    assert all(r["_hi"] - r["_lo"] == pytest.approx(2 * r["stderr"]) for r in rows)
    # chance: a tick per multiple-choice task at the mean of its examples' 1/choices (the SQL), none for perplexity
    chance = {(r["task"], r["metric"]): round(r["c"], 4) for r in sql(
        f"select task, metric, avg(chance) c from {DATASET}__evaluate_examples where chance > 0 group by all")}
    assert chance == {("arc_easy", "acc"): pytest.approx(0.2917), ("arc_easy", "acc_norm"): pytest.approx(0.2917)}
    eval_rows = [r for d in specs["eval_scores"]["datasets"].values() for r in d]  # one dataset per metric's chart
    assert {(r["task"], r["metric"]): r["chance"] for r in eval_rows if r.get("chance") is not None} == chance
    for metric, chart in charts.items():
        ticks = [layer for layer in chart["layer"] if "tick" in str(layer.get("mark"))]
        assert (len(ticks) == 1 and ticks[0]["encoding"]["y"]["field"] == "chance") == (metric.startswith("acc")), metric
    # the loss chart plots the learning rate its title names, on its own axis
    loss = specs["training_loss"]
    assert [layer["encoding"]["y"]["field"] for layer in loss["layer"]] == ["loss", "lr"]
    assert loss["resolve"]["scale"]["y"] == "independent"
    assert "learning rate" in next(p.title for p in app.load_panels() if p.name == "training_loss").lower()


def test_the_dashboard_hides_streamlits_deploy_button():
    cmd = app.command("/x")
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "minimal"


def test_the_dashboard_connection_cannot_read_other_files_or_write(store):
    root, _ = store
    con = catalog.connect(root, sandbox=True)
    with pytest.raises(Exception, match="(?i)permission|disabled|not allowed"):
        con.sql("select * from read_text('/etc/hostname')").fetchall()
    with pytest.raises(Exception, match="(?i)permission|disabled|not allowed"):
        con.sql(f"copy (select 1) to '{root}/evil.csv'").fetchall()


def test_placeholders_only_accept_dataset_names():
    with pytest.raises(ValueError, match="dataset name"):
        app.resolve("select 1", "x'; drop table versions; --", {})


def test_table_cells_are_escaped_and_only_http_urls_become_links():
    table = pa.table({"run": ["<b>x</b>", "y"], "run_url": ["https://prefect/runs/1", "javascript:alert(1)"]})
    out = app.html_table("t", table)
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert 'href="https://prefect/runs/1"' in out and "javascript:" not in out and "<th>run_url</th>" not in out


@pytest.mark.timeout(400)
def test_dashboard_in_headless_chromium_shows_the_numbers_of_quarry_sql(store, sql, tmp_path):
    root, _ = store
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "wb")
    server = app.start(root, port=port, log=log)
    browser = None
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "streamlit.log").read_text()[-3000:])
            time.sleep(0.5)
        browser = Browser(width=1400, height=900)
        titles = [p.title for p in app.load_panels()]
        shot = tmp_path / "dashboard.png"
        page = json.loads(browser.render(
            f"http://127.0.0.1:{port}/", expect=[*titles, "watched_files.sql"], screenshot=shot, full_height=14500,
            extract=_EXTRACT_JS,
        ))  # fmt: skip
        assert set(page) == {p.name for p in app.load_panels()}
        assert not any("failed:" in p["text"] for p in page.values())  # no panel raised
        assert "no data yet: run quarry run watch" in page["watched_files"]["text"]
        assert "no contamination found" in page["eval_contamination"]["text"]
        deploy = browser.render(f"http://127.0.0.1:{port}/", expect=[titles[0]], screenshot=tmp_path / "top.png",
                                extract="[...document.querySelectorAll('button')].map(b => b.innerText).join('|')")  # fmt: skip
        assert "Deploy" not in deploy.split("|")  # the toolbar is minimal: a viewer, not a Streamlit app to deploy
        check_panels(page, sql)
        for name, stage_view in (("filter_funnel", "dash__sentence_dedup"), ("signal_histograms", "dash__quality_signals"),
                                 ("dedup_clusters", "dash__minhash_dedup"), ("training_loss", "dash__train")):  # fmt: skip
            assert f"reads {stage_view}" in page[name]["text"].replace("\n", " ") or stage_view in page[name]["text"]
        graph = page["lineage"]["graph"]
        n_versions = len(sql(f"select ref from versions where dataset = '{DATASET}'"))
        # parents from other datasets (the quality classifier's positive/negative ingests) are drawn as nodes too
        n_outside = len(sql(f"select distinct p from (select unnest(parents) p from versions where dataset = "
                            f"'{DATASET}') where p not in (select ref from versions where dataset = '{DATASET}')"))
        assert n_outside == 2
        assert graph["nodes"] == n_versions + n_outside and graph["edges"] == len([r for r in _rows(page["lineage"]) if r["parent"]])
        assert graph["label_px"] >= 9 and graph["height"] > 20 * graph["label_px"]  # readable, not squeezed
        assert shot.stat().st_size > 50_000  # a real rendering, not a blank page
        assert "deprecat" not in (tmp_path / "streamlit.log").read_text().lower()  # e.g. use_container_width
        save_screenshot(shot, "dashboard.png")
    finally:
        if browser is not None:
            browser.close()
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
