"""Progress lines of long stages reach Prefect's run log while the stage runs, not only when it ends (issue 28).

One Prefect flow (a real test API) runs real registry stages through the executor on a real local Ray:
a map stage over one 240-row shard (rows done of rows total, mid-shard, from a Ray worker), hkmeans (levels and
Lloyd iterations, from a Ray task) and training (step, loss, tokens/s, ETA: the loop runs in a Ray task that the
driver-side train stage starts). Every line is read back from Prefect's API with its timestamp.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time

import numpy as np
import pyarrow as pa
import pytest

import flows.runinfo  # noqa: F401 - as every flow: PREFECT_LOGGING_EXTRA_LOGGERS=quarry, the quarry logger at INFO
from ray_cluster import runtime
from storage import datasets
from storage.datasets import DatasetRef
from tests import stages

ROWS, BATCH, STEPS, EVERY = 240, 40, 12, 4


@dataclasses.dataclass(frozen=True)
class SlowParams:
    pause_s: float = 0.4


def _slow_embed(batch: pa.Table, params: SlowParams) -> pa.Table:
    """A stand-in for a model stage: a pause per batch, then a deterministic 8-d vector per document."""
    time.sleep(params.pause_s)
    ids = batch.column("doc_id").to_pylist()
    vecs = [np.random.default_rng(int(d[1:])).normal(size=8).astype(np.float32).tolist() for d in ids]
    return batch.append_column("embedding", pa.array(vecs, pa.list_(pa.float32()))) \
        .append_column("emb_error", pa.array([None] * len(ids), pa.string()))


def _docs(root: str) -> DatasetRef:
    ref = DatasetRef(root, "prog", "docs", "a" * 12)
    text = [f"Document {i}: the quick brown fox jumps over the lazy dog number {i % 7}." for i in range(ROWS)]
    datasets.write_table(ref, pa.table({"doc_id": [f"d{i:03d}" for i in range(ROWS)], "text": text,
                                        "domain": ["web"] * ROWS}), max_rows_per_shard=ROWS)  # one shard
    return ref


def _probe_flow():
    from prefect import flow

    from tasks.balance.hkmeans import HKMeansParams
    from tasks.train.tokenize import PackParams, TokenizeParams
    from tasks.train.trainer import TrainParams

    @flow(name="progress-probe")
    def probe(root: str) -> None:
        from prefect.logging.handlers import APILogHandler

        quarry = logging.getLogger("quarry")
        if not any(isinstance(h, APILogHandler) for h in quarry.handlers):
            # Prefect was set up earlier in this session, before flows/ set PREFECT_LOGGING_EXTRA_LOGGERS=quarry:
            # give the logger the handler that setting gives it (as `quarry run` and the deployments have it)
            quarry.addHandler(APILogHandler())
        profile = runtime.Profile(name="progress", engine="ray", default=runtime.StageResources(rows_per_call=BATCH))
        docs = _docs(root)
        emb = stages.adhoc(docs, "slow_embed", _slow_embed, SlowParams(), profile)
        # every iteration says so here: 240 points x 8-d take milliseconds a level on a warm worker, so at the
        # 0.5 s cadence whether an iteration line appears at all would depend on the machine
        os.environ["QUARRY_PROGRESS_LOG_S"] = "0"
        try:
            stages.run("hkmeans", [emb], HKMeansParams(levels=(8, 3), iterations=20, resampling_steps=(1, 3)), profile)
        finally:
            os.environ["QUARRY_PROGRESS_LOG_S"] = "0.5"
        tok = stages.run("tokenize", [docs], TokenizeParams(), profile)
        pack = stages.run("pack", [tok], PackParams(seq_len=32), profile)
        stages.run("train", [pack], TrainParams(max_steps=STEPS, micro_batch_size=4, warmup_steps=2,
                                                checkpoint_every=EVERY, hidden_size=32, num_layers=1, num_heads=2,
                                                num_kv_heads=2, intermediate_size=64), profile)

    return probe


def _run_logs(state) -> list[tuple[float, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # every log the run made is sent before it is read back

    async def read() -> list:
        async with get_client() as client:
            flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
            out, offset = [], 0
            while True:
                page = await client.read_logs(log_filter=flt, offset=offset, limit=200)
                out += page
                offset += len(page)
                if len(page) < 200:
                    return out

    return sorted((lg.timestamp.timestamp(), lg.message) for lg in asyncio.run(read()))


@pytest.fixture(scope="module")
def logs(tmp_path_factory, prefect_api, ray_local):
    import os


    os.environ["QUARRY_PROGRESS_LOG_S"] = "0.5"  # a steady cadence the test can see in seconds, not the default 10
    try:
        state = _probe_flow()(str(tmp_path_factory.mktemp("progress") / "store"), return_state=True)
    finally:
        os.environ.pop("QUARRY_PROGRESS_LOG_S", None)
    assert state.is_completed(), state
    return _run_logs(state)


def _final(logs, stage: str) -> float:
    """When the stage's first commit line (``<stage>: N rows -> uri``; a stage with side outputs commits those
    first, its own last) was logged: every progress line must come before the stage has committed anything."""
    times = [t for t, m in logs if re.match(rf"{stage}: \d+ rows -> ", m)]
    assert times, [m for _, m in logs]
    return min(times)


@pytest.mark.slow
def test_a_shard_reports_rows_done_mid_shard(logs):
    lines = [(t, int(m.group(1))) for t, m in ((t, re.match(r"slow_embed: (\d+)/240 rows \(\d+ %\), 0/1 shards", m))
                                               for t, m in logs) if m]
    done = [d for _, d in lines]
    # 6 batches x 0.4 s, a line per 0.5 s: several lines with some but not all rows done, while the shard runs
    assert len([d for d in done if 0 < d < 240]) >= 2, [m for _, m in logs if m.startswith("slow_embed")]
    assert done == sorted(done)
    assert all(t < _final(logs, "slow_embed") for t, _ in lines)


@pytest.mark.slow
def test_training_reports_step_loss_tokens_per_second_and_eta_before_it_ends(logs):
    lines = [(t, m) for t, m in logs if m.startswith("train: step ")]
    # at least one line per checkpoint (a step boundary is always reported), all before the stage's commit line
    assert len(lines) >= STEPS // EVERY, [m for _, m in logs]
    steps = [int(re.match(r"train: step (\d+)/12, loss [\d.]+, [\d,]+ tokens/s, \d+ s elapsed", m).group(1))
             for _, m in lines]
    assert {4, 8, 12} <= set(steps) and steps == sorted(steps)
    assert any("s left" in m for _, m in lines)  # an ETA while steps remain
    final = _final(logs, "train")
    assert all(t < final for t, _ in lines)
    assert lines[0][0] < lines[-1][0]  # spread over the run, not a burst at the end


@pytest.mark.slow
def test_hkmeans_reports_levels_and_iterations_before_it_ends(logs):
    iters = [(t, m) for t, m in logs if re.match(r"hkmeans: level \d/2 \(k=\d+, [\d,]+ points\), run \d/\d, "
                                                 r"iteration \d+/20", m)]
    levels = [(t, m) for t, m in logs if re.match(r"hkmeans: level \d/2 done", m)]
    assert len(levels) == 2 and iters, [m for _, m in logs if m.startswith("hkmeans")]
    final = _final(logs, "hkmeans")
    assert all(t < final for t, _ in iters + levels)


def test_the_dashboard_reads_the_loss_curve_of_a_training_run_in_flight(tmp_path, monkeypatch):
    """The real trainer in an uncommitted train version's folder; at step 7 (checkpoints every 4) the dashboard's
    reader already sees steps 1-6: 1-4 from the checkpoint's metrics flush, 5-6 from live.parquet."""
    from dashboards.app import live_training
    from tasks.train.tokenize import PackParams, TokenizeParams, pack_sequences, save_packed, tokenize_docs
    from tasks.train.trainer import TrainParams, train

    monkeypatch.setenv("QUARRY_PROGRESS_LOG_S", "0")  # a progress line (and a live.parquet) every step
    text = [f"Document {i}: the quick brown fox jumps over the lazy dog number {i % 7}." for i in range(200)]
    docs = pa.table({"doc_id": [str(i) for i in range(200)], "text": text})
    save_packed(pack_sequences(tokenize_docs(docs, TokenizeParams()), PackParams(seq_len=32)), tmp_path / "packed")
    root, version = str(tmp_path / "store"), "b" * 12
    seen = {}

    def report(row: dict) -> None:
        if row["step"] == 7:
            seen.update(live_training(root, "prog"))

    train(TrainParams(max_steps=10, micro_batch_size=4, warmup_steps=2, checkpoint_every=4, hidden_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64),
          tmp_path / "packed", tmp_path / "store" / "prog" / "train" / version / "run", report=report)
    assert list(seen) == [version]
    assert seen[version]["step"].to_pylist() == [1, 2, 3, 4, 5, 6]
    assert all(v > 0 for v in seen[version]["loss"].to_pylist())
    assert live_training(root, "prog")[0][1]["step"].to_pylist() == list(range(1, 11))  # uncommitted, ended: all
