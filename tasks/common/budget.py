"""Per-document budgets: one document must never stop a stage (issue 35).

A per-document kernel that is super-linear on some input shape (datatrove's Gopher repetition filter tokenizes with
spaCy: 32 KB of ``:`` took 85 s, 1 MB about a day) cannot be stopped by a flag it never checks, nor by SIGALRM
(Cython and C code run no Python signal handler, and a Ray task need not run in the main thread). So such a kernel
runs in a child process (`DeadlineWorker`): the batch goes over a pipe once, each result comes back as soon as it
is ready, and a document whose result is not back within ``timeout_s`` gets the child killed, the reason
``<prefix>_budget_timeout``, and a fresh child for the rest of the batch. A document longer than ``max_chars`` is
never sent (``<prefix>_budget_too_large``). The normal case pays one pickled copy of the batch and one child start
per worker process (kept for the next batch).

Kernels that are linear in the input (our RPv2 numba kernels, the dedup hashes) need no child: their worst case on
adversarial shapes is measured by benchmarks/adversarial.py.

    worker = DeadlineWorker("tasks.signals.datatrove_signals:_doc_signals")
    outcomes = worker.map(items, timeout_s=10.0)   # [(True, result) | (False, "timeout"|"error: ...")]
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import select
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
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
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
    return pickle.loads(_read_exact(fd, n))


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class DeadlineWorker:
    """Runs ``target`` ("module:function", one item -> one picklable result) in a child process, each item under a
    deadline. ``warm`` (optional, same form, no arguments) runs once in each new child before any deadline starts."""

    def __init__(self, target: str, warm: str | None = None):
        self.target, self.warm = target, warm
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.common.budget", self.target, self.warm or ""],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
        )
        try:
            ready = _read(proc.stdout.fileno(), STARTUP_TIMEOUT_S)
        except (TimeoutError, EOFError) as e:
            self._kill(proc)
            raise RuntimeError(f"budget child for {self.target} did not start ({type(e).__name__})") from None
        if ready != "ready":
            self._kill(proc)
            raise RuntimeError(f"budget child for {self.target} failed to start: {ready}")
        return proc

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            f.close()

    def close(self) -> None:
        if self._proc is not None:
            self._kill(self._proc)
            self._proc = None

    def map(self, items: Sequence[Any], timeout_s: float) -> list[tuple[bool, Any]]:
        """(True, result) per item, or (False, TIMEOUT) past ``timeout_s``, or (False, "error: <Type>") when the
        kernel raised or the child died on it; in item order. Each item's deadline starts when the previous result
        arrives, so the batch takes at most len(items) * timeout_s plus the work and a restart per timeout."""
        out: list[tuple[bool, Any]] = []
        while len(out) < len(items):
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            rest = list(items[len(out):])
            try:
                _write(self._proc.stdin.fileno(), rest)
            except OSError:  # the child died between batches: start another and resend
                self.close()
                continue
            for _ in rest:
                t0 = time.monotonic()
                try:
                    out.append(_read(self._proc.stdout.fileno(), timeout_s))
                except TimeoutError:
                    log.warning(f"{self.target}: document {len(out)} of the batch ran past its {timeout_s:g} s "
                                f"budget ({time.monotonic() - t0:.1f} s); killed, flagged, moving on")
                    out.append((False, TIMEOUT))
                    self.close()
                    break
                except EOFError:  # the kernel killed its process (segfault, OOM): that document's fault
                    out.append((False, "error: child died"))
                    self.close()
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


def _serve(target: str, warm: str) -> None:
    """The child: keep the real stdout for frames, send library chatter to stderr, answer batches until EOF."""
    _die_with_parent()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = sys.stdin.fileno()
    try:
        fn = _resolve(target)
        if warm:
            _resolve(warm)()
    except Exception as e:  # noqa: BLE001 - reported to the parent as a start failure
        _write(out_fd, f"{type(e).__name__}: {e}")
        return
    _write(out_fd, "ready")
    while True:
        try:
            items = _read(in_fd, None)
        except EOFError:
            return
        for item in items:
            try:
                result = (True, fn(item))
            except Exception as e:  # noqa: BLE001 - one document's crash is that document's reason
                result = (False, f"error: {type(e).__name__}")
            _write(out_fd, result)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
