"""Which committed versions `quarry gc` keeps, and why: a pure policy over the catalog's rows.

    referenced, missing = gc.references(configured, recorded, writes)
    decisions = gc.decide(versions, referenced, missing)      # ref -> Decision(keep, reason)

A dataset is referenced when a recipe writes it: one in datasets_cfg/ (``configured``), or one its manifests recorded
(``run.recipe``) that still exists and still writes it. Of a referenced dataset the current version of every stage -
the one its pointer names (storage/pointers.py), else the newest created_at - is kept, with its whole lineage (which
may cross datasets). Live leases (storage/leases.py) keep every version of the datasets a running flow writes and
every version it read, with their lineage. Every other version is deleted, with the reason. ``decide`` reads no
recipe and no store: the caller gathers the recipes (datasets_cfg), the versions (storage.catalog), the pointers and
the leases. ``abandoned`` lists the uncommitted version folders of dead runs (no live lease on their dataset, nothing
written for ``grace_s``), which no manifest names, so ``decide`` never sees them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str


def references(
    configured: Iterable[tuple[str, Iterable[str]]],
    recorded: Mapping[str, Sequence[str]],
    writes: Mapping[str, Iterable[str] | None],
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(dataset -> why it is referenced, dataset -> recorded recipes that no longer reference it).

    ``configured``: (label, datasets it writes) per recipe of datasets_cfg/, in order (the first label wins);
    ``recorded``: dataset -> the recipes its manifests recorded; ``writes``: recorded recipe -> the datasets it writes
    now, None when the file is gone."""
    referenced: dict[str, str] = {}
    for label, names in configured:
        for name in names:
            referenced.setdefault(name, label)
    missing: dict[str, list[str]] = {}
    for dataset, recipes in recorded.items():
        for recipe in recipes:
            now = writes.get(recipe)
            if now is not None and dataset in set(now):
                referenced.setdefault(dataset, f"recipe {recipe} (recorded in its manifests)")
            else:
                missing.setdefault(dataset, []).append(recipe)
    return referenced, missing


def lineage(ref: str, parents: Mapping[str, Sequence[str]]) -> list[str]:
    """``ref`` and every version it was derived from (recursive over ``parents``), once each, nearest first."""
    seen, frontier = {ref: None}, [ref]
    while frontier:
        nxt = []
        for r in frontier:
            for p in parents.get(r, ()):
                if p not in seen:
                    seen[p] = None
                    nxt.append(p)
        frontier = nxt
    return list(seen)


def latest(versions: Sequence[Mapping]) -> dict[tuple[str, str], str]:
    """(dataset, stage) -> the version created last."""
    best: dict[tuple[str, str], Mapping] = {}
    for v in versions:
        key = (v["dataset"], v["stage"])
        if key not in best or v["created_at"] > best[key]["created_at"]:
            best[key] = v
    return {k: v["version"] for k, v in best.items()}


def lease_reasons(live: Sequence[Mapping]) -> tuple[dict[str, str], dict[str, str]]:
    """(dataset -> why, ref -> why) from live lease entries (storage/leases.py ``live``)."""
    datasets: dict[str, str] = {}
    refs: dict[str, str] = {}
    for e in live:
        why = f"leased by run {e['run_id']} (pid {e.get('pid')} on {e.get('host')}, until {e.get('expires_at')})"
        for d in e.get("datasets") or ():
            datasets.setdefault(d, why)
        for r in e.get("versions") or ():
            refs.setdefault(r, why)
    return datasets, refs


def decide(
    versions: Sequence[Mapping],
    referenced: Mapping[str, str],
    missing: Mapping[str, Sequence[str]] | None = None,
    current: Mapping[tuple[str, str], str] | None = None,
    live: Sequence[Mapping] = (),
) -> dict[str, Decision]:
    """ref -> keep or delete, and why, for every committed version (rows with ``ref``, ``dataset``, ``stage``,
    ``version``, ``created_at`` and ``parents``, the refs it was derived from). ``current``: (dataset, stage) ->
    the version its pointer names (default: the newest created_at); ``live``: the live leases."""
    missing = missing or {}
    parents = {v["ref"]: list(v.get("parents") or ()) for v in versions}
    newest = {**latest(versions), **(current or {})}
    leased_datasets, leased_refs = lease_reasons(live)
    keep: dict[str, str] = {}  # ref -> why: the current version of a referenced dataset whose lineage holds it
    for v in sorted(versions, key=lambda v: v["ref"]):
        why = leased_refs.get(v["ref"]) or leased_datasets.get(v["dataset"])
        if why is None and newest[(v["dataset"], v["stage"])] == v["version"] and v["dataset"] in referenced:
            why = referenced[v["dataset"]]
        if why is not None:
            for ancestor in lineage(v["ref"], parents):
                keep.setdefault(ancestor, why + (f"; in the lineage of {v['ref']}" if ancestor != v["ref"] else ""))
    out = {}
    for v in versions:
        ref, dataset = v["ref"], v["dataset"]
        if ref in keep:
            reason = keep[ref]
        elif dataset not in referenced:
            gone = missing.get(dataset)
            reason = f"no recipe writes {dataset} (none in datasets_cfg/" + (
                f"; recorded {', '.join(gone)} no longer exists or names another dataset)" if gone else ")"
            )
        else:
            reason = f"superseded by {dataset}/{v['stage']}/{newest[(dataset, v['stage'])]}"
            reason += ", and in the lineage of no latest version"
        out[ref] = Decision(ref in keep, reason)
    return out


def version_bytes(uri: str) -> int:
    """The bytes a version's folder holds (0 when it cannot be listed)."""
    from storage import datasets

    fs, path = datasets.filesystem(uri)
    try:
        return int(fs.du(path))
    except (OSError, FileNotFoundError):
        return 0


def abandoned(root: str, committed: Iterable[str], live: Sequence[Mapping], grace_s: float,
              now: float | None = None) -> list[dict]:
    """Uncommitted version folders (no manifest) that no live lease covers and where nothing was written for
    ``grace_s`` seconds, nor by a writer still running here: what a killed run left. ``committed``: the refs with a
    manifest. Rows: ref, uri, bytes, reason."""
    import time

    from storage import datasets
    from storage.temporaries import TMP_PREFIX, is_abandoned

    now = time.time() if now is None else now
    fs, base = datasets.filesystem(root)
    leased, _ = lease_reasons(live)
    done = set(committed)
    out = []
    for path in sorted(fs.glob(posixpath.join(base.rstrip("/"), "*", "*", "*"))):
        dataset, stage, version = path.rstrip("/").split("/")[-3:]
        ref = f"{dataset}/{stage}/{version}"
        if ref in done or dataset.startswith("_") or not fs.isdir(path) or dataset in leased:
            continue
        try:
            infos = fs.ls(path, detail=True)
        except FileNotFoundError:  # committed and removed meanwhile
            continue
        if any(posixpath.basename(i["name"]) == datasets.MANIFEST for i in infos):
            continue  # committed since the catalog was read
        times = [_mtime(i) for i in infos] or [_mtime(fs.info(path))]
        newest = max((t for t in times if t is not None), default=None)
        if newest is not None and now - newest < grace_s:
            continue
        live_writer = any(posixpath.basename(i["name"]).startswith(TMP_PREFIX)
                          and not is_abandoned(posixpath.basename(i["name"]), _mtime(i), now) for i in infos)
        if live_writer:
            continue
        age = f"{(now - newest) / 60:.0f} min" if newest is not None else "unknown time"
        uri = posixpath.join(root.rstrip("/"), ref)
        out.append({"ref": ref, "uri": uri, "bytes": version_bytes(uri),
                    "reason": f"uncommitted (no manifest), nothing written for {age}, no live run leases {dataset}"})
    return out


def _mtime(info: Mapping) -> float | None:
    import datetime as dt

    t = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if isinstance(t, dt.datetime):
        return t.timestamp()
    return float(t) if t is not None else None
