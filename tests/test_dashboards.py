"""The dashboard: every panel's SQL runs on a real store (real ingest, RPv2 signals and quality filter), missing tables
give a 'no data yet' message, the connection is read-only, and the page renders in a real headless Chromium.

Chromium is driven over the DevTools protocol (a websocket), because Streamlit renders after a websocket round trip
that `--dump-dom` / `--screenshot` with `--virtual-time-budget` do not wait for: we poll the page text until the
panels are there, then take the screenshot (docs/dashboard.png).
"""

from __future__ import annotations

import asyncio
import base64
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

from dashboards import app
from ray_cluster import runtime
from storage import catalog, datasets
from tasks.ingest import IngestSource
from tests import stages
from tests.conftest import save_screenshot, shared_path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERIAL = runtime.Profile(name="serial", engine="serial")


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
        self, url: str, expect: list[str], screenshot: Path, timeout: float = 120, full_height: int | None = None
    ) -> str:
        """Open ``url``, wait until the page text holds every ``expect`` string, screenshot it; returns the text."""
        return asyncio.run(self._render(url, expect, screenshot, timeout, full_height))

    async def _render(self, url, expect, screenshot, timeout, full_height) -> str:
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

            async def text() -> str:
                r = await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
                return r["result"].get("value", "")

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
            return await text()


# ----------------------------------------------------------------------------------------------- a store with data


def _write(ref_parent: datasets.DatasetRef, stage_name: str, table: pa.Table, root_table=None) -> datasets.DatasetRef:
    ref = datasets.derive(ref_parent, stage_name, None, {"rows": table.num_rows})
    datasets.write_table(ref, table, parents=[ref_parent])
    return ref


def _build_store(root: Path) -> dict:
    from tasks.quality_filter import QualityFilterParams
    from tasks.quality_signals import QualitySignalsParams

    bad = root.parent / "inputs" / "broken.jsonl"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text('{"text": "a fine document about rivers and their deltas", "url": "http://x.org/1"}\n{not json\n')
    sources = [
        IngestSource(path=str(shared_path("web", "c4_sample", "c4_sample.jsonl")), domain="web", limit=60),
        IngestSource(path=str(shared_path("clean", "wikipedia_1k", "wikipedia.jsonl")), domain="wikipedia",
                     text_field="eng_Latn", limit=30),
        IngestSource(path=str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), domain="arxiv",
                     text_field="abstract", limit=20),
        IngestSource(path=str(bad), domain="web"),
    ]  # fmt: skip
    docs = stages.ingest(sources, root=str(root), dataset="dash", docs_per_shard=40, profile=SERIAL)
    signals = stages.run("quality_signals", [docs], QualitySignalsParams(), SERIAL)
    filtered = stages.run("quality_filter", [signals], QualityFilterParams(rules="gopher"), SERIAL)
    ids = datasets.read_table(filtered, columns=["doc_id", "domain", "text", "keep"])
    n = ids.num_rows
    # the later stages' output contracts, on the real doc_ids: dedup clusters, k-means assignments before and
    # after balancing, generated documents, a loss curve and eval scores
    dedup = _write(filtered, "minhash_dedup", pa.table({
        "doc_id": ids["doc_id"], "mh_cluster_id": [f"c{i // 3 if i < 9 else i}" for i in range(n)],
        "mh_cluster_size": [3 if i < 9 else 1 for i in range(n)]}))  # fmt: skip
    assign = _write(
        dedup, "kmeans_assign", pa.table({"doc_id": ids["doc_id"], "km_l1": [i % 4 if i % 5 else 0 for i in range(n)]})
    )
    sample = _write(
        assign, "kmeans_sample", pa.table({"doc_id": ids["doc_id"][:40], "km_l1": [i % 4 for i in range(40)]})
    )
    aug = _write(sample, "augment", pa.table({
        "aug_source_id": ids["doc_id"][:10], "domain": ids["domain"][:10],
        "text": [f"<think>step {i}</think> " + t for i, t in enumerate(ids["text"][:10].to_pylist())]}))  # fmt: skip
    train = _write(aug, "train_metrics", pa.table({
        "step": list(range(1, 31)), "loss": [8.0 / (1 + 0.2 * s) for s in range(30)], "lr": [1e-3] * 30,
        "tokens_per_s": [5000.0] * 30}))  # fmt: skip
    ev = _write(train, "evaluate", pa.table({
        "model_version": ["m1"] * 4 + ["m2"] * 4, "task": ["arc_easy", "arc_easy", "heldout/web", "heldout/web"] * 2,
        "metric": ["acc", "acc_norm", "bits_per_byte", "perplexity"] * 2,
        "value": [0.31, 0.30, 1.9, 40.0, 0.35, 0.33, 1.7, 33.0], "stderr": [0.02] * 8, "n": [100] * 8}))  # fmt: skip
    return {
        "docs": docs,
        "signals": signals,
        "filtered": filtered,
        "n": n,
        "kept": sum(ids["keep"].to_pylist()),
        "eval": ev,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash") / "store"
    return str(root), _build_store(root)


# ----------------------------------------------------------------------------------------------- tests


def test_every_panel_file_has_a_title_a_chart_and_a_no_data_message():
    panels = app.load_panels()
    names = {p.name for p in panels}
    assert {"versions", "lineage", "stage_yield", "filter_funnel", "signal_histograms", "dedup_clusters",
            "cluster_balance", "tpt_generation", "training_loss", "eval_scores", "experiment_comparison"} <= names  # fmt: skip
    for p in panels:
        assert p.title != p.name and p.empty.startswith("run ") and p.chart in ("table", "bar", "line", "graph")


def test_panels_without_their_tables_say_which_flow_to_run(tmp_path):
    root = tmp_path / "store"
    docs = stages.ingest(
        [IngestSource(path=str(shared_path("domains", "arxiv_abstracts", "arxiv_abstracts.jsonl")), domain="arxiv",
                      text_field="abstract", limit=5)],
        root=str(root), dataset="bare", docs_per_shard=10, profile=SERIAL,
    )  # fmt: skip
    con = catalog.connect(str(root), sandbox=True)
    out = {p.name: app.run_panel(con, p, docs.dataset) for p in app.load_panels()}
    assert out["ingest_domains"][0].to_pylist()[0]["documents"] == 5
    for name in ("filter_funnel", "signal_histograms", "dedup_clusters", "training_loss", "eval_scores"):
        table, message = out[name]
        assert table is None and message.startswith("no data yet: run `quarry run")


def test_every_panel_returns_rows_that_add_up_on_a_full_store(store):
    root, refs = store
    con = catalog.connect(root, sandbox=True)
    views = app.dataset_views(con, "dash")
    results = {}
    for p in app.load_panels():
        if p.name == "watched_files":
            continue  # the watch flow's own test covers its state table
        table, message = app.run_panel(con, p, "dash", views)
        assert table is not None, f"{p.name}: {message}"
        results[p.name] = table.to_pylist()
    funnel = {r["reason"]: r["documents"] for r in results["filter_funnel"]}
    assert sum(funnel.values()) == refs["n"] and funnel.get("kept", 0) == refs["kept"]
    assert len(funnel) > 1  # gopher rules drop some of the real documents, with their rule as the reason
    assert {r["domain"]: r["documents"] for r in results["ingest_domains"] if r["source"] != "broken.jsonl"} == {
        "web": 60, "wikipedia": 30, "arxiv": 20}  # fmt: skip
    assert [r["reason"] for r in results["quarantine"]] and results["quarantine"][0]["records"] == 1
    hist = results["signal_histograms"]
    assert {r["signal"] for r in hist} == {"word_count", "mean_word_length", "frac_unique_words", "stop_word_fraction"}
    assert sum(r["documents"] for r in hist if r["signal"] == "word_count") == refs["n"]  # every doc in one bin
    assert {(r["cluster_size"], r["clusters"]) for r in results["dedup_clusters"]} == {(3, 3), (1, refs["n"] - 9)}
    before = {r["km_l1"]: r["documents"] for r in results["cluster_balance"] if r["phase"] == "before"}
    after = {r["km_l1"]: r["documents"] for r in results["cluster_balance"] if r["phase"] == "after"}
    assert sum(before.values()) == refs["n"] and after == {"0": 10, "1": 10, "2": 10, "3": 10}
    assert results["tpt_generation"] and sum(r["generated"] for r in results["tpt_generation"]) == 10
    assert [r["step"] for r in results["training_loss"]] == list(range(1, 31))
    assert len(results["eval_scores"]) == 8
    comparison = {(r["model_version"], r["task"]): r for r in results["experiment_comparison"]}
    assert comparison[("m2", "arc_easy")]["acc"] == pytest.approx(0.35)
    yields = {r["stage"]: r for r in results["stage_yield"]}
    assert yields["quality_filter"]["rows_in"] == yields["quality_filter"]["rows_out"] == refs["n"]
    assert yields["kmeans_sample"]["rows_out"] == 40 and yields["kmeans_sample"]["rows_in"] == refs["n"]
    edges = {(r["parent"], r["child"]) for r in results["lineage"]}
    assert {(str(refs["docs"]), str(refs["signals"])), (str(refs["signals"]), str(refs["filtered"]))} <= edges


def test_the_dashboard_connection_cannot_read_other_files_or_write(store):
    root, _ = store
    con = catalog.connect(root, sandbox=True)
    with pytest.raises(Exception, match="(?i)permission|disabled|not allowed"):
        con.sql("select * from read_text('/etc/hostname')").fetchall()
    with pytest.raises(Exception, match="(?i)permission|disabled|not allowed"):
        con.sql(f"copy (select 1) to '{root}/evil.csv'").fetchall()


def test_placeholders_only_accept_dataset_names():
    with pytest.raises(ValueError, match="dataset name"):
        app.resolve("select 1", "x'; drop table versions; --", [])


@pytest.mark.timeout(400)
def test_dashboard_renders_every_panel_in_headless_chromium(store, tmp_path):
    root, refs = store
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
        text = browser.render(
            f"http://127.0.0.1:{port}/",
            expect=[*titles, "experiment_comparison.sql"],
            screenshot=shot,
            full_height=9000,
        )
        assert "failed:" not in text  # no panel raised
        assert "no data yet: run python -m flows.watch" in text  # the one panel without data says what to run
        assert f"{refs['kept']}" in text and "arc_easy" in text and "wikipedia" in text
        assert shot.stat().st_size > 50_000  # a real rendering, not a blank page
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
