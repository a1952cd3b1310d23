"""Progress of long stages, seen where the run is watched: the console, a Ray Job's log and Prefect's run logs.

Prefect's run logs get what the *driver* logs on the ``quarry`` logger (PREFECT_LOGGING_EXTRA_LOGGERS=quarry, see
flows/runinfo.py). Ray forwards a worker's stderr to the driver's console only (never through the driver's logging,
so never to Prefect), and a worker's ``quarry`` logger sits at the root's WARNING: an INFO line there is dropped.
So work running on Ray workers sends its progress to the driver through Ray's GCS key-value store (the store every
worker already talks to; a put is one small RPC), and the driver's ``relaying`` thread logs it:

* ``shard_rows(channel, shard, done, total)``: a shard worker's rows done of its rows; the driver sums them over the
  stage's shards and logs ``<stage>: 1,200/5,000 rows (24 %), 1/3 shards, 35 s elapsed, about 110 s left`` every
  ``$QUARRY_PROGRESS_LOG_S`` seconds (10).
* ``forwarding(fn)``: ``fn`` run on a worker sends every ``quarry`` log line it makes (a training step, a k-means
  iteration, an evaluation task) to the driver, which logs it as it arrives.

Run in the driver's own process (the serial profile, ``driver`` stages, off Ray), the same calls go straight to the
logger and to an in-process table: nothing travels. A Dask worker has no channel back: its shards report when they
finish (ray_cluster.runtime's shard lines).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

log = logging.getLogger("quarry")
NAMESPACE = "quarry_progress"
_WORKER_PUT_S = 1.0  # a shard worker sends its row count at most once a second (plus its last batch)
_local_rows: dict[str, dict[str, tuple[int, int]]] = {}  # channel -> shard -> (done, total), in the driver
_relayed: set[str] = set()  # channels this process relays (a worker running inside the driver reports locally)
_current: str | None = None  # the channel of the stage this process is running (driver or worker)
_last_put: dict[tuple[str, str], float] = {}
_lock = threading.Lock()


def every_s() -> float:
    """Seconds between progress lines: ``$QUARRY_PROGRESS_LOG_S`` (10: a steady cadence without flooding logs)."""
    try:
        return max(0.0, float(os.environ.get("QUARRY_PROGRESS_LOG_S", "10")))
    except ValueError:
        return 10.0


def _kv():
    """Ray's GCS key-value store when this process is connected to a Ray cluster, else None."""
    if "ray" not in sys.modules:  # not imported: not connected (and importing it here would stall a poll seconds)
        return None
    try:
        from ray.experimental import internal_kv
    except ImportError:
        return None
    return internal_kv if internal_kv._internal_kv_initialized() else None


def shard_rows(channel: str | None, shard: str, done: int, total: int) -> None:
    """A shard worker: ``done`` of the shard's ``total`` input rows are processed (throttled; the last one is sent)."""
    if not channel:
        return
    if channel in _relayed:
        with _lock:
            _local_rows.setdefault(channel, {})[shard] = (done, total)
        return
    now, key = time.monotonic(), (channel, shard)
    if done < total and now - _last_put.get(key, 0.0) < _WORKER_PUT_S:
        return
    _last_put[key] = now
    kv = _kv()
    if kv is not None:
        with contextlib.suppress(Exception):  # progress never fails a shard
            kv._internal_kv_put(f"{channel}/rows/{shard}", json.dumps([done, total]), overwrite=True,
                                namespace=NAMESPACE)


class _Forward(logging.Handler):
    """On a worker: every ``quarry`` record becomes a key the driver's relay logs in order, then deletes."""

    def __init__(self, channel: str):
        super().__init__(logging.INFO)
        self.channel, self.seq = channel, 0

    def emit(self, record: logging.LogRecord) -> None:
        kv = _kv()
        if kv is None:
            return
        self.seq += 1
        key = f"{self.channel}/log/{time.time_ns():020d}-{os.getpid()}-{self.seq:08d}"
        with contextlib.suppress(Exception):
            kv._internal_kv_put(key, record.getMessage(), overwrite=True, namespace=NAMESPACE)


def forwarding(fn: Callable) -> Callable:
    """``fn`` wrapped so that, run on another process of the Ray cluster, its ``quarry`` log lines reach this
    process's relay (the channel this process is relaying now; unchanged when there is none)."""
    if _current is None:
        return fn
    channel, driver_pid, every = _current, os.getpid(), every_s()

    @functools.wraps(fn)
    def forwarded(*args: Any, **kwargs: Any) -> Any:  # a function, not a partial: ray.remote takes only those
        return _forwarded(channel, driver_pid, every, fn, *args, **kwargs)

    return forwarded


def _forwarded(channel: str, driver_pid: int, every: float, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    global _current
    if os.getpid() == driver_pid:  # ran in the driver after all (serial profile): its lines are logged directly
        return fn(*args, **kwargs)
    handler, level, previous = _Forward(channel), log.level, _current
    cadence = os.environ.get("QUARRY_PROGRESS_LOG_S")
    os.environ["QUARRY_PROGRESS_LOG_S"] = str(every)  # the driver's cadence: a worker never saw the client's env
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    _current = channel  # nested work (a training task started from a global stage's worker) forwards too
    try:
        return fn(*args, **kwargs)
    finally:
        _current = previous
        log.removeHandler(handler)
        log.setLevel(level)
        if cadence is None:
            os.environ.pop("QUARRY_PROGRESS_LOG_S", None)
        else:
            os.environ["QUARRY_PROGRESS_LOG_S"] = cadence


class _Relay:
    def __init__(self, channel: str, desc: str, rows: Mapping[str, int] | None, every: float):
        self.channel, self.desc, self.every = channel, desc, every
        self.rows = dict(rows or {})
        self.start = self.logged = time.monotonic()
        self.stop = threading.Event()

    def poll(self, final: bool = False) -> None:
        kv = _kv()
        shards: dict[str, tuple[int, int]] = dict(_local_rows.get(self.channel, {}))
        if kv is not None:
            with contextlib.suppress(Exception):
                for key in sorted(kv._internal_kv_list(f"{self.channel}/", namespace=NAMESPACE)):
                    name = key.decode() if isinstance(key, bytes) else key
                    value = kv._internal_kv_get(name, namespace=NAMESPACE)
                    if value is None:
                        continue
                    part, _, rest = name[len(self.channel) + 1:].partition("/")
                    if part == "log":
                        log.info(value.decode())
                        kv._internal_kv_del(name, namespace=NAMESPACE)
                    elif part == "rows":
                        shards[rest] = tuple(json.loads(value))
        now = time.monotonic()
        if self.rows and not final and now - self.logged >= self.every:
            self.logged = now
            log.info(self.rows_line(shards, now))

    def rows_line(self, shards: Mapping[str, tuple[int, int]], now: float) -> str:
        total = sum(self.rows.values())
        done = sum(min(d, self.rows.get(s, t)) for s, (d, t) in shards.items() if s in self.rows)
        finished = sum(1 for s, (d, t) in shards.items() if s in self.rows and d >= t)
        elapsed = now - self.start
        line = (f"{self.desc}: {done:,}/{total:,} rows ({100 * done // max(1, total)} %), "
                f"{finished}/{len(self.rows)} shards, {elapsed:.0f} s elapsed")
        if 0 < done < total:
            line += f", about {elapsed / done * (total - done):.0f} s left"
        return line

    def run(self) -> None:
        while not self.stop.wait(min(1.0, self.every or 1.0)):
            self.poll()


@contextlib.contextmanager
def relaying(channel: str, desc: str, rows: Mapping[str, int] | None = None) -> Iterator[str]:
    """In the driver, around a stage: log what its workers send on ``channel`` (their log lines as they come; with
    ``rows`` = shard -> input rows, a rows-done line every ``every_s()``), then, on exit, what is left: every line
    a worker sent is logged before the stage's own last line."""
    global _current
    relay = _Relay(channel, desc, rows, every_s())
    previous, _current = _current, channel
    _relayed.add(channel)
    # the thread logs in this context: Prefect's API handler sends a record only inside a flow/task run's context
    thread = threading.Thread(target=contextvars.copy_context().run, args=(relay.run,),
                              name=f"quarry-progress-{desc}", daemon=True)
    thread.start()
    try:
        yield channel
    finally:
        relay.stop.set()
        thread.join(timeout=10)
        relay.poll(final=True)
        _current = previous
        _relayed.discard(channel)
        _local_rows.pop(channel, None)
        kv = _kv()
        if kv is not None:
            with contextlib.suppress(Exception):
                kv._internal_kv_del(f"{channel}/", del_by_prefix=True, namespace=NAMESPACE)

