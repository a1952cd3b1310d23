"""A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and two worker nodes, each
its own raylet and object store): a stage's shards spread over the nodes, and a node killed mid-stage (the raylet
and every worker on it, SIGKILL, not one worker process) costs no document.

The head gets no CPUs, so every shard task runs on a worker node; the executor submits shard tasks with the
SPREAD strategy, which is what spreads shards without anything in the profile. The stage is the real RPv2 signals
kernel wrapped to record the node that ran each shard (and to take long enough that the kill lands mid-stage).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_cluster import runtime
from storage import datasets
from tasks.ingest.sources import IngestSource
from tasks.signals.quality_signals import QualitySignalsParams, quality_signals
from tests import stages
from tests.conftest import shared_path

FILES, DOCS_PER_FILE, DOCS_PER_SHARD = 4, 40, 8  # 20 shards: ~10 per node, a kill after 3 lands mid-stage


@dataclass(frozen=True)
class SlowSignalsParams:
    delay_s: float = 0.4  # per shard, so the stage outlives the kill on a loaded 2-core machine


def signals_on_node(batch: pa.Table, params: SlowSignalsParams) -> pa.Table:
    """RPv2 signals of the batch plus the id of the Ray node (and worker pid) that computed them."""
    import os

    import ray

    time.sleep(params.delay_s)
    out = quality_signals(batch, QualitySignalsParams(language="en"))
    n = out.num_rows
    out = out.append_column("node_id", pa.array([ray.get_runtime_context().get_node_id()] * n, pa.string()))
    return out.append_column("worker_pid", pa.array([os.getpid()] * n, pa.int64()))


def _inputs(folder: Path) -> tuple[list[IngestSource], int]:
    """FILES JSONL files of real C4 documents, each with one broken line (a quarantine row, not a lost doc)."""
    c4 = shared_path("web", "c4_sample", "c4_sample.jsonl")
    lines = c4.read_text(encoding="utf-8").splitlines()[: FILES * DOCS_PER_FILE]
    folder.mkdir()
    for i in range(FILES):
        part = lines[i * DOCS_PER_FILE:(i + 1) * DOCS_PER_FILE]
        (folder / f"part-{i}.jsonl").write_text("\n".join(part[:5] + ['{"text": broken'] + part[5:]) + "\n")
    return [IngestSource(path=str(folder), domain="web", lang="en")], FILES * DOCS_PER_FILE


@pytest.fixture()
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    had_ray = ray.is_initialized()  # the session's local Ray (conftest.ray_local): restored afterwards
    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20,
                                                      "include_dashboard": False})
    nodes = [c.add_node(num_cpus=1, resources={f"node_{i}": 1}, object_store_memory=100 * 2**20) for i in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    try:
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()
        if had_ray:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def test_shards_spread_over_nodes_and_a_node_killed_mid_stage_loses_no_document(tmp_path, cluster):
    import ray

    c, nodes = cluster
    sources, n_docs = _inputs(tmp_path / "in")
    profile = runtime.Profile(name="multinode", address=c.address, default=runtime.StageResources(num_cpus=1))
    root = str(tmp_path / "store")
    docs = stages.ingest(sources, root=root, dataset="mn", docs_per_shard=DOCS_PER_SHARD, profile=profile)
    quarantine = datasets.read_table(docs.sibling("ingest_quarantine"))
    assert datasets.read_manifest(docs)["num_rows"] + quarantine.num_rows == n_docs + FILES
    n_shards = len(datasets.files(docs))

    result: dict = {}

    def stage() -> None:
        try:
            result["ref"] = stages.adhoc(docs, "mn_signals", signals_on_node, SlowSignalsParams(), profile)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread below
            result["error"] = e

    victim = nodes[0]
    victim_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("node_0"))
    worker = threading.Thread(target=stage, daemon=True)
    worker.start()
    out_dir = Path(root) / "mn" / "mn_signals"
    deadline = time.monotonic() + 60
    written, seen = [], set()
    while time.monotonic() < deadline and worker.is_alive():  # kill once both nodes have finished shards
        written = sorted(out_dir.glob("*/part-*.parquet"))
        seen = {v for f in written for v in pq.read_table(f, columns=["node_id"])["node_id"].to_pylist()}
        if len(seen) >= 2 and len(written) >= 3:
            break
        time.sleep(0.1)
    assert victim_id in seen and len(seen) >= 2, f"shards did not spread over the nodes before the kill: {seen}"
    assert len(written) < n_shards, f"the kill must land mid-stage ({len(written)} of {n_shards} shards written)"
    c.remove_node(victim, allow_graceful=False)  # the raylet, its object store and its workers: SIGKILL
    worker.join(timeout=120)
    assert not worker.is_alive(), "the stage did not finish after the node was killed"
    if "error" in result:
        raise result["error"]

    ref = result["ref"]
    out = datasets.read_table(ref)
    ids = out["doc_id"].to_pylist()
    assert len(ids) == len(set(ids)), "a document was committed twice"
    assert sorted(ids) == sorted(datasets.read_table(docs, columns=["doc_id"])["doc_id"].to_pylist())
    assert out.num_rows + quarantine.num_rows == n_docs + FILES  # every input line: a row or a quarantine row
    # shards in flight on the dead node (or whose results were lost with its object store) ran again elsewhere
    assert set(out["node_id"].to_pylist()) <= {n["NodeID"] for n in ray.nodes()}
    assert all(v is not None for v in out["rps_doc_word_count"].to_pylist())  # the real signals, every row
    stats = datasets.read_manifest(ref)["stats"]
    assert stats["shards_computed"] == n_shards, json.dumps(stats)
