"""Leases: a running flow tells `quarry gc` what it is using, so gc never deletes a version under a live run.

    with leases.holding(root, datasets=["tiny"], recipe="datasets_cfg/tiny.yaml") as lease:
        lease.add([input_ref])         # versions read from other datasets (an experiment's inputs)

One file per run, ``{root}/_leases/{run_id}.json``: run id, pid, host, recipe, the datasets the run writes, the
versions it read, and ``expires_at``. A daemon thread rewrites it (temp + rename, or one PUT) every ``TTL_S / 3``
while the run lives, and the run removes it when it ends. gc keeps, while a lease is live:

* every version (committed or not) of a leased dataset: a run may reuse or resume any of them at any moment (the
  executor decides inside the stage), so the whole dataset is the unit that is race-free without gc and runs
  talking to each other;
* every leased version and its lineage.

A lease is dead, and ignored, when its ``expires_at`` has passed, or its pid is gone on this host (a SIGKILLed run
renews nothing and removes nothing): a crashed run never blocks gc for longer than ``TTL_S``, and not at all here.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from storage.datasets import DatasetRef, filesystem
from storage.temporaries import HOST_TAG, pid_alive, tmp_name

DIR = "_leases"
# A live run renews every TTL_S / 3 (5 min); a run whose host is lost stops blocking gc 15 min later at most.
TTL_S = float(os.environ.get("QUARRY_LEASE_TTL_S", 15 * 60))
_CURRENT: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("quarry_lease", default=None)


def write_whole(fs, final: str, payload: bytes, *, exclusive: bool = False) -> bool:  # noqa: ANN001 - fsspec fs
    """Write a small file atomically, as storage/datasets.py writes shards: a temporary name then a rename (local,
    HDFS), or one PUT (object stores, where an upload becomes visible whole). ``exclusive``: only if ``final`` does
    not exist yet (``os.link`` fails for the loser of a race; object stores: a check, then the PUT). Returns whether
    it wrote."""
    fs.makedirs(posixpath.dirname(final), exist_ok=True)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local", "hdfs", "arrow_hdfs"):
        if exclusive and fs.exists(final):
            return False
        fs.pipe_file(final, payload)
        return True
    tmp = posixpath.join(posixpath.dirname(final), tmp_name(posixpath.basename(final)))
    with fs.open(tmp, "wb") as f:
        f.write(payload)
    try:
        if exclusive:
            os.link(fs._strip_protocol(tmp), fs._strip_protocol(final))
        else:
            fs.mv(tmp, final)
        return True
    except FileExistsError:
        return False
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def _dir(root: str) -> str:
    _, base = filesystem(root)
    return posixpath.join(base.rstrip("/"), DIR)


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat()


@dataclass
class Lease:
    root: str
    run_id: str
    datasets: list[str]
    recipe: str | None = None
    versions: list[str] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)
    host: str = HOST_TAG
    started_at: float = field(default_factory=_now)
    committed: list[str] = field(default_factory=list)  # versions this run committed (not written to the file)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> str:
        return posixpath.join(_dir(self.root), f"{self.run_id}.json")

    def to_json(self) -> dict:
        now = _now()
        return {"run_id": self.run_id, "pid": self.pid, "host": self.host, "recipe": self.recipe,
                "datasets": sorted(set(self.datasets)), "versions": sorted(set(self.versions)),
                "started_at": _iso(self.started_at), "renewed_at": _iso(now), "expires_at": _iso(now + TTL_S)}

    def write(self) -> None:
        with self._lock:
            fs, _ = filesystem(self.root)
            write_whole(fs, self.path, json.dumps(self.to_json()).encode())

    def add(self, refs: Iterable[DatasetRef | str | None]) -> None:
        """Lease more versions (a stage's inputs) before reading them; written at once, not at the next renewal."""
        new = [str(r) for r in refs if r is not None and str(r) not in self.versions]
        if new:
            self.versions.extend(new)
            self.write()

    def release(self) -> None:
        fs, _ = filesystem(self.root)
        with self._lock, contextlib.suppress(FileNotFoundError):
            fs.rm(self.path)


def current() -> Lease | None:
    """The lease of the run this code runs in (None outside ``holding``)."""
    return _CURRENT.get()


def lease_inputs(refs: Iterable[DatasetRef | None]) -> None:
    """Add versions a stage is about to read (possibly of other datasets) to the current run's lease, if any."""
    lease = current()
    if lease is not None:
        lease.add(refs)


@contextlib.contextmanager
def holding(root: str, datasets: Iterable[str], *, recipe: str | None = None, run_id: str | None = None,
            renew_s: float | None = None) -> Iterator[Lease]:
    """Hold a lease on ``datasets`` under ``root`` for the block, renewed in the background; released at the end."""
    lease = Lease(root, run_id or uuid.uuid4().hex, list(datasets), recipe)
    lease.write()
    stop = threading.Event()
    every = renew_s if renew_s is not None else TTL_S / 3

    def renew() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):  # a failed renewal is retried; expiry is the backstop
                lease.write()

    thread = threading.Thread(target=renew, name=f"lease-{lease.run_id[:8]}", daemon=True)
    thread.start()
    token = _CURRENT.set(lease)
    try:
        yield lease
    finally:
        _CURRENT.reset(token)
        stop.set()
        thread.join(timeout=5)
        lease.release()


# ------------------------------------------------------------------------------------------------------- reading


def is_live(entry: dict, now: float | None = None) -> bool:
    """A lease counts while it has not expired and, on this host, its process still runs."""
    now = _now() if now is None else now
    try:
        expires = _dt.datetime.fromisoformat(entry["expires_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return False
    if expires <= now:
        return False
    return not (entry.get("host") == HOST_TAG and not pid_alive(int(entry.get("pid") or 0)))


def read_all(root: str) -> list[dict]:
    """Every lease file under ``root`` with ``live`` set (dead ones are listed too: gc removes them)."""
    fs, _ = filesystem(root)
    out = []
    for path in sorted(fs.glob(posixpath.join(_dir(root), "*.json"))):
        if posixpath.basename(path).startswith("_"):
            continue  # a renewal's temporary
        try:
            with fs.open(path, "r") as f:
                entry = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        entry["path"], entry["live"] = path, is_live(entry)
        out.append(entry)
    return out


def live(root: str) -> list[dict]:
    return [e for e in read_all(root) if e["live"]]


def remove_dead(root: str) -> int:
    """Delete the lease files of dead runs; returns how many."""
    fs, _ = filesystem(root)
    n = 0
    for e in read_all(root):
        if not e["live"]:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(e["path"])
                n += 1
    return n
