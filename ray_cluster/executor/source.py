"""The ``source`` kind: external files -> document shards (+ a quarantine side output).

On the driver ``list_inputs(params) -> ([(spec, uri)], stats)`` lists the files; ``stats["groups"]`` (popped, never
in the manifest) packs them into work items of file indexes (small files together, see ``tasks.ingest.stage.pack``;
absent: one item per file). On a worker ``fn([(uri, spec)]) -> iterator of (docs, bad, finished file summaries)``
reads an item in bounded batches, and the shards are written as the rows come: document shards of at most
``docs_per_shard`` rows, quarantine shards of at most ``QUARANTINE_ROWS_PER_SHARD`` rows, never a whole file held.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import pyarrow as pa

from ray_cluster import runtime
from ray_cluster.executor import core
from storage import datasets
from storage.datasets import DatasetRef

log = logging.getLogger("quarry")

QUARANTINE_ROWS_PER_SHARD = 20_000  # side rows per shard: a file of a million bad records is written as it is read


def run(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    root, dataset = target["root"], target["dataset"]
    if not root or not dataset:
        raise ValueError(f"stage {stage.name!r} reads external files: pass root= and dataset=")
    datasets.ensure_writable(root)
    core.check_shared_root(root, profile)
    files, listing = stage.list_inputs(params)
    listing = dict(listing)
    groups = listing.pop("groups", None) or [[i] for i in range(len(files))]
    uris = [u for _, u in files]
    vparams = params.version_params()
    ref = source_version(stage, params, root, dataset, uris, listing)
    if core._reuse(stage, ref):  # committed and verified (one that fails verification is recomputed)
        return ref
    common = {"ref": core._asdict(ref), "side": list(stage.outputs), "docs_per_shard": params.docs_per_shard,
              "fail_from_shard": fail_from_shard}
    items = [{"index": g, **_entries(files, members), **common} for g, members in enumerate(groups)]
    t0 = time.perf_counter()
    results = runtime.run_shards(items, functools.partial(_read_source_item, stage.fn), core.resources(stage, profile),
                                 profile=profile, desc=stage.name)
    results.sort(key=lambda r: r["index"])
    elapsed = time.perf_counter() - t0
    per_file = [f for r in results for f in r["per_file"]]
    stats = {**(stage.reduce(per_file, elapsed) if stage.reduce else {"seconds": round(elapsed, 3)}),
             "work_items": len(items), **listing}
    for side in stage.outputs:  # the quarantine first: the documents' manifest is the commit of the whole ingest
        core._commit(stage, ref.sibling(side), [], vparams, {},
                     expected={n: rows for r in results for n, rows in r["side_shards"].items()}, inputs=uris)
    expected = {name: rows for r in results for name, rows in r["shards"].items()}
    core._commit(stage, ref, [], vparams, stats, expected=expected, inputs=uris)
    return ref


def source_version(stage, params, root: str, dataset: str, uris: list[str], listing: dict) -> DatasetRef:
    """The version a source stage writes for these listed files (``run``, and ``quarry run --plan`` without running)."""
    # a refused special file (FIFO, device, socket, symlink loop) has no size or mtime to fingerprint (stat of a loop
    # fails): its name enters the version instead, so one appearing or going still makes a new version
    refused = {r["file"] for r in listing.get("refused_inputs", ())}
    vparams = params.version_params()
    hashed = {**vparams, "refused_inputs": sorted(refused)} if refused else vparams
    return datasets.source_ref(root, dataset, stage.name, core.code_of(stage), hashed,
                               [u for u in uris if u not in refused])


def _entries(files: list[tuple[dict, str]], members: list[int]) -> dict:
    """An item's files as [spec position, uri] and its distinct specs (files of one source share one spec dict, so
    an item of 50,000 small files carries one spec, not 50,000 copies)."""
    specs: list[dict] = []
    at: dict[int, int] = {}
    entries = []
    for i in members:
        spec, uri = files[i]
        if id(spec) not in at:
            at[id(spec)] = len(specs)
            specs.append(spec)
        entries.append([at[id(spec)], uri])
    return {"files": entries, "specs": specs}


class _Shards:
    """Tables in, shards of ``per`` rows out (``stem-0000.parquet``, ``stem-0001`` ...), each written as soon as it
    is full. A shard already there (an earlier attempt's) is not written again: the reading is deterministic, so
    it holds exactly these rows. One existence check per shard, never a listing of the folder per work item."""

    def __init__(self, ref: DatasetRef, stem: str, per: int):
        self.ref, self.stem, self.per = ref, stem, per
        self.fs, _ = datasets.filesystem(ref.uri)
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.schema: pa.Schema | None = None
        self.written: dict[str, int] = {}

    def add(self, table: pa.Table) -> None:
        self.schema = table.schema
        if table.num_rows:
            self.tables.append(table)
            self.rows += table.num_rows
        while self.rows >= self.per:
            self._cut(self.per)

    def _cut(self, n: int) -> None:
        table = pa.concat_tables(self.tables) if self.tables else self.schema.empty_table()
        part, rest = table.slice(0, n).combine_chunks(), table.slice(n)
        name = f"{self.stem}-{len(self.written):04d}.parquet"
        if not datasets.has_shard(self.ref, name):  # present and matching its checksum marker (else rewritten)
            datasets.write_shard(self.ref, name, part)
        self.written[name] = part.num_rows
        self.tables, self.rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> dict[str, int]:
        """Write the last partial shard (an empty one when the item made no rows: every item has a shard)."""
        if self.rows or not self.written:
            self._cut(self.rows)
        return self.written


def _read_source_item(read: Callable, item: dict) -> dict:
    """Worker: read one work item into document shards and quarantine (side) shards as the rows come."""
    core._maybe_fail(item)
    docs_ref = DatasetRef(**item["ref"])
    stem = f"part-{item['index']:05d}"
    docs = _Shards(docs_ref, stem, item["docs_per_shard"])
    side = _Shards(docs_ref.sibling(item["side"][0]), stem, QUARANTINE_ROWS_PER_SHARD) if item["side"] else None
    per_file: list[dict] = []
    for good, bad, finished in read([(uri, item["specs"][k]) for k, uri in item["files"]]):
        docs.add(good)
        if side is not None:
            side.add(bad)
        per_file.extend(finished)
    out = {"index": item["index"], "per_file": per_file, "shards": docs.close()}
    if side is not None:
        out["side_shards"] = side.close()
    return out
