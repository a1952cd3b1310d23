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
* Every shard's size and xxhash64 are computed while it is written (no second read) and recorded beside it in an
  empty marker ``_sum.{name}.{bytes}.{xxh64}``; data and folder are fsynced before the marker and the manifest make
  them visible. The manifest lists each file's name, rows, bytes and xxh64, relative to its version folder, so a
  copied root is self-contained. storage/verify.py checks them (see RELIABILITY.md, "Committed data proves itself").

This module knows no stage: it handles paths, Parquet and manifests only.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import inspect
import json
import logging
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
import xxhash

from storage import objstore
from storage.code_identity import CodeIdentity, code_identity

# the run that makes a version; using_run and run_context are part of this module's API (flows, tests use them)
from storage.provenance import RUN_CONTEXT_ENV, RUN_KEYS, git_commit, note_committed, run_context, using_run  # noqa: F401
from storage.temporaries import TMP_LEASE_S, TMP_PREFIX, clean_folder, is_abandoned, tmp_name  # noqa: F401

MANIFEST = "_manifest.json"
SUM_PREFIX = "_sum."  # the per-shard size+checksum marker: _sum.{name}.{bytes}.{xxh64 hex}
INTEGRITY_ENV = "QUARRY_INTEGRITY"  # "0": no checksums, no fsync, no reuse verification (overhead benchmarks only)
log = logging.getLogger("quarry")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
DEFAULT_ROOT_ENV = "QUARRY_ROOT"


def default_root() -> str:
    """Storage root: $QUARRY_ROOT, else ./data under the current repo checkout."""
    return os.environ.get(DEFAULT_ROOT_ENV) or str(Path.cwd() / "data")


StorageError = objstore.StorageError  # one class: an object store's exhausted retries are a StorageError too
objstore.install()  # every s3:// request below goes through storage/objstore.py's bounded, logged retries


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


def integrity() -> bool:
    """Whether shards are checksummed and fsynced and reused versions verified ($QUARRY_INTEGRITY=0 turns it off
    for overhead measurements; read at each call so a benchmark can flip it)."""
    return os.environ.get(INTEGRITY_ENV, "1") != "0"


class _Summing:
    """A write-only file that hashes and counts the bytes Parquet writes through it (the checksum costs no second
    read). xxhash64: ~10 GB/s per core, far above disk and zstd speed (https://github.com/Cyan4973/xxHash)."""

    def __init__(self, f: Any):
        self.f, self.hash, self.size, self.closed = f, xxhash.xxh64(), 0, False

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _write_parquet(table: pa.Table, f: Any) -> None:
    # page CRCs (Parquet's optional page checksum) let a reader name a flipped data page instead of decoding garbage
    pq.write_table(table, f, compression="zstd", row_group_size=row_group_rows(table), write_page_checksum=True)


def footer_digest(f: Any, size: int) -> str | None:
    """xxh64 of a Parquet file's footer (metadata + length + magic): what every open reads, so checking it there
    costs one small read and catches a flipped footer byte that would otherwise decode into wrong statistics or
    offsets. None: the file is too short to have one."""
    if size < 12:
        return None
    f.seek(size - 8)
    tail = f.read(8)
    n = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or n + 8 > size:
        return None
    f.seek(size - 8 - n)
    return xxhash.xxh64(f.read(n) + tail).hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sum_marker(name: str, size: int, digest: str) -> str:
    return f"{SUM_PREFIX}{name}.{size}.{digest}"


def _parse_marker(marker: str) -> tuple[str, int, str] | None:
    m = re.fullmatch(rf"{re.escape(SUM_PREFIX)}(.+)\.(\d+)\.([0-9a-f]{{16}})", marker)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def write_shard(ref: DatasetRef, name: str, table: pa.Table) -> str:
    """Write one shard atomically: a temporary name first, then a rename (local/HDFS) or a single PUT (object stores).

    Local: data fsynced, then its ``_sum`` marker, then the rename, then the folder fsynced, so a shard that is
    visible with its marker survives power loss whole; a visible shard without a matching marker is not trusted
    (``existing_shards`` leaves it out and the resume rewrites it, saying so)."""
    fs, base = filesystem(ref.uri)
    final = _join(base, name)
    remote = objstore.is_object_store(fs)
    if not remote:  # an object store has no folders, and a HEAD + LIST per shard only to warn is its dearest cost
        fs.makedirs(base, exist_ok=True)
    check = integrity()
    if not remote and fs.exists(final):
        log.warning(f"replacing {_join(ref.uri, name)}: an earlier attempt left it without a matching checksum")
    if _rename_is_atomic(fs) and _is_local(fs):
        local_base = fs._strip_protocol(base)
        tmp = _join(local_base, tmp_name(name))
        with open(tmp, "wb") as raw:
            out = _Summing(raw)
            _write_parquet(table, out)
            raw.flush()
            if check:
                os.fsync(raw.fileno())
        marker = sum_marker(name, out.size, out.hash.hexdigest())
        if check:
            open(_join(local_base, marker), "wb").close()
        os.replace(tmp, _join(local_base, name))
        _drop_markers(fs, base, name, keep=marker)
        if check:
            _fsync_dir(local_base)
    elif _rename_is_atomic(fs):  # HDFS: rename is atomic, no fsync through fsspec
        tmp = _join(base, tmp_name(name))
        with fs.open(tmp, "wb") as raw:
            out = _Summing(raw)
            _write_parquet(table, out)
        marker = sum_marker(name, out.size, out.hash.hexdigest())
        fs.pipe_file(_join(base, marker), b"")
        fs.mv(tmp, final)
        _drop_markers(fs, base, name, keep=marker)
    else:
        # S3/GCS/memory: an object becomes visible (and durable) only when its upload completes: the atomic step.
        buf = pa.BufferOutputStream()
        _write_parquet(table, buf)
        data = buf.getvalue().to_pybytes()
        # s3fs aborts a multipart upload whose part fails: no half object and no orphaned parts stay behind
        fs.pipe_file(final, data, **({"chunksize": objstore.part_bytes()} if objstore.is_object_store(fs) else {}))
        marker = sum_marker(name, len(data), xxhash.xxh64(data).hexdigest())
        fs.pipe_file(_join(base, marker), b"")
        _drop_markers(fs, base, name, keep=marker)
    return _join(ref.uri, name)


def _drop_markers(fs: fsspec.AbstractFileSystem, base: str, name: str, keep: str | None = None) -> None:
    """Remove the ``_sum`` markers of ``name`` (ours by their name) except ``keep``: a rewritten shard's old sums."""
    for path in fs.glob(_join(base, glob_escape(f"{SUM_PREFIX}{name}.") + "*")):
        if posixpath.basename(path) != keep and _parse_marker(posixpath.basename(path)):
            try:
                fs.rm(path)
            except FileNotFoundError:
                pass


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", text)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _rename_is_atomic(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local", "hdfs", "arrow_hdfs")


@dataclass(frozen=True)
class ShardState:
    """What a version folder says about one shard: its size on disk and the size/checksum its marker recorded."""

    name: str
    size: int | None  # None: no data file (a marker only)
    recorded: tuple[int, str] | None  # (bytes, xxh64) from the one marker, None: no marker
    problem: str | None  # why it cannot be trusted; None: its size matches its marker


def shard_states(ref: DatasetRef) -> dict[str, ShardState]:
    """Every shard of a version folder and whether it is provably whole, from one listing (no file is opened)."""
    fs, base = filesystem(ref.uri)
    if objstore.is_object_store(fs):  # s3fs caches listings per process: another node's writes are not in it
        fs.invalidate_cache(base)
    if not fs.exists(base):
        return {}
    sizes, sums = {}, {}
    try:
        listing = fs.ls(base, detail=True)
    except FileNotFoundError:  # gone between the two calls, or an object store's LIST still shows none of its keys
        listing = []
    for info in listing:
        n = posixpath.basename(info["name"].rstrip("/"))
        if n.startswith("part-") and n.endswith(".parquet"):
            sizes[n] = int(info.get("size") or 0)
        elif (parsed := _parse_marker(n)) is not None:
            sums.setdefault(parsed[0], []).append(parsed[1:])
    out = {}
    for n in sorted(set(sizes) | set(sums)):
        have, rec = sizes.get(n), sums.get(n, [])
        fits = [r for r in rec if r[0] == have]
        recorded = fits[0] if len(fits) == 1 else (rec[0] if len(rec) == 1 else None)
        if have is None:
            problem = "missing (a checksum marker without its file)"
        elif not rec:
            problem = f"no checksum marker ({have} bytes: written by an interrupted attempt)" if integrity() else None
        elif len(fits) == 1:
            problem = None
        elif not fits:
            problem = f"size {have} bytes, its checksum marker says {rec[0][0]}"
        else:
            problem = "two checksum markers fit its size"
        out[n] = ShardState(n, have, recorded, problem)
    return out


def existing_shards(ref: DatasetRef) -> set[str]:
    """Shard names already written whole in a version folder (temporary files, and shards whose size does not match
    the checksum marker their writer left, excluded: a resume recomputes those)."""
    return {n for n, st in shard_states(ref).items() if st.size is not None and st.problem is None}


def has_shard(ref: DatasetRef, name: str) -> bool:
    """Whether one shard is already written whole (its size matches its one checksum marker): the per-shard form
    of ``existing_shards`` for writers that must not list the folder per work item (a stat and a prefix glob)."""
    fs, base = filesystem(ref.uri)
    try:
        size = fs.size(_join(base, name))
    except FileNotFoundError:
        return False
    if not integrity():
        return True
    marks = fs.glob(_join(base, glob_escape(f"{SUM_PREFIX}{name}.{size}.") + "*"))
    return len([p for p in marks if _parse_marker(posixpath.basename(p))]) == 1


def await_shards(ref: DatasetRef, names: Iterable[str]) -> set[str]:
    """``existing_shards`` once it shows every name the writers reported (an object store's LIST may omit a key
    written a moment ago; storage/objstore.py polls with backoff up to its deadline); callers compare and refuse."""
    names = set(names)
    if not names:
        return existing_shards(ref)
    return objstore.await_listed(lambda: existing_shards(ref), names, f"commit of {ref}")


def untrusted_shards(ref: DatasetRef) -> dict[str, str]:
    """Shard files present in a version folder that cannot be proven whole, with why (torn, empty, unmarked)."""
    return {n: st.problem for n, st in shard_states(ref).items() if st.size is not None and st.problem}


def forget_shard(ref: DatasetRef, name: str) -> None:
    """Withdraw a shard's checksum marker (so a resume rewrites it); the data file itself is left for the rewrite
    to replace atomically: nothing is deleted that this module cannot prove it wrote."""
    fs, base = filesystem(ref.uri)
    _drop_markers(fs, base, name)


def clean_temporaries(ref: DatasetRef) -> int:
    """Remove the temporary files abandoned writers left behind (never a live writer's); returns how many."""
    fs, base = filesystem(ref.uri)
    try:
        return clean_folder(fs, base)
    except FileNotFoundError:  # an object store's LIST does not show the folder's keys yet: nothing to clean
        return 0


# ---------------------------------------------------------------------------------------------------------------
# manifests


def manifest_uri(ref: DatasetRef) -> str:
    return _join(ref.uri, MANIFEST)


def is_committed(ref: DatasetRef) -> bool:
    fs, path = filesystem(manifest_uri(ref))
    return fs.exists(path)


def read_manifest(ref: DatasetRef) -> dict:
    """A committed manifest; its ``uri`` is where it was read (older manifests stored an absolute one: ignored, so a
    copied or moved root reads its own files)."""
    fs, path = filesystem(manifest_uri(ref))
    with fs.open(path, "r") as f:
        m = json.load(f)
    m["uri"] = ref.uri
    return m


def commit(
    ref: DatasetRef,
    *,
    parents: Sequence[DatasetRef] = (),
    params: Any = None,
    code: str | CodeIdentity | None = None,
    extra: dict | None = None,
    inputs: Sequence[str] = (),
    finish: Callable[[dict], None] | None = None,
    expect: Iterable[str] = (),
) -> dict:
    """Write ``_manifest.json`` last; the first committer wins and a racing second one reuses its manifest.

    ``finish`` completes the manifest before it is written (storage/layers.py's ``commit_layer`` adds a layer's
    ``layer`` and wide ``view_schema`` fields that way, so this module never imports layers).

    ``expect``: the shard names the writers reported; the commit refuses (nothing written) while the listing omits
    one, so a stale object-store listing can never produce a manifest that is missing a shard."""
    if is_committed(ref):
        return read_manifest(ref)
    fs, base = filesystem(ref.uri)
    fs.makedirs(base, exist_ok=True)
    clean_temporaries(ref)
    files, num_rows, schema = [], 0, None
    expect = set(expect)
    missing = expect - await_shards(ref, expect) if expect else set()
    if missing:
        raise StorageError(f"cannot commit {ref}: the listing of {ref.uri} still omits {len(missing)} shard(s) the "
                           f"writers reported (e.g. {_join(ref.uri, sorted(missing)[0])}); nothing was committed")
    states = shard_states(ref)
    torn = {n: st.problem for n, st in states.items() if st.size is not None and st.problem}
    if torn:  # never list a file nobody can vouch for: the stage's resume rewrites it
        raise StorageError(f"cannot commit {ref}: {'; '.join(f'{_join(ref.uri, n)}: {p}' for n, p in torn.items())}")
    for name, st in states.items():
        if st.size is None:
            continue  # a marker left by a writer killed before its rename
        with fs.open(_join(base, name), "rb") as f:
            try:
                meta = pq.ParquetFile(f).metadata
            except Exception as e:
                raise StorageError(f"cannot commit {ref}: {_join(ref.uri, name)}: unreadable footer: {e}") from e
            rows = meta.num_rows
            if schema is None:
                schema = meta.schema.to_arrow_schema()
            footer = footer_digest(f, st.size)
        entry = {"name": name, "rows": rows, "bytes": st.size}
        if st.recorded is not None:
            entry["xxh64"] = st.recorded[1]
            entry["footer_xxh64"] = footer
        files.append(entry)
        num_rows += rows
    manifest = {
        "dataset": ref.dataset,
        "stage": ref.stage,
        "version": ref.version,
        # where it is, relative to the root: files are named relative to this folder, so a copied root reads whole
        "path": f"{ref.dataset}/{ref.stage}/{ref.version}",
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
            if integrity() and _is_local(fs):
                f.flush()
                os.fsync(f.fileno())
        try:
            if integrity() and _is_local(fs):  # every shard's rename is durable before the manifest names it
                _fsync_dir(fs._strip_protocol(base))
            # link() fails if the manifest exists: exactly one of two racing committers wins.
            os.link(fs._strip_protocol(tmp), fs._strip_protocol(final))
            note_committed(str(ref))
        except FileExistsError:
            pass
        finally:
            fs.rm(tmp)
        if integrity() and _is_local(fs):
            _fsync_dir(fs._strip_protocol(base))
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
    return _read_parquet(shard_uri(ref, name), None)


def _read_parquet(uri: str, entry: dict | None, columns: Sequence[str] | None = None) -> pa.Table:
    with open_parquet(uri, entry) as pf:
        try:
            return pf.read(columns=list(columns) if columns else None)
        except Exception as e:
            raise StorageError(f"{uri}: unreadable: {type(e).__name__}: {e}") from e


class open_parquet:
    """Open one Parquet file for reading, checked: its size against the manifest entry (a stat), its footer (which
    the open reads anyway), page checksums on; every failure is a StorageError that names the file.

        with datasets.open_parquet(uri, entry) as pf:   # entry: the manifest's {"name", "rows", "bytes", ...}
            for batch in pf.iter_batches(...): ...
    """

    def __init__(self, uri: str, entry: dict | None = None):
        self.uri, self.entry, self._f = uri, entry, None

    def __enter__(self) -> pq.ParquetFile:
        fs, path = filesystem(self.uri)
        try:
            size = fs.size(path)
        except FileNotFoundError:
            raise StorageError(f"{self.uri}: missing (its manifest lists it)") from None
        want = (self.entry or {}).get("bytes")
        if want is not None and size != want:
            raise StorageError(f"{self.uri}: size {size} bytes, its manifest says {want}")
        # the size is known: an object store's open would otherwise HEAD the object a second time
        self._f = fs.open(path, "rb", **({"size": size} if objstore.is_object_store(fs) else {}))
        want = (self.entry or {}).get("footer_xxh64")
        if want is not None and footer_digest(self._f, size) != want:
            self._f.close()
            raise StorageError(f"{self.uri}: footer checksum differs from its manifest's (a changed footer byte)")
        self._f.seek(0)
        try:
            pf = pq.ParquetFile(self._f, page_checksum_verification=True)
        except Exception as e:
            self._f.close()
            raise StorageError(f"{self.uri}: unreadable footer: {type(e).__name__}: {e}") from e
        rows = (self.entry or {}).get("rows")
        if rows is not None and pf.metadata.num_rows != rows:
            self._f.close()
            raise StorageError(f"{self.uri}: {pf.metadata.num_rows} rows, its manifest says {rows}")
        return pf

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()


def read_table_uncommitted(ref: DatasetRef) -> pa.Table:
    """Every shard written so far (for a stage's own bookkeeping just before its commit)."""
    tables = [read_shard(ref, name) for name in sorted(existing_shards(ref))]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def files(ref: DatasetRef) -> list[str]:
    """The shard URIs of a committed version, as its manifest lists them, resolved against ``ref.root`` (the root it
    is read from now, whatever root wrote it). Readers of a manifest's files (catalog views, the dashboard's sandbox)
    go through this or ``manifest_files``."""
    return manifest_files(read_manifest(ref), ref.uri)


def manifest_files(manifest: dict, folder: str | None = None) -> list[str]:
    """The file URIs a manifest lists, under ``folder`` (default: the ``uri`` read_manifest/iter_manifests set)."""
    folder = folder or manifest["uri"]
    return [_join(folder, f["name"]) for f in manifest.get("files", [])]


# storage/layers.py reads a layer's wide table; it registers itself here when the storage package is imported
# (storage/__init__.py), so this module, which layers builds on, never imports it back.
_WIDE_READER: list[Callable[[DatasetRef, Sequence[str] | None], pa.Table]] = []


def read_table(ref: DatasetRef, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a committed version into memory (for small tables: reports, cluster centroids, eval results); a layer
    reads as its wide table (its columns joined with those of the versions it lies on)."""
    manifest = read_manifest(ref)
    if manifest.get("layer"):
        return _WIDE_READER[0](ref, columns)
    tables = [_read_parquet(_join(ref.uri, f["name"]), f, columns) for f in manifest["files"]]
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
        # where it was found, under the root as given (older manifests hold the absolute URI they were written at)
        m["uri"] = _join(root, posixpath.relpath(posixpath.dirname(path), base))
        yield m


def ref_from_string(root: str, text: str) -> DatasetRef:
    dataset, stage, version = text.split("/")
    return DatasetRef(root, dataset, stage, version)


# storage/pointers.py, which builds on this module, answers `latest`: it registers itself here when the storage package
# is imported (storage/__init__.py), as layers does for read_table, so this module never imports it back
_LATEST: list[Callable[[str, str, str], DatasetRef | None]] = []


def latest(root: str, dataset: str, stage: str) -> DatasetRef | None:
    """The current version of a dataset/stage: its pointer (storage/pointers.py), else the newest created_at."""
    return _LATEST[0](root, dataset, stage)


def delete_version(ref: DatasetRef) -> None:
    """Remove a version folder (manifest first, so a reader never sees a manifest without files)."""
    fs, base = filesystem(ref.uri)
    if fs.exists(_join(base, MANIFEST)):
        fs.rm(_join(base, MANIFEST))
    if fs.exists(base):
        fs.rm(base, recursive=True)
