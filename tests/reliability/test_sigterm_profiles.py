"""SIGTERM / SIGINT mid-stage stop `quarry run` on every profile that runs here, and a re-run resumes to the same data.

`quarry_cli.py run curate` on a small recipe (C4 documents in 4-document shards -> MinHash signatures -> kept), in its
own session, against the session's Prefect API. The `quarry` logger reports every shard
(``QUARRY_PROGRESS_LOG_S=0``); the test signals the run as soon as the first ``minhash_signatures`` shard is done, so
the signal lands inside the stage. It then asserts: exit 143 (SIGTERM) / 130 (SIGINT) within ``BOUND_S``, no process
of the run left alive, nothing after the stage committed; and a re-run exits 0, resumed the stage's finished shards,
and committed the very version (and doc_id set) of an uninterrupted run.

Before the fix a SIGTERM here was swallowed on the serial profile (Prefect runs some internal calls on the main
thread and keeps their exceptions: the run went on and exited 0), and with a local Ray the driver took Ray's own
SIGTERM handler (kill the node, ``sys.exit(1)``) and the core worker aborted: exit 134.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA

psutil = pytest.importorskip("psutil")

C4 = SHARED_DATA / "web" / "c4_sample" / "c4_sample.jsonl"
BOUND_S = 60  # the stop watchdog forces an exit after QUARRY_STOP_GRACE_S (20 here); the rest is Prefect's teardown
DATASET = "sigt"
RAY_START_TIMEOUT = "The current node timed out during startup"  # node.py: raylet_start_wait_time_s = 30
STAGE_STARTED = re.compile(r"minhash_signatures: .*?\b[1-9][0-9]*/[0-9]+ shards")  # a shard of the stage is done
pytestmark = [pytest.mark.skipif(not C4.is_file(), reason="shared C4 sample missing"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process-group checks (Linux)")]


def _default_signals() -> None:
    """Start `quarry run` as a terminal would: SIGINT/SIGTERM at their defaults. A disposition of SIG_IGN is inherited
    across exec (a shell's background job gets SIGINT ignored, and Python then keeps it ignored), so whatever an
    earlier test left in this pytest process must not decide whether the run hears the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "sigt.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": DATASET,
        "ingest": {"docs_per_shard": 4, "sources": [{"path": str(C4), "domain": "web", "lang": "en", "limit": 240}]},
        "minhash_signatures": {},
    }))
    return path


@pytest.fixture(scope="module")
def api_url(prefect_api) -> str:
    """The session's Prefect API (conftest.prefect_api) for every run here: each `quarry run` would otherwise start
    its own, and a second harness for this module cost one more server start and database migration."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _env(api_url: str, root: Path, profile: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "QUARRY_"))}
    return env | {"PYTHONPATH": str(REPO), "PREFECT_API_URL": api_url, "QUARRY_ROOT": str(root),
                  "QUARRY_PROFILE": profile, "QUARRY_PROGRESS": "0", "QUARRY_PROGRESS_LOG_S": "0",
                  "QUARRY_STOP_GRACE_S": "20", "PYTHONUNBUFFERED": "1"}


def _start(recipe: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "quarry_cli.py"), "run", "curate", str(recipe)], cwd=REPO,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_default_signals)


def _finished_version(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "curate finished:" in ln]
    assert lines, f"no 'curate finished' line:\n{log.read_text(errors='replace')[-3000:]}"
    return lines[-1].split("curate finished:")[1].strip()


def _run(recipe: Path, env: dict[str, str], log: Path) -> str:
    proc = _start(recipe, env, log)
    if proc.wait(timeout=600) != 0 and RAY_START_TIMEOUT in log.read_text(errors="replace"):
        proc = _start(recipe, env, log)  # Ray's fixed 30 s node start, missed under load: once more
        proc.wait(timeout=600)
    assert proc.returncode == 0, f"run failed ({proc.returncode}):\n{log.read_text(errors='replace')[-4000:]}"
    return _finished_version(log)


def _doc_ids(root: Path, ref: str) -> set[str]:
    from storage import datasets

    dataset, stage, version = ref.split("/")
    return set(datasets.read_table(datasets.DatasetRef(str(root), dataset, stage, version), ["doc_id"])
               .column("doc_id").to_pylist())


def _family(pid: int) -> dict[int, float]:
    """pid -> create time of the run and everything under it or in its process group (its own session)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pid:
                procs.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    out = {}
    for p in procs:
        try:
            out[p.pid] = p.create_time()
        except psutil.NoSuchProcess:
            pass
    return out


def _alive(snapshot: dict[int, float]) -> dict[int, str]:
    alive = {}
    for pid, created in snapshot.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive[pid] = " ".join(p.cmdline())[:160]
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture(scope="module")
def reference(recipe, api_url, tmp_path_factory) -> tuple[str, set[str]]:
    """An uninterrupted run (serial): the version and doc_ids every resumed run must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    ref = _run(recipe, _env(api_url, root, "serial"), root / "run.log")
    return ref, _doc_ids(root, ref)


PROFILES = ["serial", "local"]
try:  # the dask_local profile needs dask.distributed
    import distributed  # noqa: F401

    PROFILES.append("dask_local")
except ImportError:
    pass
# SIGTERM on every profile; SIGINT (the same recorded-stop path, exit 130) once: each case is two `quarry run`s,
# ~1-2 min on the 2-core CI box, and the suite must stay inside its budget.
CASES = [(p, signal.SIGTERM) for p in PROFILES] + [("serial", signal.SIGINT)]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("profile", "sig"), CASES, ids=[f"{p}-{s.name}" for p, s in CASES])
def test_signal_mid_stage_stops_the_run_and_a_rerun_resumes(recipe, api_url, reference, tmp_path, profile, sig):
    root, log = tmp_path / "store", tmp_path / "interrupted.log"
    env = _env(api_url, root, profile)
    proc = _start(recipe, env, log)
    snapshot: dict[int, float] = {}
    retried = False
    try:
        deadline = time.monotonic() + 400
        while not STAGE_STARTED.search(log.read_text(errors="replace")):
            if proc.poll() is not None and RAY_START_TIMEOUT in log.read_text(errors="replace") and not retried:
                retried, proc = True, _start(recipe, env, log)  # Ray's fixed 30 s node start, missed under load
                continue
            assert proc.poll() is None, f"run ended ({proc.returncode}) before the stage:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the stage never started:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        snapshot = _family(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=BOUND_S + 30)
        took = time.monotonic() - t0
        leftover_deadline = time.monotonic() + 10
        while (alive := _alive(snapshot)) and time.monotonic() < leftover_deadline:
            time.sleep(0.2)
        text = log.read_text(errors="replace")
        assert code == 128 + sig, f"{sig.name} must exit {128 + sig}, got {code}:\n{text[-4000:]}"
        assert took < BOUND_S, f"stopping took {took:.1f}s (bound {BOUND_S}s)"
        assert not alive, f"processes left behind: {alive}"
        assert "curate finished" not in text
        assert not list((root / DATASET).glob("kept/*/_manifest.json")), "an interrupted run went on to the next stage"
        mid_stage = not list((root / DATASET).glob("minhash_signatures/*/_manifest.json"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _alive(snapshot):  # never leave them to the next test
            os.kill(pid, signal.SIGKILL)

    ref, ids = reference
    resumed = _run(recipe, env, tmp_path / "resumed.log")
    assert resumed == ref, f"the resumed run committed {resumed}, an uninterrupted one {ref}"
    assert _doc_ids(root, resumed) == ids
    from storage import datasets

    mh = datasets.latest(str(root), DATASET, "minhash_signatures")
    stats = datasets.read_manifest(mh)["stats"]
    if mid_stage:  # the stop landed inside the stage: its finished shards were kept and the re-run reused them
        assert stats["shards_resumed"] > 0, stats
    print(f"\n{profile} {sig.name}: exit {code} {took:.1f}s after the signal, {len(snapshot)} processes, none left; "
          f"re-run resumed {stats.get('shards_resumed')} minhash shards, computed {stats.get('shards_computed')}")
