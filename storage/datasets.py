"""Versioned Parquet datasets on any fsspec filesystem.

Layout: ``{root}/{dataset}/{stage}/{version}/part-*.parquet`` plus ``_manifest.json``.

Size: the commit protocol (refs, atomic shards, manifests, the commit itself) in one place, ~520 lines.

* A version is a content hash of what produced it (parent versions, stage, code hash, params), so the same inputs
  always land in the same folder and a re-run of a committed stage is a no-op (nanochat's manifest, datatrove's
  completions, dbt-duckdb's external models).
* Shards are written under a temporary name and renamed into place (on object stores a single PUT is already
  atomic), so a reader never sees half a shard; a killed stage resumes by skipping the shards already there.
* ``_manifest.json`` is written last: its presence is the commit. Readers (the catalog) only read the files a
  manifest lists, so a stage that is still writing is invisible to them.

This module knows no stage: it handles paths, Parquet and manifests only.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import inspect
import json
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.code_identity import CodeIdentity, code_identity

# the run that makes a version; using_run and run_context are part of this module's API (flows, tests use them)
from storage.provenance import RUN_CONTEXT_ENV, RUN_KEYS, git_commit, note_committed, run_context, using_run  # noqa: F401
from storage.temporaries import TMP_LEASE_S, TMP_PREFIX, clean_folder, is_abandoned, tmp_name  # noqa: F401

MANIFEST = "_manifest.json"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
DEFAULT_ROOT_ENV = "QUARRY_ROOT"


def default_root() -> str:
    """Storage root: $QUARRY_ROOT, else ./data under the current repo checkout."""
    return os.environ.get(DEFAULT_ROOT_ENV) or str(Path.cwd() / "data")


class StorageError(RuntimeError):
    """The storage root cannot be used (not writable, not a folder, unreachable); the message names the path."""


def ensure_writable(root: str) -> None:
    """Fail early, naming the root, when a flow could not write its outputs there."""
    fs, base = filesystem(root)
    probe = _join(base, f"{TMP_PREFIX}probe-{uuid.uuid4().hex}")
    try:
        fs.makedirs(base, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except Exception as e:
        raise StorageError(f"storage root {root!r} is not writable: {type(e).__name__}: {e}") from e


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a URI and the path inside it (local paths stay absolute)."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _join(*parts: str) -> str:
    first, *rest = parts
    return posixpath.join(first.rstrip("/"), *rest)


@dataclass(frozen=True)
class DatasetRef:
    """A pointer to one version of one stage of one dataset; the only thing that moves between flow tasks."""

    root: str
    dataset: str
    stage: str
    version: str

    def __post_init__(self) -> None:
        for field in ("dataset", "stage"):
            value = getattr(self, field)
            if not _NAME_RE.match(value):
                raise ValueError(f"{field} must be a snake_case token, got {value!r}")
        if not re.fullmatch(r"[0-9a-f]{12}", self.version):
            raise ValueError(f"version must be 12 hex chars, got {self.version!r}")

    @property
    def uri(self) -> str:
        return _join(self.root, self.dataset, self.stage, self.version)

    @property
    def view(self) -> str:
        return f"{self.dataset}__{self.stage}"

    def sibling(self, stage: str) -> DatasetRef:
        """The same version under another stage name (side outputs such as a stage's quarantine)."""
        return DatasetRef(self.root, self.dataset, stage, self.version)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.stage}/{self.version}"


def code_hash(obj: Any) -> str:
    """The code part of a version: a CodeIdentity's digest (the executor passes the stage's), a digest string as
    given, or the identity of ``obj``'s import closure inside the project (storage/code_identity.py). An object
    defined outside the project (a library function) hashes its module's source, as versions did before."""
    if isinstance(obj, CodeIdentity):
        return obj.digest
    if isinstance(obj, str):
        return obj
    identity = code_identity(obj)
    if identity.modules:
        return identity.digest
    parts = obj if isinstance(obj, (tuple, list)) else [obj]
    sources = []
    for o in parts:
        module = o if inspect.ismodule(o) else inspect.getmodule(o)
        try:
            sources.append(inspect.getsource(module) if module is not None else repr(o))
        except (OSError, TypeError):
            sources.append(repr(o))
    return hashlib.sha1("".join(sources).encode()).hexdigest()


def params_repr(params: Any) -> str:
    """A stable text form of a params object (dataclass, pydantic model, dict or None)."""
    if params is None:
        return "null"
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        data = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    elif hasattr(params, "model_dump"):
        data = params.model_dump(mode="json")
    else:
        data = params
    return json.dumps(data, sort_keys=True, default=_json_default)


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def params_json(params: Any) -> Any:
    return json.loads(params_repr(params))


def make_version(*parts: str) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def derive(
    parents: DatasetRef | Sequence[DatasetRef],
    stage: str,
    fn: Any,
    params: Any,
    *,
    dataset: str | None = None,
    root: str | None = None,
) -> DatasetRef:
    """The ref a stage will produce: version = sha1(parent versions, stage, code of fn's module, params)[:12]."""
    parents = [parents] if isinstance(parents, DatasetRef) else list(parents)
    if not parents and (dataset is None or root is None):
        raise ValueError("a stage without parents needs dataset= and root=")
    first = parents[0] if parents else None
    version = make_version(
        *(f"{p.dataset}/{p.stage}/{p.version}" for p in parents),
        stage,
        code_hash(fn) if fn is not None else "",
        params_repr(params),
    )
    return DatasetRef(root or first.root, dataset or first.dataset, stage, version)


def source_ref(root: str, dataset: str, stage: str, fn: Any, params: Any, inputs: Sequence[str]) -> DatasetRef:
    """The ref of a stage that reads external files: the version also hashes each input's path, size and mtime."""
    fingerprints = []
    for uri in inputs:
        fs, path = filesystem(uri)
        info = fs.info(path)
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
        fingerprints.append(f"{uri}|{info.get('size')}|{mtime}")
    version = make_version(*fingerprints, stage, code_hash(fn) if fn is not None else "", params_repr(params))
    return DatasetRef(root, dataset, stage, version)


# ---------------------------------------------------------------------------------------------------------------
# shards


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_uri(ref: DatasetRef, name: str) -> str:
    return _join(ref.uri, name)


# zstd row groups of <= 128 Ki rows (DuckDB's own are 122,880: its scans parallelize) and ~128 MiB in Arrow memory
ROW_GROUP_ROWS, ROW_GROUP_BYTES = 128 * 1024, 128 * 2**20  # (a reader holds one group of a shard at a time)


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group: <= ROW_GROUP_ROWS and ~ROW_GROUP_BYTES (5,000 pages of 100 KB: ~1,300-row groups)."""
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    return max(1, min(ROW_GROUP_ROWS, ROW_GROUP_BYTES // per_row, table.num_rows))


def write_shard(ref: DatasetRef, name: str, table: pa.Table) -> str:
    """Write one shard atomically: a temporary name first, then a rename (local/HDFS) or a single PUT (object stores)."""
    fs, base = filesystem(ref.uri)
    final = _join(base, name)
    fs.makedirs(base, exist_ok=True)
    groups = row_group_rows(table)
    if _rename_is_atomic(fs):
        tmp = _join(base, tmp_name(name))
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd", row_group_size=groups)
        fs.mv(tmp, final)
    else:
        # S3/GCS/memory: an object becomes visible only when its upload completes, which is the atomic step.
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd", row_group_size=groups)
        fs.pipe_file(final, buf.getvalue().to_pybytes())
    return _join(ref.uri, name)


def _rename_is_atomic(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local", "hdfs", "arrow_hdfs")


def existing_shards(ref: DatasetRef) -> set[str]:
    """Shard names already committed in a version folder (temporary files excluded)."""
    fs, base = filesystem(ref.uri)
    if not fs.exists(base):
        return set()
    names = {posixpath.basename(p) for p in fs.ls(base, detail=False)}
    return {n for n in names if n.startswith("part-") and n.endswith(".parquet")}


def clean_temporaries(ref: DatasetRef) -> int:
    """Remove the temporary files abandoned writers left behind (never a live writer's); returns how many."""
    fs, base = filesystem(ref.uri)
    return clean_folder(fs, base)


# ---------------------------------------------------------------------------------------------------------------
# manifests


def manifest_uri(ref: DatasetRef) -> str:
    return _join(ref.uri, MANIFEST)


def is_committed(ref: DatasetRef) -> bool:
    fs, path = filesystem(manifest_uri(ref))
    return fs.exists(path)


def read_manifest(ref: DatasetRef) -> dict:
    fs, path = filesystem(manifest_uri(ref))
    with fs.open(path, "r") as f:
        return json.load(f)


def commit(
    ref: DatasetRef,
    *,
    parents: Sequence[DatasetRef] = (),
    params: Any = None,
    code: str | CodeIdentity | None = None,
    extra: dict | None = None,
    inputs: Sequence[str] = (),
    finish: Callable[[dict], None] | None = None,
) -> dict:
    """Write ``_manifest.json`` last; the first committer wins and a racing second one reuses its manifest.

    ``finish`` completes the manifest before it is written (storage/layers.py's ``commit_layer`` adds a layer's
    ``layer`` and wide ``view_schema`` fields that way, so this module never imports layers)."""
    if is_committed(ref):
        return read_manifest(ref)
    fs, base = filesystem(ref.uri)
    fs.makedirs(base, exist_ok=True)
    clean_temporaries(ref)
    files, num_rows, schema = [], 0, None
    for name in sorted(existing_shards(ref)):
        with fs.open(_join(base, name), "rb") as f:
            meta = pq.ParquetFile(f).metadata
            rows = meta.num_rows
            if schema is None:
                schema = meta.schema.to_arrow_schema()
        files.append({"name": name, "rows": rows})
        num_rows += rows
    manifest = {
        "dataset": ref.dataset,
        "stage": ref.stage,
        "version": ref.version,
        "uri": ref.uri,
        "parents": [str(p) for p in parents],
        "params": params_json(params),
        "code_hash": code.digest if isinstance(code, CodeIdentity) else code,
        # per module and package, so `quarry datasets --stale` can say what changed since (None: a digest only)
        "code": code.to_json() if isinstance(code, CodeIdentity) else None,
        "num_rows": num_rows,
        "files": files,
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema] if schema is not None else [],
        "inputs": list(inputs),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "git_commit": git_commit(),
        **(extra or {}),
    }
    if finish is not None:
        finish(manifest)
    run = run_context()
    if run:
        manifest["run"] = run
    payload = json.dumps(manifest, indent=2, default=_json_default)
    final = _join(base, MANIFEST)
    if _rename_is_atomic(fs):
        tmp = _join(base, tmp_name(MANIFEST))
        with fs.open(tmp, "w") as f:
            f.write(payload)
        try:
            # link() fails if the manifest exists: exactly one of two racing committers wins.
            os.link(fs._strip_protocol(tmp), fs._strip_protocol(final))
            note_committed(str(ref))
        except FileExistsError:
            pass
        finally:
            fs.rm(tmp)
        return read_manifest(ref)
    if not fs.exists(final):
        fs.pipe_file(final, payload.encode())
        note_committed(str(ref))
    return read_manifest(ref)


def write_shards(ref: DatasetRef, table: pa.Table, *, max_rows_per_shard: int = 100_000) -> None:
    """Write a whole (small, global-step) table as shards, skipping shards already there; does not commit."""
    n = max(1, -(-table.num_rows // max_rows_per_shard))
    done = existing_shards(ref)
    for i in range(n):
        name = shard_name(i)
        if name not in done:
            write_shard(ref, name, table.slice(i * max_rows_per_shard, max_rows_per_shard))


def write_table(ref: DatasetRef, table: pa.Table, *, max_rows_per_shard: int = 100_000, **commit_kwargs) -> dict:
    """Write a table as shards and commit it; a no-op when already committed."""
    if is_committed(ref):
        return read_manifest(ref)
    write_shards(ref, table, max_rows_per_shard=max_rows_per_shard)
    return commit(ref, **commit_kwargs)


def read_shard(ref: DatasetRef, name: str) -> pa.Table:
    """One shard of a (possibly not yet committed) version: resume logic reads what an earlier attempt wrote."""
    fs, path = filesystem(shard_uri(ref, name))
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def read_table_uncommitted(ref: DatasetRef) -> pa.Table:
    """Every shard written so far (for a stage's own bookkeeping just before its commit)."""
    tables = [read_shard(ref, name) for name in sorted(existing_shards(ref))]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def files(ref: DatasetRef) -> list[str]:
    """The shard URIs of a committed version, as its manifest lists them."""
    manifest = read_manifest(ref)
    return [_join(ref.uri, f["name"]) for f in manifest["files"]]


# storage/layers.py reads a layer's wide table; it registers itself here when the storage package is imported
# (storage/__init__.py), so this module, which layers builds on, never imports it back.
_WIDE_READER: list[Callable[[DatasetRef, Sequence[str] | None], pa.Table]] = []


def read_table(ref: DatasetRef, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a committed version into memory (for small tables: reports, cluster centroids, eval results); a layer
    reads as its wide table (its columns joined with those of the versions it lies on)."""
    if read_manifest(ref).get("layer"):
        return _WIDE_READER[0](ref, columns)
    tables = []
    for uri in files(ref):
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=list(columns) if columns else None))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def iter_manifests(root: str) -> Iterable[dict]:
    """Every committed manifest under a root (files are the truth; the catalog is rebuilt from these)."""
    fs, base = filesystem(root)
    if not fs.exists(base):
        return
    for path in sorted(fs.glob(_join(base, "*", "*", "*", MANIFEST))):
        try:
            with fs.open(path, "r") as f:
                m = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue  # a manifest being replaced right now; the next rebuild sees it
        m.setdefault("uri", posixpath.dirname(path))
        yield m


def ref_from_string(root: str, text: str) -> DatasetRef:
    dataset, stage, version = text.split("/")
    return DatasetRef(root, dataset, stage, version)


def latest(root: str, dataset: str, stage: str) -> DatasetRef | None:
    """The most recently committed version of a dataset/stage."""
    best = None
    for m in iter_manifests(root):
        if m["dataset"] == dataset and m["stage"] == stage and (best is None or m["created_at"] > best["created_at"]):
            best = m
    return DatasetRef(root, dataset, stage, best["version"]) if best else None


def delete_version(ref: DatasetRef) -> None:
    """Remove a version folder (manifest first, so a reader never sees a manifest without files)."""
    fs, base = filesystem(ref.uri)
    if fs.exists(_join(base, MANIFEST)):
        fs.rm(_join(base, MANIFEST))
    if fs.exists(base):
        fs.rm(base, recursive=True)
