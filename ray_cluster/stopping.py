"""Stopping a run: SIGTERM/SIGINT recorded while a stage computes and raised at its next safe point, a watchdog that
bounds the wait, and the process-tree walk that stops whatever a run started (``services.supervise`` uses it too).

Inside a flow (``stop_signals``) a signal only *records* a stop while a stage computes (``safe_points``); the stage
raises it at its next safe point (between shards; the Ray driver polls ``ray.wait`` every ``POLL_S`` instead of
blocking in C++), so no exception lands inside numba's compiler, Prefect's engine internals (which can swallow it) or
Ray's core worker. A watchdog stops the children and exits ``128 + signal`` after ``STOP_GRACE_S`` if no safe point
comes. Linux only for the ancestry walk (/proc).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

STOP_GRACE_S = float(os.environ.get("QUARRY_STOP_GRACE_S", "30"))  # a stop with no safe point: forced after this
POLL_S = 0.5  # the Ray driver wakes this often to look for a stop (ray.wait blocks in C++, where no handler runs)
_stops: list[int] = []  # stop signals received, in order
_deferring = [0]  # > 0 while a stage computes: a signal is recorded for the next safe point, not raised


def _stop_exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def stop_requested() -> int | None:
    """The first stop signal received in this process, or None."""
    return _stops[0] if _stops else None


def check_stop() -> None:
    """A safe point: raise the stop a signal asked for (``SystemExit(143)`` for SIGTERM, ``KeyboardInterrupt`` for
    SIGINT). Shards finished so far are written; a re-run resumes from them."""
    if _stops:
        raise _stop_exception(_stops[0])


def _force(signum: int) -> None:
    stop_descendants(grace_s=1.0)
    os._exit(128 + signum)


def _watchdog(signum: int) -> None:
    time.sleep(STOP_GRACE_S)
    _force(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM/SIGINT for a flow body: a signal that lands while a stage computes is recorded and raised at the
    stage's next safe point; elsewhere it goes on to the handler this replaced (Prefect's bridge, which marks the run
    crashed, or the CLI's). Either way it is recorded, so a stop that something swallows (Prefect runs internal calls
    on the main thread and keeps their exceptions) is raised again at the next stage (``flows.run.stage``) and at the
    end of the flow. A watchdog bounds it all; a second signal stops at once. Only the main thread can do this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        if _stops and signum in _stops:
            _force(signum)
        first = not _stops
        _stops.append(signum)
        if first:
            threading.Thread(target=_watchdog, args=(signum,), daemon=True, name="quarry-stop-watchdog").start()
        if _deferring[0]:
            return
        previous = outer[signum]
        if callable(previous):
            previous(signum, frame)
        if previous is not signal.SIG_IGN:
            raise _stop_exception(signum)

    installed = {sig: signal.signal(sig, handler) for sig, h in outer.items() if h is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, h in installed.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def safe_points() -> Iterator[None]:
    """A stage's compute: signals are recorded, ``check_stop`` raises them between shards."""
    check_stop()
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1


@contextlib.contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """``ray.init`` installs its own SIGTERM handlers in the driver (``sys.exit(15)``; for a local head node one
    that kills Ray's processes and exits 1, after which the core worker aborts: exit 134). Put back the ones we had:
    SIGTERM then unwinds the run and Ray's atexit ``ray.shutdown`` stops its processes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in saved.items():
            if h is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(sig, h)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) from /proc/<pid>/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``root`` (the start time tells a reused pid apart). Without
    /proc (macOS) this finds nothing and the owners' own atexit hooks, which the signal handlers let run, remain."""
    if not os.path.isdir("/proc"):
        return {}
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _proc_stat(int(name))) is not None:
            table[int(name)] = st
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, [root]
    while stack:
        for pid in children.get(stack.pop(), ()):
            if table[pid][0] != "Z" and pid not in found:
                found[pid] = table[pid][2]
                stack.append(pid)
    return found


def _reap_zombies() -> None:
    """Collect exited children (as a subreaper, orphans that exit become our zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_descendants(grace_s: float = 5.0) -> list[int]:
    """SIGTERM every live descendant, SIGKILL those still alive after ``grace_s``; returns the pids stopped."""
    me, stopped = os.getpid(), []
    for _ in range(3):  # a child that dies may leave grandchildren, re-parented to us: go round again
        procs = descendants(me)
        if not procs:
            break
        for pid in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            _reap_zombies()
            if not any(_alive(pid, start) for pid, start in procs.items()):
                break
            time.sleep(0.05)
        for pid, start in procs.items():
            if _alive(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        _reap_zombies()
        stopped += procs
    return stopped


def _alive(pid: int, start: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z" and st[2] == start
