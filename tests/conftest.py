"""Shared fixtures: one session-scoped Prefect test API, one local Ray (2 CPUs), the shared data folder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

REPO = Path(__file__).resolve().parents[1]
# CI checks out the repo with shared/ beside it; QUARRY_SHARED_DATA points elsewhere when needed.
SHARED_DATA = Path(os.environ.get("QUARRY_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when the shared data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set QUARRY_SHARED_DATA or check out shared/ beside the repo)")
    return path


@pytest.fixture(autouse=True)
def _log_handlers_on_an_open_stream():
    """A log handler whose stream pytest has closed goes back to this test's stderr. Prefect's console handler keeps
    the sys.stderr it was (re)created with; when that happens inside a test that captures output (capfd), every
    later test that logs through Prefect failed with "I/O operation on closed file" (seen when tests/reliability
    ran before tests/ray_cluster/test_dask_path.py and tests/flows/test_curate.py)."""
    import logging
    import sys

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in (h for lg in loggers for h in lg.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # not setStream(): it flushes the closed stream first
            if hasattr(getattr(handler, "console", None), "file"):  # rich's Console (Prefect) holds it too
                handler.console.file = sys.stderr
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_api():
    """A real (temporary, SQLite) Prefect API server for the whole session (the flows' tests and the runs of
    test_sigterm_profiles). A generous start timeout: a fresh database is migrated first on 2 busy cores."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def save_screenshot(shot: Path, name: str) -> Path:
    """Keep a test's screenshot in .quarry/screenshots/ (ignored by git); with QUARRY_UPDATE_SCREENSHOTS=1
    (`make screenshots`) also refresh the README's copy in docs/, so a plain test run leaves the tree clean."""
    import shutil

    keep = REPO / ".quarry" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / name)
    if os.environ.get("QUARRY_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, REPO / "docs" / name)
    return keep / name


@contextlib.contextmanager
def openai_server(*extra_args: str, env: dict[str, str] | None = None):
    """llama.cpp's own OpenAI-compatible server (`python -m services.llama_server --port 0`, llama_cpp.server over
    the bundled GGUF) as a subprocess; yields (base URL ending in /v1, a dict whose "stderr" holds what the server
    logged once the block has exited). The ready line gives the URL; stderr goes to a file, not a pipe, so a chatty
    server can never block on a full pipe."""
    import subprocess
    import sys
    import tempfile

    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (make setup)")
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"} | (env or {})
    cmd = [sys.executable, "-m", "services.llama_server", "--port", "0", "--threads", "1", *extra_args]
    logs: dict[str, str] = {}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            line = proc.stdout.readline()  # blocks until the model is loaded (or the process died: empty line)
            if not line.startswith("listening on "):
                err.seek(0)
                raise AssertionError(f"server did not start (exit {proc.poll()}): {err.read()[-2000:]}")
            yield line.split()[-1] + "/v1", logs
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            err.seek(0)
            logs["stderr"] = err.read()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all bound at once, so none repeats)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def moto_s3(bucket: str):
    """A local moto S3 server (real HTTP, real s3fs) holding ``bucket``; fsspec reaches it through its environment
    (FSSPEC_<PROTOCOL>_<KWARG>), so credentials and endpoint never enter the code under test. Yields the s3fs."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("FSSPEC_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import fsspec.config
    import s3fs

    fsspec.config.set_conf_env(fsspec.config.conf)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    try:
        yield fs
    finally:
        mp.undo()
        fsspec.config.conf.pop("s3", None)  # later tests must not reach a stopped server
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
