"""Temporary files of in-flight writes, tagged with their writer, and which of them a committer may remove.

Shards and manifests are written under ``_tmp.{pid}@{host}.{uuid}.{name}`` and renamed into place. Two runs may write
the same version at once (two flow runs, a retried Prefect task beside its original), so a committer may only
remove temporaries that are provably abandoned: the writer's process is gone (same host), or the file is older
than a lease no single shard write outlives (other hosts, and pid reuse). Untagged ones predate owner tags.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import posixpath
import re
import socket
import time
import uuid
from typing import Any

TMP_PREFIX = "_tmp."
TMP_LEASE_S = 6 * 3600
_TMP_RE = re.compile(r"^_tmp\.(\d+)@([0-9a-f]{8})\.[0-9a-f]{32}\.")
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def tmp_name(name: str) -> str:
    """A temporary name for ``name`` tagged with this process as its owner."""
    return f"{TMP_PREFIX}{os.getpid()}@{HOST_TAG}.{uuid.uuid4().hex}.{name}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_abandoned(name: str, mtime: float | None, now: float | None = None) -> bool:
    """Whether a temporary file may be removed: its owner is provably gone, or its lease ran out."""
    now = time.time() if now is None else now
    if mtime is not None and now - mtime > TMP_LEASE_S:
        return True
    m = _TMP_RE.match(name)
    if m is None:
        return not name.startswith(f"{TMP_PREFIX}probe-")  # probes are removed by their writer
    pid, host = int(m.group(1)), m.group(2)
    return host == HOST_TAG and pid != os.getpid() and not pid_alive(pid)


def clean_folder(fs: Any, base: str) -> int:
    """Remove the abandoned temporaries in one folder (never a live writer's); returns how many."""
    if not fs.exists(base):
        return 0
    removed = 0
    for info in fs.ls(base, detail=True):
        name = posixpath.basename(info["name"])
        if not name.startswith(TMP_PREFIX):
            continue
        mtime = info.get("mtime") or info.get("created")
        if isinstance(mtime, _dt.datetime):
            mtime = mtime.timestamp()
        if is_abandoned(name, mtime):
            try:
                fs.rm(info["name"])
                removed += 1
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                pass
    return removed
