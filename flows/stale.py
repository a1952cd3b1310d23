"""What an upgrade would recompute: the latest versions whose recorded code identity differs from the code now.

A version's code part is its stage's identity (ray_cluster.executor.code_of: the import closure of the stage's
function, normalized, plus the versions of the packages the stage declares). After a pull or a package upgrade the
next run recomputes every stage whose identity moved, and everything downstream of it; ``quarry datasets --stale``
lists them first, each with what changed (module or package).
"""

from __future__ import annotations

from collections.abc import Iterable

from ray_cluster.executor import code_of
from storage import datasets
from tasks import registry


def _owners() -> dict[str, registry.Stage]:
    """Folder stage name -> the registry stage whose code wrote it (side outputs and checkpoints included)."""
    owners = {}
    for s in registry.STAGES.values():
        for name in (s.name, *s.outputs, *s.checkpoints):
            owners.setdefault(name, s)
    return owners


def latest_manifests(manifests: Iterable[dict]) -> list[dict]:
    """The newest committed manifest of every (dataset, stage)."""
    best: dict[tuple[str, str], dict] = {}
    for m in manifests:
        key = (m["dataset"], m["stage"])
        if key not in best or (m.get("created_at") or "") > (best[key].get("created_at") or ""):
            best[key] = m
    return [best[k] for k in sorted(best)]


def stale_versions(root: str) -> list[dict]:
    """One row per latest version whose code identity differs from the current code of the stage that wrote it:
    ``ref``, ``stage`` (the registry stage), ``recorded`` and ``current`` digests (12 hex), and ``changes`` (lines
    such as ``module tasks.signals._rpv2_kernels changed`` or ``package datatrove 0.6.0 -> 0.7.0``). Versions of
    stages outside the registry (a flow's own step) are not judged."""
    owners, identities, rows = _owners(), {}, []
    for m in latest_manifests(datasets.iter_manifests(root)):
        stage = owners.get(m["stage"])
        if stage is None:
            continue
        if stage.name not in identities:
            identities[stage.name] = code_of(stage)
        current = identities[stage.name]
        if m.get("code_hash") == current.digest:
            continue
        rows.append({
            "ref": f"{m['dataset']}/{m['stage']}/{m['version']}",
            "stage": stage.name,
            "recorded": (m.get("code_hash") or "")[:12],
            "current": current.digest[:12],
            "changes": current.diff(m.get("code")),
        })
    return rows
