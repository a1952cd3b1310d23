"""services/supervise.py: the ancestry walk that finds what `quarry run` started (Linux /proc). The end-to-end
signal tests (a real `quarry run` killed with SIGTERM) are in tests/reliability/test_signals_and_children.py."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from services import supervise

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")


def test_descendants_finds_a_grandchild_and_not_the_process_itself():
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(proc.stdout.readline())
        found = supervise.descendants(proc.pid)
        assert grandchild in found and proc.pid not in found
        assert proc.pid in supervise.descendants(os.getpid())
    finally:
        os.kill(grandchild, signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_start_installs_stop_handlers_and_restore_hands_back_the_callers(monkeypatch):
    monkeypatch.setattr(supervise.atexit, "register", lambda fn: fn)  # never stop the test session's own children
    monkeypatch.setattr(supervise, "become_subreaper", lambda: None)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def callers(signum, frame):  # noqa: ANN001
        pass

    try:
        signal.signal(signal.SIGTERM, callers)
        previous = supervise.start()
        assert signal.getsignal(signal.SIGTERM) is not callers and previous[signal.SIGTERM] is callers
        supervise.restore(previous)
        assert signal.getsignal(signal.SIGTERM) is callers
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
