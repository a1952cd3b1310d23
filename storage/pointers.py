"""Which version of each dataset/stage is current: an explicit pointer that runs move, never "the newest file".

Layout, beside the datasets (``_`` names can never be a dataset, which must start with a letter):

    {root}/_pointers/{dataset}/{stage}/{moved_ns:020d}-{uuid}.json   one file per move: the pointer's history
    {root}/_pointers/{dataset}/_owner.json                           the recipe that owns the dataset

* A move is one new file, written under a temporary name and renamed (local) or PUT in one request (object
  stores), exactly as storage/datasets.py writes shards: a reader never sees half a pointer, and two runs moving
  the same pointer at once write two files and never overwrite (so never corrupt) each other. The current pointer
  is the newest move (names sort by time, the uuid breaks ties); the history is every move, queryable in DuckDB
  (storage/catalog.py's ``pointers`` and ``pointer_history``).
* A move records why (``commit``: the run wrote the version; ``reuse``: it found it committed; ``adopt``: gc
  fixed the newest-created_at fallback of a root from before pointers) and the run: run id, pid, host, flow run,
  recipe path and hash.
* A root from before pointers has none: ``current`` falls back to the newest created_at (the old rule) until the
  first move, and `quarry gc` adopts that fallback as a pointer before it decides, so it stays put from then on.
* Ownership: the first run that writes a dataset claims it for its recipe (exclusive create: ``os.link`` locally,
  a conditional PUT-if-absent elsewhere); a run of another recipe is refused unless that recipe says
  ``same_dataset_as: <the owner's path>`` (datasets_cfg), so two recipes never mix silently in one dataset's views.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterable

from storage import datasets, leases
from storage.datasets import DatasetRef, filesystem
from storage.leases import write_whole
from storage.provenance import run_context
from storage.temporaries import HOST_TAG

DIR = "_pointers"
OWNER = "_owner.json"
REASONS = ("commit", "reuse", "adopt")


class OwnershipError(RuntimeError):
    """A recipe writes a dataset another recipe owns, without saying it is the same dataset."""


def _dir(root: str, *parts: str) -> str:
    _, base = filesystem(root)
    return posixpath.join(base.rstrip("/"), DIR, *parts)


def _run_fields() -> dict:
    run = run_context()
    lease = leases.current()
    return {
        "run_id": lease.run_id if lease else (run.get("flow_run_id") or f"pid-{os.getpid()}@{HOST_TAG}"),
        "pid": os.getpid(),
        "host": HOST_TAG,
        **{k: run.get(k) for k in ("flow_run_id", "flow_run_name", "recipe", "recipe_hash") if run.get(k)},
    }


def move(ref: DatasetRef, reason: str) -> dict:
    """Point ``ref.dataset/ref.stage`` at ``ref`` (a committed version); returns the move as recorded."""
    if reason not in REASONS:
        raise ValueError(f"a pointer moves for {REASONS}, not {reason!r}")
    if not datasets.is_committed(ref):
        raise FileNotFoundError(f"cannot point {ref.dataset}/{ref.stage} at {ref}: it is not committed")
    now = time.time_ns()
    entry = {
        "dataset": ref.dataset, "stage": ref.stage, "version": ref.version, "reason": reason,
        "moved_at": _dt.datetime.fromtimestamp(now / 1e9, _dt.timezone.utc).isoformat(), **_run_fields(),
    }  # fmt: skip
    fs, _ = filesystem(ref.root)
    name = f"{now:020d}-{uuid.uuid4().hex}.json"
    write_whole(fs, posixpath.join(_dir(ref.root, ref.dataset, ref.stage), name), json.dumps(entry).encode())
    return entry


def staged(ref: DatasetRef, outputs: Iterable[str] = ()) -> None:
    """After a flow's stage: point its dataset/stage and its committed side outputs at the version the run committed
    (``commit``) or found committed (``reuse``), and lease them. Outside a run (no lease: a notebook, a test driving
    one stage) nothing moves, so such a run never changes what the views show."""
    lease = leases.current()
    if lease is None:
        return
    for r in (ref, *(ref.sibling(o) for o in outputs)):
        if datasets.is_committed(r):
            move(r, "commit" if str(r) in lease.committed else "reuse")
            lease.add([r])


def history(root: str, dataset: str | None = None, stage: str | None = None) -> list[dict]:
    """Every move under ``root`` (of one dataset, or one dataset/stage), oldest first."""
    fs, _ = filesystem(root)
    pattern = _dir(root, dataset or "*", stage or "*", "*.json")
    out = []
    for path in sorted(fs.glob(pattern), key=posixpath.basename):
        name = posixpath.basename(path)
        if name == OWNER or name.startswith("_"):
            continue
        try:
            with fs.open(path, "r") as f:
                entry = json.load(f)
        except (OSError, json.JSONDecodeError):  # cannot happen for a renamed file; skip rather than fail a reader
            continue
        entry["seq"] = name.split("-", 1)[0]
        out.append(entry)
    out.sort(key=lambda e: (e["seq"], e.get("run_id") or ""))
    return out


def current(root: str, manifests: Iterable[dict] | None = None, dataset: str | None = None,
            stage: str | None = None) -> dict[tuple[str, str], dict]:
    """(dataset, stage) -> the newest move whose version is still committed; stages without one fall back to the
    newest created_at (``reason``: ``newest`` - a root from before pointers, or a version written outside a run)."""
    manifests = list(datasets.iter_manifests(root) if manifests is None else manifests)
    committed = {(m["dataset"], m["stage"], m["version"]) for m in manifests}
    out: dict[tuple[str, str], dict] = {}
    for e in history(root, dataset, stage):
        if (e["dataset"], e["stage"], e["version"]) in committed:  # a pointer at a deleted version does not count
            out[(e["dataset"], e["stage"])] = e
    for m in manifests:
        key = (m["dataset"], m["stage"])
        held = out.get(key)
        if held is None or (held["reason"] == "newest" and m["created_at"] > held["created_at"]):
            out[key] = {"dataset": key[0], "stage": key[1], "version": m["version"], "reason": "newest",
                        "created_at": m["created_at"]}
    return out


def latest(root: str, dataset: str, stage: str) -> DatasetRef | None:
    """The current version of a dataset/stage: its pointer, else (no pointer yet) the newest created_at."""
    manifests = [m for m in datasets.iter_manifests(root) if m["dataset"] == dataset and m["stage"] == stage]
    hit = current(root, manifests, dataset, stage).get((dataset, stage))
    return DatasetRef(root, dataset, stage, hit["version"]) if hit else None


def adopt(root: str) -> list[dict]:
    """Write a pointer for every dataset/stage that has none (the newest created_at, as before pointers): gc does
    this before it decides, so an old root's choice is fixed once and pointers take over from then on."""
    return [move(DatasetRef(root, d, s, e["version"]), "adopt")
            for (d, s), e in sorted(current(root).items()) if e["reason"] == "newest"]


# ---------------------------------------------------------------------------------------------------- ownership


def owner(root: str, dataset: str) -> dict | None:
    fs, _ = filesystem(root)
    path = _dir(root, dataset, OWNER)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def claim(root: str, dataset: str, recipe: str, same_as: str | None = None, recipe_hash: str | None = None) -> dict:
    """Claim ``dataset`` for ``recipe`` (a stable recipe identity: its path), or check the claim already there.

    Another recipe may write the dataset only if one of the two says ``same_dataset_as`` the other (or both name
    the same recipe); otherwise ``OwnershipError`` names both recipes and the two ways out."""
    fs, _ = filesystem(root)
    entry = {"dataset": dataset, "recipe_hash": recipe_hash, **_run_fields(), "recipe": recipe,
             "same_dataset_as": same_as, "claimed_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    write_whole(fs, _dir(root, dataset, OWNER), json.dumps(entry).encode(), exclusive=True)
    held = owner(root, dataset)
    # one family of recipes: this one is the owner or names it, or the owner named this one, or both name the same
    if held is None or ({held["recipe"], held.get("same_dataset_as")} & {recipe, same_as}) - {None}:
        return held or entry
    raise OwnershipError(
        f"dataset {dataset!r} under {root} belongs to recipe {held['recipe']} (claimed {held.get('claimed_at')}); "
        f"recipe {recipe} writes it too. If it is the same dataset, add `same_dataset_as: {held['recipe']}` to "
        f"{recipe}; otherwise give it another `dataset:` name"
    )
