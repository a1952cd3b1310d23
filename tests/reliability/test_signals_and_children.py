"""SIGTERM or SIGINT to `quarry run` stops every process quarry started: nothing survives, re-parented to init.

The run is real: `quarry_cli.py run ingest` in its own session, with Prefect's ephemeral API server (a uvicorn
subprocess: the child that SIGTERM used to leave behind). The recipe names its cluster profile by path, and that path
is a FIFO: the flow blocks reading the (serial) profile until the test writes it, so the signal provably lands
mid-run, inside the flow, with the server up. (An input file cannot be the FIFO: fsspec seeks to learn its size.)
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc (Linux)")



def _default_signals() -> None:
    """Start `quarry run` as a terminal would: SIGINT/SIGTERM at their defaults. A disposition of SIG_IGN is inherited
    across exec (a shell's background job gets SIGINT ignored, and Python then keeps it ignored), so whatever an
    earlier test left in this pytest process must not decide whether the run hears the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, start time) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _family(root: int) -> dict[int, int]:
    """pid -> start time of every live process descended from `root` or in its process group."""
    table = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (state, ppid, _, start) in table.items():
            if ppid == parent and pid not in found and state != "Z":
                found[pid] = start
                frontier.append(pid)
    found.update({pid: s[3] for pid, s in table.items() if s[2] == root and pid != root and s[0] != "Z"})
    return found


def _survivors(snapshot: dict[int, int], root: int) -> dict[int, str]:
    alive = {}
    for pid, start in {**snapshot, **_family(root)}.items():
        s = _stat(pid)
        if s is not None and s[3] == start and s[0] != "Z":
            alive[pid] = _cmdline(pid)
    return alive


def _open_writer(fifo: Path, proc: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    """The FIFO's write end, opened once quarry opened the read end (ENXIO until then): the flow is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        if proc.poll() is not None:
            pytest.fail(f"quarry exited ({proc.returncode}) before reading its input:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"quarry never opened its input within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    """One PREFECT_HOME for both runs: the second reuses the SQLite database the first one migrated."""
    return tmp_path_factory.mktemp("prefect_home")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_quarry_run_stops_every_child_it_started(tmp_path, prefect_home, sig):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "one small document"}\n')
    fifo = tmp_path / "serial.yaml"  # the serial profile, written by the test: the flow waits for it
    os.mkfifo(fifo)
    recipe = tmp_path / "fifo.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset": "fifo", "cluster": str(fifo), "storage_root": str(tmp_path / "store"),
        "ingest": {"sources": [{"path": str(docs)}]},
    }))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")}
    env |= {"PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(REPO), "QUARRY_PROGRESS": "0",
            # a fresh database is migrated on first start: slow on a busy 2-core machine (Prefect's default: 20 s)
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    log = tmp_path / "quarry.log"
    with open(log, "wb") as out:
        # own session: its process group is its pid, so a child that escapes the ancestry walk is still found
        proc = subprocess.Popen([sys.executable, str(REPO / "quarry_cli.py"), "run", "ingest", str(recipe)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_default_signals)
    writer = None
    snapshot: dict[int, int] = {}
    try:
        writer = _open_writer(fifo, proc, log)
        os.write(writer, b"engine: serial\n")  # the reader still waits for the end of the file
        snapshot = _family(proc.pid)
        servers = [p for p in snapshot if "uvicorn" in _cmdline(p)]
        assert servers, f"no ephemeral Prefect server among quarry's children: {[_cmdline(p) for p in snapshot]}"
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=90)
        stopped_in = time.monotonic() - t0
        deadline = time.monotonic() + 10  # a child that got SIGTERM may take a moment to exit
        while (alive := _survivors(snapshot, proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, f"processes left behind after {sig.name}: {alive}\n{log.read_text()[-3000:]}"
        assert code != 0, "an interrupted run must not exit 0"
        assert not list((tmp_path / "store").rglob("_manifest.json")), "an interrupted run committed a version"
        print(f"\n{sig.name}: {len(snapshot)} children ({len(servers)} Prefect server), all stopped; "
              f"quarry exited {code} after {stopped_in:.1f}s")
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _survivors(snapshot, proc.pid):  # never leave them to the next test
            os.kill(pid, signal.SIGKILL)
