"""The ``source`` kind: external files -> document shards (+ a quarantine side output), one work item per input
file: ``list_inputs(params) -> ([(spec, uri)], stats)`` on the driver, ``fn(uri, spec) -> (docs, bad)`` per file."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from ray_cluster import runtime
from ray_cluster.executor import core
from storage import datasets
from storage.datasets import DatasetRef

log = logging.getLogger("quarry")


def run(stage, kind, inputs, params, profile, fail_from_shard, target) -> DatasetRef:
    root, dataset = target["root"], target["dataset"]
    if not root or not dataset:
        raise ValueError(f"stage {stage.name!r} reads external files: pass root= and dataset=")
    datasets.ensure_writable(root)
    core.check_shared_root(root, profile)
    files, listing = stage.list_inputs(params)
    uris = [u for _, u in files]
    ref = datasets.source_ref(root, dataset, stage.name, core.code_of(stage), params.version_params(), uris)
    if datasets.is_committed(ref):
        log.info(f"{stage.name}: {ref} already committed, skipping")
        return ref
    items = [
        {"index": i, "file": uri, "spec": spec, "ref": core._asdict(ref), "side": list(stage.outputs),
         "docs_per_shard": params.docs_per_shard, "fail_from_shard": fail_from_shard}
        for i, (spec, uri) in enumerate(files)
    ]
    t0 = time.perf_counter()
    work = functools.partial(_read_source_item, stage.fn, stage.summarize)
    results = runtime.run_shards(items, work, core.resources(stage, profile), profile=profile, desc=stage.name)
    results.sort(key=lambda r: r["index"])
    elapsed = time.perf_counter() - t0
    stats = {**(stage.reduce(results, elapsed) if stage.reduce else {"seconds": round(elapsed, 3)}), **listing}
    vparams = params.version_params()
    for side in stage.outputs:  # the quarantine first: the documents' manifest is the commit of the whole ingest
        core._commit(stage, ref.sibling(side), [], vparams, {},
                     expected={r["side_shard"]: r["side_rows"] for r in results}, inputs=uris)
    expected = {name: rows for r in results for name, rows in r["shards"].items()}
    core._commit(stage, ref, [], vparams, stats, expected=expected, inputs=uris)
    return ref


def _read_source_item(read: Callable, summarize: Callable | None, item: dict) -> dict:
    """Worker: read one input file into document shards and one side (quarantine) shard; skip shards present."""
    core._maybe_fail(item)
    docs_ref = DatasetRef(**item["ref"])
    docs, bad = read(item["file"], item["spec"])  # a file that cannot be opened is a quarantine row, not a crash
    stem = f"part-{item['index']:05d}"
    out = {"index": item["index"], "file": item["file"], "shards": {}}
    if item["side"]:
        side_ref, side_name = docs_ref.sibling(item["side"][0]), f"{stem}-0000.parquet"
        if side_name not in datasets.existing_shards(side_ref):
            datasets.write_shard(side_ref, side_name, bad)
        out.update(side_shard=side_name, side_rows=bad.num_rows)
    per = item["docs_per_shard"]
    done = datasets.existing_shards(docs_ref)
    for c in range(max(1, -(-docs.num_rows // per))):
        name = f"{stem}-{c:04d}.parquet"
        part = docs.slice(c * per, per)
        if name not in done:
            datasets.write_shard(docs_ref, name, part)
        out["shards"][name] = part.num_rows
    if summarize is not None:
        out.update(summarize(docs, bad))
    return out
