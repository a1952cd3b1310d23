"""The executor's core, shared by every kind (``source.py``, ``shards.py``, ``sql.py``, ``whole.py``, ``llm.py``):
a stage's resources, what its version hashes (``code_of``), the secrets its workers get, and the opening and
closing of the one sequence every kind runs: ``_prepare`` (derive the version, skip it when committed and verified,
recompute it when it fails verification, refuse a root the workers could not share) and ``_commit`` (check the rows the workers reported against the shards the driver
sees, then write the manifest). Imports no kind module.

The underscore names are the executor package's internals, shared by its kind modules (``core._commit``), not API.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_cluster import runtime
from ray_cluster.executor import yieldcheck
from storage import datasets, layers, verify
from storage.code_identity import CodeIdentity, code_identity
from storage.datasets import DatasetRef, StorageError

log = logging.getLogger("quarry")


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection hook that tests use to fail a stage after k shards."""


def _maybe_fail(item: dict) -> None:
    fail_from = item.get("fail_from_shard")
    if fail_from is not None and item["index"] >= fail_from:
        raise InjectedFailure(f"injected failure at shard {item['index']} (fail_from_shard={fail_from})")


def _asdict(ref: DatasetRef) -> dict:
    return {"root": ref.root, "dataset": ref.dataset, "stage": ref.stage, "version": ref.version}


def resources(stage: Any, profile: runtime.Profile) -> runtime.StageResources:
    """A stage's resources: its own profile entry, else its recipe section's (a step of exact_dedup), else default."""
    for key in (stage.name, stage.section):
        if key and key in profile.stages:
            return profile.stages[key]
    return profile.default


def code_of(stage: Any) -> CodeIdentity:
    """What a version hashes besides params and parents: the import closure of the stage's function inside the
    project (its kernels and helpers, lazy imports included; comments and docstrings do not count), the modules it
    names as indirect inputs (``Stage.code``), and the installed versions of the packages it declares."""
    return code_identity(stage.fn, extra_modules=stage.code, packages=stage.packages)


def secret_env(params: Any) -> dict[str, str]:
    """The secrets a stage's workers need: params name environment variables (fields ending in ``_env``, e.g.
    ``api_key_env``), never hold values. Those set in the driver's environment are forwarded to the workers."""
    if not dataclasses.is_dataclass(params):
        return {}
    names = [getattr(params, f.name) for f in dataclasses.fields(params) if f.name.endswith("_env")]
    return {n: os.environ[n] for n in names if isinstance(n, str) and os.environ.get(n)}


def check_shared_root(root: str, profile: runtime.Profile) -> None:
    """Refuse, before any work, a storage root that the cluster's workers cannot share."""
    fs, _ = datasets.filesystem(root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol == "memory" and profile.engine != "serial":
        raise StorageError(
            f"storage root {root!r} lives in this process's memory; the {profile.engine} workers of profile "
            f"{profile.name!r} would each write to their own copy. Use a shared root (a local folder for a local "
            "cluster, s3://... or a mounted path for a remote one) or the serial profile."
        )


def _present(stage: Any, inputs: list[DatasetRef | None]) -> tuple[list[DatasetRef], dict[str, DatasetRef]]:
    if stage.variadic:
        if not inputs or any(r is None for r in inputs):
            raise ValueError(f"stage {stage.name!r} needs one or more inputs")
        return list(inputs), {f"{stage.roles[0]}_{i}": r for i, r in enumerate(inputs)}
    if len(inputs) > len(stage.inputs):
        raise ValueError(f"stage {stage.name!r} takes {len(stage.inputs)} inputs ({stage.roles}), got {len(inputs)}")
    inputs = inputs + [None] * (len(stage.inputs) - len(inputs))
    roles = {r: ref for r, ref in zip(stage.roles, inputs, strict=True) if ref is not None}
    missing = [r for r in stage.roles if r not in roles and r not in stage.optional]
    if missing:
        raise ValueError(f"stage {stage.name!r} needs inputs {missing}")
    return [r for r in inputs if r is not None], roles


def _prepare(stage: Any, inputs: list[DatasetRef | None], params: Any, profile: runtime.Profile, target: dict, *,
             workers: bool = True) -> tuple[list[DatasetRef], dict[str, DatasetRef], DatasetRef, bool]:
    """The opening every kind shares: derive the version, skip it when committed, refuse (before any work) a root
    the stage's workers could not share. Returns (inputs present, roles, version, already committed)."""
    present, roles = _present(stage, inputs)
    dst = datasets.derive(present, stage.name, code_of(stage), params, dataset=target["dataset"])
    if _reuse(stage, dst):
        return present, roles, dst, True
    if workers:
        check_shared_root(dst.root, profile)
    return present, roles, dst, False


def _reuse(stage: Any, dst: DatasetRef) -> bool:
    """Whether ``dst`` is committed and may be reused as it is. A committed version (and its committed side
    outputs) is re-hashed in full first (storage/verify.py): one that fails is un-committed (manifest moved aside,
    bad files' markers withdrawn) and recomputed, never skipped. An uncommitted one about to resume has the shards
    an earlier attempt left re-hashed: the torn or mismatching ones are rewritten, and named here."""
    siblings = [dst.sibling(s) for s in (*getattr(stage, "outputs", ()), *getattr(stage, "checkpoints", ()))]
    bad: dict[DatasetRef, list] = {}
    if datasets.is_committed(dst):
        if not datasets.integrity():
            log.info(f"{stage.name}: {dst} already committed, skipping")
            return True
        bad = {ref: verify.verify_version(ref) for ref in [dst, *siblings] if datasets.is_committed(ref)}
        bad = {ref: problems for ref, problems in bad.items() if problems}
        if not bad:
            log.info(f"{stage.name}: {dst} already committed and verified, skipping")
            return True
        if dst not in bad:  # a side output is bad: the main manifest (the stage's commit) must go too
            bad[dst] = []
        for ref, problems in bad.items():
            verify.reject(ref, problems)
        listed = "; ".join(str(p) for problems in bad.values() for p in problems)
        log.warning(f"{stage.name}: {dst} is committed but fails verification ({listed}); recomputing it")
    if datasets.integrity():
        redo = {}
        for ref in [dst, *siblings]:
            if ref not in bad and not datasets.is_committed(ref):  # a rejected one was just hashed in full
                redo.update(verify.check_resume(ref))
        if redo:
            log.warning(f"{stage.name}: resuming {dst}: rewriting "
                        + "; ".join(f"{uri} ({why})" for uri, why in sorted(redo.items())))
    return False


def _commit(stage: Any, dst: DatasetRef, parents: list[DatasetRef], params: Any, stats: dict,
            expected: dict[str, int] | None = None, inputs: Sequence[str] = (), layer: dict | None = None) -> dict:
    """Check what the workers reported against what the driver sees, then write the manifest (the commit)."""
    if expected is not None:
        datasets.await_shards(dst, expected)  # an object store's listing may lag the writes (storage/objstore.py)
        have = _shard_rows(dst)
        lost = {n: r for n, r in expected.items() if have.get(n) != r}
        if lost:
            raise StorageError(
                f"{stage.name}: workers reported {sum(lost.values())} rows in {len(lost)} shards that the driver "
                f"cannot see under {dst.uri} (e.g. {sorted(lost)[:3]}): the storage root is not shared with the "
                "cluster's workers. Nothing was committed."
            )
    stats = {**stats, **yieldcheck.check(stage, dst, parents, params, _read_uncommitted, layer)}  # issue 35
    kwargs = dict(parents=parents, params=params, code=code_of(stage), extra={"stats": stats},
                  inputs=inputs, expect=sorted(expected or ()))
    manifest = layers.commit_layer(dst, layer, **kwargs) if layer else datasets.commit(dst, **kwargs)
    log.info(f"{stage.name}: {manifest['num_rows']} rows -> {dst.uri}")
    return manifest


def _read_uncommitted(ref: DatasetRef, columns: Sequence[str] | None = None) -> pa.Table:
    """The shards written so far (a stage's own bookkeeping just before its commit), projected to ``columns``."""
    fs, base = datasets.filesystem(ref.uri)
    tables = []
    for name in sorted(datasets.existing_shards(ref)):
        with fs.open(posixpath.join(base, name), "rb") as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
            tables.append(pf.read(columns=cols))
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def _shard_rows(ref: DatasetRef) -> dict[str, int]:
    fs, base = datasets.filesystem(ref.uri)
    out = {}
    for name in datasets.existing_shards(ref):
        with fs.open(posixpath.join(base, name), "rb") as f:
            out[name] = pq.ParquetFile(f).metadata.num_rows
    return out


def projection(stage: Any, params: Any, available: list[str]) -> list[str]:
    """The input columns a per-shard stage reads (Parquet projection: quality_filter never reads ``text``)."""
    if stage.reads is None:
        return list(available)
    wanted = set(stage.reads(params, list(available)))
    cols = [c for c in available if c in wanted]
    return cols or available[:1]  # a batch needs one column to carry its row count
