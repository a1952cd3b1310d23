"""Layers: a version that stores only what its stage adds, over the version it is aligned with.

Documents are written once (by ingest); later stages write *layers* (Dolma's attribute files, RedPajama-V2's
signal/MinHash/duplicate files beside the documents), so no stage copies the corpus forward:

* a **columns** layer holds only the columns its stage added or rewrote (signals, signatures, keep/drop_reason,
  cluster ids, embeddings, a rewritten text), shard by shard with the same shard names and the same row order as
  the version it lies on;
* a **rows** layer is a selection (kept documents, a held-out split, a balanced sample with repeats): per shard the
  positions ``_pos`` of the chosen rows in the parent's shard of the same name (non-decreasing, repeats allowed),
  plus any column it adds (``sample_copy``); it may hide parent columns (``hide``).

A manifest of a layer says ``"layer": {"kind", "of", "hide"}`` and ``"view_schema"`` (the wide columns a reader
sees); ``"schema"`` stays the stored files' own schema. Readers see the wide table either way: ``iter_shard`` /
``read_table`` resolve the chain in Arrow (projection: only the files holding a requested column are opened) and
``relation_sql`` builds the DuckDB relation the catalog's views use (POSITIONAL JOIN for column layers, a join on
(shard, row) for selections).

Alignment (issue 34): a layer joins the rows below it by shard name and row position, so each layer shard records
what it was computed from (``of_rows``, ``of_doc_ids`` in its manifest entry and its own footer); readers check the
counts against the footers below on every open and ``verify_alignment`` checks the doc_id hashes (RELIABILITY.md).

Size: ~600 lines: the Arrow readers, the SQL relation and the alignment checks all walk the same chain of Links; the
checks run inside both readers, so a separate module would import the readers and be imported by them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage import datasets
from storage.datasets import DatasetRef, StorageError

POS = "_pos"  # the reserved column of a rows layer (and of a columns layer that adds nothing): never in a view
KINDS = ("columns", "rows")
DOC_ID = "doc_id"  # the column whose order a layer's alignment record hashes (ingest's stable document id)
# what a layer shard was computed from: its parent shard's row count and the hash of the parent's doc_ids in order,
# stamped in the shard's own Parquet footer (it travels with the file) and copied into the manifest's file entry
OF_ROWS, OF_DOC_IDS = "of_rows", "of_doc_ids"
# over a full version: a digest of the parent shard's doc_id min/max footer statistics per row group, so a swap of two
# shards with the same row count is caught on open from the footer alone (doc_ids are sha1 hashes: two shards' ranges
# coincide with negligible probability); the doc_id hash in verify_alignment is the proof
OF_ID_STATS = "of_id_stats"
RECORD = (OF_ROWS, OF_DOC_IDS, OF_ID_STATS)
STAMP_KEY = b"quarry.aligned"


class MisalignedLayer(StorageError):
    """A layer no longer lies on the rows it was computed from (a swapped, replaced or truncated shard below it): the
    join by shard name and row position would give documents another document's columns. Names layer and shard."""


@dataclass(frozen=True)
class Link:
    """One version of a chain: what it stores itself and how it lies on the next one."""

    ref: DatasetRef
    kind: str  # "full" | "columns" | "rows"
    own: tuple[str, ...]  # the columns its files hold (without _pos)
    hide: tuple[str, ...]
    files: tuple[str, ...]  # shard names, as its manifest lists them
    view: tuple[tuple[str, str], ...]  # (name, type) of the wide table
    # shard name -> {"of_rows", "of_doc_ids"} recorded at commit (absent in manifests written before issue 34)
    aligned: dict = field(default_factory=dict, compare=False, hash=False)


def _manifest(ref: DatasetRef, manifests: dict | None) -> dict:
    if manifests is not None and str(ref) in manifests:
        return manifests[str(ref)]
    return _cached_manifest(ref)


@functools.lru_cache(maxsize=1024)
def _cached_manifest(ref: DatasetRef) -> dict:
    # a committed manifest never changes (versions are immutable), so a process may keep it
    return datasets.read_manifest(ref)


def link(ref: DatasetRef, manifests: dict | None = None) -> Link:
    m = _manifest(ref, manifests)
    layer = m.get("layer") or {}
    own = tuple(f["name"] for f in m.get("schema", []) if f["name"] != POS)
    view = tuple((f["name"], f["type"]) for f in (m.get("view_schema") or m.get("schema") or []) if f["name"] != POS)
    aligned = {f["name"]: {k: f[k] for k in RECORD if k in f} for f in m.get("files", [])
               if OF_ROWS in f}
    return Link(ref, layer.get("kind", "full"), own, tuple(layer.get("hide", ())),
                tuple(f["name"] for f in m.get("files", [])), view, aligned)


def chain(ref: DatasetRef, manifests: dict | None = None) -> list[Link]:
    """The version and every version it lies on, top first, down to the full one at the bottom."""
    out = [link(ref, manifests)]
    while out[-1].kind != "full":
        m = _manifest(out[-1].ref, manifests)
        out.append(link(datasets.ref_from_string(ref.root, m["layer"]["of"]), manifests))
        if len(out) > 256:
            raise StorageError(f"{ref}: layer chain longer than 256 (a cycle?)")
    return out


def column_names(ref: DatasetRef, manifests: dict | None = None) -> list[str]:
    """The wide columns a reader of ``ref`` sees (the stage's output and its ancestors', as one table)."""
    return [n for n, _ in link(ref, manifests).view]


def view_schema(parent: DatasetRef, kind: str, own: Sequence[dict], hide: Sequence[str] = ()) -> list[dict]:
    """The wide schema of a new layer over ``parent``: parent columns (a rewritten one keeps its place, with its new
    type), minus hidden ones, then the new columns in the order the stage wrote them."""
    if kind not in KINDS:
        raise ValueError(f"unknown layer kind {kind!r}")
    own = [f for f in own if f["name"] != POS]
    mine = {f["name"]: f for f in own}
    out = [mine.get(n, {"name": n, "type": t}) for n, t in link(parent).view if n not in hide or n in mine]
    seen = {f["name"] for f in out}
    return out + [f for f in own if f["name"] not in seen]


def commit_layer(ref: DatasetRef, layer: dict, **commit_kwargs) -> dict:
    """Commit a version that stores only what its stage added over ``layer["of"]`` ({"kind": "columns"|"rows",
    "of": "dataset/stage/version", "hide": [...]}); its manifest carries the wide ``view_schema``."""

    parent = datasets.ref_from_string(ref.root, layer["of"])

    def finish(manifest: dict) -> None:
        manifest["layer"] = {"kind": layer["kind"], "of": layer["of"], "hide": list(layer.get("hide", ()))}
        manifest["view_schema"] = view_schema(parent, layer["kind"], manifest["schema"], layer.get("hide", ()))
        for f in manifest["files"]:
            f.update(_alignment_at_commit(ref, parent, f["name"]))

    return datasets.commit(ref, finish=finish, **commit_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Alignment: a layer joins the rows below it by shard name and row position, so it records, per shard, what it was
# computed from (the parent shard's row count and a hash of its doc_ids in order) and readers check it: the counts
# against the parent's footer on every open (iter_shard, relation_sql), the doc_id hash in verify_alignment and
# when a stage computes a new layer over a columns layer (SourceRows).


class Fingerprint:
    """Row count and a hash of the ``doc_id``s of a stream of batches, in order. The lengths and the bytes of the ids
    are hashed as two separate streams (lengths, -1 for a null), so the digest does not depend on batch boundaries:
    the worker (rows_per_call batches) and verify (default batches) get the same one."""

    def __init__(self) -> None:
        self.rows = 0
        self.has_ids = False
        self._lengths, self._bytes = hashlib.sha256(), hashlib.sha256()

    def update(self, batch: pa.Table) -> None:
        self.rows += batch.num_rows
        if DOC_ID not in batch.column_names:
            return
        self.has_ids = True
        for a in batch.column(DOC_ID).chunks:
            if not (pa.types.is_string(a.type) or pa.types.is_large_string(a.type)):
                a = a.cast(pa.large_string())
            valid = a.is_valid().to_numpy(zero_copy_only=False)
            if not valid.all():
                a = a.fill_null("")
            wide = pa.types.is_large_string(a.type)
            _, offsets, data = a.buffers()
            offs = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32)[a.offset:a.offset + len(a) + 1]
            lengths = np.diff(offs).astype("<i8")
            lengths[~valid] = -1
            self._lengths.update(lengths.tobytes())
            if data is not None and len(offs) > 1:
                self._bytes.update(memoryview(data)[int(offs[0]):int(offs[-1])])

    def record(self) -> dict:
        out = {OF_ROWS: self.rows}
        if self.has_ids:
            h = hashlib.sha256(f"{self.rows}:{self._lengths.hexdigest()}:{self._bytes.hexdigest()}".encode())
            out[OF_DOC_IDS] = h.hexdigest()[:32]
        return out


def fingerprint(ref: DatasetRef, name: str) -> dict:
    """The alignment record of shard ``name`` of ``ref`` as it is now: its wide row count and doc_id hash (reads the
    one ``doc_id`` column through the layers, Parquet projection; only the row count when the view has no doc_id)."""
    fp = Fingerprint()
    cols = [DOC_ID] if DOC_ID in set(column_names(ref)) else None
    if cols is None:
        return {OF_ROWS: _footer(ref, name)[0]}
    for batch in iter_shard(ref, name, cols):
        fp.update(batch)
    return fp.record()


def _footer(ref: DatasetRef, name: str) -> tuple[int, dict | None, str | None]:
    """A shard's row count, alignment stamp and doc_id statistics digest, from its Parquet footer only (a few KB; no
    data page is read)."""
    fs, path = datasets.filesystem(datasets.shard_uri(ref, name))
    with fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    stamp = (meta.metadata or {}).get(STAMP_KEY)
    return meta.num_rows, (json.loads(stamp) if stamp else None), _id_stats(meta)


def _id_stats(meta: pq.FileMetaData) -> str | None:
    """sha256 of (rows, min, max) of the doc_id column per row group; None without the column or its statistics."""
    names = [meta.schema.column(j).name for j in range(meta.num_columns)]
    if DOC_ID not in names:
        return None
    j, parts = names.index(DOC_ID), []
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(j).statistics
        if st is None or not st.has_min_max:
            if meta.row_group(g).num_rows:
                return None
            continue
        parts.append([meta.row_group(g).num_rows, str(st.min), str(st.max)])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def stamp(table: pa.Table, record: dict) -> pa.Table:
    """``table`` carrying its alignment record in its schema metadata, which Parquet keeps in the shard's footer."""
    meta = dict(table.schema.metadata or {})
    meta[STAMP_KEY] = json.dumps(record, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def _alignment_at_commit(ref: DatasetRef, parent: DatasetRef, name: str) -> dict:
    """The record a layer shard's manifest entry gets: the stamp its writer put in the footer (what it really read),
    else (a shard written by other code) the parent shard's fingerprint now. Refuses a stamp whose row count the
    parent's footer no longer matches: nothing misaligned is committed."""
    _, record, _ = _footer(ref, name)
    have, _, id_stats = _footer(parent, name)
    if record is None:
        record = fingerprint(parent, name)
    elif have != record.get(OF_ROWS):
        raise MisalignedLayer(f"{ref}/{name}: computed from {record.get(OF_ROWS)} rows of {parent}/{name}, which "
                              f"now holds {have}; not committed")
    out = {k: record[k] for k in (OF_ROWS, OF_DOC_IDS) if k in record}
    if id_stats is not None and link(parent).kind == "full":
        out[OF_ID_STATS] = id_stats
    return out


def check_counts(links: list[Link], names: Sequence[str]) -> None:
    """Every layer of a chain against the shards it lies on, for the shards ``names``, from footers only (one read
    per version of the chain and shard): the layer shard's own stamp against its manifest entry (a swapped layer
    file), the row count it recorded against the parent shard's now, and over a full version the parent's doc_id
    statistics digest (a swap of two shards with equal row counts). A difference raises ``MisalignedLayer`` naming
    the layer, the shard and what differs; layers without records (committed before issue 34) are not checked."""
    for name in names:
        footers: dict[int, tuple] = {}
        for i, lk in enumerate(links[:-1]):
            rec = lk.aligned.get(name)
            if not rec:
                continue
            for j in (i, i + 1):
                if j not in footers:
                    footers[j] = _footer(links[j].ref, name)
            problem = _misaligned(rec, footers[i][1], footers[i + 1], links[i + 1].ref, name)
            if problem:
                raise MisalignedLayer(f"layer {lk.ref} shard {name}: {problem}; refusing to join it by row position "
                                      "(`quarry verify` checks every shard's doc_ids)")


def _misaligned(rec: dict, mine: dict | None, below: tuple, below_ref: DatasetRef, name: str) -> str | None:
    """What differs between a layer shard's record and the footers (its own stamp, the parent's), or None; a row
    count difference is said first in the message ("computed from N rows")."""
    if mine is not None and {k: mine.get(k) for k in (OF_ROWS, OF_DOC_IDS) if k in rec} != \
            {k: rec[k] for k in (OF_ROWS, OF_DOC_IDS) if k in rec}:
        return (f"its file's own stamp {mine} is not its manifest's {rec} (the layer's shard file was swapped or "
                "replaced)")
    if below[0] != rec[OF_ROWS]:
        return (f"computed from {rec[OF_ROWS]} rows of {below_ref}/{name}, which now holds {below[0]} (a shard "
                "below it was swapped, restored or truncated)")
    if OF_ID_STATS in rec and below[2] is not None and below[2] != rec[OF_ID_STATS]:
        return (f"computed from {below_ref}/{name} whose doc_id footer statistics digest was {rec[OF_ID_STATS]}, "
                f"now {below[2]} (same row count, other documents: a shard below it was swapped or replaced)")
    return None


def verify_alignment(ref: DatasetRef, *, hashes: bool = True) -> list[str]:
    """Check every layer of ``ref``'s chain against the rows it lies on, shard by shard: the stamp in the layer
    shard's own footer against its manifest entry (a swapped layer file), the recorded row count against the parent
    shard's footer, and (``hashes``) the recorded doc_id hash against the parent's doc_ids read now (one column per
    row-defining version of the chain, read once). Returns one line per problem, naming the layer, the shard and
    what differs; [] when every layer lines up. A shard is reported at the lowest layer that breaks (every layer
    above it reads through it). Layers committed before these records are skipped."""
    links = chain(ref)
    problems: list[str] = []
    ids: dict[tuple[str, str], dict | Exception] = {}
    broken: set[str] = set()
    for i in reversed(range(len(links) - 1)):  # bottom up: a broken lower layer is reported by itself
        lk = links[i]
        # a columns layer keeps its parent's rows: the doc_ids below it are those of the first selection or full
        rowdef = next(j for j in range(i + 1, len(links)) if links[j].kind != "columns")
        for name in lk.files:
            rec = lk.aligned.get(name)
            if not rec or name in broken:
                continue
            problem = _verify_shard(links, i, rowdef, name, rec, ids, hashes)
            if problem:
                problems.append(f"layer {lk.ref} shard {name}: {problem}")
                broken.add(name)
    return problems


def _verify_shard(links: list[Link], i: int, rowdef: int, name: str, rec: dict, ids: dict, hashes: bool) -> str | None:
    """What differs for shard ``name`` of layer links[i] (footers first, then the doc_id hash), or None."""
    below = links[i + 1]
    try:
        problem = _misaligned(rec, _footer(links[i].ref, name)[1], _footer(below.ref, name), below.ref, name)
    except OSError as e:
        return f"cannot read its footer or the one below it: {type(e).__name__}: {e}"
    if problem or not hashes or OF_DOC_IDS not in rec:
        return problem  # when the footers already differ, the doc_id hash would say nothing more
    key = (str(links[rowdef].ref), name)
    if key not in ids:
        try:
            ids[key] = fingerprint(links[rowdef].ref, name)
        except (StorageError, OSError) as e:  # a layer further down is broken: reported on its own
            ids[key] = e
    got = ids[key]
    if isinstance(got, Exception) or got.get(OF_DOC_IDS) == rec[OF_DOC_IDS]:
        return None
    return (f"computed from {below.ref}/{name} whose {rec[OF_ROWS]} doc_ids hashed {rec[OF_DOC_IDS]}; they now hash "
            f"{got.get(OF_DOC_IDS)} (same row count, other documents or another order: a shard below it was swapped "
            "or replaced)")


class SourceRows:
    """The input rows of one shard of a per-document stage that writes a layer: ``iter_shard``'s batches projected
    to ``columns``, fingerprinted as they stream by (``doc_id`` is read along when the stage does not read it: one
    small column) so the shard it writes is stamped with what it was computed from. When the input is itself a
    columns layer that recorded its parent's doc_id hash, the rows read now must hash the same (its rows are its
    parent's): a stage never builds on a misaligned layer."""

    def __init__(self, src: DatasetRef, name: str, columns: Sequence[str], batch_size: int):
        self.src, self.name, self.columns, self.batch_size = src, name, list(columns), batch_size
        self.fp = Fingerprint()

    def __iter__(self) -> Iterator[pa.Table]:
        extra = DOC_ID in set(column_names(self.src)) and DOC_ID not in self.columns
        cols = [*self.columns, DOC_ID] if extra else self.columns
        for batch in iter_shard(self.src, self.name, cols, batch_size=self.batch_size):
            self.fp.update(batch)
            yield batch.drop_columns([DOC_ID]) if extra else batch
        top = link(self.src)
        rec = top.aligned.get(self.name) if top.kind == "columns" else None
        now = self.fp.record()
        if rec and OF_DOC_IDS in rec and OF_DOC_IDS in now and rec[OF_DOC_IDS] != now[OF_DOC_IDS]:
            raise MisalignedLayer(f"layer {self.src} shard {self.name}: computed from doc_ids hashing "
                                  f"{rec[OF_DOC_IDS]}, the rows below it now hash {now[OF_DOC_IDS]} (a shard below "
                                  "it was swapped or replaced); not building on it")

    def stamp(self, table: pa.Table) -> pa.Table:
        return stamp(table, self.fp.record())


# ---------------------------------------------------------------------------------------------------------------
# Arrow readers (workers: one shard at a time, bounded batches)


def _file_batches(ref: DatasetRef, name: str, columns: list[str], batch_size: int) -> Iterator[pa.Table]:
    fs, path = datasets.filesystem(datasets.shard_uri(ref, name))
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        cols = [c for c in columns if c in have]
        if pf.metadata.num_rows == 0:
            yield pf.schema_arrow.empty_table().select(cols)
            return
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            yield pa.Table.from_batches([batch]).select(cols)


def _zip(left: Iterator[pa.Table], right: Iterator[pa.Table], what: str) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Pairs of equally long slices of two row-aligned streams; unequal lengths are a broken layer, said loudly."""
    lbuf = rbuf = None
    while True:
        if lbuf is None or lbuf.num_rows == 0:
            lbuf = next(left, None)
        if rbuf is None or rbuf.num_rows == 0:
            rbuf = next(right, None)
        if lbuf is None or rbuf is None:
            rest = (lbuf.num_rows if lbuf is not None else 0) + (rbuf.num_rows if rbuf is not None else 0)
            if rest or next(left, None) is not None or next(right, None) is not None:
                raise StorageError(f"{what}: the layer and the version it lies on have different row counts")
            return
        n = min(lbuf.num_rows, rbuf.num_rows)
        if n == 0:  # an empty shard: both sides empty
            yield lbuf, rbuf
            lbuf = rbuf = None
            continue
        yield lbuf.slice(0, n), rbuf.slice(0, n)
        lbuf, rbuf = lbuf.slice(n), rbuf.slice(n)


def _hstack(parts: Sequence[pa.Table], columns: Sequence[str]) -> pa.Table:
    cols, names = [], []
    for c in columns:
        for t in parts:  # the first part holding c wins: callers put the upper layer first
            if c in t.column_names:
                cols.append(t.column(c))
                names.append(c)
                break
    return pa.table(cols, names=names) if cols else pa.table({})


def _first_read(links: list[Link], i: int, columns: list[str]) -> tuple[int, list[str], list[str]]:
    """Where a read of ``columns`` from links[i] starts: a columns layer holding none of them is skipped (neither
    reader opens its files). Returns (index, own, rest): that link's own wanted columns and those the links below it
    must give. The Arrow reader, the SQL relation and ``needs_join`` all walk the chain through here."""
    while True:
        top = links[i]
        own = [c for c in columns if c in top.own]
        rest = [c for c in columns if c not in top.own]
        if top.kind == "columns" and rest and not own:
            i += 1
            continue
        return i, own, rest


def _iter(links: list[Link], i: int, name: str, columns: list[str], batch_size: int) -> Iterator[pa.Table]:
    i, own, rest = _first_read(links, i, columns)
    top = links[i]
    where = f"{top.ref}/{name}"
    if top.kind == "full":
        yield from _file_batches(top.ref, name, own, batch_size)
    elif top.kind == "columns":
        if not rest:
            yield from _file_batches(top.ref, name, own or [POS], batch_size)
            return
        for mine, below in _zip(_file_batches(top.ref, name, own, batch_size),
                                _iter(links, i + 1, name, rest, batch_size), where):
            yield _hstack([mine, below], columns)
    else:
        yield from _take(links, i, name, own, rest, columns, batch_size, where)


def _take(links, i, name, own, rest, columns, batch_size, where) -> Iterator[pa.Table]:
    """A rows layer: stream the parent's shard and take the selected positions (non-decreasing, so one pass)."""
    selection = _file_batches(links[i].ref, name, [*own, POS], batch_size)
    if not rest:
        for sel in selection:
            yield _hstack([sel], columns)
        return
    parent = _iter(links, i + 1, name, rest, batch_size)
    window, start = None, 0  # parent rows [start, start + len(window)) held in memory
    for sel in selection:
        pos = sel.column(POS).to_numpy(zero_copy_only=False).astype(np.int64)
        if window is None:
            window = next(parent, None)  # the parent yields at least one (maybe empty) table per shard
            if window is None:
                raise StorageError(f"{where}: the shard it lies on is missing")
        if len(pos) == 0:
            yield _hstack([sel, window.slice(0, 0)], columns)
            continue
        while start + window.num_rows <= pos[-1]:
            more = next(parent, None)
            if more is None:
                raise StorageError(f"{where}: selects row {int(pos[-1])} past the end of the shard it lies on")
            # keep only what later positions may still need (they are >= pos[0])
            keep_from = min(max(0, int(pos[0]) - start), window.num_rows)
            window = pa.concat_tables([window.slice(keep_from), more])
            start += keep_from
        yield _hstack([sel, window.take(pa.array(pos - start))], columns)
        drop = int(pos[-1]) - start  # later positions are >= pos[-1]
        window, start = window.slice(drop), start + drop


def _rebatch(pieces: Iterator[pa.Table], batch_size: int) -> Iterator[pa.Table]:
    buf, n, yielded = [], 0, False
    for p in pieces:
        if p.num_rows == 0:
            if not buf and not yielded:
                buf.append(p)
            continue
        buf.append(p)
        n += p.num_rows
        if n >= batch_size:
            yield pa.concat_tables(buf).combine_chunks()
            buf, n, yielded = [], 0, True
    if buf and (n or not yielded):
        yield pa.concat_tables(buf).combine_chunks()


def iter_shard(ref: DatasetRef, name: str, columns: Sequence[str] | None = None, *,
               batch_size: int = 65_536) -> Iterator[pa.Table]:
    """The wide rows of one shard of ``ref``, in order, in batches of ``batch_size`` rows, projected to ``columns``
    (None: every column of the view). A shard with no rows yields one empty table with the requested columns."""
    links = chain(ref)
    check_counts(links, [name])
    cols = column_names(ref) if columns is None else list(columns)
    unknown = [c for c in cols if c not in set(column_names(ref))]
    if unknown:
        raise KeyError(f"{ref} has no column(s) {unknown}; it has {column_names(ref)}")
    yield from _rebatch(_iter(links, 0, name, cols, batch_size), batch_size)


def read_shard(ref: DatasetRef, name: str, columns: Sequence[str] | None = None) -> pa.Table:
    parts = list(iter_shard(ref, name, columns))
    return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})


def read_table(ref: DatasetRef, columns: Sequence[str] | None = None) -> pa.Table:
    """A committed version's wide table in memory (small tables: reports, side inputs, global stages)."""
    wanted = [c for c in columns if c in set(column_names(ref))] if columns else None
    parts = [read_shard(ref, n, wanted) for n in link(ref).files]
    return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})


# ---------------------------------------------------------------------------------------------------------------
# DuckDB relations (the catalog's views, the engine's global SQL)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _files_list(link: Link) -> str:
    uris = [datasets.shard_uri(link.ref, n) for n in link.files]
    return "[" + ", ".join("'" + u.replace("'", "''") + "'" for u in uris) + "]"


def _rel(links: list[Link], i: int, columns: list[str], keys: bool) -> str:
    """SELECT ``columns`` (+ ``__shard``, ``__row``: the row's shard and position in it, when ``keys``) of links[i].

    Layers join on (shard, row) rather than by position: a keyed join stays right whatever order DuckDB's parallel
    scans produce (engine-side SQL turns ``preserve_insertion_order`` off to spill)."""
    i, own, rest = _first_read(links, i, columns)
    top = links[i]
    if top.kind == "full" or (top.kind == "columns" and not rest):
        cols = ", ".join(_q(c) for c in own) or "NULL AS __empty"
        if not keys:
            return f"SELECT {cols} FROM read_parquet({_files_list(top)}, union_by_name = true)"
        return (f"SELECT {cols}, parse_filename(filename) AS __shard, file_row_number AS __row "
                f"FROM read_parquet({_files_list(top)}, union_by_name = true, filename = true, file_row_number = true)")
    scan = f"read_parquet({_files_list(top)}, union_by_name = true, filename = true, file_row_number = true)"
    below = _rel(links, i + 1, rest, True) if rest else None
    cols = ", ".join(f"{'l' if c in top.own else 'p'}.{_q(c)}" for c in columns) or "NULL AS __empty"
    extra = ", parse_filename(l.filename) AS __shard, l.file_row_number AS __row" if keys else ""
    if below is None:
        return f"SELECT {cols}{extra} FROM {scan} l"
    on = "l.file_row_number" if top.kind == "columns" else f"l.{POS}"
    return (f"SELECT {cols}{extra} FROM {scan} l JOIN ({below}) p "
            f"ON p.__shard = parse_filename(l.filename) AND p.__row = {on}")


def relation_sql(ref: DatasetRef, columns: Sequence[str] | None = None, manifests: dict | None = None, *,
                 keys: bool = False, ordered: bool = True) -> str:
    """A DuckDB SELECT giving the wide table of ``ref`` (rows in shard order), projected to ``columns``; with
    ``keys`` it also gives ``__shard`` and ``__row`` (the shard's name and the row's position in it: corpus order,
    for SQL that keeps "the first occurrence") and leaves ordering to the caller. ``ordered=False`` leaves out the
    sort back into shard order, for SQL whose result does not depend on row order (group-bys, joins): sorting the
    wide rows, text included, was most of the fuzzy-dedup keeper query's time and memory."""
    links = chain(ref, manifests)
    names = column_names(ref, manifests)
    cols = names if columns is None else [c for c in columns if c in set(names)]
    if not link(ref, manifests).files:
        return "SELECT NULL AS empty WHERE false"
    check_counts(links, links[0].files)  # footers only: one read per layer and shard (RELIABILITY.md)
    if keys:
        return _rel(links, 0, cols, True)
    if links[0].kind == "full":
        if columns is None:  # every file's columns, as they are (union_by_name fills what a shard lacks)
            return f"SELECT * FROM read_parquet({_files_list(links[0])}, union_by_name = true)"
        return _rel(links, 0, cols, False)
    # joins do not keep an order: a layer's view is sorted back into shard order (what a full version shows)
    inner = _rel(links, 0, cols, True)
    order = " ORDER BY __shard, __row" if ordered else ""
    return f"SELECT {', '.join(_q(c) for c in cols) or 'NULL AS __empty'} FROM ({inner}){order}"


def view_sql(ref: DatasetRef, manifests: dict | None = None) -> str:
    """The catalog's view of ``ref``: ``relation_sql``, or, when a layer of its chain no longer lines up with the
    shards below it (``check_counts``), a view with the same columns whose every query fails with that message (and a
    warning now): the catalog keeps its other views, and this one refuses rather than answers with misjoined rows."""
    try:
        return relation_sql(ref, manifests=manifests)
    except MisalignedLayer as e:
        warnings.warn(f"catalog: the view of {ref} refuses queries: {e}", stacklevel=2)
        cols = ", ".join(f"NULL AS {_q(c)}" for c in column_names(ref, manifests)) or "NULL AS misaligned"
        return f"SELECT {cols} WHERE error('{str(e).replace(chr(39), chr(39) * 2)}')"


def needs_join(ref: DatasetRef, columns: Sequence[str]) -> bool:
    """Whether ``columns`` of ``ref`` come from more than one version of its chain (so its relation joins them): the
    first link read (``_first_read``) is a layer and the links below it must give some of them."""
    links = chain(ref)
    if not links[0].files:
        return False
    i, _, rest = _first_read(links, 0, [c for c in columns if c in set(column_names(ref))])
    return links[i].kind != "full" and bool(rest)


def materialize(ref: DatasetRef, columns: Sequence[str], path: str, batch_size: int = 65_536) -> int:
    """Write ``columns`` of ``ref``'s wide rows, shard by shard in corpus order, plus ``__shard`` and ``__row`` (as
    ``relation_sql(keys=True)`` gives them) to one local Parquet file; returns its rows. The layers are joined in
    Arrow one shard at a time (``iter_shard``): DuckDB's join of layers on (shard, row) builds a hash table of every
    row of the corpus (515 MB for three layers at 2M documents), this holds one batch."""
    cols = [c for c in columns if c in set(column_names(ref))]
    schema = empty_table(ref).select(cols).schema.append(pa.field("__shard", pa.string()))
    schema = schema.append(pa.field("__row", pa.int64()))
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for name in link(ref).files:
            start = 0
            for part in iter_shard(ref, name, cols, batch_size=batch_size):
                n = part.num_rows
                part = part.append_column("__shard", pa.array([name] * n, pa.string()))
                part = part.append_column("__row", pa.array(np.arange(start, start + n, dtype=np.int64)))
                writer.write_table(part.select(schema.names).cast(schema))
                start += n
            rows += start
    return rows


def file_relation(path: str, columns: Sequence[str], *, keys: bool = False) -> str:
    """The SELECT of ``columns`` (+ ``__shard``, ``__row`` with ``keys``) over a file `materialize` wrote."""
    scan = "read_parquet('" + path.replace("'", "''") + "')"
    return f"SELECT {', '.join(_q(c) for c in [*columns, *(('__shard', '__row') if keys else ())])} FROM {scan}"


def empty_table(ref: DatasetRef) -> pa.Table:
    """The wide table of ``ref`` with no rows. Its Arrow types come from each layer's first file footer, read on past
    it only while a column is still typed null there: a shard whose values are all null may store the null type
    while a later shard has the real one, and a null-typed schema would refuse that shard's values."""
    fields: dict[str, pa.Field] = {}
    for lk in reversed(chain(ref)):
        mine: dict[str, pa.Field] = {}
        for name in lk.files:
            fs, path = datasets.filesystem(datasets.shard_uri(lk.ref, name))
            with fs.open(path, "rb") as f:
                for fld in pq.read_schema(f):
                    if fld.name not in mine or pa.types.is_null(mine[fld.name].type):
                        mine[fld.name] = fld
            if not any(pa.types.is_null(fld.type) for fld in mine.values()):
                break
        fields.update(mine)
    names = column_names(ref)
    return pa.schema([fields[n] for n in names if n in fields]).empty_table()


def shard_names(ref: DatasetRef) -> list[str]:
    return list(link(ref).files)


def basename(uri: str) -> str:
    return posixpath.basename(uri)
