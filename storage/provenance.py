"""Which run made a version (flow run, deployment, Ray job, recipe, git commit), recorded in every manifest.

Only ``RUN_KEYS`` are ever recorded and URL credentials are stripped: a run context is provenance, never
configuration, so nothing secret can ride along.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# Only these keys are recorded: a run context is provenance, never configuration, so nothing secret can ride along.
RUN_KEYS = (
    "flow", "flow_run_id", "flow_run_name", "deployment", "deployment_id", "run_url",
    "ray_job_id", "recipe", "recipe_hash", "profile",
)  # fmt: skip
RUN_CONTEXT_ENV = "QUARRY_RUN_CONTEXT"  # JSON object with RUN_KEYS (set for a Ray Job's driver, for example)
_RUN: contextvars.ContextVar[dict | None] = contextvars.ContextVar("quarry_run", default=None)
_CREDENTIALS_RE = re.compile(r"://[^/@\s]+@")


def _clean_run(fields: dict) -> dict:
    out = {}
    for k, v in fields.items():
        if k in RUN_KEYS and v not in (None, ""):
            v = str(v)
            out[k] = _CREDENTIALS_RE.sub("://", v)  # a URL's user:password@ never reaches a manifest
    return out


def run_context() -> dict:
    """The current run's provenance: ``$QUARRY_RUN_CONTEXT`` and ``$RAY_JOB_ID`` under what ``using_run`` set."""
    merged: dict = {}
    with contextlib.suppress(json.JSONDecodeError, TypeError):
        env = json.loads(os.environ.get(RUN_CONTEXT_ENV) or "{}")
        if isinstance(env, dict):
            merged.update(env)
    if "ray_job_id" not in merged:
        merged["ray_job_id"] = os.environ.get("RAY_JOB_ID") or _ray_submission_id()
    current = _RUN.get()
    if current:
        merged.update(current["fields"])
    return _clean_run(merged)


def _ray_submission_id() -> str | None:
    """A Ray Job driver's submission id: Ray hands the job's metadata to its entrypoint in this variable."""
    with contextlib.suppress(json.JSONDecodeError, TypeError, AttributeError):
        return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("metadata", {}).get(
            "job_submission_id"
        )
    return None


@contextlib.contextmanager
def using_run(**fields: Any) -> Iterator[list[str]]:
    """Record ``fields`` (a subset of RUN_KEYS) in every manifest committed inside the block; yields the list of
    versions committed meanwhile (``dataset/stage/version``), for a run's summary. Blocks nest (a subflow)."""
    outer = _RUN.get()
    committed: list[str] = []
    token = _RUN.set({"fields": {**(outer["fields"] if outer else {}), **fields}, "committed": committed})
    try:
        yield committed
    finally:
        _RUN.reset(token)


def note_committed(ref: str) -> None:
    """A version (``dataset/stage/version``) was committed inside the current ``using_run`` block."""
    current = _RUN.get()
    if current is not None:
        current["committed"].append(ref)
