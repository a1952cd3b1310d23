"""`quarry slurm submit` against a real Slurm: Debian's slurm-wlm (slurmctld + two slurmd on this host, munge),
configured in a temp dir (SLURM_CONF; its own munge socket and key, free ports, nothing under /etc) and stopped by
pid at the end.

Two Slurm nodes on one host (``NodeName=n1/n2`` with their own ``Port``, ``slurmd -N``): the job's Ray head runs on
n1 inside the batch step, its Ray worker on n2 through srun, so the launcher's multi-node path (workers join, the
flow waits for them, both are stopped) is what runs. Cases, sharing one Slurm and one Prefect API:

* a submitted curate completes (COMPLETED, exit 0:0, both Ray nodes joined), commits every ingested document to
  ``kept``, and leaves no process of the job behind;
* ``scancel`` mid-``minhash_signatures``: the job ends CANCELLED, every process of the job (raylet, GCS, object
  store, workers, driver, on both nodes) is gone, and a resubmission reuses the committed ingest, resumes the
  stage's finished shards and commits the very version the uncancelled job did.

Skips, with the reason, where slurm-wlm/munge are not installed (``make slurm`` installs them) or the daemons do not
start. Run it alone: ``python -m pytest tests/ray_cluster/test_slurm.py -q -p no:randomly``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA

psutil = pytest.importorskip("psutil")

C4 = SHARED_DATA / "web" / "c4_sample" / "c4_sample.jsonl"
DATASET = "slt"
DOCS = 200
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
STAGE_STARTED = re.compile(r"minhash_signatures: .*?\b[1-9][0-9]*/[0-9]+ shards")
# Ray nodes per job (one Slurm node each). 2 exercises the srun worker path; on a host too loaded for a second Ray
# node to start (Ray gives its agents a fixed ~15-30 s; 3 tries each), QUARRY_SLURM_TEST_NODES=1 runs the rest.
NODES = int(os.environ.get("QUARRY_SLURM_TEST_NODES", "2"))
SUBMITTED: list[str] = []
JOB_S = 600  # one job's bound: two Ray nodes start (each retried once on Ray's fixed 30 s) and the flow runs
pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Slurm test: Linux only"),
    pytest.mark.skipif(not C4.is_file(), reason=f"shared C4 sample missing at {C4}"),
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Slurm:
    """A single-host, two-node Slurm (the spec in /work/shared/specs/slurm_single_host.md, moved to a temp dir)."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(base / "slurm.conf")}

    def start(self) -> None:
        b = self.base
        for d in ("munge", "state", "log", "spool-n1", "spool-n2"):
            (b / d).mkdir(mode=0o700)
        (b / "munge").chmod(0o711)  # munged wants the socket's folder searchable by everyone
        key = b / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = b / "munge" / "munge.socket"
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--log-file={b / 'log' / 'munged.log'}", f"--pid-file={b / 'munge' / 'pid'}",
                               f"--seed-file={b / 'munge' / 'seed'}"])
        self._wait(lambda: sock.exists(), 15, "munged did not create its socket")
        ctld, n1, n2 = _free_ports(3)
        host = socket.gethostname().split(".")[0]
        (b / "slurm.conf").write_text(f"""\
ClusterName=quarrytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={b / 'state'}
SlurmdSpoolDir={b}/spool-%n
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd-%n.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
KillWait=30
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={n1} CPUs=1 RealMemory=2000 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={n2} CPUs=1 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
""")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd-n1", ["slurmd", "-D", "-N", "n1"])
        self._spawn("slurmd-n2", ["slurmd", "-D", "-N", "n2"])

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%t %D"], env=self.env, capture_output=True, text=True)
            return out.stdout.split() == ["idle", "2"]

        self._wait(idle, 40, "the two Slurm nodes never came up idle")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.base / "log" / f"{name}.out", "wb")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "; ".join(f"{f.name}: {f.read_text(errors='replace').strip()[-300:]}"
                                 for f in sorted((self.base / "log").glob("*")) if f.stat().st_size)
                raise RuntimeError(f"{what}{' (' + ', '.join(dead) + ' exited)' if dead else ''}: {logs}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Cancel every job first (slurmstepd and a job's processes outlive slurmd), sweep what is left of them,
        then stop the daemons, each by its pid."""
        if self.procs and self.procs[-1].poll() is None:
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                out = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True, timeout=30)
                if not out.stdout.strip():
                    break
                time.sleep(0.5)
        _kill(_processes(lambda p, cmd: p.environ().get("SLURM_CONF") == self.env["SLURM_CONF"]))
        for p in reversed(self.procs):  # slurmds, slurmctld, then munged: each by its pid
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def job(self, job_id: str) -> dict[str, str]:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env, capture_output=True, text=True)
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[Slurm]:
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        pytest.skip(f"slurm-wlm/munge not installed ({', '.join(missing)} not on PATH): `make slurm` installs them")
    if os.geteuid() != 0:
        pytest.skip("the single-host Slurm runs its daemons as root (SlurmUser=root); this test is not root")
    # a short path: slurmd's and Ray's unix sockets live under it (108-byte limit)
    cluster = Slurm(Path(tempfile.mkdtemp(prefix="qslurm-", dir="/tmp")))
    try:
        cluster.start()
    except (RuntimeError, OSError) as e:
        cluster.stop()
        pytest.skip(f"Slurm daemons could not start: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.base, ignore_errors=True)
    for job_id in SUBMITTED:  # the jobs' Ray temp dirs (logs, sockets); ids restart at 1 with the next cluster
        shutil.rmtree(Path(tempfile.gettempdir()) / f"ray-slurm-{job_id}", ignore_errors=True)


@pytest.fixture(scope="module")
def env(slurm, prefect_api, tmp_path_factory) -> Iterator[dict[str, str]]:
    """What `quarry slurm submit` runs with (the job inherits it): the test's Slurm, one Prefect API for every job
    (a job would otherwise start its own ephemeral server), per-shard progress lines to cancel on."""
    from prefect.settings import PREFECT_API_URL

    # the session's Prefect API (conftest.prefect_api), not a second server
    base = {k: v for k, v in slurm.env.items() if not k.startswith(("RAY_", "QUARRY_"))}
    yield base | {"PYTHONPATH": str(REPO), "PREFECT_API_URL": PREFECT_API_URL.value(), "QUARRY_PROGRESS": "0",
                  "QUARRY_PROGRESS_LOG_S": "0", "QUARRY_STOP_GRACE_S": "10", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "slt.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": DATASET,
        "ingest": {"docs_per_shard": 10, "sources": [{"path": str(C4), "domain": "web", "lang": "en", "limit": DOCS}]},
        "minhash_signatures": {},
    }))
    return path


def _submit(env: dict[str, str], recipe: Path, root: Path, log: Path, nodes: int) -> str:
    out = subprocess.run(
        [sys.executable, str(REPO / "quarry_cli.py"), "slurm", "submit", "curate", str(recipe), "--nodes", str(nodes),
         "--root", str(root), "--output", str(log), "--ray-start-args", "--object-store-memory=150000000"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"submitted slurm job (\d+)", out.stdout)
    assert m, out.stdout
    SUBMITTED.append(m.group(1))
    return m.group(1)


def _wait_state(slurm: Slurm, job_id: str, log: Path, states: set[str], timeout: float = JOB_S) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        info = slurm.job(job_id)
        if info.get("JobState") in states:
            return info
        text = log.read_text(errors="replace") if log.exists() else ""
        assert info.get("JobState") in {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING"}, f"{info}\n{text[-4000:]}"
        assert time.monotonic() < deadline, f"job {job_id} not {states} after {timeout:.0f} s: {info}\n{text[-4000:]}"
        time.sleep(0.5)


def _processes(match) -> dict[int, str]:
    found = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.info["name"] == "slurmstepd" or p.pid == os.getpid():
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if match(p, cmd):
                found[p.pid] = cmd[:160]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _job_processes(job_id: str) -> dict[int, str]:
    """Every live process of the job: its environment says SLURM_JOB_ID=<id> (the batch script, srun tasks, the
    driver, and all Ray processes they start inherit it) or its command line names the job's Ray temp dir."""
    return _processes(lambda p, cmd: f"ray-slurm-{job_id}/" in cmd or p.environ().get("SLURM_JOB_ID") == job_id)


def _wait_gone(job_id: str, timeout: float = 45) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (alive := _job_processes(job_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def _kill(pids) -> None:  # never leave them to the next test
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _version(log: Path) -> str:
    m = re.findall(r"curate finished: (\S+)", log.read_text(errors="replace"))
    assert m, log.read_text(errors="replace")[-4000:]
    return m[-1]


@pytest.fixture(scope="module")
def completed(slurm, env, recipe, tmp_path_factory) -> dict:
    """One uncancelled job on two nodes: its id, log, root and committed version."""
    base = tmp_path_factory.mktemp("completed")
    root, log = base / "store", base / "job.out"
    t0 = time.monotonic()
    job_id = _submit(env, recipe, root, log, nodes=NODES)
    info = _wait_state(slurm, job_id, log, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})
    took = time.monotonic() - t0
    left = _wait_gone(job_id)
    _kill(left)
    return {"id": job_id, "info": info, "log": log, "root": root, "left": left, "took": took}


@pytest.mark.timeout(900)
def test_a_submitted_flow_runs_on_a_two_node_ray_cluster_and_leaves_nothing_behind(completed):
    from storage import datasets

    text = completed["log"].read_text(errors="replace")
    assert completed["info"]["JobState"] == "COMPLETED", f"{completed['info']}\n{text[-4000:]}"
    assert completed["info"]["ExitCode"] == "0:0"
    assert completed["info"]["NodeList"] in ({"n[1-2]"} if NODES == 2 else {"n1", "n2"})
    assert f"quarry-slurm: {NODES}/{NODES} Ray nodes joined ({NODES} CPUs)" in text  # the srun worker joined the head
    assert "every Ray process of this job stopped" in text
    assert not completed["left"], f"processes of the job left behind: {completed['left']}"
    dataset, stage, version = _version(completed["log"]).split("/")
    assert (dataset, stage) == (DATASET, "kept")
    ref = datasets.DatasetRef(str(completed["root"]), dataset, stage, version)
    assert datasets.read_table(ref, ["doc_id"]).num_rows == DOCS  # every ingested C4 document (no filter here)
    assert datasets.latest(str(completed["root"]), DATASET, "ingest") is not None
    print(f"\nslurm job {completed['id']}: {NODES} nodes, COMPLETED in {completed['took']:.0f} s")


@pytest.mark.timeout(1200)
def test_scancel_mid_run_stops_every_process_and_a_resubmission_resumes(slurm, env, recipe, completed, tmp_path):
    from storage import datasets

    root, log = tmp_path / "store", tmp_path / "cancelled.out"
    job_id = _submit(env, recipe, root, log, nodes=NODES)
    snapshot: dict[int, str] = {}
    try:
        deadline = time.monotonic() + JOB_S
        while not (log.exists() and STAGE_STARTED.search(log.read_text(errors="replace"))):
            state = slurm.job(job_id).get("JobState")
            assert state in {"PENDING", "RUNNING", "CONFIGURING"}, f"{state}\n{log.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, f"minhash never started:\n{log.read_text(errors='replace')[-3000:]}"
            time.sleep(0.1)
        snapshot = _job_processes(job_id)
        t0 = time.monotonic()
        subprocess.run(["scancel", job_id], env=slurm.env, check=True)
        info = _wait_state(slurm, job_id, log, {"CANCELLED", "COMPLETED", "FAILED"}, timeout=120)
        left = _wait_gone(job_id)
        took = time.monotonic() - t0
    finally:
        _kill(_job_processes(job_id))
    text = log.read_text(errors="replace")
    assert info["JobState"] == "CANCELLED", f"{info}\n{text[-3000:]}"
    assert any("raylet" in c for c in snapshot.values()) and any("gcs_server" in c for c in snapshot.values())
    assert not left, f"processes of the cancelled job left behind: {left}"
    assert "cancelled (SIGTERM)" in text and "every Ray process of this job stopped" in text
    assert "curate finished" not in text
    ingest = datasets.latest(str(root), DATASET, "ingest")
    assert ingest is not None, "the cancel landed before ingest committed"
    mid_stage = datasets.latest(str(root), DATASET, "minhash_signatures") is None

    log2 = tmp_path / "resumed.out"
    job2 = _submit(env, recipe, root, log2, nodes=1)
    info2 = _wait_state(slurm, job2, log2, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})
    _kill(_wait_gone(job2))
    assert info2["JobState"] == "COMPLETED", f"{info2}\n{log2.read_text(errors='replace')[-4000:]}"
    assert _version(log2) == _version(completed["log"]), "the resumed job committed another version"
    assert datasets.latest(str(root), DATASET, "ingest").version == ingest.version  # reused, not recomputed
    stats = datasets.read_manifest(datasets.latest(str(root), DATASET, "minhash_signatures"))["stats"]
    if mid_stage:  # the cancel landed inside the stage: its finished shards were kept and the resubmission reused them
        assert stats["shards_resumed"] > 0, stats
    print(f"\nscancel: {len(snapshot)} processes of job {job_id} gone {took:.1f} s after it; the resubmission "
          f"resumed {stats.get('shards_resumed')} minhash shards, computed {stats.get('shards_computed')}")
