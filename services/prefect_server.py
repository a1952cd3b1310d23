"""Prefect as a service: a local server and a process worker, started and stopped as subprocesses.

    quarry server up          # Prefect server on 127.0.0.1:4200 (SQLite; Postgres when
                              # PREFECT_API_DATABASE_CONNECTION_URL is set) + a process work pool and worker
    quarry server status | down

Server and worker are subprocesses in their own sessions with pid files under ``.quarry/`` (``$QUARRY_STATE_DIR``),
so ``server_down`` ends exactly the processes ``server_up`` started and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from storage.temporaries import pid_alive

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POOL = "quarry-process"


def state_dir(path: str | Path | None = None) -> Path:
    """Where pid files, logs and the default PREFECT_HOME live: ``path``, ``$QUARRY_STATE_DIR`` or ``.quarry/``."""
    d = Path(path or os.environ.get("QUARRY_STATE_DIR") or REPO / ".quarry")
    d.mkdir(parents=True, exist_ok=True)
    return d


# ----------------------------------------------------------------------------------------------- server + worker


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def read_state(sd: Path) -> dict:
    f = sd / "server.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _spawn(cmd: list[str], env: dict[str, str], log: Path, pid_file: Path) -> int:
    out = open(log, "ab")
    # own session: server_down signals the whole group (uvicorn, services, flow-run children) and nothing else
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    pid_file.write_text(str(proc.pid))
    return proc.pid


def _prefect_env(home: Path, api_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        }
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    # another test API (prefect_test_harness) may have set this for the current process only
    env.pop("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", None)
    return env


def server_up(
    *,
    host: str = "127.0.0.1",
    port: int = 4200,
    pool: str = DEFAULT_POOL,
    worker: bool = True,
    home: str | Path | None = None,
    state: str | Path | None = None,
    timeout: float = 120.0,
    worker_env: dict[str, str] | None = None,
) -> dict:
    """Start a Prefect server and a process worker in the background; returns api/ui URLs and pids.

    The database is SQLite under ``PREFECT_HOME`` unless ``PREFECT_API_DATABASE_CONNECTION_URL`` is set (e.g.
    ``postgresql+asyncpg://prefect:prefect@db:5432/prefect``), which the server picks up from the environment.
    A server already running from the same state folder is reused.
    """
    sd = state_dir(state)
    home = Path(home or sd / "prefect_home")
    home.mkdir(parents=True, exist_ok=True)
    current = server_status(state=sd)
    if current["server_running"] and current["healthy"]:
        if worker and not current["worker_running"]:
            current["worker_pid"] = _start_worker(current["api_url"], pool, home, sd, worker_env)
            current["worker_running"] = True
        return current
    api_url = f"http://{host}:{port}/api"
    if _healthy(api_url):
        raise RuntimeError(f"port {port} already serves a Prefect API that quarry did not start; choose --port")
    env = _prefect_env(home, None)
    # the UI's browser code calls the API at this URL (its default is port 4200, whatever port we serve on)
    if not env.get("PREFECT_UI_API_URL") and not env.get("PREFECT_SERVER_UI_API_URL"):
        env["PREFECT_UI_API_URL"] = api_url
    db_url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port), "--analytics-off"]
    pid = _spawn(cmd, env, sd / "server.log", sd / "server.pid")
    deadline = time.monotonic() + timeout
    while not _healthy(api_url):
        if not pid_alive(pid):
            tail = (sd / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"prefect server exited during start-up; log {sd / 'server.log'}:\n{tail}")
        if time.monotonic() > deadline:
            _kill_group(pid)
            raise TimeoutError(f"prefect server not healthy after {timeout:.0f}s; see {sd / 'server.log'}")
        time.sleep(0.5)
    info = {
        "api_url": api_url,
        "ui_url": f"http://{host}:{port}",
        "server_pid": pid,
        "prefect_home": str(home),
        "database": _redact(db_url) if db_url else f"sqlite:{home / 'prefect.db'}",
        "pool": pool,
    }
    (sd / "server.json").write_text(json.dumps(info, indent=2))
    if worker:
        info["worker_pid"] = _start_worker(api_url, pool, home, sd, worker_env)
    return server_status(state=sd)


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _start_worker(api_url: str, pool: str, home: Path, sd: Path, extra_env: dict[str, str] | None) -> int:
    """A process worker (creates the process work pool when missing); flow runs are its child processes."""
    env = _prefect_env(home, api_url)
    env.update(extra_env or {})
    cmd = [
        sys.executable, "-m", "prefect", "worker", "start",
        "--pool", pool, "--type", "process", "--name", f"quarry-{socket.gethostname()}-{os.getpid()}",
    ]  # fmt: skip
    pid = _spawn(cmd, env, sd / "worker.log", sd / "worker.pid")
    info = read_state(sd)
    info["worker_pid"] = pid
    (sd / "server.json").write_text(json.dumps(info, indent=2))
    return pid


def _kill_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group ``pid`` leads, then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # leftover children of a leader that already exited
                return
            time.sleep(0.2)


def server_down(*, state: str | Path | None = None) -> dict:
    """Stop the worker, then the server, that ``server_up`` started from this state folder; removes the pid files."""
    sd = state_dir(state)
    stopped = {}
    for name in ("worker", "server"):
        pid_file = sd / f"{name}.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip() or 0)
            if pid and pid_alive(pid):
                _kill_group(pid)
                stopped[name] = pid
            pid_file.unlink()
    with contextlib.suppress(FileNotFoundError):
        (sd / "server.json").unlink()
    return stopped


def server_status(*, state: str | Path | None = None) -> dict:
    """Is the server (and its worker) running and healthy; the URLs and pids from the state folder."""
    sd = state_dir(state)
    info = read_state(sd)
    out = dict(info)
    for name in ("server", "worker"):
        pid_file = sd / f"{name}.pid"
        pid = int(pid_file.read_text().strip() or 0) if pid_file.exists() else 0
        out[f"{name}_pid"] = pid or None
        out[f"{name}_running"] = bool(pid) and pid_alive(pid)
    out["healthy"] = bool(info.get("api_url")) and out["server_running"] and _healthy(info["api_url"])
    return out
