"""The children of `quarry run`: stop every process a run started, also when the run is killed.

A run starts processes it does not own the code of: Prefect's ephemeral API server (uvicorn), Ray's raylet and
workers, a Dask LocalCluster. Their owners stop them from atexit hooks, which a default SIGTERM never runs: the
process just dies and its children are re-parented to init, still holding ports and files. So `run` becomes a
child subreaper (orphaned grandchildren are re-parented to it, not to init), turns SIGTERM/SIGINT into a normal
unwinding exit (Prefect marks the run crashed, the owners' atexit hooks run) and, last of all at exit, stops
whatever descendant is still alive. A second signal, or a shutdown that hangs STOP_GRACE_S, stops them at once.

    previous = supervise.start()     # before any child exists
    ...                              # run the flow
    supervise.restore(previous)      # finished normally: hand the signals back

Linux only for the subreaper and the ancestry walk (/proc); elsewhere the signal handlers still let the owners'
atexit hooks run.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time

from ray_cluster.stopping import descendants, stop_descendants  # noqa: F401 - descendants: supervise's API too

STOP_GRACE_S = 30.0
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def start() -> dict:
    """Become a subreaper, install the stop handlers, and stop every descendant at exit; returns the handlers
    replaced (for ``restore``)."""
    become_subreaper()
    previous = install_stop_handlers()
    # registered before any child exists, so it runs after the children's owners' own atexit hooks (LIFO)
    atexit.register(stop_descendants)
    return previous


def restore(previous: dict) -> None:
    """Hand the signals back to the handlers ``start`` replaced (an in-process caller's)."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the ancestry walk below still finds live children
        pass


def install_stop_handlers() -> dict:
    """SIGTERM/SIGINT unwind the run (SystemExit / KeyboardInterrupt) so every cleanup hook runs; a second signal
    or a stuck shutdown stops the children and exits at once. Returns the handlers it replaced."""
    first: list[int] = []

    def force(signum: int) -> None:
        stop_descendants(grace_s=1.0)
        os._exit(128 + signum)

    def watchdog(signum: int) -> None:
        time.sleep(STOP_GRACE_S)
        force(signum)

    def handler(signum: int, frame) -> None:  # noqa: ANN001 - the signal module's signature
        if first:
            force(signum)
        first.append(signum)
        threading.Thread(target=watchdog, args=(signum,), daemon=True, name="quarry-stop-watchdog").start()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup / a background job asked to ignore it: keep that
            previous[sig] = signal.signal(sig, handler)
    return previous
