"""Run stages the way the flows do (registry + executor), without Prefect: for tests that drive one stage."""

from __future__ import annotations

from typing import Any

from ray_cluster import executor
from tasks import registry
from tasks.common.stage import implements
from tasks.ingest.stage import IngestParams


def run(name: str, inputs: list, params: Any, profile, **kw):
    """A registry stage through the executor (the production path)."""
    return executor.run(registry.stage(name), inputs, params, profile, **kw)


def section(name: str, src, params: Any, profile):
    """A recipe section's steps (e.g. exact_dedup: hash -> group -> mark)."""
    return executor.run_chain(registry.section_steps(name), src, params, profile)


def ingest(sources, *, root: str, dataset: str, docs_per_shard: int, profile, fail_from_shard: int | None = None):
    params = IngestParams(sources=tuple(sources), docs_per_shard=docs_per_shard)
    return run("ingest", [], params, profile, root=root, dataset=dataset, fail_from_shard=fail_from_shard)


def adhoc(src, name: str, fn, params: Any, profile, *, stateful: bool = False, side: dict | None = None,
          fail_from_shard: int | None = None):
    """A test-defined per-batch function (or callable class) run as a map (actor) stage by the real executor."""
    side = side or {}
    fn = implements(name)(fn)  # a registered stage function carries its stage's name
    stage = registry.Stage(name, "actor" if stateful else "map", fn, None, None, ("src", *side), ("src", *side))
    return executor.run(stage, [src, *side.values()], params, profile, fail_from_shard=fail_from_shard)
