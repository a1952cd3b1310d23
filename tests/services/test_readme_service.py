"""README's "Running it as a service" (Prefect server, deployments, trigger, Ray head), executed as written, so it
cannot drift from the code.

Every ```bash block of that section that follows a ``<!-- readme-test: run -->`` line runs as one bash script from
the repository root (``set -e``: a failing command fails the test with its output); a block marked
``<!-- readme-test: skip: why -->`` is not run (an AWS cluster) and a block with neither marker fails the test, so
a new block is a decision. What the test changes, and only that: state, Prefect's home, the storage root and HOME
(the Ray token) live under a temporary folder, the fixed ports (Prefect's 4200: ``--port``, Ray's 8265) become free ones, and ``ray start
--head`` / ``ray stop`` start and stop a head of the test's own (its ports and temp dir; a plain ``ray stop`` would
stop every Ray on a shared machine).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_ports

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Running it as a service"
UNTIL = "### TPT augmentation"  # the section's Prefect and Ray parts; the vLLM, Dask and dashboard parts have tests of their own


def blocks() -> list[tuple[str, str]]:
    """(marker, script) of each bash block in the section, in order."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index(UNTIL, start)]
    out = []
    for m in re.finditer(r"(?:<!-- readme-test: ([^>]*?) -->\n)?```bash\n(.*?)```", section, re.S):
        out.append(((m.group(1) or "").strip(), m.group(2)))
    return out


def test_every_block_of_the_service_section_is_run_or_says_why_not():
    found = blocks()
    assert len(found) >= 3
    unmarked = [script.splitlines()[0] for marker, script in found if not marker]
    assert not unmarked, f"README service blocks without a readme-test marker: {unmarked}"
    assert all(m == "run" or m.startswith("skip: ") for m, _ in found)


def _run(script: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", "set -eo pipefail\n" + script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"README block failed (exit {proc.returncode}):\n{script}\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc


@pytest.fixture
def sandbox(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "HOME": str(tmp_path / "home"),
           "QUARRY_STATE_DIR": str(tmp_path / "state"), "QUARRY_ROOT": str(tmp_path / "root")}  # fmt: skip
    for key in ("PREFECT_API_URL", "RAY_ADDRESS", "RAY_AUTH_MODE", "PREFECT_HOME"):
        env.pop(key, None)
    (tmp_path / "home").mkdir()
    return env


def test_the_prefect_block_runs_as_written(sandbox):
    script = next(s for m, s in blocks() if m == "run" and "quarry server up" in s)
    port = free_ports(1)[0]
    script = script.replace("quarry server up", f"quarry server up --port {port}", 1)  # not 4200: a shared machine
    try:
        out = _run(script, sandbox, timeout=600)
    finally:
        subprocess.run([sys.executable, "-m", "quarry_cli", "server", "down"], cwd=REPO, env=sandbox,
                       capture_output=True, timeout=120)
    text = out.stdout + out.stderr
    assert f"http://127.0.0.1:{port}" in text
    assert "ingest/tiny" in text and "Completed" in text  # the triggered run finished
    assert "stopped worker" in text
    assert any((Path(sandbox["QUARRY_ROOT"]) / "tiny" / "ingest").glob("*/_manifest.json"))


STOP = """import os, signal, time
def mine():
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and int(p) != os.getpid() and "{temp}" in open(f"/proc/{{p}}/cmdline").read():
                yield int(p)
        except OSError:
            pass
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in mine():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    time.sleep(3)
"""


def test_the_ray_head_block_runs_as_written(sandbox):
    script = next(s for m, s in blocks() if m == "run" and "ray start --head" in s)
    ports = free_ports(10)
    temp = tempfile.mkdtemp(prefix="qrd-", dir="/tmp")  # Ray's socket paths must stay short
    own_head = (f"ray start --head --disable-usage-stats --num-cpus 1 --num-gpus 0 --node-ip-address 127.0.0.1 "
                f"--port {ports[0]} --ray-client-server-port {ports[1]} --dashboard-agent-listen-port {ports[2]} "
                f"--dashboard-agent-grpc-port {ports[3]} --metrics-export-port {ports[4]} --runtime-env-agent-port "
                f"{ports[5]} --node-manager-port {ports[6]} --object-manager-port {ports[7]} --temp-dir {temp} "
                f"--dashboard-port {ports[8]}")  # fmt: skip
    stopper = Path(temp) / "stop.py"  # stops the processes of this head only: those whose command line names its dir
    stopper.write_text(STOP.format(temp=temp))
    own_stop = f"{sys.executable} {stopper}"
    assert "ray start --head" in script and "ray stop" in script
    script = (script.replace("ray start --head", own_head).replace("8265", str(ports[8]))
              .replace("/tmp/quarry-ray", f"{temp}/data"))
    script = re.sub(r"\S*ray stop\b", own_stop, script)
    try:
        out = _run(script, sandbox, timeout=600)
    finally:
        subprocess.run([sys.executable, str(stopper)], capture_output=True, timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
    text = out.stdout + out.stderr
    assert "finished; its data is under --root" in text
    assert "tiny" in text and "ingest" in text  # quarry datasets lists the job's versions
