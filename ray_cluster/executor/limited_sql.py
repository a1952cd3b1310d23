"""User SQL (filter rules) over one Arrow batch, in a child process with a hard time and memory bound.

Why a process and not DuckDB's own knobs: DuckDB has no statement timeout, and both in-process bounds fail on one
expression. Measured with DuckDB 2.0 on this machine: `len(list(range(600000000)))` allocates its 8 GiB list outside
the buffer manager, so `memory_limit = '100MB'` does not stop it, and `con.interrupt()` from a timer is only seen
between vectors, 166 s after a 20 s deadline. So the batch goes to a sandboxed DuckDB in a child whose address space
is capped (RLIMIT_AS: its size after start-up plus the budget; an allocation past it fails as DuckDB's
OutOfMemoryException instead of swapping the node) and the parent SIGKILLs it at the deadline. One child per worker
process, reused across batches (start-up ~0.5 s); a killed or dead child is replaced on the next call.

Wire format (pipes): parent -> child: 4-byte length + JSON header {sql, memory_bytes}, 8-byte length + Arrow IPC
stream of the batch; child -> parent: 4-byte length + JSON status {ok, kind, error}, then, if ok, 8-byte length +
Arrow IPC stream of the result.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time

import pyarrow as pa


class SqlLimitError(RuntimeError):
    """The SQL ran past its time or memory bound (``kind`` is "timeout" or "memory")."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    out = bytearray()
    while len(out) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def _child_env() -> dict[str, str]:
    """The environment the evaluator needs to start Python; nothing else (a worker's env holds API keys)."""
    keep = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "TMPDIR", "HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    # Arrow's jemalloc/mimalloc pools reserve address space in large arenas, which RLIMIT_AS would refuse for a
    # 320-byte allocation; the system allocator asks for what it uses
    env["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    return env


class _Child:
    def __init__(self, memory_bytes: int):
        self.memory_bytes = memory_bytes  # RLIMIT_AS can only go down: another budget needs another child
        # run this file as a script: the child imports duckdb and pyarrow, not the pipeline
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=_child_env())
        try:  # wait for it to be ready: its start-up (imports, DuckDB) is not the rule's time
            if _read_exact(self.proc.stdout.fileno(), 1, time.monotonic() + _START_S) != b"R":
                raise EOFError
        except (TimeoutError, EOFError):
            self.kill()
            raise RuntimeError(f"the SQL evaluator did not start within {_START_S} s") from None

    def call(self, sql: str, batch: pa.Table, memory_bytes: int, timeout_s: float | None) -> pa.Table:
        head = json.dumps({"sql": sql, "memory_bytes": memory_bytes}).encode()
        data = _ipc(batch)
        self.proc.stdin.write(struct.pack("<I", len(head)) + head + struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        fd = self.proc.stdout.fileno()
        (n,) = struct.unpack("<I", _read_exact(fd, 4, deadline))
        status = json.loads(_read_exact(fd, n, deadline))
        if not status["ok"]:
            if status["kind"] == "memory":
                raise SqlLimitError(status["error"], "memory")
            raise _ChildSqlError(status["kind"], status["error"])
        (n,) = struct.unpack("<Q", _read_exact(fd, 8, deadline))
        return pa.ipc.open_stream(_read_exact(fd, n, deadline)).read_all()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()


class _ChildSqlError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


_SLACK = 128 * 2**20  # the child's own Python and Arrow buffers beside the SQL's budget
_START_S = 120  # a cold start imports DuckDB and pyarrow: seconds on a loaded 2-core machine
_LOCK = threading.Lock()
_CHILD: _Child | None = None


def run_sql(sql: str, batch: pa.Table, *, timeout_s: float | None, memory_gb: float | None) -> pa.Table:
    """``sql`` over ``batch`` (registered as ``batch``) in the sandboxed child; SqlLimitError past either bound.
    A DuckDB error of the SQL itself (a missing column, a type error) is re-raised as the same duckdb exception
    type, so callers see what an in-process connection would have raised."""
    global _CHILD
    with _LOCK:
        memory_bytes = int(memory_gb * 2**30) if memory_gb else 0
        if _CHILD is not None and (_CHILD.proc.poll() is not None or _CHILD.memory_bytes != memory_bytes):
            _CHILD.kill()
            _CHILD = None
        if _CHILD is None:
            _CHILD = _Child(memory_bytes)
        child = _CHILD
        try:
            return child.call(sql, batch, memory_bytes, timeout_s)
        except TimeoutError:
            child.kill()
            _CHILD = None
            raise SqlLimitError(f"ran past the {timeout_s:g} s time limit", "timeout") from None
        except (EOFError, BrokenPipeError, struct.error, json.JSONDecodeError):
            code = child.proc.wait()
            child.kill()
            _CHILD = None
            # a capped child that dies (abort on an allocation DuckDB does not catch) has run out of memory
            limit = f"the {memory_gb:g} GB memory limit" if memory_gb else "an allocation failure"
            raise SqlLimitError(f"killed its evaluator (exit {code}), most likely at {limit}", "memory") from None
        except _ChildSqlError as e:
            import duckdb

            raise getattr(duckdb, e.kind, duckdb.Error)(str(e)) from None


# ------------------------------------------------------------------------------------------------------ the child


def _serve() -> None:
    import ctypes
    import resource

    try:  # die with the worker that started us (a SIGKILLed Ray worker must not leave a rule burning a core)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the closed stdin pipe still ends the child once the current statement returns
    if os.getppid() == 1:  # the parent died before prctl
        return
    import duckdb

    con = None
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    out.write(b"R")
    out.flush()
    while True:
        raw = inp.read(4)
        if len(raw) < 4:
            return
        head = json.loads(inp.read(struct.unpack("<I", raw)[0]))
        batch = pa.ipc.open_stream(inp.read(struct.unpack("<Q", inp.read(8))[0])).read_all()
        mem = head["memory_bytes"]
        if con is None:  # one sandboxed connection for the child's life: a rule is one SELECT, it keeps no state
            con = duckdb.connect()
            con.execute("SET threads = 1")  # one batch, one CPU, no thread stacks eating the address-space budget
            if mem:
                con.execute(f"SET memory_limit = '{mem // 2**20}MB'")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            con.sql("SELECT 1").fetchall()  # warm, so the baseline below holds DuckDB's own mappings
            if mem:  # once: RLIMIT_AS only goes down, so the parent starts a new child for another budget
                baseline = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
                cap = baseline + mem + _SLACK
                resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            con.register("batch", batch)
            try:
                result = con.sql(head["sql"]).to_arrow_table()
            finally:
                con.unregister("batch")
            body = _ipc(result)
            status = {"ok": True}
        except (duckdb.OutOfMemoryException, MemoryError) as e:
            status, body = {"ok": False, "kind": "memory", "error": str(e).splitlines()[0][:300]}, b""
        except duckdb.Error as e:
            status, body = {"ok": False, "kind": type(e).__name__, "error": str(e)[:2000]}, b""
        s = json.dumps(status).encode()
        out.write(struct.pack("<I", len(s)) + s)
        if status["ok"]:
            out.write(struct.pack("<Q", len(body)) + body)
        out.flush()


if __name__ == "__main__":
    _serve()
