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
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage import datasets
from storage.datasets import DatasetRef, StorageError

POS = "_pos"  # the reserved column of a rows layer (and of a columns layer that adds nothing): never in a view
KINDS = ("columns", "rows")


@dataclass(frozen=True)
class Link:
    """One version of a chain: what it stores itself and how it lies on the next one."""

    ref: DatasetRef
    kind: str  # "full" | "columns" | "rows"
    own: tuple[str, ...]  # the columns its files hold (without _pos)
    hide: tuple[str, ...]
    files: tuple[str, ...]  # shard names, as its manifest lists them
    view: tuple[tuple[str, str], ...]  # (name, type) of the wide table


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
    return Link(ref, layer.get("kind", "full"), own, tuple(layer.get("hide", ())),
                tuple(f["name"] for f in m.get("files", [])), view)


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

    def finish(manifest: dict) -> None:
        manifest["layer"] = {"kind": layer["kind"], "of": layer["of"], "hide": list(layer.get("hide", ()))}
        manifest["view_schema"] = view_schema(datasets.ref_from_string(ref.root, layer["of"]), layer["kind"],
                                              manifest["schema"], layer.get("hide", ()))

    return datasets.commit(ref, finish=finish, **commit_kwargs)


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
