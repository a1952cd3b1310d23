"""Which committed versions `quarry gc` keeps, and why: a pure policy over the catalog's rows.

    referenced, missing = gc.references(configured, recorded, writes)
    decisions = gc.decide(versions, referenced, missing)      # ref -> Decision(keep, reason)

A dataset is referenced when a recipe writes it: one in datasets_cfg/ (``configured``), or one its manifests recorded
(``run.recipe``) that still exists and still writes it. Of a referenced dataset the latest version of every stage is
kept, with its whole lineage (which may cross datasets); every other version is deleted, with the reason. Nothing
here reads a recipe or the store: the caller gathers the recipes (datasets_cfg) and the versions (storage.catalog).
"""

from __future__ import annotations

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


def decide(
    versions: Sequence[Mapping],
    referenced: Mapping[str, str],
    missing: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Decision]:
    """ref -> keep or delete, and why, for every committed version (rows with ``ref``, ``dataset``, ``stage``,
    ``version``, ``created_at`` and ``parents``, the refs it was derived from)."""
    missing = missing or {}
    parents = {v["ref"]: list(v.get("parents") or ()) for v in versions}
    newest = latest(versions)
    keep: dict[str, str] = {}  # ref -> the latest version of a referenced dataset whose lineage holds it
    for v in sorted(versions, key=lambda v: v["ref"]):
        if newest[(v["dataset"], v["stage"])] == v["version"] and v["dataset"] in referenced:
            for ancestor in lineage(v["ref"], parents):
                keep.setdefault(ancestor, v["ref"])
    out = {}
    for v in versions:
        ref, dataset = v["ref"], v["dataset"]
        if ref in keep:
            by = keep[ref]
            reason = referenced[by.split("/")[0]] + (f"; in the lineage of {by}" if by != ref else "")
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
