"""Fixtures of the flows' tests beyond tests/conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def prefect_service(tmp_path_factory):
    """One real Prefect server + process worker (`server_up`: subprocesses on a free loopback port, SQLite, temp
    PREFECT_HOME) for every test of the service itself (test_deploy, test_cli_trigger): one start took 51 s and
    107 s on the shared 2-core host, each module had its own. Not the `prefect_api` harness: callers name its API
    URL. A generous start timeout (300 s): one start here took longer than 180 s with the host at load 20.
    Package scope, not session: it is stopped (and `server_down` must stop both processes) once tests/flows is
    done, not left polling beside the rest of the suite."""
    from services import prefect_server

    state = tmp_path_factory.mktemp("prefect_state")
    info = prefect_server.server_up(
        port=prefect_server.free_port(), state=state, home=state / "home", timeout=300,
        worker_env={"PREFECT_WORKER_QUERY_SECONDS": "2", "QUARRY_PROGRESS": "0"},
    )  # fmt: skip
    try:
        assert info["healthy"] and info["worker_running"], info
        yield info
    finally:
        stopped = prefect_server.server_down(state=state)
        assert set(stopped) == {"server", "worker"}
        assert not prefect_server.server_status(state=state)["server_running"]
