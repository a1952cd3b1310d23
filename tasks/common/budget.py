"""Per-document budgets: one document must never stop a stage (issue 35).

A per-document kernel that is super-linear on some input shape (datatrove's Gopher repetition filter tokenizes with
spaCy: 32 KB of ``:`` took 85 s, 1 MB about a day) cannot be stopped by a flag it never checks, nor by SIGALRM
(Cython and C code run no Python signal handler, and a Ray task need not run in the main thread). So such a kernel
runs in a child process (`DeadlineWorker`): the batch goes over a pipe once, each result comes back as soon as it
is ready, and a document whose result is not back within ``timeout_s`` gets the child killed, the reason
``<prefix>_budget_timeout``, and a fresh child (a fork of a warm zygote) for the rest of the batch. A document longer than ``max_chars`` is
never sent (``<prefix>_budget_too_large``). The normal case pays one JSON copy of the batch and one child start
per worker process (kept for the next batch).

Kernels that are linear in the input (our RPv2 numba kernels, the dedup hashes) need no child: their worst case on
adversarial shapes is measured by benchmarks/adversarial.py.

    worker = DeadlineWorker("tasks.signals.datatrove_signals:_doc_signals")
    outcomes = worker.map(items, timeout_s=10.0)   # [(True, result) | (False, "timeout"|"error: ...")]
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("quarry")

TIMEOUT = "timeout"
_HEADER = struct.Struct("<Q")
STARTUP_TIMEOUT_S = 300.0  # the child's imports and warm-up (spaCy models) are not a document's fault


def _write(fd: int, obj: Any) -> None:
    # JSON, not pickle: documents are user input, and nothing read from a pipe may run code (test_security).
    # ASCII escapes keep lone surrogates (they reach us from hostile inputs) through the round trip.
    data = json.dumps(obj, ensure_ascii=True).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the budget child closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read(fd: int, timeout_s: float | None) -> Any:
    """The next frame from ``fd``, or TimeoutError when none starts within ``timeout_s``."""
    ready, _, _ = select.select([fd], [], [], timeout_s)
    if not ready:
        raise TimeoutError
    (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return json.loads(_read_exact(fd, n))


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class DeadlineWorker:
    """Runs ``target`` ("module:function", one item -> one JSON-serializable result) in a child process, each item under a
    deadline. ``warm`` (optional, same form, no arguments) runs once before any deadline starts.

    The imports and the warm-up happen once, in a zygote process; each worker is a fork of it (milliseconds), so a
    timeout costs the budget and a fork, not a fresh start (spaCy's load: 8 s quiet, 30 s on a loaded machine)."""

    def __init__(self, target: str, warm: str | None = None):
        self.target, self.warm = target, warm
        self._zygote: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._pid: int | None = None

    def _start_zygote(self) -> None:
        self.close()
        parent, child = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._zygote = subprocess.Popen(
            [sys.executable, "-m", "tasks.common.budget", self.target, self.warm or "", str(child.fileno())],
            pass_fds=(child.fileno(),), env=env,
        )
        child.close()
        self._control = parent
        try:
            ready = _read(parent.fileno(), STARTUP_TIMEOUT_S)
        except (TimeoutError, EOFError) as e:
            self.close()
            raise RuntimeError(f"budget zygote for {self.target} did not start ({type(e).__name__})") from None
        if ready != "ready":
            self.close()
            raise RuntimeError(f"budget zygote for {self.target} failed to start: {ready}")

    def _fork_worker(self) -> None:
        if self._zygote is None or self._zygote.poll() is not None:
            self._start_zygote()
        mine, theirs = socket.socketpair()
        try:
            socket.send_fds(self._control, [b"fork"], [theirs.fileno()])
            self._pid = _read(self._control.fileno(), STARTUP_TIMEOUT_S)
        except (OSError, TimeoutError, EOFError):  # the zygote died: start another next time
            mine.close()
            self.close()
            raise
        finally:
            theirs.close()
        self._conn = mine

    def _drop_worker(self) -> None:
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._pid = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop_worker()
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait()
            self._zygote = None
        if self._control is not None:
            self._control.close()
            self._control = None

    def map(self, items: Sequence[Any], timeout_s: float) -> list[tuple[bool, Any]]:
        """(True, result) per item, or (False, TIMEOUT) past ``timeout_s``, or (False, "error: <Type>") when the
        kernel raised or the worker died on it; in item order. Each item's deadline starts when the previous result
        arrives, so the batch takes at most len(items) * timeout_s plus the work and a fork per timeout."""
        out: list[tuple[bool, Any]] = []
        retries = 0
        while len(out) < len(items):
            if self._conn is None:
                try:
                    self._fork_worker()
                except (OSError, TimeoutError, EOFError):
                    retries += 1
                    if retries > 2:
                        raise
                    continue
            rest = list(items[len(out):])
            try:
                _write(self._conn.fileno(), rest)
            except OSError:  # the worker died between batches: fork another and resend
                self._drop_worker()
                continue
            for _ in rest:
                t0 = time.monotonic()
                try:
                    out.append(_read(self._conn.fileno(), timeout_s))
                except TimeoutError:
                    log.warning(f"{self.target}: document {len(out)} of the batch ran past its {timeout_s:g} s "
                                f"budget ({time.monotonic() - t0:.1f} s); killed, flagged, moving on")
                    out.append((False, TIMEOUT))
                    self._drop_worker()
                    break
                except (EOFError, OSError):  # the kernel killed its process (segfault, OOM): that document's fault
                    out.append((False, "error: child died"))
                    self._drop_worker()
                    break
        return out


def _die_with_parent() -> None:
    """A parent killed mid-document must not leave its child computing for a day: Linux PR_SET_PDEATHSIG (1)
    sends SIGKILL (9) to the child then; elsewhere the child ends at its next read (EOF)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _answer(fd: int, fn) -> None:
    """A worker: answer batches on ``fd`` until EOF."""
    while True:
        try:
            items = _read(fd, None)
        except EOFError:
            return
        for item in items:
            try:
                result = (True, fn(item))
            except Exception as e:  # noqa: BLE001 - one document's crash is that document's reason
                result = (False, f"error: {type(e).__name__}")
            _write(fd, result)


def _zygote(target: str, warm: str, control_fd: int) -> None:
    """Import and warm once, then fork one worker per request (a socket end passed over ``control``)."""
    _die_with_parent()
    os.dup2(2, 1)  # library chatter on stdout goes to stderr
    control = socket.socket(fileno=control_fd)
    try:
        fn = _resolve(target)
        if warm:
            _resolve(warm)()
    except Exception as e:  # noqa: BLE001 - reported to the parent as a start failure
        _write(control_fd, f"{type(e).__name__}: {e}")
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel; the parent kills them by pid
    _write(control_fd, "ready")
    while True:
        msg, fds, _, _ = socket.recv_fds(control, 16, 1)
        if not msg or not fds:
            return
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _die_with_parent()
            try:
                _answer(fds[0], fn)
            finally:
                os._exit(0)
        os.close(fds[0])
        _write(control_fd, pid)


if __name__ == "__main__":
    _zygote(sys.argv[1], sys.argv[2], int(sys.argv[3]))
